// Torch-free helpers shared by the paged-attention kernels: 16-byte vector conversion, index loads,
// and portable wrappers for cp.async, ldmatrix and the m16n8k16 tensor-core MMA (inline PTX on sm_80+,
// a shuffle-based emulation elsewhere, so that a hipified build still compiles and runs correctly).
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>
#include <type_traits>

#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800 && !defined(INFINILM_PORTABLE_MMA)
#define INFINILM_ATTN_PTX 1
#else
#define INFINILM_ATTN_PTX 0
#endif

namespace infinilm {
namespace cuda {
namespace attn {


// Index tensors may be int32 or int64; the flag is uniform across the grid, so the branch is free.
__device__ __forceinline__ int64_t load_index(const void* p, bool is64, int64_t i) {
  return is64 ? static_cast<const int64_t*>(p)[i] : static_cast<int64_t>(static_cast<const int32_t*>(p)[i]);
}

// ---- 16-byte vectors of T as floats ---------------------------------------------------------------
template <typename T>
struct Vec {
  static constexpr int kN = 16 / sizeof(T);
};

__device__ __forceinline__ void unpack(const uint4& v, float (&f)[4]) {
  f[0] = __uint_as_float(v.x);
  f[1] = __uint_as_float(v.y);
  f[2] = __uint_as_float(v.z);
  f[3] = __uint_as_float(v.w);
}

__device__ __forceinline__ void unpack_bf16x2(uint32_t u, float& lo, float& hi) {
  lo = __uint_as_float(u << 16);  // bf16 is the top half of a float
  hi = __uint_as_float(u & 0xffff0000u);
}

__device__ __forceinline__ void unpack_half2(uint32_t u, float& lo, float& hi) {
  __half2 h;
  *reinterpret_cast<uint32_t*>(&h) = u;
  const float2 f = __half22float2(h);
  lo = f.x;
  hi = f.y;
}

template <typename T>
__device__ __forceinline__ void unpack(const uint4& v, float (&f)[8]) {
  const uint32_t w[4] = {v.x, v.y, v.z, v.w};
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    if constexpr (sizeof(T) == 2 && std::is_same<T, __nv_bfloat16>::value) {
      unpack_bf16x2(w[i], f[2 * i], f[2 * i + 1]);
    } else {
      unpack_half2(w[i], f[2 * i], f[2 * i + 1]);
    }
  }
}

template <typename T>
__device__ __forceinline__ void to_floats(const uint4& v, float (&f)[Vec<T>::kN]) {
  if constexpr (sizeof(T) == 4) {
    unpack(v, f);
  } else {
    unpack<T>(v, f);
  }
}

template <typename T>
__device__ __forceinline__ T from_float(float x);
template <>
__device__ __forceinline__ float from_float<float>(float x) { return x; }
template <>
__device__ __forceinline__ __half from_float<__half>(float x) { return __float2half_rn(x); }
template <>
__device__ __forceinline__ __nv_bfloat16 from_float<__nv_bfloat16>(float x) { return __float2bfloat16_rn(x); }

// Two floats as one packed 16-bit pair (low half = first).
template <typename T>
__device__ __forceinline__ uint32_t pack2(float lo, float hi) {
  T a = from_float<T>(lo), b = from_float<T>(hi);
  const uint16_t ua = *reinterpret_cast<uint16_t*>(&a), ub = *reinterpret_cast<uint16_t*>(&b);
  return static_cast<uint32_t>(ua) | (static_cast<uint32_t>(ub) << 16);
}

template <typename T>
__device__ __forceinline__ float half_to_float(uint16_t u) {
  if constexpr (std::is_same<T, __nv_bfloat16>::value) {
    return __uint_as_float(static_cast<uint32_t>(u) << 16);
  } else {
    __half h;
    *reinterpret_cast<uint16_t*>(&h) = u;
    return __half2float(h);
  }
}

// ---- asynchronous global -> shared copies -------------------------------------------------------
__device__ __forceinline__ void cp_async16(void* smem, const void* gmem) {
#if INFINILM_ATTN_PTX
  const unsigned s = static_cast<unsigned>(__cvta_generic_to_shared(smem));
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16;\n" ::"r"(s), "l"(gmem));
#else
  *static_cast<uint4*>(smem) = *static_cast<const uint4*>(gmem);
#endif
}

__device__ __forceinline__ void cp_async_commit() {
#if INFINILM_ATTN_PTX
  asm volatile("cp.async.commit_group;\n" ::);
#endif
}

// Wait until at most N of this thread's committed copy groups are still in flight.
template <int N>
__device__ __forceinline__ void cp_async_wait() {
#if INFINILM_ATTN_PTX
  asm volatile("cp.async.wait_group %0;\n" ::"n"(N));
#endif
}

__device__ __forceinline__ void cp_async_wait_all() {
#if INFINILM_ATTN_PTX
  asm volatile("cp.async.wait_group 0;\n" ::);
#endif
}

// ---- ldmatrix: four 8x8 matrices of 16-bit values; lane l gives the row address of matrix l/8 ----
__device__ __forceinline__ void ldmatrix_x4(uint32_t (&r)[4], const void* row_addr) {
#if INFINILM_ATTN_PTX
  const unsigned s = static_cast<unsigned>(__cvta_generic_to_shared(row_addr));
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(s));
#else
  // Lane l receives row l/4, elements 2*(l%4) and 2*(l%4)+1 of each matrix.
  const int lane = threadIdx.x & 31;
  const uintptr_t mine = reinterpret_cast<uintptr_t>(row_addr);
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    const uintptr_t row = __shfl_sync(0xffffffffu, mine, 8 * i + lane / 4);
    r[i] = *reinterpret_cast<const uint32_t*>(row + 4 * (lane % 4));
  }
#endif
}

__device__ __forceinline__ void ldmatrix_x4_trans(uint32_t (&r)[4], const void* row_addr) {
#if INFINILM_ATTN_PTX
  const unsigned s = static_cast<unsigned>(__cvta_generic_to_shared(row_addr));
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(s));
#else
  // Transposed: lane l receives column l/4 of rows 2*(l%4) and 2*(l%4)+1 of each matrix.
  const int lane = threadIdx.x & 31;
  const uintptr_t mine = reinterpret_cast<uintptr_t>(row_addr);
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    const uintptr_t r0 = __shfl_sync(0xffffffffu, mine, 8 * i + 2 * (lane % 4));
    const uintptr_t r1 = __shfl_sync(0xffffffffu, mine, 8 * i + 2 * (lane % 4) + 1);
    const uint32_t lo = *reinterpret_cast<const uint16_t*>(r0 + 2 * (lane / 4));
    const uint32_t hi = *reinterpret_cast<const uint16_t*>(r1 + 2 * (lane / 4));
    r[i] = lo | (hi << 16);
  }
#endif
}

// ---- D += A(16x16, row) * B(16x8, col), fp32 accumulators; T is __half or __nv_bfloat16 -----------
// Fragments (g = lane/4, t = lane%4): a[0]=(g, 2t..), a[1]=(g+8, 2t..), a[2]=(g, 2t+8..), a[3]=(g+8, 2t+8..);
// b[0]=(k 2t.., n g), b[1]=(k 2t+8.., n g); c[0..1]=(g, 2t..), c[2..3]=(g+8, 2t..).
template <typename T>
__device__ __forceinline__ void mma_16x8x16(float (&c)[4], const uint32_t (&a)[4], const uint32_t (&b)[2]) {
#if INFINILM_ATTN_PTX
  if constexpr (std::is_same<T, __nv_bfloat16>::value) {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
        "{%0,%1,%2,%3};\n"
        : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
  } else {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
        "{%0,%1,%2,%3};\n"
        : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
  }
#else
  // Emulation: gather A's rows and B's columns from the lanes that hold them.
  const int lane = threadIdx.x & 31, g = lane / 4, t = lane % 4;
#pragma unroll
  for (int kp = 0; kp < 8; ++kp) {  // k pairs (2kp, 2kp+1) share one 32-bit register
    const int src_t = kp % 4, hi8 = kp / 4;
    const uint32_t a_lo = __shfl_sync(0xffffffffu, a[hi8 * 2 + 0], g * 4 + src_t);  // row g
    const uint32_t a_hi = __shfl_sync(0xffffffffu, a[hi8 * 2 + 1], g * 4 + src_t);  // row g+8
    const uint32_t b0 = __shfl_sync(0xffffffffu, b[hi8], (2 * t) * 4 + src_t);      // column 2t
    const uint32_t b1 = __shfl_sync(0xffffffffu, b[hi8], (2 * t + 1) * 4 + src_t);  // column 2t+1
    const float al0 = half_to_float<T>(a_lo & 0xffff), al1 = half_to_float<T>(a_lo >> 16);
    const float ah0 = half_to_float<T>(a_hi & 0xffff), ah1 = half_to_float<T>(a_hi >> 16);
    const float b00 = half_to_float<T>(b0 & 0xffff), b01 = half_to_float<T>(b0 >> 16);
    const float b10 = half_to_float<T>(b1 & 0xffff), b11 = half_to_float<T>(b1 >> 16);
    c[0] += al0 * b00 + al1 * b01;
    c[1] += al0 * b10 + al1 * b11;
    c[2] += ah0 * b00 + ah1 * b01;
    c[3] += ah0 * b10 + ah1 * b11;
  }
#endif
}

}  // namespace attn
}  // namespace cuda
}  // namespace infinilm
