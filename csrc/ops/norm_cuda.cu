// CUDA glue for rms_norm and fused_add_rms_norm: checks, device guard, dtype dispatch, launch on the current stream.
#include <torch/library.h>

#include "csrc/ops/dispatch_cuda.h"
#include "csrc/ops/ops.h"
#include "csrc/ops/validate.h"
#include "kernels/cuda/norm.cuh"

namespace infinilm {

at::Tensor rms_norm_cuda(const at::Tensor& input, const at::Tensor& weight, double eps) {
  check_rms_norm_args(input, weight, eps);
  INFINILM_CHECK_CUDA(input);
  const c10::cuda::CUDAGuard guard(input.device());
  const int64_t H = input.size(-1);
  const auto rows_in = readable_rows(input);  // (tensor, row stride); lambdas cannot capture bindings in C++17
  const at::Tensor& x = rows_in.first;
  const int64_t in_stride = rows_in.second;
  const at::Tensor w = weight_as(weight, x);
  at::Tensor out = at::empty(input.sizes(), input.options().memory_format(at::MemoryFormat::Contiguous));
  const int64_t rows = H == 0 ? 0 : input.numel() / H;
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  INFINILM_DISPATCH_FLOAT_CUDA(x.scalar_type(), "rms_norm", [&] {
    cuda_check(cuda::rms_norm<scalar_t>(cuda_ptr<scalar_t>(out), cuda_ptr<scalar_t>(x),
                                                 cuda_ptr<scalar_t>(w), rows, H, in_stride, H,
                                                 static_cast<float>(eps), stream),
                        "rms_norm");
  });
  return out;
}

void fused_add_rms_norm_cuda(at::Tensor& input, at::Tensor& residual, const at::Tensor& weight, double eps) {
  check_fused_add_rms_norm_args(input, residual, weight, eps);
  INFINILM_CHECK_CUDA(input);
  const c10::cuda::CUDAGuard guard(input.device());
  const int64_t H = input.size(-1);
  const int64_t x_stride = row_stride_of(input, "input");
  const int64_t r_stride = row_stride_of(residual, "residual");
  const at::Tensor w = weight_as(weight, input);
  const int64_t rows = H == 0 ? 0 : input.numel() / H;
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  INFINILM_DISPATCH_FLOAT_CUDA(input.scalar_type(), "fused_add_rms_norm", [&] {
    cuda_check(cuda::fused_add_rms_norm<scalar_t>(cuda_ptr<scalar_t>(input), cuda_ptr<scalar_t>(residual),
                                                           cuda_ptr<scalar_t>(w), rows, H, x_stride, r_stride,
                                                           static_cast<float>(eps), stream),
                        "fused_add_rms_norm");
  });
}

}  // namespace infinilm

TORCH_LIBRARY_IMPL(infinilm, CUDA, m) {
  m.impl("rms_norm", &infinilm::rms_norm_cuda);
  m.impl("fused_add_rms_norm", &infinilm::fused_add_rms_norm_cuda);
}
