// CUDA side of infinilm::linear and silu_and_mul_linear: decode-sized products (<= 8 rows, fp16/bf16) on one of
// two skinny kernels (kernels/cuda/gemv.cuh: tensor cores, <= 8 rows; kernels/cuda/gemv_rows.cuh: CUDA cores,
// <= 4 rows) or cuBLAS, chosen per shape by timing; everything else on at::linear (cuBLAS); and their op impls.
#include <c10/cuda/CUDAException.h>
#include <torch/library.h>

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <map>
#include <mutex>
#include <tuple>

#include "csrc/ops/dispatch_cuda.h"
#include "csrc/ops/linear_checks.h"
#include "csrc/ops/ops.h"
#include "kernels/cuda/gemv.cuh"
#include "kernels/cuda/gemv_rows.cuh"

namespace infinilm {

namespace {

// Which kernel runs a product.
enum Kernel { kCublas = 0, kMma = 1, kRows = 2 };

// INFINILM_CUDA_LINEAR: "cublas" (every product on at::linear), "gemv" (the tensor-core skinny kernel wherever
// its contract holds), "rows" (the CUDA-core one where it holds, else "gemv"; tests, benchmarks), else per-shape
// choice by timing (choose_kernel). Read per call: tests switch it.
int linear_mode() {
  const char* v = std::getenv("INFINILM_CUDA_LINEAR");
  if (v == nullptr) return -1;
  if (std::strcmp(v, "cublas") == 0) return kCublas;
  if (std::strcmp(v, "gemv") == 0) return kMma;
  if (std::strcmp(v, "rows") == 0) return kRows;
  return -1;
}

bool capturing(cudaStream_t stream) {
  cudaStreamCaptureStatus st = cudaStreamCaptureStatusNone;
  C10_CUDA_CHECK(cudaStreamIsCapturing(stream, &st));
  return st != cudaStreamCaptureStatusNone;
}

// Which of cuBLAS and the skinny kernels runs this product fastest: timed at the first use of (device, dtype,
// M, N, K, bias, op), the candidates alternating, best of 5 each, with L2 flushed before every run (a decode step
// streams its weights from HBM), CUDA events on the current stream. Cached for the process. Never timed inside
// a CUDA-graph capture (the engine's eager warm-up step comes first): an unknown shape there takes cuBLAS,
// uncached. cuBLAS keeps ties (a skinny kernel must win by 2%). Running a candidate has no side effect (y is
// fresh). rows_ok: the CUDA-core kernel takes this shape.
int choose_kernel(const at::Tensor& x, const at::Tensor& w, const at::Tensor& b, bool silu, bool rows_ok,
                  const std::function<void(int)>& run) {
  const int mode = linear_mode();
  if (mode >= 0) return mode == kRows && !rows_ok ? kMma : mode;
  using Key = std::tuple<int, int, int64_t, int64_t, int64_t, bool, bool>;
  static std::mutex mu;
  static std::map<Key, int> cache;
  const Key key{x.get_device(), static_cast<int>(x.scalar_type()), x.size(0), w.size(0), w.size(1), b.defined(), silu};
  {
    std::lock_guard<std::mutex> lock(mu);
    auto it = cache.find(key);
    if (it != cache.end()) return it->second;
  }
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  if (capturing(stream)) return kCublas;
  at::Tensor flush = at::empty({128 << 20}, x.options().dtype(at::kByte));  // > L2 (H100/H200: 50-60 MB)
  cudaEvent_t e0, e1;
  C10_CUDA_CHECK(cudaEventCreate(&e0));
  C10_CUDA_CHECK(cudaEventCreate(&e1));
  const int candidates = rows_ok ? 3 : 2;
  float best[3] = {1e30f, 1e30f, 1e30f};
  for (int r = 0; r < 6; ++r) {
    for (int c = 0; c < candidates; ++c) {
      flush.zero_();
      C10_CUDA_CHECK(cudaEventRecord(e0, stream));
      run(c);
      C10_CUDA_CHECK(cudaEventRecord(e1, stream));
      C10_CUDA_CHECK(cudaEventSynchronize(e1));
      float ms = 0.f;
      C10_CUDA_CHECK(cudaEventElapsedTime(&ms, e0, e1));
      if (r > 0) best[c] = std::min(best[c], ms);  // the first round warms them up (lazy loading, handles)
    }
  }
  C10_CUDA_CHECK(cudaEventDestroy(e0));
  C10_CUDA_CHECK(cudaEventDestroy(e1));
  int pick = kCublas;
  for (int c = 1; c < candidates; ++c)
    if (best[c] < 0.98f * best[kCublas] && best[c] < best[pick]) pick = c;
  std::lock_guard<std::mutex> lock(mu);
  cache.emplace(key, pick);
  return pick;
}

// The kernel's contract: half-precision, x rows with a dense last dim and a 16-byte aligned stride, W dense.
bool gemv_ok(const at::Tensor& x, const at::Tensor& w, const at::Tensor& b) {
  const auto st = x.scalar_type();
  return (st == at::kHalf || st == at::kBFloat16) && w.scalar_type() == st && x.dim() == 2 && w.dim() == 2 &&
         x.size(0) >= 1 && x.size(0) <= cuda::kGemvMaxRows && x.size(1) == w.size(1) && x.size(1) % 8 == 0 &&
         x.size(1) > 0 && (x.stride(1) == 1 || x.size(1) == 1) &&
         (x.size(0) == 1 || (x.stride(0) % 8 == 0 && x.stride(0) >= x.size(1))) &&
         w.is_contiguous() && x.device() == w.device() && cuda::aligned_to(x.data_ptr(), 16) &&
         cuda::aligned_to(w.data_ptr(), 16) &&
         (!b.defined() || (b.dim() == 1 && b.size(0) == w.size(0) && b.scalar_type() == st && b.is_contiguous() &&
                           b.device() == x.device()));
}

// Multiprocessors of the current device, asked once per device (an attribute query, no sync: capture-safe).
int sm_count() {
  constexpr int kMaxDevices = 64;
  static int counts[kMaxDevices] = {};
  const int dev = c10::cuda::current_device();
  if (dev >= kMaxDevices) return 132;
  if (counts[dev] == 0) {
    int n = 0;
    C10_CUDA_CHECK(cudaDeviceGetAttribute(&n, cudaDevAttrMultiProcessorCount, dev));
    counts[dev] = n;
  }
  return counts[dev];
}

}  // namespace

static at::Tensor run_gemv(const at::Tensor& x, const at::Tensor& w, const at::Tensor& b, int kernel) {
  const c10::cuda::CUDAGuard guard(x.device());
  const int64_t M = x.size(0), N = w.size(0), K = x.size(1);
  at::Tensor y = at::empty({M, N}, x.options());
  const int sms = sm_count();
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  const int64_t ldx = M == 1 ? K : x.stride(0);
  INFINILM_DISPATCH_FLOAT_CUDA(x.scalar_type(), "linear", [&] {
    if constexpr (!std::is_same_v<scalar_t, float>) {
      auto* fn = kernel == kRows ? &cuda::gemv_rows<scalar_t> : &cuda::gemv<scalar_t>;
      cuda_check(fn(cuda_ptr<scalar_t>(y), cuda_ptr<scalar_t>(x), cuda_ptr<scalar_t>(w),
                    b.defined() ? cuda_ptr<scalar_t>(b) : nullptr, M, N, K, ldx, N, sms, stream),
                 "linear (gemv)");
    }
  });
  return y;
}

static bool rows_fit(const at::Tensor& x, int64_t K) { return cuda::gemv_rows_fits(x.size(0), K, x.element_size()); }

at::Tensor linear_cuda(const at::Tensor& x, const at::Tensor& w, const at::Tensor& b) {
  if (linear_mode() == kCublas || !gemv_ok(x, w, b)) return at::linear(x, w, b);
  const c10::cuda::CUDAGuard guard(x.device());
  const int kernel = choose_kernel(x, w, b, false, rows_fit(x, x.size(1)), [&](int c) {
    if (c == kCublas) at::linear(x, w, b); else run_gemv(x, w, b, c);
  });
  return kernel == kCublas ? at::linear(x, w, b) : run_gemv(x, w, b, kernel);
}

static at::Tensor run_gemv_silu_and_mul(const at::Tensor& x, const at::Tensor& w, const at::Tensor& b, int kernel) {
  const c10::cuda::CUDAGuard guard(x.device());
  const int64_t M = x.size(0), N = w.size(0), K = w.size(1);
  at::Tensor y = at::empty({M, N}, x.options());
  const int sms = sm_count();
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  const int64_t ldx = M == 1 ? 2 * K : x.stride(0);
  INFINILM_DISPATCH_FLOAT_CUDA(x.scalar_type(), "silu_and_mul_linear", [&] {
    if constexpr (!std::is_same_v<scalar_t, float>) {
      auto* fn = kernel == kRows ? &cuda::gemv_rows_silu_and_mul<scalar_t> : &cuda::gemv_silu_and_mul<scalar_t>;
      cuda_check(fn(cuda_ptr<scalar_t>(y), cuda_ptr<scalar_t>(x), cuda_ptr<scalar_t>(w),
                    b.defined() ? cuda_ptr<scalar_t>(b) : nullptr, M, N, K, ldx, N, sms, stream),
                 "silu_and_mul_linear (gemv)");
    }
  });
  return y;
}

at::Tensor silu_and_mul_linear_cuda(const at::Tensor& x, const at::Tensor& w, const at::Tensor& b) {
  // The kernel reads gate and up halves of each row with 16-byte loads: the same contract as gemv on [M, K] views.
  const int64_t K = w.dim() == 2 ? w.size(1) : -1;
  if (linear_mode() == 0 || x.dim() != 2 || x.size(1) != 2 * K || !gemv_ok(x.narrow(1, 0, K), w, b) ||
      (x.size(0) > 1 && x.stride(0) < 2 * K))
    return linear_cuda(silu_and_mul_cuda(x), w, b);
  const c10::cuda::CUDAGuard guard(x.device());
  // The unfused baseline is what the engine would run otherwise: the activation kernel, then cuBLAS.
  const int kernel = choose_kernel(x, w, b, true, rows_fit(x, K), [&](int c) {
    if (c == kCublas) at::linear(silu_and_mul_cuda(x), w, b); else run_gemv_silu_and_mul(x, w, b, c);
  });
  return kernel == kCublas ? linear_cuda(silu_and_mul_cuda(x), w, b) : run_gemv_silu_and_mul(x, w, b, kernel);
}

at::Tensor silu_and_mul_linear_op_cuda(const at::Tensor& input, const at::Tensor& weight,
                                       const std::optional<at::Tensor>& bias) {
  check_silu_and_mul_linear_args(input, weight, bias);
  INFINILM_CHECK_CUDA(input);
  auto [x, out_shape] = linear_rows(input, weight);
  return silu_and_mul_linear_cuda(x, weight, bias.value_or(at::Tensor())).view(out_shape);
}

at::Tensor linear_op_cuda(const at::Tensor& input, const at::Tensor& weight, const std::optional<at::Tensor>& bias) {
  check_linear_args(input, weight, bias);
  INFINILM_CHECK_CUDA(input);
  auto [x, out_shape] = linear_rows(input, weight);
  return linear_cuda(x, weight, bias.value_or(at::Tensor())).view(out_shape);
}

}  // namespace infinilm

TORCH_LIBRARY_IMPL(infinilm, CUDA, m) {
  m.impl("linear", &infinilm::linear_op_cuda);
  m.impl("silu_and_mul_linear", &infinilm::silu_and_mul_linear_op_cuda);
}
