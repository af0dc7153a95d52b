// CPU glue for rotary_embedding_and_cache: the per-head norms, rotary_embedding and reshape_and_cache composed
// (the readable reference of the fused CUDA kernel).
#include <torch/library.h>

#include "csrc/ops/ops.h"
#include "csrc/ops/rotary_cache_checks.h"

namespace infinilm {

void rotary_embedding_and_cache_cpu(const at::Tensor& positions, at::Tensor& query, at::Tensor& key,
                                    const at::Tensor& value, at::Tensor& key_cache, at::Tensor& value_cache,
                                    const at::Tensor& slot_mapping, const at::Tensor& cos_sin_cache, bool is_neox,
                                    const std::optional<at::Tensor>& q_norm_weight,
                                    const std::optional<at::Tensor>& k_norm_weight, double norm_eps) {
  check_rotary_embedding_and_cache_args(positions, query, key, value, key_cache, value_cache, slot_mapping,
                                        cos_sin_cache, q_norm_weight, k_norm_weight, norm_eps);
  INFINILM_CHECK_CPU(query);
  // Every value check before the first write, so a rejected call leaves query, key and the caches as they were.
  check_positions_values(positions, cos_sin_cache.size(0));
  check_slot_values(slot_mapping, key_cache.size(0) * key_cache.size(2));
  if (q_norm_weight.has_value() && q_norm_weight->defined()) {
    query.copy_(rms_norm_cpu(query, *q_norm_weight, norm_eps));
    key.copy_(rms_norm_cpu(key, *k_norm_weight, norm_eps));
  }
  rotary_embedding_cpu(positions, query, key, cos_sin_cache, is_neox);
  reshape_and_cache_cpu(key, value, key_cache, value_cache, slot_mapping);
}

}  // namespace infinilm

TORCH_LIBRARY_IMPL(infinilm, CPU, m) {
  m.impl("rotary_embedding_and_cache", &infinilm::rotary_embedding_and_cache_cpu);
}
