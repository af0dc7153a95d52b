// CPU sampling: greedy, temperature, top-k and top-p by value thresholds (no sort of the vocab), then an
// inverse-CDF draw with a counter-based uniform keyed on the row's seed.
//
// Semantics, per row b (the CUDA kernel implements the same definition; ties are part of it):
//   l = logits[b, :] converted to fp32 (-inf = masked token), V its length, m = max_i l_i (finite: rows of
//   all -inf, NaN and +inf are errors), T = temperature[b], k = top_k[b], p = top_p[b].
//   1. Greedy when T == 0 or k == 1: the lowest index i with l_i == m.
//   2. Top-k, when 0 < k < V: t_k = the k-th largest of l (counted with multiplicity);
//      K = {i : l_i >= t_k}, so tokens tied with the k-th are all kept (|K| >= k). Otherwise K = all.
//   3. Weights w_i = exp((l_i - m) / T), evaluated in fp32 (subtract, divide, exp): the softmax of l / T up
//      to its normaliser. Filtering compares l, not p: exp and division by T > 0 are monotone, so the order
//      is the same, and set membership does not depend on how a device rounds exp.
//   4. Top-p, when p < 1: W_K = sum_{i in K} w_i; t_p = the largest value v such that
//      sum_{i in K, l_i >= v} w_i >= p * W_K; P = {i in K : l_i >= t_p}. P is the smallest most-likely set
//      whose mass, renormalised over K, reaches p, with boundary ties kept. Otherwise P = K.
//   5. Draw: u = rng::uniform_double(seeds[b], 0) in [0, 1) (kernels/common/counter_rng.h);
//      walk P in increasing index order, c += w_i, and return the first i with c > u * W_P, W_P the same
//      sum over all of P. A token with w_i == 0 (masked, or underflowed) is never drawn.
//   Mass sums are fp64 here (rounding at the 1e-16 level decides only draws that land exactly on a boundary).
//   Equal logits of opposite zero sign (-0.0, +0.0) compare equal, as floats do.
//
// Algorithm: one pass converts the row and finds m; the k-th largest value and the top-p pivot are found by
// a 3-level radix select (12 + 12 + 8 bits of an order-preserving 32-bit key), each level one histogram
// pass over the surviving candidates: O(V) per row, typically ~2 passes over the vocab plus the kept set.
// Napkin math (V = 128256, fp32): the row is 0.5 MB; two streaming passes at ~10 GB/s per core ≈ 100 µs,
// plus one exp per kept token (all V when top-k is off).
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <vector>

#include "kernels/common/counter_rng.h"
#include "kernels/cpu/common.h"

namespace infinilm::cpu {

namespace sampling_detail {

// Monotone map float -> uint32 (a < b  <=>  key(a) < key(b) for non-NaN floats), with -0.0 folded onto +0.0.
inline uint32_t order_key(float x) {
  x += 0.0f;  // -0.0 + 0.0 == +0.0, so equal floats share one key
  uint32_t u;
  std::memcpy(&u, &x, 4);
  return (u & 0x80000000u) ? ~u : (u | 0x80000000u);
}

inline float key_to_float(uint32_t k) {
  const uint32_t u = (k & 0x80000000u) ? (k & 0x7fffffffu) : ~k;
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}

// Per-thread buffers, grown to the vocab size once and reused across rows and calls.
struct Scratch {
  std::vector<float> row;      // [V] the row in fp32
  std::vector<int32_t> idx;    // [V] token ids of the top-k set, increasing
  std::vector<float> val;      // [V] their logits
  std::vector<float> w;        // [V] their weights exp((l - m) / T)
  std::vector<float> cand_v[2], cand_w[2];  // [V] radix-select survivors of levels 0 and 1
  double hist[4096];

  void ensure(int64_t V) {
    if (static_cast<int64_t>(row.size()) >= V) return;
    row.resize(V), idx.resize(V), val.resize(V), w.resize(V);
    for (auto* v : {&cand_v[0], &cand_v[1], &cand_w[0], &cand_w[1]}) v->resize(V);
  }
};

// The largest value t among v[0, n) with sum_{v[i] >= t} weight_i >= target, where weight_i = w[i] when
// kWeighted, else 1 (then target = k gives the k-th largest). Requires 0 < target <= the total weight; if
// rounding leaves the total just short of target, returns the smallest value of positive weight.
template <bool kWeighted>
float select_threshold(const float* v,  // [n]
                       const float* w,  // [n] weights (kWeighted only)
                       int64_t n, double target, Scratch& s) {
  static constexpr int kShift[3] = {20, 8, 0};
  static constexpr uint32_t kMask[3] = {0xfffu, 0xfffu, 0xffu};
  uint32_t prefix = 0;
  for (int level = 0; level < 3; ++level) {
    const int sh = kShift[level];
    const uint32_t mask = kMask[level];
    double* hist = s.hist;
    std::fill(hist, hist + mask + 1, 0.0);
    for (int64_t i = 0; i < n; ++i) hist[(order_key(v[i]) >> sh) & mask] += kWeighted ? static_cast<double>(w[i]) : 1.0;
    // Walk digits from the largest values down until the mass at or above the digit reaches target.
    int64_t d = mask, lowest = -1;
    double above = 0.0;
    for (; d >= 0; --d) {
      if (hist[d] == 0.0) continue;
      lowest = d;
      if (above + hist[d] >= target) break;
      above += hist[d];
    }
    if (d < 0) {
      d = lowest;
      target = INFINITY;  // keep descending to the smallest value
    } else {
      target -= above;
    }
    prefix |= static_cast<uint32_t>(d) << sh;
    if (level == 2) break;
    // Survivors: candidates whose digit is d (their higher digits already match). Branch-free compaction.
    float* nv = s.cand_v[level].data();
    float* nw = s.cand_w[level].data();
    int64_t m = 0;
    for (int64_t i = 0; i < n; ++i) {
      nv[m] = v[i];
      if (kWeighted) nw[m] = w[i];
      m += ((order_key(v[i]) >> sh) & mask) == static_cast<uint32_t>(d);
    }
    v = nv, w = nw, n = m;
  }
  return key_to_float(prefix);
}

// Max of the row (NaN ignored) and whether it holds a NaN or +inf; optionally stores the fp32 row.
template <typename T, bool kStore>
inline float scan_row(const T* x, int64_t V, float* out, bool& bad) {
  float mx = -INFINITY;
  int flag = 0;
#pragma omp simd reduction(max : mx) reduction(| : flag)
  for (int64_t i = 0; i < V; ++i) {
    const float f = to_float(x[i]);
    if (kStore) out[i] = f;
    mx = f > mx ? f : mx;
    flag |= !(f < INFINITY);
  }
  bad = flag != 0;
  return mx;
}

// Error code of a row: 0 fine, j + 1 for a NaN or +inf at column j, -1 when every logit is -inf.
template <typename T>
inline int64_t row_error(const T* x, int64_t V, float mx, bool bad) {
  if (bad) {
    for (int64_t i = 0; i < V; ++i)
      if (!(to_float(x[i]) < INFINITY)) return i + 1;
  }
  return mx == -INFINITY ? -1 : 0;
}

template <typename T>
int64_t sample_row(const T* x, int64_t V, float temp, int64_t top_k, float top_p, uint64_t seed, Scratch& s,
                   int64_t& err) {
  bool bad = false;
  if (temp == 0.f || top_k == 1) {
    const float mx = scan_row<T, false>(x, V, nullptr, bad);
    if ((err = row_error(x, V, mx, bad)) != 0) return -1;
    for (int64_t i = 0; i < V; ++i)
      if (to_float(x[i]) == mx) return i;
    return -1;  // unreachable: mx is one of the values
  }
  float* row = s.row.data();
  const float mx = scan_row<T, true>(x, V, row, bad);
  if ((err = row_error(x, V, mx, bad)) != 0) return -1;

  // Top-k set K, compacted in index order.
  const float tk = (top_k > 0 && top_k < V) ? select_threshold<false>(row, nullptr, V, static_cast<double>(top_k), s)
                                            : -INFINITY;
  int32_t* idx = s.idx.data();
  float* val = s.val.data();
  float* w = s.w.data();
  int64_t n = 0;
  for (int64_t i = 0; i < V; ++i) {
    idx[n] = static_cast<int32_t>(i);
    val[n] = row[i];
    n += row[i] >= tk;
  }
  double total = 0.0;
#pragma omp simd reduction(+ : total)
  for (int64_t j = 0; j < n; ++j) {
    w[j] = std::exp((val[j] - mx) / temp);
    total += w[j];
  }

  // Top-p pivot over K, then the inverse-CDF walk over P = {val >= tp} in index order.
  const float tp = top_p < 1.f ? select_threshold<true>(val, w, n, static_cast<double>(top_p) * total, s) : -INFINITY;
  double mass = 0.0;
#pragma omp simd reduction(+ : mass)
  for (int64_t j = 0; j < n; ++j) mass += val[j] >= tp ? static_cast<double>(w[j]) : 0.0;
  const double target = rng::uniform_double(seed, 0) * mass;
  double c = 0.0;
  int64_t last = -1;
  for (int64_t j = 0; j < n; ++j) {
    if (val[j] >= tp && w[j] > 0.f) {
      c += w[j];
      last = j;
      if (c > target) return idx[j];
    }
  }
  return idx[last];  // rounding put target at the very top of the mass: the last positive-weight token
}

}  // namespace sampling_detail

// out[b] = the token drawn from row b (semantics above). err[b] = 0, or j + 1 for a NaN/+inf logit at
// column j, or -1 for a row of all -inf (then out[b] = -1); the caller raises on any nonzero err.
template <typename T>
void sample(int64_t* out,                // [B]
            int64_t* err,                // [B]
            const T* logits,             // [B, V], row stride row_stride
            const float* temperature,    // [B] >= 0
            const int64_t* top_k,        // [B] >= 0
            const float* top_p,          // [B] in (0, 1]
            const int64_t* seeds,        // [B]
            int64_t B, int64_t V, int64_t row_stride) {
  parallel_for(B, V, [&](int64_t b) {
    thread_local sampling_detail::Scratch scratch;
    scratch.ensure(V);
    out[b] = sampling_detail::sample_row<T>(logits + b * row_stride, V, temperature[b], top_k[b], top_p[b],
                                            static_cast<uint64_t>(seeds[b]), scratch, err[b]);
  });
}

}  // namespace infinilm::cpu
