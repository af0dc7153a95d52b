// CPU paged attention (decode and causal variable-length prefill with a cached prefix) on raw pointers.
//
// Layout: K and V caches [num_blocks, kv_heads, block_size, head_dim]; request r's token t lives in block
// block_tables[r][t / block_size] at offset t % block_size. Query head hq reads KV head hq / (Hq / Hk).
// fp32 accumulation, online softmax; see attention_impl.h for the tiling.
//
// Napkin math (Llama-3.2-1B: Hq 32, Hk 8, D 64, bf16):
//  decode, one request of context L: must read K and V once, 2 * L * Hk * D * 2 B = 2 KiB per token
//    (4 MiB at L = 2048); 4 * L * Hq * D = 8 MFLOP at L = 2048, 4 FLOP per byte: memory-bound, the floor
//    is bytes / DRAM bandwidth (~0.3 ms at 15 GB/s). Each K/V row is loaded once for its 4 query heads.
//  prefill of T new tokens (no prefix): ~2 * T^2 * Hq * D FLOP causal (1.1 GFLOP at T = 512), while K/V
//    are only 2 * T * Hk * D * 2 B (1 MiB): compute-bound, so queries go in tiles of up to 64 rows that
//    share every K/V row load and the inner loops run across the rows (FMA on all lanes).
//  Measured on one core of the 2-core dev box (AVX2 path, bf16): decode B=8 ctx 2048 7.7 ms (4.3 GB/s,
//  DRAM-bound; SDPA 57 ms); prefill T=512 18 ms (59 GFLOP/s; SDPA 31 ms).
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <type_traits>
#include <vector>

#include "kernels/cpu/common.h"
#include "kernels/cpu/isa.h"

namespace infinilm::cpu {

// Sizes and cache strides (in elements) shared by decode and prefill.
struct PagedAttentionShape {
  int64_t q_heads, kv_heads, head_dim, block_size;
  int64_t block_stride;  // elements between consecutive cache blocks (kv_heads * block_size * head_dim)
  int64_t head_stride;   // elements between KV heads inside a block (block_size * head_dim)
  int64_t max_blocks;    // row length of block_tables
  float scale;
  // A query at position p sees keys [p - window_left, p] (FlashAttention's window_size[0]; HF's
  // sliding_window W is window_left = W - 1); -1: no window.
  int64_t window_left = -1;
  float softcap = 0.f;  // > 0: scores s = scale q.k become softcap * tanh(s / softcap) before the softmax
};

// Rows per tile: 4 (narrow, vectorised along head_dim) or a power of two from 8 to 64.
inline int tile_width(int64_t rows) {
  if (rows <= 4) return 4;
  int w = 8;
  while (w < rows && w < 64) w *= 2;
  return w;
}

// Decode splits long contexts into ranges when there are fewer (request, KV head) items than threads.
inline int64_t decode_splits(int64_t items, int64_t max_len) {
  const int64_t threads = cpu_threads();
  if (items <= 0 || items >= threads) return 1;
  constexpr int64_t kMinKeysPerSplit = 256;
  const int64_t want = (2 * threads + items - 1) / items;
  return std::max<int64_t>(1, std::min(want, max_len / kMinKeysPerSplit));
}

}  // namespace infinilm::cpu

// The kernel bodies, compiled for the baseline ISA and, on x86-64 GCC, again for AVX2+FMA; chosen at run
// time. -fno-trapping-math lets GCC if-convert the selects in exp2_neg and the softmax max, so those loops
// vectorise (with the default -ftrapping-math they stay scalar).
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC push_options
#pragma GCC optimize("no-trapping-math")
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wpsabi"  // vec8 helpers are inline; no ABI boundary is crossed
#endif
#define INFINILM_ATTN_ISA generic
#define INFINILM_ATTN_LANES 4
#include "kernels/cpu/attention_simd.h"
#include "kernels/cpu/attention_impl.h"
#undef INFINILM_ATTN_LANES
#undef INFINILM_ATTN_ISA

#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#define INFINILM_ATTN_HAVE_AVX2 1
#pragma GCC target("avx2,fma,f16c")
#define INFINILM_ATTN_ISA avx2
#define INFINILM_ATTN_LANES 8
#include "kernels/cpu/attention_simd.h"
#include "kernels/cpu/attention_impl.h"
#undef INFINILM_ATTN_LANES
#undef INFINILM_ATTN_ISA
#endif
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic pop
#pragma GCC pop_options
#endif

namespace infinilm::cpu {


// out [batch, Hq, D] (dense) = softmax(scale * q K^T) V over the first seq_lens[b] cached tokens (0 -> zeros),
// the last window_left + 1 of them with a window.
template <typename T>
void paged_attention_decode(T* out,                    // [batch, Hq, D]
                            const T* query,            // [batch, Hq, D], strides (q_tok, q_head, 1)
                            const T* key_cache,        // [num_blocks, Hk, block_size, D]
                            const T* value_cache,      // [num_blocks, Hk, block_size, D]
                            const int64_t* block_tables,  // [batch, max_blocks]
                            const int64_t* seq_lens,      // [batch]
                            const PagedAttentionShape& s, int64_t batch, int64_t q_tok, int64_t q_head) {
#ifdef INFINILM_ATTN_HAVE_AVX2
  if (cpu_use_avx2())
    return avx2::paged_attention_decode(out, query, key_cache, value_cache, block_tables, seq_lens, s, batch, q_tok,
                                        q_head);
#endif
  generic::paged_attention_decode(out, query, key_cache, value_cache, block_tables, seq_lens, s, batch, q_tok, q_head);
}

// out [T, Hq, D] (dense): query i of request r (rows query_start_loc[r] + i) attends causally to cached
// tokens 0 .. p = seq_lens[r] - q_len + i, where q_len = query_start_loc[r + 1] - query_start_loc[r]
// (p - window_left .. p with a window).
template <typename T>
void paged_attention_prefill(T* out,                     // [T, Hq, D]
                             const T* query,             // [T, Hq, D], strides (q_tok, q_head, 1)
                             const T* key_cache,         // [num_blocks, Hk, block_size, D]
                             const T* value_cache,       // [num_blocks, Hk, block_size, D]
                             const int64_t* block_tables,     // [num_reqs, max_blocks]
                             const int64_t* query_start_loc,  // [num_reqs + 1]
                             const int64_t* seq_lens,         // [num_reqs]
                             const PagedAttentionShape& s, int64_t num_reqs, int64_t q_tok,
                             int64_t q_head) {
#ifdef INFINILM_ATTN_HAVE_AVX2
  if (cpu_use_avx2())
    return avx2::paged_attention_prefill(out, query, key_cache, value_cache, block_tables, query_start_loc, seq_lens,
                                         s, num_reqs, q_tok, q_head);
#endif
  generic::paged_attention_prefill(out, query, key_cache, value_cache, block_tables, query_start_loc, seq_lens, s,
                                   num_reqs, q_tok, q_head);
}

}  // namespace infinilm::cpu
