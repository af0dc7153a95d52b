// Hopper (sm_90a) warpgroup MMA helpers: shared-memory matrix descriptors for the 128-byte swizzled layouts,
// m64n64k16 bf16/fp16 -> fp32 wgmma with both operands in shared memory or A in registers, and the fences.
// Torch-free; only compiled into sm_90a code (wgmma does not exist on sm_90 without the "a" feature set).
//
// Layouts (per the PTX ISA's canonical shared-memory layouts, 16-bit elements):
//  * K-major, 128B swizzle: rows of 64 elements (128 bytes); 8 rows form a 1024-byte atom whose 16-byte chunks
//    are permuted by chunk ^= row % 8; a tile wider than 64 elements along K is a sequence of such column
//    blocks, each `rows * 128` bytes. Descriptor: SBO = 1024 bytes (8-row groups), LBO unused; a k-step of 16
//    elements inside a column block adds 32 bytes to the start address (the hardware swizzles the address).
//  * MN-major, 128B swizzle (B = V in P V, stored token-major with the head dim contiguous): k-rows of 64
//    N-elements, 8 k-rows per 1024-byte atom, same chunk permutation. The PTX ISA's canonical layout
//    ((T,8,m),(8,k)):((1,T,LBO),(8T,SBO)): SBO strides the 8-k-row groups (1024 bytes here), LBO the 64-element
//    N atoms (unused while N = 64). benchmarks/wgmma_probe.cu confirmed it on the H200 (the swapped reading fails).
//  Every tile starts on a 1024-byte boundary of the shared window, so the descriptors' base offset is 0.
#pragma once

#include <cstdint>

namespace infinilm {
namespace cuda {
namespace wg {

// Byte offset of element (row, col) of a [rows][cols] 16-bit tile in the 128B-swizzled layout described above
// (row: M/N index for K-major tiles, k index for MN-major ones; col: the contiguous index).
__host__ __device__ constexpr uint32_t sw128_offset(uint32_t row, uint32_t col, uint32_t rows) {
  return (col / 64) * rows * 128 + row * 128 + ((((col % 64) * 2) / 16) ^ (row % 8)) * 16 + (col * 2) % 16;
}

// Shared-memory matrix descriptor: start address, leading / stride byte offsets (16-byte units), swizzle mode
// (1 = 128B). `addr` is a shared-state-space address (__cvta_generic_to_shared).
__host__ __device__ constexpr uint64_t make_desc(uint32_t addr, uint32_t lbo_bytes, uint32_t sbo_bytes,
                                                 uint32_t swizzle = 1) {
  return (static_cast<uint64_t>((addr & 0x3FFFF) >> 4)) | (static_cast<uint64_t>((lbo_bytes >> 4) & 0x3FFF) << 16) |
         (static_cast<uint64_t>((sbo_bytes >> 4) & 0x3FFF) << 32) | (static_cast<uint64_t>(swizzle & 0x3) << 62);
}

#if defined(__CUDA_ARCH__) && (__CUDA_ARCH__ >= 900) && defined(__CUDA_ARCH_FEAT_SM90_ALL)
#define INFINILM_HAS_WGMMA 1

__device__ __forceinline__ uint32_t smem_addr(const void* p) {
  return static_cast<uint32_t>(__cvta_generic_to_shared(p));
}

// Generic-proxy writes to shared memory (plain stores, cp.async) become visible to wgmma's async proxy.
__device__ __forceinline__ void fence_proxy_async() { asm volatile("fence.proxy.async.shared::cta;\n" ::: "memory"); }
__device__ __forceinline__ void fence() { asm volatile("wgmma.fence.sync.aligned;\n" ::: "memory"); }
__device__ __forceinline__ void commit() { asm volatile("wgmma.commit_group.sync.aligned;\n" ::: "memory"); }
template <int N>
__device__ __forceinline__ void wait() {
  asm volatile("wgmma.wait_group.sync.aligned %0;\n" ::"n"(N) : "memory");
}

// Keeps the compiler from moving accumulator reads/writes across the asynchronous MMA.
__device__ __forceinline__ void fence_operands(float (&d)[32]) {
#pragma unroll
  for (int i = 0; i < 32; ++i) asm volatile("" : "+f"(d[i])::"memory");
}

// The same for an A fragment in registers (PTX: a register written before a wgmma that reads it as A needs the
// wgmma.fence between them; this keeps the compiler from sinking the writes past it).
__device__ __forceinline__ void fence_operands(uint32_t (&a)[4]) {
#pragma unroll
  for (int i = 0; i < 4; ++i) asm volatile("" : "+r"(a[i])::"memory");
}

#define INFINILM_WG_D32                                                                                        \
  "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]), "+f"(d[8]),  \
      "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15]), "+f"(d[16]),   \
      "+f"(d[17]), "+f"(d[18]), "+f"(d[19]), "+f"(d[20]), "+f"(d[21]), "+f"(d[22]), "+f"(d[23]), "+f"(d[24]),  \
      "+f"(d[25]), "+f"(d[26]), "+f"(d[27]), "+f"(d[28]), "+f"(d[29]), "+f"(d[30]), "+f"(d[31])
#define INFINILM_WG_D32_STR                                                                                    \
  "{%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, %16, %17, %18, %19, %20, %21, %22, " \
  "%23, %24, %25, %26, %27, %28, %29, %30, %31}"

// d[64x64] (+)= A[64x16] B[16x64], both from shared memory. BF16: true for bf16 operands, false for fp16.
// TRANS_B = 1: B is MN-major. scale_d = 0 ignores d's previous contents.
template <bool BF16, int TRANS_B>
__device__ __forceinline__ void mma_ss(float (&d)[32], uint64_t desc_a, uint64_t desc_b, int scale_d) {
  if constexpr (BF16) {
    asm volatile(
        "{\n.reg .pred p;\nsetp.ne.b32 p, %34, 0;\n"
        "wgmma.mma_async.sync.aligned.m64n64k16.f32.bf16.bf16 " INFINILM_WG_D32_STR ", %32, %33, p, 1, 1, 0, %35;\n}\n"
        : INFINILM_WG_D32
        : "l"(desc_a), "l"(desc_b), "r"(scale_d), "n"(TRANS_B));
  } else {
    asm volatile(
        "{\n.reg .pred p;\nsetp.ne.b32 p, %34, 0;\n"
        "wgmma.mma_async.sync.aligned.m64n64k16.f32.f16.f16 " INFINILM_WG_D32_STR ", %32, %33, p, 1, 1, 0, %35;\n}\n"
        : INFINILM_WG_D32
        : "l"(desc_a), "l"(desc_b), "r"(scale_d), "n"(TRANS_B));
  }
}

// d[64x64] (+)= A[64x16] B[16x64] with A in registers: per warp w of the warpgroup rows 16w..16w+15 in the
// m16n8k16 A-fragment layout (a[0]: row lane/4, k 2(lane%4)..+1; a[1]: row + 8; a[2]: k + 8; a[3]: both).
template <bool BF16, int TRANS_B>
__device__ __forceinline__ void mma_rs(float (&d)[32], const uint32_t (&a)[4], uint64_t desc_b, int scale_d) {
  if constexpr (BF16) {
    asm volatile(
        "{\n.reg .pred p;\nsetp.ne.b32 p, %37, 0;\n"
        "wgmma.mma_async.sync.aligned.m64n64k16.f32.bf16.bf16 " INFINILM_WG_D32_STR
        ", {%32, %33, %34, %35}, %36, p, 1, 1, %38;\n}\n"
        : INFINILM_WG_D32
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(desc_b), "r"(scale_d), "n"(TRANS_B));
  } else {
    asm volatile(
        "{\n.reg .pred p;\nsetp.ne.b32 p, %37, 0;\n"
        "wgmma.mma_async.sync.aligned.m64n64k16.f32.f16.f16 " INFINILM_WG_D32_STR
        ", {%32, %33, %34, %35}, %36, p, 1, 1, %38;\n}\n"
        : INFINILM_WG_D32
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(desc_b), "r"(scale_d), "n"(TRANS_B));
  }
}

#undef INFINILM_WG_D32
#undef INFINILM_WG_D32_STR
#endif  // sm_90a

}  // namespace wg
}  // namespace cuda
}  // namespace infinilm
