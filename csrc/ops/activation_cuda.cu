// CUDA glue for silu_and_mul: checks, device guard, dtype dispatch, launch on the current stream.
#include <torch/library.h>

#include <vector>

#include "csrc/ops/dispatch_cuda.h"
#include "csrc/ops/ops.h"
#include "csrc/ops/validate.h"
#include "kernels/cuda/activation.cuh"

namespace infinilm {

at::Tensor silu_and_mul_cuda(const at::Tensor& input) {
  check_silu_and_mul_args(input);
  INFINILM_CHECK_CUDA(input);
  const c10::cuda::CUDAGuard guard(input.device());
  const int64_t d = input.size(-1) / 2;
  std::vector<int64_t> out_shape(input.sizes().begin(), input.sizes().end());
  out_shape.back() = d;
  at::Tensor out = at::empty(out_shape, input.options().memory_format(at::MemoryFormat::Contiguous));
  if (out.numel() == 0) return out;
  // Any row-strided 2-D view is read in place; other layouts are made contiguous first.
  const at::Tensor x = input.dim() == 2 && input.stride(1) == 1 ? input : input.contiguous();
  const int64_t rows = out.numel() / d;
  const int64_t in_stride = x.dim() == 2 ? x.stride(0) : 2 * d;
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  INFINILM_DISPATCH_FLOAT_CUDA(x.scalar_type(), "silu_and_mul", [&] {
    cuda_check(
        cuda::silu_and_mul<scalar_t>(cuda_ptr<scalar_t>(out), cuda_ptr<scalar_t>(x), rows, d, in_stride, stream),
        "silu_and_mul");
  });
  return out;
}

}  // namespace infinilm

TORCH_LIBRARY_IMPL(infinilm, CUDA, m) { m.impl("silu_and_mul", &infinilm::silu_and_mul_cuda); }
