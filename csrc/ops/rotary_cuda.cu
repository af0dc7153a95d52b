// CUDA glue for rotary_embedding: checks, device guard, dtype/index dispatch, launch on the current stream.
#include <torch/library.h>

#include "csrc/ops/dispatch_cuda.h"
#include "csrc/ops/ops.h"
#include "csrc/ops/validate.h"
#include "kernels/cuda/rotary.cuh"

namespace infinilm {

void rotary_embedding_cuda(const at::Tensor& positions, at::Tensor& query, at::Tensor& key,
                           const at::Tensor& cos_sin_cache, bool is_neox) {
  check_rotary_embedding_args(positions, query, key, cos_sin_cache);
  INFINILM_CHECK_CUDA(query);
  const c10::cuda::CUDAGuard guard(query.device());
  // Device positions cannot be range-checked without a sync: the kernel skips tokens outside the table.
  const at::Tensor pos = positions.reshape({-1}).contiguous();
  const at::Tensor cs = cos_sin_cache.to(at::kFloat).contiguous();
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  INFINILM_DISPATCH_FLOAT_CUDA(query.scalar_type(), "rotary_embedding", [&] {
    INFINILM_DISPATCH_INDEX_CUDA(pos.scalar_type(), "rotary_embedding", [&] {
      cuda_check(
          cuda::rotary_embedding<scalar_t, index_t>(
              cuda_ptr<index_t>(pos), cuda_ptr<scalar_t>(query), cuda_ptr<scalar_t>(key), cs.data_ptr<float>(),
              query.size(0), query.size(1), key.size(1), cs.size(1), cs.size(0), query.stride(0), query.stride(1),
              key.stride(0), key.stride(1), is_neox, stream),
          "rotary_embedding");
    });
  });
}

}  // namespace infinilm

TORCH_LIBRARY_IMPL(infinilm, CUDA, m) { m.impl("rotary_embedding", &infinilm::rotary_embedding_cuda); }
