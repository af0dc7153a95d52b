// CPU paged KV-cache write: scatter each token's K/V heads into its cache slot.
#pragma once

#include <cstring>

#include "kernels/cpu/common.h"

namespace infinilm::cpu {

// key_cache/value_cache: [num_blocks, kv_heads, block_size, head_dim]; slot = block * block_size + offset.
template <typename T>
void reshape_and_cache(const T* key,        // [tokens, kv_heads, head_dim], strides (k_tok, k_head, 1)
                       const T* value,      // [tokens, kv_heads, head_dim], strides (v_tok, v_head, 1)
                       T* key_cache, T* value_cache,
                       const int64_t* slots,  // [tokens]; -1 = skip
                       int64_t tokens, int64_t kv_heads, int64_t head_dim, int64_t block_size, int64_t k_tok,
                       int64_t k_head, int64_t v_tok, int64_t v_head) {
  parallel_for(tokens, kv_heads * head_dim, [&](int64_t t) {
    const int64_t slot = slots[t];
    if (slot < 0) return;
    const int64_t block = slot / block_size, off = slot % block_size;
    for (int64_t h = 0; h < kv_heads; ++h) {
      const int64_t dst = ((block * kv_heads + h) * block_size + off) * head_dim;
      std::memcpy(key_cache + dst, key + t * k_tok + h * k_head, head_dim * sizeof(T));
      std::memcpy(value_cache + dst, value + t * v_tok + h * v_head, head_dim * sizeof(T));
    }
  });
}

}  // namespace infinilm::cpu
