// CPU glue for silu_and_mul.
#include <torch/library.h>

#include "csrc/ops/dispatch_cpu.h"
#include "csrc/ops/ops.h"
#include "csrc/ops/validate.h"
#include "kernels/cpu/activation.h"

namespace infinilm {

at::Tensor silu_and_mul_cpu(const at::Tensor& input) {
  check_silu_and_mul_args(input);
  INFINILM_CHECK_CPU(input);
  const int64_t d = input.size(-1) / 2;
  std::vector<int64_t> out_shape(input.sizes().begin(), input.sizes().end());
  out_shape.back() = d;
  at::Tensor out = at::empty(out_shape, input.options().memory_format(at::MemoryFormat::Contiguous));
  if (out.numel() == 0) return out;
  // Any row-strided 2-D view is read in place; other layouts are made contiguous first.
  at::Tensor x = input.dim() == 2 && input.stride(1) == 1 ? input : input.contiguous();
  const int64_t rows = out.numel() / d;
  const int64_t in_stride = x.dim() == 2 ? x.stride(0) : 2 * d;
  INFINILM_DISPATCH_FLOAT_CPU(x.scalar_type(), "silu_and_mul", [&] {
    cpu::silu_and_mul<scalar_t>(ptr<scalar_t>(out), ptr<scalar_t>(x), rows, d, in_stride);
  });
  return out;
}

}  // namespace infinilm

TORCH_LIBRARY_IMPL(infinilm, CPU, m) { m.impl("silu_and_mul", &infinilm::silu_and_mul_cpu); }
