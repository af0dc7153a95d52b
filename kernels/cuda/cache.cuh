// CUDA paged KV-cache write: scatter each token's K/V heads into its cache slot, 16-byte packs.
//
// Napkin math: reads and writes 2 * T * Hk * D elements (Llama-3-8B, T=4096, bf16: 67 MB, 22 us at
// 3 TB/s). Caches are [num_blocks, kv_heads, block_size, head_dim]; slot = block * block_size + offset.
// Slots outside [0, num_blocks * block_size) (-1 = padding) are skipped, so bad slots never write.
#pragma once

#include "kernels/cuda/common.cuh"

namespace infinilm::cuda {

template <typename T, typename I, int VEC>
__global__ void reshape_and_cache_kernel(const T* __restrict__ key,    // [tokens, kv_heads, head_dim]
                                         const T* __restrict__ value,  // [tokens, kv_heads, head_dim]
                                         T* __restrict__ key_cache,    // [num_blocks, kv_heads, block_size, head_dim]
                                         T* __restrict__ value_cache,  // same as key_cache
                                         const I* __restrict__ slots,  // [tokens]
                                         int64_t tokens, int kv_heads, int head_dim, int block_size,
                                         int64_t num_slots, int64_t k_tok, int64_t k_head, int64_t v_tok,
                                         int64_t v_head) {
  const int chunks = head_dim / VEC;
  const int unit = blockIdx.x * blockDim.x + threadIdx.x;
  if (unit >= kv_heads * chunks) return;
  const int h = unit / chunks;
  const int e = (unit - h * chunks) * VEC;
  for (int64_t t = blockIdx.y; t < tokens; t += gridDim.y) {
    const int64_t slot = static_cast<int64_t>(slots[t]);
    if (slot < 0 || slot >= num_slots) continue;
    const int64_t block = slot / block_size, off = slot - block * block_size;
    const int64_t dst = ((block * kv_heads + h) * block_size + off) * head_dim + e;
    const Pack<T, VEC> k = load_pack_ro<T, VEC>(key + t * k_tok + h * k_head + e);
    const Pack<T, VEC> v = load_pack_ro<T, VEC>(value + t * v_tok + h * v_head + e);
    store_pack(key_cache + dst, k);
    store_pack(value_cache + dst, v);
  }
}

template <typename T, typename I>
cudaError_t reshape_and_cache(const T* key,      // [tokens, kv_heads, head_dim], strides (k_tok, k_head, 1)
                              const T* value,    // [tokens, kv_heads, head_dim], strides (v_tok, v_head, 1)
                              T* key_cache,      // [num_blocks, kv_heads, block_size, head_dim], contiguous
                              T* value_cache,    // [num_blocks, kv_heads, block_size, head_dim], contiguous
                              const I* slots,    // [tokens]; outside [0, num_blocks * block_size) = skip
                              int64_t tokens, int64_t kv_heads, int64_t head_dim, int64_t num_blocks,
                              int64_t block_size, int64_t k_tok, int64_t k_head, int64_t v_tok, int64_t v_head,
                              cudaStream_t stream) {
  if (tokens == 0 || kv_heads == 0 || head_dim == 0) return cudaSuccess;
  if (kv_heads * head_dim > 0x7fffffff || block_size <= 0) return cudaErrorInvalidValue;
  constexpr int V = kVec<T>;
  const bool vec_ok = head_dim % V == 0 && k_tok % V == 0 && k_head % V == 0 && v_tok % V == 0 &&
                      v_head % V == 0 && aligned_to(key, 16) && aligned_to(value, 16) &&
                      aligned_to(key_cache, 16) && aligned_to(value_cache, 16);
  const int vec = vec_ok ? V : 1;
  const int units = static_cast<int>(kv_heads * (head_dim / vec));
  const int threads = std::min(256, ceil_div(units, kWarpSize) * kWarpSize);
  const dim3 grid(ceil_div(units, threads), static_cast<unsigned>(std::min<int64_t>(tokens, 65535)));
  const int hk = static_cast<int>(kv_heads), hd = static_cast<int>(head_dim), bs = static_cast<int>(block_size);
  const int64_t num_slots = num_blocks * block_size;
  if (vec_ok)
    reshape_and_cache_kernel<T, I, V><<<grid, threads, 0, stream>>>(key, value, key_cache, value_cache, slots, tokens,
                                                                    hk, hd, bs, num_slots, k_tok, k_head, v_tok, v_head);
  else
    reshape_and_cache_kernel<T, I, 1><<<grid, threads, 0, stream>>>(key, value, key_cache, value_cache, slots, tokens,
                                                                    hk, hd, bs, num_slots, k_tok, k_head, v_tok, v_head);
  return cudaGetLastError();
}

}  // namespace infinilm::cuda
