// CUDA skinny GEMM for decode: y[M, N] = x[M, K] @ W[N, K]^T (+ b) for M <= 8, W streamed once on tensor cores.
//
// Napkin math: a decode product reads 2NK bytes of weights and ~nothing else (Llama-3.2-1B gate_up 16384 x 2048
// bf16: 67 MB, 17.6 us at 3.8 TB/s). With fp32 accumulation on CUDA cores, M = 8 needs 8 FMAs plus the
// conversions per weight element, ~140 issue slots per 512 bytes a warp loads where the memory system delivers
// 512 bytes per SM every ~28 clocks: CUDA cores cannot keep up. So the product is swapped onto the m16n8k16 MMA:
// 16 rows of W are the A operand, x^T the B operand (n = 8 = the batch), and one instruction does 2048 FMAs.
//
// The MMA's fragment order is not the memory order, but a dot product does not care how k is permuted as long
// as A and B use the same permutation. Lane (g = lane/4, q = lane%4) loads 16 contiguous bytes (8 elements) of
// W rows g and g+8 and of x row g at the same k, and feeds elements {0,1 | 2,3} to one MMA and {4,5 | 6,7} to a
// second: both operands then hold the same physical k in every fragment slot. No shared memory, no shuffles;
// x (at most 8 x K) is re-read from L1/L2 by each CTA.
//
// Work split: a CTA owns 16 rows of W; its warps split K (spans of 128 elements, round-robin) and add their
// 16 x 8 partial tiles in shared memory, so split-K stays inside one launch. The host picks the warps per CTA:
// more where there are few row tiles (N = 2048: 128 CTAs x 16 warps), one where there are many (lm_head).
// A warp with more spans to go asks L2 for its next span's lines before loading the current one: the loads in
// registers are capped by the 64-register budget of 2 CTAs/SM, L2 prefetches are not.
#pragma once

#include "kernels/cuda/attention_common.cuh"
#include "kernels/cuda/common.cuh"
#include "kernels/cuda/pdl.cuh"

namespace infinilm::cuda {

constexpr int kGemvMaxRows = 8;  // batch rows one launch handles: the MMA's n

namespace gemv_detail {

constexpr int kU = 4;                 // 16-byte chunks per lane and W row in one span (loads in flight)
constexpr int kSpan = 4 * 8 * kU;     // k elements one warp covers per span: 4 quad lanes x kU chunks x 8
constexpr int kMaxWarps = 16;         // warps per CTA splitting K
constexpr int kTileRows = 16;         // W rows per CTA: the MMA's m

__device__ __forceinline__ uint4 ldg16(const void* p) { return __ldg(reinterpret_cast<const uint4*>(p)); }

// Asks L2 for a line the warp reads one span later: more bytes in flight without registers (results unchanged;
// a no-op where the PTX is not available, e.g. a hipified build).
__device__ __forceinline__ void prefetch_l2(const void* p) {
#if defined(__CUDA_ARCH__) && !defined(__HIP_PLATFORM_AMD__)
  asm volatile("prefetch.global.L2 [%0];\n" ::"l"(p));
#endif
}

// One span: k0 is its first element. FULL spans lie wholly inside K; the last one may not (K % 128 != 0), and
// its chunks past K read as zero on both operands.
// SILU: x row r is [gate | up] (2K wide) and the B operand is silu(gate) * up, rounded to T as silu_and_mul
// writes it, computed as the chunk is loaded.
template <typename T, bool SILU>
__device__ __forceinline__ uint4 load_x(const T* __restrict__ p, int64_t K) {
  if constexpr (!SILU) {
    return ldg16(p);
  } else {
    const uint4 gu = ldg16(p), uu = ldg16(p + K);
    T g[8], u[8], o[8];
    memcpy(g, &gu, 16);
    memcpy(u, &uu, 16);
#pragma unroll
    for (int i = 0; i < 8; ++i) {
      const float a = to_float(g[i]);
      o[i] = from_float<T>(a / (1.f + __expf(-a)) * to_float(u[i]));
    }
    uint4 r;
    memcpy(&r, o, 16);
    return r;
  }
}

template <typename T, bool FULL, bool SILU>
__device__ __forceinline__ void span(const T* __restrict__ w0, const T* __restrict__ w1, const T* __restrict__ xr,
                                     int64_t k0, int q, int64_t K, float (&c)[4]) {
  uint4 a0[kU], a1[kU], b[kU];
#pragma unroll
  for (int u = 0; u < kU; ++u) {
    // Per load instruction the 4 lanes of a quad read 64 contiguous bytes of a row: whole 32-byte sectors.
    const int64_t k = k0 + (u * 4 + q) * 8;
    if (FULL || k < K) {
      a0[u] = ldg16(w0 + k);
      a1[u] = ldg16(w1 + k);
      b[u] = load_x<T, SILU>(xr + k, K);
    } else {
      a0[u] = a1[u] = b[u] = make_uint4(0u, 0u, 0u, 0u);
    }
  }
#pragma unroll
  for (int u = 0; u < kU; ++u) {
    const uint32_t alo[4] = {a0[u].x, a1[u].x, a0[u].y, a1[u].y}, blo[2] = {b[u].x, b[u].y};
    const uint32_t ahi[4] = {a0[u].z, a1[u].z, a0[u].w, a1[u].w}, bhi[2] = {b[u].z, b[u].w};
    attn::mma_16x8x16<T>(c, alo, blo);
    attn::mma_16x8x16<T>(c, ahi, bhi);
  }
}

template <typename T, bool SILU>
__global__ void __launch_bounds__(kMaxWarps * 32, SILU ? 1 : 2)
    gemv_kernel(T* __restrict__ y,           // [M, N], row stride ldy
                const T* __restrict__ x,     // [M, K] (SILU: [M, 2K]), row stride ldx
                const T* __restrict__ w,     // [N, K], contiguous
                const T* __restrict__ bias,  // [N] or null
                int M, int64_t N, int64_t K, int64_t ldx, int64_t ldy) {
  extern __shared__ float gemv_partial[];  // [warps][32][4] when warps > 1
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32, warps = blockDim.x / 32;
  const int g = lane / 4, q = lane % 4;
  const int64_t row0 = static_cast<int64_t>(blockIdx.x) * kTileRows;
  // Rows past N and x rows past M are clamped to valid ones: their results land in tile rows / columns that
  // are never stored, so the loads need no predicate.
  const T* w0 = w + min(row0 + g, N - 1) * K;
  const T* w1 = w + min(row0 + g + 8, N - 1) * K;
  const T* xr = x + min(g, M - 1) * ldx;
  float c[4] = {0.f, 0.f, 0.f, 0.f};
  const int64_t full = K / kSpan;
  if (warp < full) {  // this warp's first span of W into L2 while the previous kernel finishes
#pragma unroll
    for (int u = 0; u < kU; ++u) {
      prefetch_l2(w0 + warp * kSpan + (u * 4 + q) * 8);
      prefetch_l2(w1 + warp * kSpan + (u * 4 + q) * 8);
    }
  }
  pdl_wait();  // x is the previous kernel's output (weights are not)
  for (int64_t s = warp; s < full; s += warps) {
    if (s + warps < full) {  // this warp's next span of both rows: each lane its 16-byte chunks' lines
      const int64_t kn = (s + warps) * kSpan;
#pragma unroll
      for (int u = 0; u < kU; ++u) {
        prefetch_l2(w0 + kn + (u * 4 + q) * 8);
        prefetch_l2(w1 + kn + (u * 4 + q) * 8);
      }
    }
    span<T, true, SILU>(w0, w1, xr, s * kSpan, q, K, c);
  }
  if (K % kSpan != 0 && full % warps == warp) span<T, false, SILU>(w0, w1, xr, full * kSpan, q, K, c);
  if (warps > 1) {
    float* mine = gemv_partial + (warp * 32 + lane) * 4;
#pragma unroll
    for (int i = 0; i < 4; ++i) mine[i] = c[i];
    __syncthreads();
    if (warp != 0) return;
    for (int v = 1; v < warps; ++v) {
      const float* other = gemv_partial + (v * 32 + lane) * 4;
#pragma unroll
      for (int i = 0; i < 4; ++i) c[i] += other[i];
    }
  }
  // C fragment: c[0..1] = (row g, n = 2q, 2q+1), c[2..3] = (row g + 8, same n); y[n, row] = C[row, n].
#pragma unroll
  for (int half = 0; half < 2; ++half) {
    const int64_t row = row0 + g + 8 * half;
    if (row >= N) continue;
    const float b = bias != nullptr ? to_float(bias[row]) : 0.f;
#pragma unroll
    for (int j = 0; j < 2; ++j) {
      const int n = 2 * q + j;
      if (n < M) y[n * ldy + row] = from_float<T>(c[2 * half + j] + b);
    }
  }
}

}  // namespace gemv_detail

// Warps per CTA for an N x K product: split K until the grid holds ~32 warps per SM or each warp is down to one
// or two spans (more warps would only add partial tiles to sum).
inline int gemv_warps(int64_t N, int64_t K, int num_sms) {
  const int64_t tiles = (N + gemv_detail::kTileRows - 1) / gemv_detail::kTileRows;
  const int64_t spans = (K + gemv_detail::kSpan - 1) / gemv_detail::kSpan;
  const int64_t target = static_cast<int64_t>(std::max(num_sms, 1)) * 32;
  int warps = 1;
  while (warps < gemv_detail::kMaxWarps && tiles * warps < target && spans >= 2 * warps) warps *= 2;
  return warps;
}

namespace gemv_detail {
template <typename T, bool SILU>
cudaError_t launch(T* y, const T* x, const T* w, const T* bias, int64_t M, int64_t N, int64_t K, int64_t ldx,
                   int64_t ldy, int num_sms, cudaStream_t stream) {
  if (M == 0 || N == 0) return cudaSuccess;
  if (M < 0 || M > kGemvMaxRows || K <= 0 || K % 8 != 0 || ldx % 8 != 0 || ldx < (SILU ? 2 * K : K) || ldy < N ||
      !aligned_to(x, 16) || !aligned_to(w, 16))
    return cudaErrorInvalidValue;
  const int64_t tiles = (N + kTileRows - 1) / kTileRows;
  if (tiles > 0x7fffffff) return cudaErrorInvalidValue;
  const int warps = gemv_warps(N, K, num_sms);
  const size_t smem = warps > 1 ? static_cast<size_t>(warps) * 32 * 4 * sizeof(float) : 0;
  return pdl_launch(gemv_kernel<T, SILU>, dim3(static_cast<unsigned>(tiles)), dim3(warps * 32), smem, stream, y, x, w,
                    bias, static_cast<int>(M), N, K, ldx, ldy);
}
}  // namespace gemv_detail

// y = x W^T (+ bias) for 1 <= M <= 8 rows of x. T is __half or __nv_bfloat16; fp32 accumulation, one rounding.
// Needs K % 8 == 0, ldx % 8 == 0 and 16-byte aligned x and w (every 16-byte load stays inside a row).
// num_sms: the device's multiprocessor count (sizes the split of K).
template <typename T>
cudaError_t gemv(T* y,           // [M, N], row stride ldy (elements)
                 const T* x,     // [M, K], row stride ldx (elements)
                 const T* w,     // [N, K], contiguous
                 const T* bias,  // [N] or nullptr
                 int64_t M, int64_t N, int64_t K, int64_t ldx, int64_t ldy, int num_sms, cudaStream_t stream) {
  return gemv_detail::launch<T, false>(y, x, w, bias, M, N, K, ldx, ldy, num_sms, stream);
}

// y = silu_and_mul(gate_up) W^T (+ bias): the MLP's down projection with SiLU-and-mul folded into its input
// loads (bitwise the same activation as silu_and_mul, without its launch and its [M, K] round trip).
template <typename T>
cudaError_t gemv_silu_and_mul(T* y,              // [M, N], row stride ldy
                              const T* gate_up,  // [M, 2K]: gate | up, row stride ldx
                              const T* w,        // [N, K], contiguous
                              const T* bias,     // [N] or nullptr
                              int64_t M, int64_t N, int64_t K, int64_t ldx, int64_t ldy, int num_sms,
                              cudaStream_t stream) {
  return gemv_detail::launch<T, true>(y, gate_up, w, bias, M, N, K, ldx, ldy, num_sms, stream);
}

}  // namespace infinilm::cuda
