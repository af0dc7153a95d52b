// CUDA glue for rotary_embedding_and_cache: checks, device guard, dtype/index dispatch, one fused launch (or the
// component kernels where the fused one does not apply: partial rotary, norms it cannot fuse).
#include <torch/library.h>

#include "csrc/ops/dispatch_cuda.h"
#include "csrc/ops/ops.h"
#include "csrc/ops/rotary_cache_checks.h"
#include "kernels/cuda/rotary_cache.cuh"

namespace infinilm {

void rotary_embedding_and_cache_cuda(const at::Tensor& positions, at::Tensor& query, at::Tensor& key,
                                     const at::Tensor& value, at::Tensor& key_cache, at::Tensor& value_cache,
                                     const at::Tensor& slot_mapping, const at::Tensor& cos_sin_cache, bool is_neox,
                                     const std::optional<at::Tensor>& q_norm_weight,
                                     const std::optional<at::Tensor>& k_norm_weight, double norm_eps) {
  check_rotary_embedding_and_cache_args(positions, query, key, value, key_cache, value_cache, slot_mapping,
                                        cos_sin_cache, q_norm_weight, k_norm_weight, norm_eps);
  INFINILM_CHECK_CUDA(query);
  const c10::cuda::CUDAGuard guard(query.device());
  const bool norm = q_norm_weight.has_value() && q_norm_weight->defined();
  const auto run_norms = [&] {
    query.copy_(rms_norm_cuda(query, *q_norm_weight, norm_eps));
    key.copy_(rms_norm_cuda(key, *k_norm_weight, norm_eps));
  };
  if (cos_sin_cache.size(1) != query.size(2)) {  // partial rotary: the fused kernel rotates whole heads only
    if (norm) run_norms();
    rotary_embedding_cuda(positions, query, key, cos_sin_cache, is_neox);
    reshape_and_cache_cuda(key, value, key_cache, value_cache, slot_mapping);
    return;
  }
  // Device positions and slots cannot be range-checked without a sync: the kernel skips tokens outside the
  // table and slots outside the cache.
  const at::Tensor pos = positions.reshape({-1}).contiguous();
  const at::Tensor slots = slot_mapping.to(pos.scalar_type()).contiguous();
  const at::Tensor cs = cos_sin_cache.to(at::kFloat).contiguous();
  const at::Tensor qw = norm ? weight_as(*q_norm_weight, query) : at::Tensor();
  const at::Tensor kw = norm ? weight_as(*k_norm_weight, query) : at::Tensor();
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  INFINILM_DISPATCH_FLOAT_CUDA(query.scalar_type(), "rotary_embedding_and_cache", [&] {
    INFINILM_DISPATCH_INDEX_CUDA(pos.scalar_type(), "rotary_embedding_and_cache", [&] {
      const auto launch = [&](bool with_norm) {
        return cuda::rotary_embedding_and_cache<scalar_t, index_t>(
            cuda_ptr<index_t>(pos), cuda_ptr<scalar_t>(query), cuda_ptr<scalar_t>(key), cuda_ptr<scalar_t>(value),
            cuda_ptr<scalar_t>(key_cache), cuda_ptr<scalar_t>(value_cache), cuda_ptr<index_t>(slots),
            cs.data_ptr<float>(), with_norm ? cuda_ptr<scalar_t>(qw) : nullptr,
            with_norm ? cuda_ptr<scalar_t>(kw) : nullptr, static_cast<float>(norm_eps), query.size(0),
            query.size(1), key.size(1), query.size(2), cs.size(0), key_cache.size(0), key_cache.size(2),
            query.stride(0), query.stride(1), key.stride(0), key.stride(1), value.stride(0), value.stride(1),
            is_neox, stream);
      };
      cudaError_t err = launch(norm);
      if (err == cudaErrorNotSupported && norm) {  // head too wide for the in-warp norm: norms first, unfused
        run_norms();
        err = launch(false);
      }
      cuda_check(err, "rotary_embedding_and_cache");
    });
  });
}

}  // namespace infinilm

TORCH_LIBRARY_IMPL(infinilm, CUDA, m) {
  m.impl("rotary_embedding_and_cache", &infinilm::rotary_embedding_and_cache_cuda);
}
