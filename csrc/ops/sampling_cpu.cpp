// CPU glue for sample: checks, parameter conversion, dtype dispatch, and errors the kernel found in the logits.
#include <torch/library.h>

#include <vector>

#include "csrc/ops/dispatch_cpu.h"
#include "csrc/ops/ops.h"
#include "csrc/ops/validate.h"
#include "kernels/cpu/sampling.h"

namespace infinilm {

at::Tensor sample_cpu(const at::Tensor& logits, const at::Tensor& temperature, const at::Tensor& top_k,
                      const at::Tensor& top_p, const at::Tensor& seeds) {
  check_sample_args(logits, temperature, top_k, top_p, seeds);
  INFINILM_CHECK_CPU(logits);
  check_sample_values(temperature, top_k, top_p);
  const int64_t B = logits.size(0), V = logits.size(1);
  TORCH_CHECK_VALUE(V <= INT32_MAX, "infinilm: 'logits' vocab size ", V, " exceeds int32 range");
  const at::Tensor t = temperature.to(at::kFloat).contiguous(), p = top_p.to(at::kFloat).contiguous();
  const at::Tensor k = top_k.to(at::kLong).contiguous(), s = seeds.to(at::kLong).contiguous();
  at::Tensor out = at::empty({B}, logits.options().dtype(at::kLong));
  // NaN / +inf / all -inf rows are detected in the kernel's first pass over each row (a separate ATen check
  // would read [B, V] several more times); nothing but `out` is written, and it is not returned on error.
  std::vector<int64_t> err(B, 0);
  INFINILM_DISPATCH_FLOAT_CPU(logits.scalar_type(), "sample", [&] {
    cpu::sample<scalar_t>(out.data_ptr<int64_t>(), err.data(), ptr<scalar_t>(logits), t.data_ptr<float>(),
                          k.data_ptr<int64_t>(), p.data_ptr<float>(), s.data_ptr<int64_t>(), B, V, logits.stride(0));
  });
  for (int64_t b = 0; b < B; ++b) {
    TORCH_CHECK_VALUE(err[b] <= 0, "infinilm: 'logits' contain NaN or +inf, first at [", b, ", ", err[b] - 1, "] = ",
                      logits[b][err[b] - 1].item<double>());
    TORCH_CHECK_VALUE(err[b] == 0, "infinilm: 'logits' row ", b, " is -inf everywhere: no token can be drawn");
  }
  return out;
}

}  // namespace infinilm

TORCH_LIBRARY_IMPL(infinilm, CPU, m) {
  m.impl("sample", &infinilm::sample_cpu);
}
