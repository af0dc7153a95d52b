// CPU glue for rms_norm and fused_add_rms_norm: checks, dtype dispatch, kernel launch.
#include <torch/library.h>

#include "csrc/ops/dispatch_cpu.h"
#include "csrc/ops/ops.h"
#include "csrc/ops/validate.h"
#include "kernels/cpu/norm.h"

namespace infinilm {

at::Tensor rms_norm_cpu(const at::Tensor& input, const at::Tensor& weight, double eps) {
  check_rms_norm_args(input, weight, eps);
  INFINILM_CHECK_CPU(input);
  const int64_t H = input.size(-1);
  const auto rows_in = readable_rows(input);  // (tensor, row stride); lambdas cannot capture bindings in C++17
  const at::Tensor& x = rows_in.first;
  const int64_t in_stride = rows_in.second;
  const at::Tensor w = weight_as(weight, x);
  at::Tensor out = at::empty(input.sizes(), input.options().memory_format(at::MemoryFormat::Contiguous));
  const int64_t rows = H == 0 ? 0 : input.numel() / H;
  INFINILM_DISPATCH_FLOAT_CPU(x.scalar_type(), "rms_norm", [&] {
    cpu::rms_norm<scalar_t>(ptr<scalar_t>(out), ptr<scalar_t>(x), ptr<scalar_t>(w), rows, H, in_stride, H,
                            static_cast<float>(eps));
  });
  return out;
}

void fused_add_rms_norm_cpu(at::Tensor& input, at::Tensor& residual, const at::Tensor& weight, double eps) {
  check_fused_add_rms_norm_args(input, residual, weight, eps);
  INFINILM_CHECK_CPU(input);
  const int64_t H = input.size(-1);
  const int64_t x_stride = row_stride_of(input, "input");
  const int64_t r_stride = row_stride_of(residual, "residual");
  const at::Tensor w = weight_as(weight, input);
  const int64_t rows = H == 0 ? 0 : input.numel() / H;
  INFINILM_DISPATCH_FLOAT_CPU(input.scalar_type(), "fused_add_rms_norm", [&] {
    cpu::fused_add_rms_norm<scalar_t>(ptr<scalar_t>(input), ptr<scalar_t>(residual), ptr<scalar_t>(w), rows, H,
                                      x_stride, r_stride, static_cast<float>(eps));
  });
}

}  // namespace infinilm

TORCH_LIBRARY_IMPL(infinilm, CPU, m) {
  m.impl("rms_norm", &infinilm::rms_norm_cpu);
  m.impl("fused_add_rms_norm", &infinilm::fused_add_rms_norm_cpu);
}
