// What Debian's HIP 5.2 lacks of the CUDA device API the hipified kernels use (newer HIP has these natively).
#pragma once

#include <hip/hip_bfloat16.h>
#include <hip/hip_fp16.h>
#include <hip/hip_runtime.h>

#if HIP_VERSION < 60200000
// The *_sync shuffles (HIP >= 6.2) act on the whole wavefront here; the lane mask is always the full one.
#define __shfl_sync(mask, ...) __shfl(__VA_ARGS__)
#define __shfl_xor_sync(mask, ...) __shfl_xor(__VA_ARGS__)
#define __shfl_up_sync(mask, ...) __shfl_up(__VA_ARGS__)
#define __shfl_down_sync(mask, ...) __shfl_down(__VA_ARGS__)
#define __syncwarp(...) __builtin_amdgcn_wave_barrier()
#define __ballot_sync(mask, ...) __ballot(__VA_ARGS__)
#endif

// CUDA's runtime API takes a kernel by its own type; HIP 5.2 only by const void*.
template <typename F>
inline hipError_t hipFuncSetAttribute(F* func, hipFuncAttribute attr, int value) {
  return hipFuncSetAttribute(reinterpret_cast<const void*>(func), attr, value);
}

__host__ __device__ inline hip_bfloat16 __float2bfloat16_rn(float f) { return hip_bfloat16(f); }
__host__ __device__ inline float __bfloat162float(hip_bfloat16 b) { return static_cast<float>(b); }
