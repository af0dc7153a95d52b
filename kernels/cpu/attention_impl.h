// Paged attention kernel bodies; attention.h includes this once per instruction set (no include guard).
//
// Work unit: a tile of up to M query rows (query token x query head, all sharing one KV head) against a
// range of keys of one request, walked in chunks of at most kKeyChunk keys inside a cache block. Each K/V
// row is converted to float once per tile and then used by every row of the tile (GQA sharing). Softmax
// is online and in base 2: q is pre-scaled by scale*log2(e), each chunk takes a row max, rescales the
// accumulator once per row (one exp2 per row per chunk, not per key) and adds exp2(s - max) * V.
// Wide tiles (M >= 8) keep q, scores and the accumulator transposed ([D][M], [keys][M]) so that the inner
// loops run across the M rows; narrow tiles (decode with <= 4 heads per KV head) vectorise along D.

namespace infinilm::cpu::INFINILM_ATTN_ISA {

// Attends `rows` (<= M) query rows q [rows][D] (already scaled by scale*log2 e) to keys [k_begin, k_end)
// of one request and KV head; row m sees key t only if lower[m] <= t < limit[m]. cap_log2 > 0 soft-caps
// the (base-2) scores: x -> cap_log2 tanh(x / cap_log2). Writes the unnormalised accumulator
// acc [rows][D], the running max m_out [rows] (base 2) and the softmax denominator l_out [rows].
template <typename T, int M>
void attend_tile(const T* kc,              // key cache offset to this KV head; block b at kc + b*block_stride
                 const T* vc,              // value cache, same layout
                 const int64_t* blocks,    // [max_blocks] block ids of the request
                 int64_t block_stride, int64_t block_size, int64_t D,
                 const float* q,           // [rows][D]
                 const int64_t* limit,     // [rows] keys visible to each row (causal bound)
                 const int64_t* lower,     // [rows] first key visible to each row (sliding window)
                 float cap_log2, int rows, int64_t k_begin, int64_t k_end,
                 float* acc, float* m_out, float* l_out) {
  constexpr bool kWide = M >= 8;
  std::vector<float> scratch(2 * D * M + kKeyChunk * M + (std::is_same_v<T, float> ? 0 : 2 * kKeyChunk * D), 0.f);
  float* qs = scratch.data();     // wide: [D][M]; narrow: [M][D]
  float* accs = qs + D * M;       // same layout as qs
  float* st = accs + D * M;       // [kKeyChunk][M] scores, then probabilities
  float* kbuf = st + kKeyChunk * M;
  float* vbuf = kbuf + kKeyChunk * D;
  float mrow[M], lrow[M], lim[M], low[M], alpha[M], msafe[M];
  int64_t lim_min = k_end, low_max = k_begin;
  for (int m = 0; m < M; ++m) {
    mrow[m] = -INFINITY;
    lrow[m] = 0.f;
    const int64_t lm = m < rows ? limit[m] : k_end;  // padding rows (q = 0) see every key, harmlessly
    const int64_t lw = m < rows ? lower[m] : k_begin;
    lim[m] = static_cast<float>(lm);
    low[m] = static_cast<float>(lw);
    lim_min = lm < lim_min ? lm : lim_min;
    low_max = lw > low_max ? lw : low_max;
    for (int64_t d = 0; d < D; ++d) {
      const float v = m < rows ? q[m * D + d] : 0.f;
      (kWide ? qs[d * M + m] : qs[m * D + d]) = v;
    }
  }
  for (int64_t k0 = k_begin; k0 < k_end;) {
    const int64_t bi = k0 / block_size, off = k0 % block_size;
    const int64_t n = std::min({kKeyChunk, block_size - off, k_end - k0});
    const int64_t base = blocks[bi] * block_stride + off * D;
    {  // into L2, 4 chunks ahead (measured best): usually other blocks, which the hardware prefetcher can't guess
      const int64_t step = std::min(kKeyChunk, block_size), nk = k0 + n + (kPrefetchChunks - 1) * step;
      if (nk < k_end) {
        const int64_t nbase = blocks[nk / block_size] * block_stride + (nk % block_size) * D;
        const int64_t bytes = std::min(kKeyChunk, block_size - nk % block_size) * D * int64_t(sizeof(T));
        for (int64_t b = 0; b < bytes; b += 64) {
          __builtin_prefetch(reinterpret_cast<const char*>(kc + nbase) + b, 0, 2);
          __builtin_prefetch(reinterpret_cast<const char*>(vc + nbase) + b, 0, 2);
        }
      }
    }
    const float* kf = as_float_rows(kc + base, kbuf, n * D);
    const float* vf = as_float_rows(vc + base, vbuf, n * D);
    // Scores st[t][m] = q[m] . k[t].
    for (int64_t t = 0; t < n; ++t) {
      const float* kr = kf + t * D;
      if constexpr (kWide) {
        // KT keys at once so that at least 8 vector accumulators hide the FMA latency.
        constexpr int KT = kMulti<M>;
        if (t + KT <= n) {
          qk_keys<M, KT>(kr, qs, D, st + t * M);
          t += KT - 1;
        } else {
          qk_keys<M, 1>(kr, qs, D, st + t * M);
        }
      } else {
        static_assert(M == 4, "narrow tiles hold 4 rows");
        float s0 = 0.f, s1 = 0.f, s2 = 0.f, s3 = 0.f;
        const float *q0 = qs, *q1 = qs + D, *q2 = qs + 2 * D, *q3 = qs + 3 * D;
#pragma omp simd reduction(+ : s0, s1, s2, s3)
        for (int64_t d = 0; d < D; ++d) {
          const float kd = kr[d];
          s0 += q0[d] * kd;
          s1 += q1[d] * kd;
          s2 += q2[d] * kd;
          s3 += q3[d] * kd;
        }
        st[t * M + 0] = s0;
        st[t * M + 1] = s1;
        st[t * M + 2] = s2;
        st[t * M + 3] = s3;
      }
    }
    if (cap_log2 > 0.f) {
      for (int64_t i = 0; i < n * M; ++i) st[i] = cap_log2 * std::tanh(st[i] / cap_log2);
    }
    if (k0 + n > lim_min || k0 < low_max) {  // the causal edge or the window's left edge crosses this chunk
      for (int64_t t = 0; t < n; ++t) {
        const float key = static_cast<float>(k0 + t);
#pragma omp simd
        for (int m = 0; m < M; ++m) st[t * M + m] = key < lim[m] && key >= low[m] ? st[t * M + m] : -INFINITY;
      }
    }
    // Online softmax: one rescale per row per chunk.
    float bmax[M];
    for (int m = 0; m < M; ++m) bmax[m] = -INFINITY;
    for (int64_t t = 0; t < n; ++t) {
#pragma omp simd
      for (int m = 0; m < M; ++m) bmax[m] = fmax_(bmax[m], st[t * M + m]);
    }
    bool rescale = false;
    for (int m = 0; m < M; ++m) {
      const float mnew = fmax_(mrow[m], bmax[m]);
      msafe[m] = mnew == -INFINITY ? 0.f : mnew;  // a row with nothing visible yet keeps p = 0, not NaN
      alpha[m] = exp2_neg(mrow[m] - msafe[m]);
      rescale |= alpha[m] != 1.f;
      mrow[m] = mnew;
    }
    float psum[M] = {};
    for (int64_t t = 0; t < n; ++t) {
#pragma omp simd
      for (int m = 0; m < M; ++m) {
        const float p = exp2_neg(st[t * M + m] - msafe[m]);
        st[t * M + m] = p;
        psum[m] += p;
      }
    }
    for (int m = 0; m < M; ++m) lrow[m] = lrow[m] * alpha[m] + psum[m];
    // acc = acc * alpha + P V.
    if constexpr (kWide) {
      if (rescale) {
        for (int64_t d = 0; d < D; ++d) {
#pragma omp simd
          for (int m = 0; m < M; ++m) accs[d * M + m] *= alpha[m];
        }
      }
      constexpr int DT = kMulti<M>;
      int64_t d = 0;
      for (; d + DT <= D; d += DT) pv_dims<M, DT>(vf + d, st, n, D, accs + d * M);
      for (; d < D; ++d) pv_dims<M, 1>(vf + d, st, n, D, accs + d * M);
    } else {
      float *a0 = accs, *a1 = accs + D, *a2 = accs + 2 * D, *a3 = accs + 3 * D;
      if (rescale) {
#pragma omp simd
        for (int64_t d = 0; d < D; ++d) {
          a0[d] *= alpha[0];
          a1[d] *= alpha[1];
          a2[d] *= alpha[2];
          a3[d] *= alpha[3];
        }
      }
      for (int64_t t = 0; t < n; ++t) {
        const float* vr = vf + t * D;
        const float p0 = st[t * M], p1 = st[t * M + 1], p2 = st[t * M + 2], p3 = st[t * M + 3];
#pragma omp simd
        for (int64_t d = 0; d < D; ++d) {
          const float vd = vr[d];
          a0[d] += p0 * vd;
          a1[d] += p1 * vd;
          a2[d] += p2 * vd;
          a3[d] += p3 * vd;
        }
      }
    }
    k0 += n;
  }
  for (int m = 0; m < rows; ++m) {
    m_out[m] = mrow[m];
    l_out[m] = lrow[m];
    for (int64_t d = 0; d < D; ++d) acc[m * D + d] = kWide ? accs[d * M + m] : accs[m * D + d];
  }
}

// Runs attend_tile with the smallest tile width that holds `rows` (see tile_width()).
template <typename T>
void attend(int width, const T* kc, const T* vc, const int64_t* blocks, int64_t block_stride, int64_t block_size,
            int64_t D, const float* q, const int64_t* limit, const int64_t* lower, float cap_log2, int rows,
            int64_t k_begin, int64_t k_end, float* acc, float* m_out, float* l_out) {
#define INFINILM_ATTN_TILE(W)                                                                                   \
  attend_tile<T, W>(kc, vc, blocks, block_stride, block_size, D, q, limit, lower, cap_log2, rows, k_begin, k_end, \
                    acc, m_out, l_out)
  switch (width) {
    case 4: INFINILM_ATTN_TILE(4); break;
    case 8: INFINILM_ATTN_TILE(8); break;
    case 16: INFINILM_ATTN_TILE(16); break;
    case 32: INFINILM_ATTN_TILE(32); break;
    default: INFINILM_ATTN_TILE(64); break;
  }
#undef INFINILM_ATTN_TILE
}

// Loads `rows` query rows into q [rows][D] floats scaled by scale*log2(e); row j is query + row_off[j].
template <typename T>
inline void load_queries(const T* query, const int64_t* row_off, int rows, int64_t D, float qscale, float* q) {
  for (int j = 0; j < rows; ++j) {
    const T* src = query + row_off[j];
#pragma omp simd
    for (int64_t d = 0; d < D; ++d) q[j * D + d] = ld(src[d]) * qscale;
  }
}

// out[row] = acc[row] / l[row] (0 when the row saw no key).
template <typename T>
inline void store_rows(T* out, const int64_t* out_off, const float* acc, const float* l, int rows, int64_t D) {
  for (int j = 0; j < rows; ++j) {
    const float inv = l[j] > 0.f ? 1.f / l[j] : 0.f;
    for (int64_t d = 0; d < D; ++d) out[out_off[j] + d] = store_as<T>(acc[j * D + d] * inv);
  }
}

template <typename T>
void paged_attention_decode(T* out, const T* query, const T* key_cache, const T* value_cache, const int64_t* block_tables,
                            const int64_t* seq_lens, const PagedAttentionShape& s, int64_t batch, int64_t q_tok,
                            int64_t q_head) {
  const int64_t G = s.q_heads / s.kv_heads, D = s.head_dim;
  const int width = tile_width(G);
  const int64_t row_tiles = (G + width - 1) / width;
  const int64_t items = batch * s.kv_heads * row_tiles;
  // The query sits at position len - 1: with a window it sees keys [len - 1 - window_left, len - 1].
  auto first_key = [&](int64_t len) {
    return s.window_left >= 0 ? std::max<int64_t>(0, len - 1 - s.window_left) : int64_t{0};
  };
  int64_t max_len = 0;
  for (int64_t b = 0; b < batch; ++b) max_len = std::max(max_len, seq_lens[b] - first_key(seq_lens[b]));
  const int64_t splits = decode_splits(items, max_len);
  const int64_t split_len = (max_len + splits - 1) / std::max<int64_t>(splits, 1);
  const float qscale = s.scale * 1.4426950408889634f;
  const float cap_log2 = s.softcap * 1.4426950408889634f;
  // Split partials: [items * splits][width][D + 2] (acc, max, denominator), combined below.
  std::vector<float> part(splits > 1 ? items * splits * width * (D + 2) : 0);
  parallel_for_each(items * splits, [&](int64_t it) {
    const int64_t sp = it % splits, tile = it / splits;
    const int64_t rt = tile % row_tiles, h = (tile / row_tiles) % s.kv_heads, b = tile / (row_tiles * s.kv_heads);
    const int64_t g0 = rt * width;
    const int rows = static_cast<int>(std::min<int64_t>(width, G - g0));
    const int64_t len = seq_lens[b];
    const int64_t k_begin = std::min(len, first_key(len) + sp * split_len), k_end = std::min(len, k_begin + split_len);
    std::vector<float> buf(rows * (2 * D + 2));
    float *q = buf.data(), *acc = q + rows * D, *mx = acc + rows * D, *l = mx + rows;
    int64_t row_off[64], limit[64], lower[64];
    for (int j = 0; j < rows; ++j) {
      row_off[j] = b * q_tok + (h * G + g0 + j) * q_head;
      limit[j] = len;
      lower[j] = 0;  // the key range already starts at the window's edge
    }
    load_queries(query, row_off, rows, D, qscale, q);
    attend(width, key_cache + h * s.head_stride, value_cache + h * s.head_stride, block_tables + b * s.max_blocks,
           s.block_stride, s.block_size, D, q, limit, lower, cap_log2, rows, k_begin, k_end, acc, mx, l);
    if (splits == 1) {
      for (int j = 0; j < rows; ++j) row_off[j] = (b * s.q_heads + h * G + g0 + j) * D;
      store_rows(out, row_off, acc, l, rows, D);
      return;
    }
    float* p = part.data() + it * width * (D + 2);
    for (int j = 0; j < rows; ++j) {
      std::memcpy(p + j * (D + 2), acc + j * D, D * sizeof(float));
      p[j * (D + 2) + D] = mx[j];
      p[j * (D + 2) + D + 1] = l[j];
    }
  });
  if (splits == 1) return;
  parallel_for(batch * s.q_heads, splits * D, [&](int64_t r) {
    const int64_t b = r / s.q_heads, hq = r % s.q_heads, h = hq / G, gi = hq % G;
    const int64_t tile = (b * s.kv_heads + h) * row_tiles + gi / width, j = gi % width;
    float mmax = -INFINITY;
    for (int64_t sp = 0; sp < splits; ++sp) mmax = fmax_(mmax, part[((tile * splits + sp) * width + j) * (D + 2) + D]);
    std::vector<float> acc(D, 0.f);
    float l = 0.f;
    for (int64_t sp = 0; sp < splits; ++sp) {
      const float* p = part.data() + ((tile * splits + sp) * width + j) * (D + 2);
      if (p[D + 1] == 0.f) continue;
      const float w = exp2_neg(p[D] - mmax);
      l += w * p[D + 1];
      for (int64_t d = 0; d < D; ++d) acc[d] += w * p[d];
    }
    const int64_t off = r * D;
    store_rows(out, &off, acc.data(), &l, 1, D);
  });
}

template <typename T>
void paged_attention_prefill(T* out, const T* query, const T* key_cache, const T* value_cache,
                             const int64_t* block_tables, const int64_t* query_start_loc, const int64_t* seq_lens,
                             const PagedAttentionShape& s, int64_t num_reqs, int64_t q_tok,
                             int64_t q_head) {
  const int64_t G = s.q_heads / s.kv_heads, D = s.head_dim;
  const float qscale = s.scale * 1.4426950408889634f;
  const float cap_log2 = s.softcap * 1.4426950408889634f;
  auto first_key = [&](int64_t pos) {
    return s.window_left >= 0 ? std::max<int64_t>(0, pos - s.window_left) : int64_t{0};
  };
  // Tiles of `width` consecutive (query, head-in-group) rows, the width fitted to each request (a q_len 1
  // request in a mixed batch gets a decode-sized tile); the costliest tiles (most keys) go first.
  struct Tile { int64_t req, row0, keys; int width; };
  std::vector<Tile> tiles;
  for (int64_t r = 0; r < num_reqs; ++r) {
    const int64_t q_len = query_start_loc[r + 1] - query_start_loc[r], prefix = seq_lens[r] - q_len;
    const int width = tile_width(q_len * G);
    for (int64_t row0 = 0; row0 < q_len * G; row0 += width) {
      const int64_t last_q = std::min(row0 + width, q_len * G) - 1;
      tiles.push_back({r, row0, prefix + last_q / G + 1, width});
    }
  }
  std::stable_sort(tiles.begin(), tiles.end(), [](const Tile& a, const Tile& b) { return a.keys > b.keys; });
  parallel_for_each(static_cast<int64_t>(tiles.size()) * s.kv_heads, [&](int64_t it) {
    const Tile& tl = tiles[it / s.kv_heads];
    const int64_t h = it % s.kv_heads, r = tl.req;
    const int64_t q0 = query_start_loc[r], q_len = query_start_loc[r + 1] - q0, prefix = seq_lens[r] - q_len;
    const int rows = static_cast<int>(std::min<int64_t>(tl.width, q_len * G - tl.row0));
    std::vector<float> buf(rows * (2 * D + 2));
    float *q = buf.data(), *acc = q + rows * D, *mx = acc + rows * D, *l = mx + rows;
    int64_t row_off[64], limit[64], lower[64], out_off[64];
    for (int j = 0; j < rows; ++j) {
      const int64_t qi = (tl.row0 + j) / G, hq = h * G + (tl.row0 + j) % G;
      row_off[j] = (q0 + qi) * q_tok + hq * q_head;
      out_off[j] = ((q0 + qi) * s.q_heads + hq) * D;
      limit[j] = prefix + qi + 1;
      lower[j] = first_key(prefix + qi);
    }
    load_queries(query, row_off, rows, D, qscale, q);
    attend(tl.width, key_cache + h * s.head_stride, value_cache + h * s.head_stride, block_tables + r * s.max_blocks,
           s.block_stride, s.block_size, D, q, limit, lower, cap_log2, rows, lower[0], tl.keys, acc, mx, l);
    store_rows(out, out_off, acc, l, rows, D);
  });
}

}  // namespace infinilm::cpu::INFINILM_ATTN_ISA
