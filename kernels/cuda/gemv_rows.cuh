// CUDA GEMV for 1-4 rows on CUDA cores: y[M, N] = x[M, K] @ W[N, K]^T (+ b), one warp per output row at a time.
//
// Why a second skinny kernel beside the MMA one (gemv.cuh): at M = 1 to 4 a weight element costs M FMAs and one
// conversion, which CUDA cores keep up with (~1.2 16-byte chunks per SM clock arrive at 4.8 TB/s; a warp turns
// a chunk into 8M FMAs), and the row-per-warp layout streams each weight row front to back: 32 lanes read 512
// contiguous bytes per load instruction, U loads in flight per lane, no partial tiles to sum across warps.
//
// x is staged once per CTA in shared memory (M x K of T; with SILU the activation silu(gate) * up is computed
// there, rounded to T exactly as silu_and_mul writes it), so the activation of the down projection is computed
// once per CTA instead of once per weight tile. The grid is capped near the resident CTA count and warps loop
// over rows, so the staging cost is paid a few times per SM, not per row.
#pragma once

#include "kernels/cuda/common.cuh"
#include "kernels/cuda/gemv.cuh"
#include "kernels/cuda/pdl.cuh"

namespace infinilm::cuda {

constexpr int kGemvRowsMaxRows = 4;  // x rows this kernel serves; more go to the MMA kernel

namespace gemv_rows_detail {

constexpr int kWarps = 8;  // warps per CTA
constexpr int kU = 8;      // 16-byte weight chunks per lane in flight

// A lane's share of one batch: chunks c0 + u * 32 + lane of a weight row (zeros past the row's end).
template <typename T>
__device__ __forceinline__ void load_batch(uint4 (&a)[kU], const T* __restrict__ wr, int64_t c0, int64_t chunks,
                                           int lane) {
#pragma unroll
  for (int u = 0; u < kU; ++u) {
    const int64_t c = c0 + u * 32 + lane;
    a[u] = c < chunks ? gemv_detail::ldg16(wr + c * 8) : make_uint4(0u, 0u, 0u, 0u);
  }
}

// The warp's work is a stream of (row, batch) items, software-pipelined: the next item's weights are in flight
// while this one is multiplied, across row boundaries too. The first weights are requested before x is staged,
// so the staging's L2 round trip overlaps the first HBM one.
template <typename T, int M, bool SILU>
__global__ void __launch_bounds__(kWarps * 32) gemv_rows_kernel(T* __restrict__ y, const T* __restrict__ x,
                                                                const T* __restrict__ w, const T* __restrict__ bias,
                                                                int64_t N, int64_t K, int64_t ldx, int64_t ldy) {
  extern __shared__ uint4 gemv_rows_x[];  // [M][K / 8] chunks of x (or of the activation)
  const int64_t chunks = K / 8, per_batch = 32 * kU;
  const int64_t batches = (chunks + per_batch - 1) / per_batch;
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * kWarps;
  int64_t row = static_cast<int64_t>(blockIdx.x) * kWarps + warp, bi = 0;
  uint4 cur[kU];
  if (row < N) load_batch(cur, w + row * K, 0, chunks, lane);
  pdl_wait();  // x is the previous kernel's output (weights are not)
  for (int64_t i = threadIdx.x; i < M * chunks; i += blockDim.x) {
    const int m = static_cast<int>(i / chunks);
    const int64_t c = i - m * chunks;
    gemv_rows_x[i] = gemv_detail::load_x<T, SILU>(x + m * ldx + c * 8, K);
  }
  __syncthreads();
  float acc[M];
#pragma unroll
  for (int m = 0; m < M; ++m) acc[m] = 0.f;
  while (row < N) {
    int64_t nrow = row, nbi = bi + 1;
    if (nbi == batches) {
      nbi = 0;
      nrow += stride;
    }
    uint4 nxt[kU];
    if (nrow < N) load_batch(nxt, w + nrow * K, nbi * per_batch, chunks, lane);
#pragma unroll
    for (int u = 0; u < kU; ++u) {
      const int64_t c = bi * per_batch + u * 32 + lane;
      if (c >= chunks) continue;
      T wv[8];
      memcpy(wv, &cur[u], 16);
      float wf[8];
#pragma unroll
      for (int e = 0; e < 8; ++e) wf[e] = to_float(wv[e]);
#pragma unroll
      for (int m = 0; m < M; ++m) {
        const uint4 xv4 = gemv_rows_x[m * chunks + c];
        T xv[8];
        memcpy(xv, &xv4, 16);
#pragma unroll
        for (int e = 0; e < 8; ++e) acc[m] = fmaf(wf[e], to_float(xv[e]), acc[m]);
      }
    }
    if (bi == batches - 1) {  // the row is done: sum the lanes, store, start the next row from zero
#pragma unroll
      for (int m = 0; m < M; ++m) {
#pragma unroll
        for (int off = 16; off > 0; off /= 2) acc[m] += __shfl_xor_sync(0xffffffffu, acc[m], off);
      }
      if (lane == 0) {
        const float b = bias != nullptr ? to_float(bias[row]) : 0.f;
#pragma unroll
        for (int m = 0; m < M; ++m) y[m * ldy + row] = from_float<T>(acc[m] + b);
      }
#pragma unroll
      for (int m = 0; m < M; ++m) acc[m] = 0.f;
    }
#pragma unroll
    for (int u = 0; u < kU; ++u) cur[u] = nxt[u];
    row = nrow;
    bi = nbi;
  }
}

template <typename T, int M, bool SILU>
cudaError_t launch_m(T* y, const T* x, const T* w, const T* bias, int64_t N, int64_t K, int64_t ldx, int64_t ldy,
                     int num_sms, cudaStream_t stream) {
  const size_t smem = static_cast<size_t>(M) * K * sizeof(T);
  auto kernel = gemv_rows_kernel<T, M, SILU>;
  if (smem > 48 * 1024) {
    const cudaError_t e = cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                               static_cast<int>(smem));
    if (e != cudaSuccess) return e;
  }
  // A persistent grid: as many CTAs as fit on the device at once (registers and shared memory decide), warps
  // looping over rows.
  int per_sm = 0;
  const cudaError_t e = cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, kernel, kWarps * 32, smem);
  if (e != cudaSuccess) return e;
  const int64_t want = (N + kWarps - 1) / kWarps;
  const int64_t cap = static_cast<int64_t>(std::max(num_sms, 1)) * std::max(per_sm, 1);
  const unsigned grid = static_cast<unsigned>(std::min(want, cap));
  return pdl_launch(kernel, dim3(grid), dim3(kWarps * 32), smem, stream, y, x, w, bias, N, K, ldx, ldy);
}

template <typename T, bool SILU>
cudaError_t launch(T* y, const T* x, const T* w, const T* bias, int64_t M, int64_t N, int64_t K, int64_t ldx,
                   int64_t ldy, int num_sms, cudaStream_t stream) {
  if (M == 0 || N == 0) return cudaSuccess;
  if (M < 0 || M > kGemvRowsMaxRows || K <= 0 || K % 8 != 0 || ldx % 8 != 0 || ldx < (SILU ? 2 * K : K) ||
      ldy < N || !aligned_to(x, 16) || !aligned_to(w, 16) || static_cast<int64_t>(M) * K * sizeof(T) > 200 * 1024)
    return cudaErrorInvalidValue;
  switch (M) {
    case 1: return launch_m<T, 1, SILU>(y, x, w, bias, N, K, ldx, ldy, num_sms, stream);
    case 2: return launch_m<T, 2, SILU>(y, x, w, bias, N, K, ldx, ldy, num_sms, stream);
    case 3: return launch_m<T, 3, SILU>(y, x, w, bias, N, K, ldx, ldy, num_sms, stream);
    default: return launch_m<T, 4, SILU>(y, x, w, bias, N, K, ldx, ldy, num_sms, stream);
  }
}

}  // namespace gemv_rows_detail

// Whether gemv_rows takes an M x K input (the shared-memory copy of x must fit).
inline bool gemv_rows_fits(int64_t M, int64_t K, int elem_bytes) {
  return M >= 1 && M <= kGemvRowsMaxRows && M * K * elem_bytes <= 200 * 1024;
}

// y = x W^T (+ bias), 1 <= M <= 4, same contract as gemv() (K % 8 == 0, ldx % 8 == 0, 16-byte aligned x, w).
template <typename T>
cudaError_t gemv_rows(T* y, const T* x, const T* w, const T* bias, int64_t M, int64_t N, int64_t K, int64_t ldx,
                      int64_t ldy, int num_sms, cudaStream_t stream) {
  return gemv_rows_detail::launch<T, false>(y, x, w, bias, M, N, K, ldx, ldy, num_sms, stream);
}

// y = silu_and_mul(gate_up) W^T (+ bias), gate_up [M, 2K]; bitwise the activation silu_and_mul writes.
template <typename T>
cudaError_t gemv_rows_silu_and_mul(T* y, const T* gate_up, const T* w, const T* bias, int64_t M, int64_t N,
                                   int64_t K, int64_t ldx, int64_t ldy, int num_sms, cudaStream_t stream) {
  return gemv_rows_detail::launch<T, true>(y, gate_up, w, bias, M, N, K, ldx, ldy, num_sms, stream);
}

}  // namespace infinilm::cuda
