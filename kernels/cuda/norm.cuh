// CUDA RMSNorm and fused residual-add + RMSNorm on raw pointers (fp32 accumulation), one block per row.
//
// Napkin math: rms_norm moves 2*T*H elements, the fused form 4*T*H (read x and residual, write both);
// bf16 T=4096 H=4096 fused is 134 MB, 44 us at 3 TB/s. To stay at one pass, each thread keeps its
// ITEMS 16-byte packs of the row in registers between the sum of squares and the scaling; rows too long
// for that (H > 2048 packs: 16384 bf16, 8192 fp32) take a two-pass loop whose second read mostly hits L2.
#pragma once

#include "kernels/cuda/common.cuh"
#include "kernels/cuda/pdl.cuh"

namespace infinilm::cuda {

// FUSED: residual += in (rounded to T), then out = rms_norm(residual). Otherwise out = rms_norm(in).
// The row lives in registers: thread t holds packs t, t + blockDim.x, ... (ITEMS of them).
template <typename T, int VEC, int ITEMS, bool FUSED>
__global__ void rms_norm_kernel(T* out,                        // [rows, H], row stride out_stride
                                const T* in,                    // [rows, H], row stride in_stride (may alias out)
                                T* __restrict__ residual,       // [rows, H], row stride res_stride (FUSED only)
                                const T* __restrict__ weight,   // [H]
                                int H, int64_t in_stride, int64_t out_stride, int64_t res_stride, float eps) {
  pdl_trigger();  // a product launched after this norm may start streaming its weights now
  __shared__ float scratch[kWarpSize];
  const int64_t row = blockIdx.x;
  const int npack = H / VEC;
  const T* x = in + row * in_stride;
  Pack<T, VEC> w[ITEMS];
  // Issue every load of the row before the first use, so ITEMS (x2 when fused) accesses are in flight.
  Pack<T, VEC> a[ITEMS], r[ITEMS];
#pragma unroll
  for (int k = 0; k < ITEMS; ++k) {
    const int j = threadIdx.x + k * blockDim.x;
    if (j < npack) {
      a[k] = load_pack<T, VEC>(x + j * VEC);
      if constexpr (FUSED) r[k] = load_pack<T, VEC>(residual + row * res_stride + j * VEC);
      w[k] = load_pack_ro<T, VEC>(weight + j * VEC);
    }
  }
  float ss = 0.f;
#pragma unroll
  for (int k = 0; k < ITEMS; ++k) {
    const int j = threadIdx.x + k * blockDim.x;
    if (j < npack) {
#pragma unroll
      for (int i = 0; i < VEC; ++i) {
        float s = to_float(a[k].v[i]);
        if constexpr (FUSED) {
          const T sum = from_float<T>(s + to_float(r[k].v[i]));
          r[k].v[i] = sum;
          s = to_float(sum);
        }
        ss += s * s;
      }
      if constexpr (FUSED) store_pack(residual + row * res_stride + j * VEC, r[k]);
    }
  }
  ss = block_sum(ss, scratch);
  const float inv = rsqrtf(ss / static_cast<float>(H) + eps);
  T* y = out + row * out_stride;
#pragma unroll
  for (int k = 0; k < ITEMS; ++k) {
    const int j = threadIdx.x + k * blockDim.x;
    if (j < npack) {
      // Registers hold the row as T (half the space of float); T -> float is exact.
      const Pack<T, VEC>& src = FUSED ? r[k] : a[k];
      float o[VEC];
#pragma unroll
      for (int i = 0; i < VEC; ++i) o[i] = to_float(src.v[i]) * inv * to_float(w[k].v[i]);
      store_pack(y + j * VEC, pack_from_float<T, VEC>(o));
    }
  }
}

// Any H: pass 1 sums squares (and writes the residual), pass 2 re-reads the row and scales it.
template <typename T, bool FUSED>
__global__ void rms_norm_loop_kernel(T* out, const T* in, T* __restrict__ residual,
                                     const T* __restrict__ weight, int H, int64_t in_stride, int64_t out_stride,
                                     int64_t res_stride, float eps) {
  pdl_trigger();
  __shared__ float scratch[kWarpSize];
  const int64_t row = blockIdx.x;
  const T* x = in + row * in_stride;
  T* res = FUSED ? residual + row * res_stride : nullptr;
  float ss = 0.f;
  for (int i = threadIdx.x; i < H; i += blockDim.x) {
    float s = to_float(x[i]);
    if constexpr (FUSED) {
      const T sum = from_float<T>(s + to_float(res[i]));
      res[i] = sum;
      s = to_float(sum);
    }
    ss += s * s;
  }
  ss = block_sum(ss, scratch);
  const float inv = rsqrtf(ss / static_cast<float>(H) + eps);
  const T* src = FUSED ? res : x;
  T* y = out + row * out_stride;
  for (int i = threadIdx.x; i < H; i += blockDim.x) y[i] = from_float<T>(to_float(src[i]) * inv * to_float(weight[i]));
}

namespace detail {

template <typename T, int VEC, bool FUSED>
cudaError_t launch_rms_norm_vec(T* out, const T* in, T* residual, const T* weight, int64_t rows, int H,
                                int64_t in_stride, int64_t out_stride, int64_t res_stride, float eps,
                                cudaStream_t stream) {
  const int npack = H / VEC;
  // 128-256 threads per row with 1-4 packs each (8 only for very long rows): several loads in flight per
  // thread, small blocks so several rows share an SM, and registers low enough (< ~90) for occupancy.
  int items = 1;
  while (items < 8 && ceil_div(npack, items) > (items >= 4 ? 256 : 128)) items *= 2;
  const int threads = ceil_div(ceil_div(npack, items), kWarpSize) * kWarpSize;
  if (threads > 1024) return cudaErrorInvalidValue;
  const dim3 grid(static_cast<unsigned>(rows));
#define INFINILM_RMS_CASE(I)                                                                                  \
  case I:                                                                                                     \
    rms_norm_kernel<T, VEC, I, FUSED>                                                                         \
        <<<grid, threads, 0, stream>>>(out, in, residual, weight, H, in_stride, out_stride, res_stride, eps); \
    break;
  switch (items) {
    INFINILM_RMS_CASE(1)
    INFINILM_RMS_CASE(2)
    INFINILM_RMS_CASE(4)
    INFINILM_RMS_CASE(8)
  }
#undef INFINILM_RMS_CASE
  return cudaGetLastError();
}

template <typename T, bool FUSED>
cudaError_t launch_rms_norm(T* out, const T* in, T* residual, const T* weight, int64_t rows, int64_t H,
                            int64_t in_stride, int64_t out_stride, int64_t res_stride, float eps, cudaStream_t stream) {
  if (rows == 0 || H == 0) return cudaSuccess;
  if (rows > 0x7fffffff || H > 0x7fffffff) return cudaErrorInvalidValue;
  constexpr int V = kVec<T>;
  const bool vec_ok = H % V == 0 && in_stride % V == 0 && out_stride % V == 0 && (!FUSED || res_stride % V == 0) &&
                      aligned_to(out, 16) && aligned_to(in, 16) && aligned_to(weight, 16) &&
                      (!FUSED || aligned_to(residual, 16));
  const int h = static_cast<int>(H);
  // One pass while a row is at most 2048 packs (<= 256 threads of <= 8 packs: even the 200-register
  // variants stay far inside the register file); longer rows take the two-pass loop.
  if (vec_ok && H / V <= 2048)
    return launch_rms_norm_vec<T, V, FUSED>(out, in, residual, weight, rows, h, in_stride, out_stride, res_stride,
                                            eps, stream);
  if (H <= 2048)
    return launch_rms_norm_vec<T, 1, FUSED>(out, in, residual, weight, rows, h, in_stride, out_stride, res_stride,
                                            eps, stream);
  rms_norm_loop_kernel<T, FUSED><<<static_cast<unsigned>(rows), 1024, 0, stream>>>(
      out, in, residual, weight, h, in_stride, out_stride, res_stride, eps);
  return cudaGetLastError();
}

}  // namespace detail

// out[r, :] = in[r, :] * rsqrt(mean(in[r, :]^2) + eps) * weight[:]
template <typename T>
cudaError_t rms_norm(T* out,           // [rows, hidden], row stride out_stride
                     const T* in,      // [rows, hidden], row stride in_stride
                     const T* weight,  // [hidden]
                     int64_t rows, int64_t hidden, int64_t in_stride, int64_t out_stride, float eps,
                     cudaStream_t stream) {
  return detail::launch_rms_norm<T, false>(out, in, nullptr, weight, rows, hidden, in_stride, out_stride, 0, eps,
                                           stream);
}

// residual[r, :] += x[r, :] (rounded to T), then x[r, :] = rms_norm(residual[r, :]).
template <typename T>
cudaError_t fused_add_rms_norm(T* x,            // [rows, hidden], row stride x_stride; overwritten with the norm
                               T* residual,     // [rows, hidden], row stride res_stride; overwritten with the sum
                               const T* weight,  // [hidden]
                               int64_t rows, int64_t hidden, int64_t x_stride, int64_t res_stride, float eps,
                               cudaStream_t stream) {
  return detail::launch_rms_norm<T, true>(x, x, residual, weight, rows, hidden, x_stride, x_stride, res_stride, eps,
                                          stream);
}

}  // namespace infinilm::cuda
