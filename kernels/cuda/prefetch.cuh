// L2 prefetch of read-only device memory: a decode step's next weights streamed into L2 while latency-bound
// kernels (rope, attention, norms) leave HBM idle, so the matrix product that reads them next finds them there.
//
// Fire and forget: the kernel only issues requests (sm_90: one bulk prefetch per 4 KB chunk; earlier archs:
// prefetch.global.L2 per 128-byte line), it reads nothing into registers, writes nothing, and exits. Results
// are unchanged whether or not the lines arrive. A no-op in a hipified build (the PTX does not exist there).
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

namespace infinilm::cuda {

namespace prefetch_detail {

constexpr int kThreads = 128;
constexpr int64_t kChunk = 4096;  // bytes per bulk request (a multiple of 16)
constexpr int kMaxBlocks = 32;

__global__ void __launch_bounds__(kThreads) l2_prefetch_kernel(const char* p, int64_t bytes) {
#if defined(__CUDA_ARCH__) && !defined(__HIP_PLATFORM_AMD__)
  const int64_t chunks = (bytes + kChunk - 1) / kChunk;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t c = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; c < chunks; c += stride) {
    const char* a = p + c * kChunk;
    const int64_t len = bytes - c * kChunk < kChunk ? bytes - c * kChunk : kChunk;
#if __CUDA_ARCH__ >= 900
    // p is 16-byte aligned and bytes a multiple of 16 (the launcher's contract), so every chunk is too.
    asm volatile("cp.async.bulk.prefetch.L2.global [%0], %1;\n" ::"l"(a), "r"(static_cast<unsigned>(len))
                 : "memory");
#else
    for (int64_t off = 0; off < len; off += 128) asm volatile("prefetch.global.L2 [%0];\n" ::"l"(a + off));
#endif
  }
#endif
}

}  // namespace prefetch_detail

// Requests bytes bytes from p into L2 on stream. p must be 16-byte aligned; bytes is rounded down to a
// multiple of 16 (the tail of at most 15 bytes is not requested). Nothing to do for bytes < 16.
inline cudaError_t l2_prefetch(const void* p, int64_t bytes, cudaStream_t stream) {
  using namespace prefetch_detail;
  bytes &= ~int64_t{15};
  if (bytes <= 0) return cudaSuccess;
  if ((reinterpret_cast<uintptr_t>(p) & 15u) != 0) return cudaErrorInvalidValue;
  const int64_t chunks = (bytes + kChunk - 1) / kChunk;
  int64_t blocks = (chunks + kThreads - 1) / kThreads;
  if (blocks > kMaxBlocks) blocks = kMaxBlocks;
  l2_prefetch_kernel<<<static_cast<unsigned>(blocks), kThreads, 0, stream>>>(static_cast<const char*>(p), bytes);
  return cudaGetLastError();
}

}  // namespace infinilm::cuda
