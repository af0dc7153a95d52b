// infinilm::linear: the engine's dense layer (and the CPU impl of the linear op); decode-sized CPU products go to
// the skinny-linear kernel or to at::linear (MKL / oneDNN), whichever a measurement on first use of the shape found
// faster. CUDA tensors go to linear_cuda (csrc/ops/linear_cuda.cu).
#include <ATen/ATen.h>

#include <chrono>
#include <cstdlib>
#include <cstring>
#include <map>
#include <mutex>
#include <tuple>
#include <vector>

#include <torch/library.h>

#include "csrc/ops/dispatch_cpu.h"
#include "csrc/ops/linear_checks.h"
#include "csrc/ops/ops.h"
#include "kernels/cpu/linear.h"

namespace infinilm {

namespace {

bool skinny_ok(const at::Tensor& x, const at::Tensor& w, const at::Tensor& b) {
  const auto st = x.scalar_type();
  const int64_t max_rows = cpu::skinny_linear_max_rows(st == at::kBFloat16);
  return x.is_cpu() && w.is_cpu() && x.dim() == 2 && w.dim() == 2 && x.size(0) >= 1 && x.size(0) <= max_rows &&
         x.size(1) == w.size(1) && (st == at::kFloat || st == at::kBFloat16) &&
         w.scalar_type() == st && x.stride(1) == 1 && w.is_contiguous() &&
         (!b.defined() || (b.is_cpu() && b.dim() == 1 && b.size(0) == w.size(0) && b.scalar_type() == st &&
                           b.is_contiguous()));
}

void run_skinny(int isa, at::Tensor& y, const at::Tensor& x, const at::Tensor& w, const at::Tensor& b) {
  const int64_t M = x.size(0), K = x.size(1), N = w.size(0);
  // Per calling thread (each engine rank has its own), so a decode step allocates nothing here.
  thread_local std::vector<float> scratch;
  if (scratch.size() < static_cast<size_t>(M * K)) scratch.resize(static_cast<size_t>(M * K));
  const auto run = [&](auto tag) {
    using T = decltype(tag);
    cpu::skinny_linear_isa<T>(isa, ptr<T>(y), ptr<T>(x), ptr<T>(w), b.defined() ? ptr<T>(b) : nullptr,
                              scratch.data(), M, N, K, x.stride(0), N);
  };
  if (x.scalar_type() == at::kFloat) {
    run(float{});
  } else {
    run(cpu::bf16_t{});
  }
}

// INFINILM_CPU_LINEAR=skinny (the best ISA build) | torch forces one side (tests, benchmarks); unset or
// "auto" measures.
int forced_choice() {
  const char* v = std::getenv("INFINILM_CPU_LINEAR");
  if (v == nullptr) return -1;
  if (std::strcmp(v, "skinny") == 0) return 1;
  if (std::strcmp(v, "torch") == 0) return 0;
  return -1;
}

// Which kernel runs this product: -1 at::linear, else the skinny build of that ISA level. Found by timing the
// candidates on this very product, alternating, best of a few runs each (the machine may be shared); cached
// per (dtype, rows, out, in, bias, highest ISA allowed) for the process lifetime.
int measured_choice(at::Tensor& y, const at::Tensor& x, const at::Tensor& w, const at::Tensor& b) {
  using Key = std::tuple<int, int64_t, int64_t, int64_t, bool, int>;
  static std::mutex mu;
  static std::map<Key, int> cache;
  const int top = cpu::cpu_isa_level();
  const Key key{static_cast<int>(x.scalar_type()), x.size(0), w.size(0), w.size(1), b.defined(), top};
  {
    std::lock_guard<std::mutex> lock(mu);
    auto it = cache.find(key);
    if (it != cache.end()) return it->second;
  }
  // Candidates: torch and one skinny build. The timing runs on a weight that stays in cache, where the
  // AVX-512 body can look faster than it is while a decode step streams the weights from memory: streamed
  // (benchmarks/cases_linear.py, shared Zen 4) the AVX2 body led for fp32 and for 1-4 bf16 rows, the
  // AVX-512 body for 5-16 bf16 rows (3-4x). So the ISA comes from that and only torch vs skinny is timed.
  const bool bf16_wide = x.scalar_type() == at::kBFloat16 && x.size(0) > cpu::kSkinnyLinearMaxRowsBF16;
  std::vector<int> cands{-1, bf16_wide ? top : std::min(top, 1)};
  using clock = std::chrono::steady_clock;
  std::vector<double> best(cands.size(), 1e30);
  const int reps = w.numel() * w.element_size() > (8 << 20) ? 3 : 7;
  for (int r = 0; r < reps; ++r) {
    for (size_t c = 0; c < cands.size(); ++c) {
      const auto t0 = clock::now();
      if (cands[c] >= 0) {
        run_skinny(cands[c], y, x, w, b);
      } else {
        at::Tensor ref = at::linear(x, w, b);
      }
      best[c] = std::min(best[c], std::chrono::duration<double>(clock::now() - t0).count());
    }
  }
  size_t win = 0;
  for (size_t c = 1; c < cands.size(); ++c)
    if (best[c] < best[win]) win = c;
  std::lock_guard<std::mutex> lock(mu);
  cache.emplace(key, cands[win]);
  return cands[win];
}

}  // namespace

at::Tensor linear(const at::Tensor& x, const at::Tensor& w, const at::Tensor& b) {
#ifdef INFINILM_WITH_CUDA
  if (x.is_cuda()) return linear_cuda(x, w, b);
#endif
  const int forced = forced_choice();
  if (forced == 0 || !skinny_ok(x, w, b)) return at::linear(x, w, b);
  at::Tensor y = at::empty({x.size(0), w.size(0)}, x.options());
  const int isa = forced == 1 ? cpu::cpu_isa_level() : measured_choice(y, x, w, b);
  if (isa < 0) return at::linear(x, w, b);
  run_skinny(isa, y, x, w, b);
  return y;
}

at::Tensor linear_op_cpu(const at::Tensor& input, const at::Tensor& weight, const std::optional<at::Tensor>& bias) {
  check_linear_args(input, weight, bias);
  INFINILM_CHECK_CPU(input);
  auto [x, out_shape] = linear_rows(input, weight);
  return linear(x, weight, bias.value_or(at::Tensor())).view(out_shape);
}

at::Tensor silu_and_mul_linear(const at::Tensor& x, const at::Tensor& w, const at::Tensor& b) {
#ifdef INFINILM_WITH_CUDA
  if (x.is_cuda()) return silu_and_mul_linear_cuda(x, w, b);
#endif
  return linear(silu_and_mul_cpu(x), w, b);
}

at::Tensor silu_and_mul_linear_op_cpu(const at::Tensor& input, const at::Tensor& weight,
                                      const std::optional<at::Tensor>& bias) {
  check_silu_and_mul_linear_args(input, weight, bias);
  INFINILM_CHECK_CPU(input);
  auto [x, out_shape] = linear_rows(input, weight);
  return silu_and_mul_linear(x, weight, bias.value_or(at::Tensor())).view(out_shape);
}

}  // namespace infinilm

TORCH_LIBRARY_IMPL(infinilm, CPU, m) {
  m.impl("linear", &infinilm::linear_op_cpu);
  m.impl("silu_and_mul_linear", &infinilm::silu_and_mul_linear_op_cpu);
}
