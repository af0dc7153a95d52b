// CUDA side of infinilm::linear and silu_and_mul_linear: decode-sized products (<= 8 rows, fp16/bf16) on the
// skinny GEMM kernel (kernels/cuda/gemv.cuh), everything else on at::linear (cuBLAS); and their op impls.
#include <c10/cuda/CUDAException.h>
#include <torch/library.h>

#include <cstdlib>
#include <cstring>

#include "csrc/ops/dispatch_cuda.h"
#include "csrc/ops/linear_checks.h"
#include "csrc/ops/ops.h"
#include "kernels/cuda/gemv.cuh"

namespace infinilm {

namespace {

// INFINILM_CUDA_LINEAR=cublas sends every product to at::linear (same-run baselines in the benchmarks).
bool gemv_disabled() {
  static const bool off = [] {
    const char* v = std::getenv("INFINILM_CUDA_LINEAR");
    return v != nullptr && std::strcmp(v, "cublas") == 0;
  }();
  return off;
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

at::Tensor linear_cuda(const at::Tensor& x, const at::Tensor& w, const at::Tensor& b) {
  if (gemv_disabled() || !gemv_ok(x, w, b)) return at::linear(x, w, b);
  const c10::cuda::CUDAGuard guard(x.device());
  const int64_t M = x.size(0), N = w.size(0), K = x.size(1);
  at::Tensor y = at::empty({M, N}, x.options());
  const int sms = sm_count();
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  const int64_t ldx = M == 1 ? K : x.stride(0);
  INFINILM_DISPATCH_FLOAT_CUDA(x.scalar_type(), "linear", [&] {
    if constexpr (!std::is_same_v<scalar_t, float>) {
      cuda_check(cuda::gemv<scalar_t>(cuda_ptr<scalar_t>(y), cuda_ptr<scalar_t>(x), cuda_ptr<scalar_t>(w),
                                      b.defined() ? cuda_ptr<scalar_t>(b) : nullptr, M, N, K, ldx, N, sms, stream),
                 "linear (gemv)");
    }
  });
  return y;
}

at::Tensor silu_and_mul_linear_cuda(const at::Tensor& x, const at::Tensor& w, const at::Tensor& b) {
  // The kernel reads gate and up halves of each row with 16-byte loads: the same contract as gemv on [M, K] views.
  const int64_t K = w.dim() == 2 ? w.size(1) : -1;
  if (gemv_disabled() || x.dim() != 2 || x.size(1) != 2 * K || !gemv_ok(x.narrow(1, 0, K), w, b) ||
      (x.size(0) > 1 && x.stride(0) < 2 * K))
    return linear_cuda(silu_and_mul_cuda(x), w, b);
  const c10::cuda::CUDAGuard guard(x.device());
  const int64_t M = x.size(0), N = w.size(0);
  at::Tensor y = at::empty({M, N}, x.options());
  const int sms = sm_count();
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  const int64_t ldx = M == 1 ? 2 * K : x.stride(0);
  INFINILM_DISPATCH_FLOAT_CUDA(x.scalar_type(), "silu_and_mul_linear", [&] {
    if constexpr (!std::is_same_v<scalar_t, float>) {
      cuda_check(cuda::gemv_silu_and_mul<scalar_t>(cuda_ptr<scalar_t>(y), cuda_ptr<scalar_t>(x),
                                                   cuda_ptr<scalar_t>(w), b.defined() ? cuda_ptr<scalar_t>(b) : nullptr,
                                                   M, N, K, ldx, N, sms, stream),
                 "silu_and_mul_linear (gemv)");
    }
  });
  return y;
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
