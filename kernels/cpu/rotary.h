// CPU rotary position embedding, in place on strided query/key heads, from a float cos|sin table.
#pragma once

#include "kernels/cpu/common.h"

namespace infinilm::cpu {

// Rotates the first rot_dim features of one head vector. NeoX pairs (i, i + rot/2); GPT-J pairs (2i, 2i+1).
template <typename T>
inline void rotate_head(T* h, const float* cos, const float* sin, int64_t half, bool is_neox) {
  if (is_neox) {
#pragma omp simd
    for (int64_t i = 0; i < half; ++i) {
      const float a = to_float(h[i]), b = to_float(h[i + half]);
      h[i] = from_float<T>(a * cos[i] - b * sin[i]);
      h[i + half] = from_float<T>(b * cos[i] + a * sin[i]);
    }
  } else {
    for (int64_t i = 0; i < half; ++i) {
      const float a = to_float(h[2 * i]), b = to_float(h[2 * i + 1]);
      h[2 * i] = from_float<T>(a * cos[i] - b * sin[i]);
      h[2 * i + 1] = from_float<T>(b * cos[i] + a * sin[i]);
    }
  }
}

template <typename T>
void rotary_embedding(const int64_t* positions,  // [tokens]
                      T* query,                  // [tokens, q_heads, head_dim], strides (q_tok, q_head, 1)
                      T* key,                    // [tokens, k_heads, head_dim], strides (k_tok, k_head, 1)
                      const float* cos_sin,      // [max_pos, rot_dim]: cos | sin
                      int64_t tokens, int64_t q_heads, int64_t k_heads, int64_t rot_dim, int64_t q_tok,
                      int64_t q_head, int64_t k_tok, int64_t k_head, bool is_neox) {
  const int64_t half = rot_dim / 2;
  parallel_for(tokens, (q_heads + k_heads) * rot_dim, [&](int64_t t) {
    const float* cos = cos_sin + positions[t] * rot_dim;
    const float* sin = cos + half;
    for (int64_t h = 0; h < q_heads; ++h) rotate_head(query + t * q_tok + h * q_head, cos, sin, half, is_neox);
    for (int64_t h = 0; h < k_heads; ++h) rotate_head(key + t * k_tok + h * k_head, cos, sin, half, is_neox);
  });
}

}  // namespace infinilm::cpu
