// CUDA rotary embedding + KV-cache write in one launch, optionally with the per-head q/k RMSNorm (Qwen3) first.
//
// Napkin math (decode, Llama-3.2-1B, T=1): 32 q + 8 k + 8 v heads x 64 bf16 = 6 KB read, 7 KB written: the
// separate rotary and cache-write kernels are each a ~2 us launch for 3 KB, so fusing halves the launch count
// (and with the q/k norms, quarters it). Prefill T=4096 (Llama-3-8B): 4T(Hq+Hk)D + 6T Hk D bytes = 109 MB,
// 29 us at 3.8 TB/s, about what rotary alone took before.
//
// Grid: blockIdx.y walks tokens; a thread is either a rope unit (P pairs of one q or k head) or a copy unit (P
// elements of one v head). Rope units come first, padded to whole warps so that the norm's per-head shuffles
// always run on full warps; a head's `chunks` units are consecutive lanes (chunks is a power of two <= 32).
#pragma once

#include "kernels/cuda/common.cuh"
#include "kernels/cuda/rotary.cuh"

namespace infinilm::cuda {

template <typename T, typename I, int P, bool NEOX, bool NORM>
__global__ void rotary_embedding_and_cache_kernel(
    const I* __restrict__ positions,    // [tokens]
    T* query,                           // [tokens, q_heads, head_dim], rotated in place
    T* key,                             // [tokens, k_heads, head_dim], rotated in place
    const T* value,                     // [tokens, k_heads, head_dim]
    T* __restrict__ key_cache,          // [num_blocks, k_heads, block_size, head_dim]
    T* __restrict__ value_cache,        // same as key_cache
    const I* __restrict__ slots,        // [tokens]
    const float* __restrict__ cos_sin,  // [max_pos, head_dim]: cos | sin
    const T* __restrict__ q_norm,       // [head_dim] (NORM only)
    const T* __restrict__ k_norm,       // [head_dim] (NORM only)
    float eps, int64_t tokens, int q_heads, int k_heads, int head_dim, int64_t max_pos, int block_size,
    int64_t num_slots, int64_t q_tok, int64_t q_head, int64_t k_tok, int64_t k_head, int64_t v_tok, int64_t v_head,
    int rope_units) {  // rope units rounded up to whole warps
  const int half = head_dim / 2;
  const int chunks = half / P;  // rope units per head; copy units per v head: 2 * chunks
  const int unit = blockIdx.x * blockDim.x + threadIdx.x;
  const bool is_rope = unit < rope_units;
  const int vu = unit - rope_units;
  if (!is_rope && vu >= k_heads * 2 * chunks) return;  // whole copy warps only: rope warps never leave early
  const int head = is_rope ? unit / chunks : vu / (2 * chunks);
  const int i = is_rope ? (unit - head * chunks) * P : (vu - head * 2 * chunks) * P;
  const bool active = !is_rope || head < q_heads + k_heads;
  const bool is_q = head < q_heads;
  for (int64_t t = blockIdx.y; t < tokens; t += gridDim.y) {
    const int64_t pos = static_cast<int64_t>(positions[t]);
    if (pos < 0 || pos >= max_pos) continue;  // out-of-range position: token untouched, nothing cached
    const int64_t slot = static_cast<int64_t>(slots[t]);
    const bool cache = slot >= 0 && slot < num_slots;  // -1: padding, not cached
    const int64_t block = slot / block_size, off = slot - block * block_size;
    if (!is_rope) {
      if (!cache) continue;
      const int64_t dst = ((block * k_heads + head) * block_size + off) * head_dim + i;
      store_pack(value_cache + dst, load_pack<T, P>(value + t * v_tok + head * v_head + i));
      continue;
    }
    T* h = !active ? nullptr : is_q ? query + t * q_tok + head * q_head : key + t * k_tok + (head - q_heads) * k_head;
    const int ia = NEOX ? i : 2 * i, ib = NEOX ? half + i : 2 * i + P;  // element offsets of the two packs
    float a[P], b[P];
    if (active) {
      pack_to_float(load_pack<T, P>(h + ia), a);
      pack_to_float(load_pack<T, P>(h + ib), b);
    } else {
#pragma unroll
      for (int k = 0; k < P; ++k) a[k] = b[k] = 0.f;
    }
    if constexpr (NORM) {
      float ss = 0.f;
#pragma unroll
      for (int k = 0; k < P; ++k) ss += a[k] * a[k] + b[k] * b[k];
      for (int o = chunks / 2; o > 0; o >>= 1) ss += __shfl_xor_sync(kFullMask, ss, o);
      const float inv = rsqrtf(ss / static_cast<float>(head_dim) + eps);
      if (active) {
        const T* w = is_q ? q_norm : k_norm;
        float wa[P], wb[P];
        pack_to_float(load_pack_ro<T, P>(w + ia), wa);
        pack_to_float(load_pack_ro<T, P>(w + ib), wb);
#pragma unroll
        for (int k = 0; k < P; ++k) {  // rounded to T as the standalone rms_norm writes it
          a[k] = to_float(from_float<T>(a[k] * inv * wa[k]));
          b[k] = to_float(from_float<T>(b[k] * inv * wb[k]));
        }
      }
    }
    if (!active) continue;
    const float* cs = cos_sin + pos * head_dim;
    const Pack<float, P> c = load_pack_ro<float, P>(cs + i);
    const Pack<float, P> s = load_pack_ro<float, P>(cs + half + i);
    float ya[P], yb[P];
    rotate_packs<P, NEOX>(a, b, c.v, s.v, ya, yb);
    const Pack<T, P> ra = pack_from_float<T, P>(ya), rb = pack_from_float<T, P>(yb);
    store_pack(h + ia, ra);
    store_pack(h + ib, rb);
    if (!is_q && cache) {
      T* d = key_cache + ((block * k_heads + (head - q_heads)) * block_size + off) * head_dim;
      store_pack(d + ia, ra);
      store_pack(d + ib, rb);
    }
  }
}

namespace detail {
template <typename T, typename I, int P, bool NEOX, bool NORM>
cudaError_t launch_rotary_cache(const I* positions, T* query, T* key, const T* value, T* key_cache, T* value_cache,
                                const I* slots, const float* cos_sin, const T* q_norm, const T* k_norm, float eps,
                                int64_t tokens, int q_heads, int k_heads, int head_dim, int64_t max_pos,
                                int block_size, int64_t num_slots, int64_t q_tok, int64_t q_head, int64_t k_tok,
                                int64_t k_head, int64_t v_tok, int64_t v_head, cudaStream_t stream) {
  const int chunks = head_dim / 2 / P;
  const int rope_units = ceil_div((q_heads + k_heads) * chunks, 32) * 32;
  const int units = rope_units + k_heads * 2 * chunks;
  const int threads = std::min(256, ceil_div(units, 32) * 32);
  const dim3 grid(ceil_div(units, threads), static_cast<unsigned>(std::min<int64_t>(tokens, 65535)));
  rotary_embedding_and_cache_kernel<T, I, P, NEOX, NORM><<<grid, threads, 0, stream>>>(
      positions, query, key, value, key_cache, value_cache, slots, cos_sin, q_norm, k_norm, eps, tokens, q_heads,
      k_heads, head_dim, max_pos, block_size, num_slots, q_tok, q_head, k_tok, k_head, v_tok, v_head, rope_units);
  return cudaGetLastError();
}

template <typename T, typename I, int P>
cudaError_t launch_rotary_cache(bool is_neox, bool norm, const I* positions, T* query, T* key, const T* value,
                                T* key_cache, T* value_cache, const I* slots, const float* cos_sin, const T* q_norm,
                                const T* k_norm, float eps, int64_t tokens, int q_heads, int k_heads, int head_dim,
                                int64_t max_pos, int block_size, int64_t num_slots, int64_t q_tok, int64_t q_head,
                                int64_t k_tok, int64_t k_head, int64_t v_tok, int64_t v_head, cudaStream_t stream) {
#define INFINILM_ROPE_CACHE_CASE(NEOX, NORM)                                                                        \
  if (is_neox == NEOX && norm == NORM)                                                                              \
    return launch_rotary_cache<T, I, P, NEOX, NORM>(positions, query, key, value, key_cache, value_cache, slots,   \
                                                    cos_sin, q_norm, k_norm, eps, tokens, q_heads, k_heads,        \
                                                    head_dim, max_pos, block_size, num_slots, q_tok, q_head, k_tok, \
                                                    k_head, v_tok, v_head, stream);
  INFINILM_ROPE_CACHE_CASE(true, false)
  INFINILM_ROPE_CACHE_CASE(true, true)
  INFINILM_ROPE_CACHE_CASE(false, false)
  INFINILM_ROPE_CACHE_CASE(false, true)
#undef INFINILM_ROPE_CACHE_CASE
  return cudaErrorInvalidValue;
}
}  // namespace detail

// The fused kernel's shape contract: the whole head is rotated (rot_dim == head_dim) and, with the norms, a head's
// units fit in one warp (head_dim / 2 / pack a power of two <= 32, pack = 16 bytes or, unaligned, 1 element).
template <typename T>
inline bool rotary_embedding_and_cache_supported(int64_t head_dim, int64_t rot_dim, bool norm, bool vec) {
  if (rot_dim != head_dim || head_dim <= 0 || head_dim % 2 != 0) return false;
  const int64_t p = vec ? kVec<T> : 1;
  if (head_dim % (2 * p) != 0) return false;
  const int64_t chunks = head_dim / 2 / p;
  return !norm || (chunks <= 32 && (chunks & (chunks - 1)) == 0);
}

// For each token t with positions[t] in [0, max_pos): optionally q/k = rms_norm(q/k per head, q_norm/k_norm, eps)
// (rounded to T); q and k rotated in place by the angle row positions[t]; when slots[t] lies in
// [0, num_blocks * block_size), the rotated k and the v heads are written to that cache slot. Tokens with an
// out-of-range position are left unchanged and not cached. q_norm == nullptr (and k_norm) means no norm.
// Needs rot_dim == head_dim (the caller composes rotary_embedding and reshape_and_cache otherwise). Returns
// cudaErrorNotSupported when the norms cannot be fused for this head size and alignment: the caller then runs
// rms_norm first and this without the norms.
template <typename T, typename I>
cudaError_t rotary_embedding_and_cache(const I* positions,   // [tokens]
                                       T* query,              // [tokens, q_heads, head_dim], strides (q_tok, q_head, 1)
                                       T* key,                // [tokens, k_heads, head_dim], strides (k_tok, k_head, 1)
                                       const T* value,        // [tokens, k_heads, head_dim], strides (v_tok, v_head, 1)
                                       T* key_cache,          // [num_blocks, k_heads, block_size, head_dim], contiguous
                                       T* value_cache,        // same as key_cache
                                       const I* slots,        // [tokens]
                                       const float* cos_sin,  // [max_pos, head_dim]: cos | sin, contiguous
                                       const T* q_norm, const T* k_norm,  // [head_dim] each, or both nullptr
                                       float eps, int64_t tokens, int64_t q_heads, int64_t k_heads, int64_t head_dim,
                                       int64_t max_pos, int64_t num_blocks, int64_t block_size, int64_t q_tok,
                                       int64_t q_head, int64_t k_tok, int64_t k_head, int64_t v_tok, int64_t v_head,
                                       bool is_neox, cudaStream_t stream) {
  if (tokens == 0 || q_heads + k_heads == 0) return cudaSuccess;
  if (block_size <= 0 || (q_heads + 3 * k_heads) * head_dim > 0x7fffffff) return cudaErrorInvalidValue;
  const bool norm = q_norm != nullptr;
  if (norm && k_norm == nullptr) return cudaErrorInvalidValue;
  constexpr int V = kVec<T>;
  bool vec = q_tok % V == 0 && q_head % V == 0 && k_tok % V == 0 && k_head % V == 0 && v_tok % V == 0 &&
             v_head % V == 0 && aligned_to(query, 16) && aligned_to(key, 16) && aligned_to(value, 16) &&
             aligned_to(key_cache, 16) && aligned_to(value_cache, 16) && aligned_to(cos_sin, 16) &&
             (!norm || (aligned_to(q_norm, 16) && aligned_to(k_norm, 16)));
  vec = vec && rotary_embedding_and_cache_supported<T>(head_dim, head_dim, false, true);
  if (!rotary_embedding_and_cache_supported<T>(head_dim, head_dim, false, vec)) return cudaErrorInvalidValue;
  if (!rotary_embedding_and_cache_supported<T>(head_dim, head_dim, norm, vec)) return cudaErrorNotSupported;
  const int qh = static_cast<int>(q_heads), kh = static_cast<int>(k_heads), hd = static_cast<int>(head_dim);
  const int bs = static_cast<int>(block_size);
  const int64_t num_slots = num_blocks * block_size;
  if (vec)
    return detail::launch_rotary_cache<T, I, V>(is_neox, norm, positions, query, key, value, key_cache, value_cache,
                                                slots, cos_sin, q_norm, k_norm, eps, tokens, qh, kh, hd, max_pos, bs,
                                                num_slots, q_tok, q_head, k_tok, k_head, v_tok, v_head, stream);
  return detail::launch_rotary_cache<T, I, 1>(is_neox, norm, positions, query, key, value, key_cache, value_cache,
                                              slots, cos_sin, q_norm, k_norm, eps, tokens, qh, kh, hd, max_pos, bs,
                                              num_slots, q_tok, q_head, k_tok, k_head, v_tok, v_head, stream);
}

}  // namespace infinilm::cuda
