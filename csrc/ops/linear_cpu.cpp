// infinilm::linear: the engine's dense layer; decode-sized CPU products go to the skinny-linear kernel.
#include <ATen/ATen.h>

#include <vector>

#include "csrc/ops/dispatch_cpu.h"
#include "csrc/ops/ops.h"
#include "kernels/cpu/linear.h"

namespace infinilm {

namespace {

bool skinny_ok(const at::Tensor& x, const at::Tensor& w, const at::Tensor& b) {
  const auto st = x.scalar_type();
  const int64_t max_rows = st == at::kFloat ? cpu::kSkinnyLinearMaxRowsF32 : cpu::kSkinnyLinearMaxRowsBF16;
  return x.is_cpu() && w.is_cpu() && x.dim() == 2 && w.dim() == 2 && x.size(0) >= 1 && x.size(0) <= max_rows &&
         x.size(1) == w.size(1) && (st == at::kFloat || st == at::kBFloat16) &&
         w.scalar_type() == st && x.stride(1) == 1 && w.is_contiguous() &&
         (!b.defined() || (b.is_cpu() && b.dim() == 1 && b.size(0) == w.size(0) && b.scalar_type() == st &&
                           b.is_contiguous()));
}

}  // namespace

at::Tensor linear(const at::Tensor& x, const at::Tensor& w, const at::Tensor& b) {
  if (!skinny_ok(x, w, b)) return at::linear(x, w, b);
  const int64_t M = x.size(0), K = x.size(1), N = w.size(0);
  at::Tensor y = at::empty({M, N}, x.options());
  // Per calling thread (each engine rank has its own), so a decode step allocates nothing here.
  thread_local std::vector<float> scratch;
  if (scratch.size() < static_cast<size_t>(M * K)) scratch.resize(static_cast<size_t>(M * K));
  const auto run = [&](auto tag) {
    using T = decltype(tag);
    cpu::skinny_linear<T>(ptr<T>(y), ptr<T>(x), ptr<T>(w), b.defined() ? ptr<T>(b) : nullptr, scratch.data(), M, N, K,
                          x.stride(0), N);
  };
  if (x.scalar_type() == at::kFloat) {
    run(float{});
  } else {
    run(cpu::bf16_t{});
  }
  return y;
}

}  // namespace infinilm
