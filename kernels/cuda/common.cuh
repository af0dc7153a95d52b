// Torch-free CUDA helpers: float/__half/__nv_bfloat16 conversions, 16-byte packs, warp/block reductions.
//
// Written so that torch's hipify pass can translate it: no inline PTX, warp size from one constant,
// only intrinsics HIP also provides (__shfl_xor_sync, __ldg, __expf).
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>

namespace infinilm::cuda {

#if defined(__HIP_PLATFORM_AMD__)
#if defined(__GFX9__)
constexpr int kWarpSize = 64;
#else
constexpr int kWarpSize = 32;
#endif
constexpr unsigned long long kFullMask = ~0ull;  // HIP's *_sync intrinsics take a 64-bit lane mask
#else
constexpr int kWarpSize = 32;
constexpr unsigned kFullMask = 0xffffffffu;
#endif

// ---- scalar conversions: all arithmetic is in float --------------------------------------------------
__device__ __forceinline__ float to_float(float x) { return x; }
__device__ __forceinline__ float to_float(__half x) { return __half2float(x); }
__device__ __forceinline__ float to_float(__nv_bfloat16 x) { return __bfloat162float(x); }

template <typename T> __device__ __forceinline__ T from_float(float f);
template <> __device__ __forceinline__ float from_float<float>(float f) { return f; }
template <> __device__ __forceinline__ __half from_float<__half>(float f) { return __float2half_rn(f); }
template <> __device__ __forceinline__ __nv_bfloat16 from_float<__nv_bfloat16>(float f) {
  return __float2bfloat16_rn(f);
}

// ---- 16-byte packs ------------------------------------------------------------------------------------
// N elements of T, aligned to their size (capped at 16 bytes) so a load is one vector instruction.
template <typename T, int N>
struct alignas(sizeof(T) * N >= 16 ? 16 : sizeof(T) * N) Pack {
  T v[N];
};

// Elements per 16-byte access.
template <typename T>
constexpr int kVec = 16 / sizeof(T);

template <typename T, int N>
__device__ __forceinline__ Pack<T, N> load_pack(const T* p) {
  return *reinterpret_cast<const Pack<T, N>*>(p);
}

// Read-only data path (__ldg): for inputs no thread of the launch writes.
template <typename T, int N>
__device__ __forceinline__ Pack<T, N> load_pack_ro(const T* p) {
  constexpr int bytes = sizeof(T) * N;
  Pack<T, N> out;
  if constexpr (bytes == 16) {
    const uint4 u = __ldg(reinterpret_cast<const uint4*>(p));
    memcpy(&out, &u, 16);
  } else if constexpr (bytes == 8) {
    const uint2 u = __ldg(reinterpret_cast<const uint2*>(p));
    memcpy(&out, &u, 8);
  } else if constexpr (bytes == 4) {
    const unsigned int u = __ldg(reinterpret_cast<const unsigned int*>(p));
    memcpy(&out, &u, 4);
  } else {
    out = load_pack<T, N>(p);
  }
  return out;
}

template <typename T, int N>
__device__ __forceinline__ void store_pack(T* p, const Pack<T, N>& v) {
  *reinterpret_cast<Pack<T, N>*>(p) = v;
}

template <typename T, int N>
__device__ __forceinline__ void pack_to_float(const Pack<T, N>& in, float (&out)[N]) {
#pragma unroll
  for (int i = 0; i < N; ++i) out[i] = to_float(in.v[i]);
}

template <typename T, int N>
__device__ __forceinline__ Pack<T, N> pack_from_float(const float (&in)[N]) {
  Pack<T, N> o;
#pragma unroll
  for (int i = 0; i < N; ++i) o.v[i] = from_float<T>(in[i]);
  return o;
}

// True when every pointer is aligned to `bytes` (host side: picks the vector path).
inline bool aligned_to(const void* p, int bytes) { return reinterpret_cast<uintptr_t>(p) % bytes == 0; }

// ---- reductions -----------------------------------------------------------------------------------------
template <typename T>
__device__ __forceinline__ T warp_sum(T v) {
#pragma unroll
  for (int o = kWarpSize / 2; o > 0; o >>= 1) v += __shfl_xor_sync(kFullMask, v, o);
  return v;
}

template <typename T>
__device__ __forceinline__ T warp_max(T v) {
#pragma unroll
  for (int o = kWarpSize / 2; o > 0; o >>= 1) v = max(v, __shfl_xor_sync(kFullMask, v, o));
  return v;
}

// Sum over the block; every thread gets the result. `scratch` holds kWarpSize values; blockDim.x must be a
// multiple of the warp size. The trailing barrier lets callers reuse scratch right away.
template <typename T>
__device__ __forceinline__ T block_sum(T v, T* scratch) {
  const int lane = threadIdx.x % kWarpSize, warp = threadIdx.x / kWarpSize;
  const int warps = blockDim.x / kWarpSize;
  v = warp_sum(v);
  if (lane == 0) scratch[warp] = v;
  __syncthreads();
  v = lane < warps ? scratch[lane] : T(0);
  v = warp_sum(v);
  __syncthreads();
  return v;
}

template <typename T>
__device__ __forceinline__ T block_max(T v, T* scratch, T lowest) {
  const int lane = threadIdx.x % kWarpSize, warp = threadIdx.x / kWarpSize;
  const int warps = blockDim.x / kWarpSize;
  v = warp_max(v);
  if (lane == 0) scratch[warp] = v;
  __syncthreads();
  v = lane < warps ? scratch[lane] : lowest;
  v = warp_max(v);
  __syncthreads();
  return v;
}

// Exclusive prefix sum over the block in thread order; `total` gets the block-wide sum. `scratch` holds
// kWarpSize values; blockDim.x must be a multiple of the warp size. Ends with a barrier (scratch reusable).
template <typename T>
__device__ __forceinline__ T block_exclusive_scan(T v, T* scratch, T& total) {
  const int lane = threadIdx.x % kWarpSize, warp = threadIdx.x / kWarpSize;
  const int warps = blockDim.x / kWarpSize;
  T incl = v;
#pragma unroll
  for (int o = 1; o < kWarpSize; o <<= 1) {
    const T t = __shfl_up_sync(kFullMask, incl, o);
    if (lane >= o) incl += t;
  }
  if (lane == kWarpSize - 1) scratch[warp] = incl;
  __syncthreads();
  if (warp == 0) {
    T w = lane < warps ? scratch[lane] : T(0);
#pragma unroll
    for (int o = 1; o < kWarpSize; o <<= 1) {
      const T t = __shfl_up_sync(kFullMask, w, o);
      if (lane >= o) w += t;
    }
    scratch[lane] = w;  // inclusive over warps
  }
  __syncthreads();
  const T before = warp > 0 ? scratch[warp - 1] : T(0);
  total = scratch[warps - 1];
  __syncthreads();
  return before + incl - v;
}

inline int ceil_div(int64_t a, int64_t b) { return static_cast<int>((a + b - 1) / b); }

}  // namespace infinilm::cuda
