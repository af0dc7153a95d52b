// Argument checks of rotary_embedding_and_cache (the rotary + cache-write op), shared by its CPU and CUDA glue.
#pragma once

#include <optional>

#include "csrc/ops/validate.h"

namespace infinilm {

// The two component ops' checks, plus the optional per-head norm weights: both or neither, [head_dim] each.
inline void check_rotary_embedding_and_cache_args(const at::Tensor& positions, const at::Tensor& query,
                                                  const at::Tensor& key, const at::Tensor& value,
                                                  const at::Tensor& key_cache, const at::Tensor& value_cache,
                                                  const at::Tensor& slot_mapping, const at::Tensor& cos_sin_cache,
                                                  const std::optional<at::Tensor>& q_norm_weight,
                                                  const std::optional<at::Tensor>& k_norm_weight, double norm_eps) {
  check_rotary_embedding_args(positions, query, key, cos_sin_cache);
  check_reshape_and_cache_args(key, value, key_cache, value_cache, slot_mapping);
  const bool has_q = q_norm_weight.has_value() && q_norm_weight->defined();
  const bool has_k = k_norm_weight.has_value() && k_norm_weight->defined();
  TORCH_CHECK_VALUE(has_q == has_k, "infinilm: 'q_norm_weight' and 'k_norm_weight' must be given together, got ",
                    has_q ? "only 'q_norm_weight'" : "only 'k_norm_weight'");
  if (!has_q) return;
  const int64_t D = query.size(2);
  for (const auto& [w, name] : {std::pair<const at::Tensor*, const char*>{&*q_norm_weight, "q_norm_weight"},
                                {&*k_norm_weight, "k_norm_weight"}}) {
    TORCH_CHECK_TYPE(is_float_dtype(w->scalar_type()), "infinilm: '", name,
                     "' must be float32, float16 or bfloat16, got ", w->scalar_type());
    TORCH_CHECK_VALUE(w->device() == query.device(), "infinilm: '", name, "' is on ", w->device(),
                      " but 'query' is on ", query.device());
    TORCH_CHECK_VALUE(w->dim() == 1 && w->size(0) == D, "infinilm: '", name, "' must have shape [", D,
                      "] (head_dim of 'query' ", query.sizes(), "), got ", w->sizes());
  }
  TORCH_CHECK_VALUE(norm_eps >= 0.0, "infinilm: 'norm_eps' must be >= 0, got ", norm_eps);
}

}  // namespace infinilm
