// CUDA glue for reshape_and_cache (the paged KV-cache write): checks, device guard, dtype/index dispatch.
#include <torch/library.h>

#include "csrc/ops/dispatch_cuda.h"
#include "csrc/ops/ops.h"
#include "csrc/ops/validate.h"
#include "kernels/cuda/cache.cuh"

namespace infinilm {

void reshape_and_cache_cuda(const at::Tensor& key, const at::Tensor& value, at::Tensor& key_cache,
                            at::Tensor& value_cache, const at::Tensor& slot_mapping) {
  check_reshape_and_cache_args(key, value, key_cache, value_cache, slot_mapping);
  INFINILM_CHECK_CUDA(key);
  const c10::cuda::CUDAGuard guard(key.device());
  // Device slots cannot be range-checked without a sync: the kernel skips slots outside the cache.
  const at::Tensor slots = slot_mapping.contiguous();
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  INFINILM_DISPATCH_FLOAT_CUDA(key.scalar_type(), "reshape_and_cache", [&] {
    INFINILM_DISPATCH_INDEX_CUDA(slots.scalar_type(), "reshape_and_cache", [&] {
      cuda_check(cuda::reshape_and_cache<scalar_t, index_t>(
                              cuda_ptr<scalar_t>(key), cuda_ptr<scalar_t>(value), cuda_ptr<scalar_t>(key_cache),
                              cuda_ptr<scalar_t>(value_cache), cuda_ptr<index_t>(slots), key.size(0), key.size(1),
                              key.size(2), key_cache.size(0), key_cache.size(2), key.stride(0), key.stride(1),
                              value.stride(0), value.stride(1), stream),
                          "reshape_and_cache");
    });
  });
}

}  // namespace infinilm

TORCH_LIBRARY_IMPL(infinilm, CUDA, m) { m.impl("reshape_and_cache", &infinilm::reshape_and_cache_cuda); }
