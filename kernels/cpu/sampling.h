// CPU sampling: greedy, temperature, top-k and top-p by value thresholds (no sort of the vocab), then an
// inverse-CDF draw with a counter-based uniform keyed on the row's seed.
//
// Semantics, per row b (the CUDA kernel implements the same definition; ties are part of it):
//   l = logits[b, :] converted to fp32 (-inf = masked token), V its length, m = max_i l_i (finite: rows of
//   all -inf, NaN and +inf are errors), T = temperature[b], k = top_k[b], p = top_p[b], q = min_p[b] (0
//   when no min_p is given).
//   1. Greedy when T == 0 or k == 1: the lowest index i with l_i == m.
//   2. Top-k, when 0 < k < V: t_k = the k-th largest of l (counted with multiplicity);
//      K = {i : l_i >= t_k}, so tokens tied with the k-th are all kept (|K| >= k). Otherwise K = all.
//      Min-p, when q > 0 (vLLM: p_i >= q * p_max after temperature): K is intersected with
//      {i : (l_i - m) / T >= ln q}, the exact fp32 rule of kernels/common/min_p.h. Both sets are upper sets
//      of l, so the order of the two filters does not matter; top-p below renormalises over what is left.
//   3. Weights w_i = exp(z_i), z_i = (l_i - m) / T in fp32 (subtract, then divide), and w_i = 0 where
//      z_i < -87.33654 (below the normal fp32 range; masked -inf logits included): the softmax of l / T up to
//      its normaliser. exp is any fp32 exp of a few ulp (here exp_approx, ~2 ulp). Filtering compares l, not
//      p: exp and division by T > 0 are monotone, so the order is the same, and set membership does not
//      depend on how a device rounds exp.
//   4. Top-p, when p < 1: W_K = sum_{i in K} w_i; t_p = the largest value v such that
//      sum_{i in K, l_i >= v} w_i >= p * W_K; P = {i in K : l_i >= t_p}. P is the smallest most-likely set
//      whose mass, renormalised over K, reaches p, with boundary ties kept. Otherwise P = K.
//   5. Draw: u = rng::uniform_double(seeds[b], 0) in [0, 1) (kernels/common/counter_rng.h);
//      walk P in increasing index order, c += w_i, and return the first i with c > u * W_P, W_P the sum
//      over all of P. A token with w_i == 0 (masked, or underflowed) is never drawn.
//   Sums are fp64 here, in any order (rounding at the 1e-16 level decides only draws that land exactly on a
//   CDF step or a top-p boundary). -0.0 and +0.0 logits compare equal, as floats do.
//
// Algorithm: one pass converts the row, finds m and the max of each 64-token block. Top-k: the k-th largest
// block max bounds t_k from below, so only blocks whose max reaches it are visited to collect candidates
// (a few times k for real logits), and t_k is selected among those. Top-p without top-k: one vectorised
// exp pass gives W; tokens lighter than (1 - p) * W / V cannot reach the pivot together, so only tokens
// at or above the lightest heavier one stay candidates. Thresholds come from the radix select of
// kernels/cpu/select.h; the draw skips 256-token chunks by their vector sums. O(V) per row, no sort.
// Napkin math (V = 128256, fp32): the row is 0.5 MB, read once with top-k (~25 µs at ~20 GB/s on one
// core); without top-k add one exp per token (~1.3 ns each with SSE2 vectors) and the top-p select.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <type_traits>
#include <vector>

#include "kernels/common/counter_rng.h"
#include "kernels/common/min_p.h"
#include "kernels/cpu/common.h"
#include "kernels/cpu/select.h"

namespace infinilm::cpu {

namespace sampling_detail {

// Per-thread buffers, grown to the vocab size once and reused across rows and calls.
struct Scratch {
  std::vector<float> row;      // [V] the row in fp32 (16-bit logits only)
  std::vector<float> bmax;     // [V / kBlock] per-block maxima of the row
  std::vector<int32_t> idx;    // [V] token ids of the candidates / top-k set, increasing
  std::vector<float> val;      // [V] their logits
  std::vector<float> w;        // [V] weights exp((l - m) / T), of the top-k set (or of the whole row)
  SelectScratch sel;

  void ensure(int64_t V) {
    if (static_cast<int64_t>(row.size()) >= V) return;
    row.resize(V), bmax.resize(V), idx.resize(V), val.resize(V), w.resize(V);
    sel.ensure(V);
  }
};

constexpr int64_t kBlock = 64;  // block of the maxima that bound the top-k threshold from below

// Max of the row (NaN ignored), whether it holds a NaN or +inf, and the max of each kBlock-block into
// bmax; stores the fp32 row into out when kStore.
template <typename T, bool kStore>
inline float scan_row(const T* x, int64_t V, float* out, float* bmax, bool& bad) {
  float mx = -INFINITY;
  int flag = 0;
  for (int64_t b0 = 0; b0 < V; b0 += kBlock) {
    const int64_t b1 = std::min(V, b0 + kBlock);
    float m = -INFINITY;
#pragma omp simd reduction(max : m) reduction(| : flag)
    for (int64_t i = b0; i < b1; ++i) {
      const float f = to_float(x[i]);
      if (kStore) out[i] = f;
      m = f > m ? f : m;
      flag |= !(f < INFINITY);
    }
    if (bmax) bmax[b0 / kBlock] = m;
    mx = m > mx ? m : mx;
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

// exp(z) for z <= 0 (z = -inf allowed) to ~2 ulp, 0 once the result would leave the normal fp32 range
// (z below about -87.7). Clamps in the integer domain: a float compare-and-select stops GCC vectorising the
// loop under its default -ftrapping-math, integer ones do not.
inline float exp_nonpos(float z) {
  uint32_t zb;
  std::memcpy(&zb, &z, 4);
  zb = zb > 0xC2C80000u ? 0xC2C80000u : zb;  // z <= 0: larger bit patterns are more negative; -100.0f
  float x;
  std::memcpy(&x, &zb, 4);
  const float n = (x * 1.44269504088896341f + 12582912.f) - 12582912.f;  // round(x / ln 2), in [-145, 0]
  const float r = (x - n * 0.693359375f) + n * 2.12194440e-4f;           // Cody-Waite reduction
  float p = 1.f / 720.f;
  p = p * r + 1.f / 120.f;
  p = p * r + 1.f / 24.f;
  p = p * r + 1.f / 6.f;
  p = p * r + 0.5f;
  p = p * r + 1.f;
  p = p * r + 1.f;
  int32_t e = static_cast<int32_t>(n) + 127;
  e = e < 0 ? 0 : e;  // 2^(n) below 2^-126: scale 0, weight 0
  const uint32_t bits = static_cast<uint32_t>(e) << 23;
  float scale;
  std::memcpy(&scale, &bits, 4);
  return p * scale;
}

// Token weight exp((l - m) / T); l <= m and T > 0, so the argument is <= 0.
inline float weight_of(float l, float mx, float temp) { return exp_nonpos((l - mx) / temp); }

// w as fp64 when the logit's key is >= kt, else 0, by integer masking (vectorises; see exp_nonpos).
inline double weight_if(float l, float w, uint32_t kt) {
  uint32_t wb;
  std::memcpy(&wb, &w, 4);
  wb &= order_key(l) >= kt ? 0xffffffffu : 0u;
  float r;
  std::memcpy(&r, &wb, 4);
  return static_cast<double>(r);
}

// Branch-free: keeps (idx[j], val[j]) with val[j] >= t, in order; returns how many.
inline int64_t compact_ge(int32_t* idx, float* val, int64_t n, float t) {
  int64_t m = 0;
  for (int64_t j = 0; j < n; ++j) {
    idx[m] = idx[j];
    val[m] = val[j];
    m += val[j] >= t;
  }
  return m;
}

template <typename T>
int64_t sample_row(const T* x, int64_t V, float temp, int64_t top_k, float top_p, float min_p, uint64_t seed,
                   Scratch& s, int64_t& err) {
  bool bad = false;
  if (temp == 0.f || top_k == 1) {
    const float mx = scan_row<T, false>(x, V, nullptr, s.bmax.data(), bad);
    if ((err = row_error(x, V, mx, bad)) != 0) return -1;
    int64_t b = 0;
    while (s.bmax[b] != mx) ++b;  // the first block holding the max, then its first token
    for (int64_t i = b * kBlock;; ++i)
      if (to_float(x[i]) == mx) return i;
  }
  const bool use_k = top_k > 0 && top_k < V;
  const bool use_min_p = min_p > 0.f;
  const bool filter = use_k || use_min_p;
  const float* row;
  float mx;
  if constexpr (std::is_same_v<T, float>) {
    row = x;
    mx = scan_row<T, false>(x, V, nullptr, filter ? s.bmax.data() : nullptr, bad);
  } else {
    row = s.row.data();
    mx = scan_row<T, true>(x, V, s.row.data(), filter ? s.bmax.data() : nullptr, bad);
  }
  if ((err = row_error(x, V, mx, bad)) != 0) return -1;

  // Top-k (and min-p) set K in index order. The k-th largest block maximum bounds t_k from below (the k
  // largest maxima are k distinct tokens), so only tokens at or above it are candidates: usually a few
  // times k. Min-p's floor l* raises that bound: when more than k tokens reach l*, the k-th largest of the
  // row is among them (so t_k is selected there); when at most k do, all of them are in K.
  const int32_t* kidx = nullptr;  // null: K is the whole row, ids are positions
  const float* kval = row;
  int64_t n = V;
  if (filter) {
    const int64_t nb = (V + kBlock - 1) / kBlock;
    float lb = use_k && top_k <= nb ? select_threshold<false>(s.bmax.data(), nullptr, nb, top_k, s.sel) : -INFINITY;
    if (use_min_p) lb = std::max(lb, minp::key_to_float(minp::floor_key(mx, temp, std::min(min_p, 1.f))));
    int32_t* idx = s.idx.data();
    float* val = s.val.data();
    n = 0;
    for (int64_t b = 0; b < nb; ++b) {
      if (!(s.bmax[b] >= lb)) continue;  // the block holds no candidate
      for (int64_t i = b * kBlock, e = std::min(V, i + kBlock); i < e; ++i) {
        idx[n] = static_cast<int32_t>(i);
        val[n] = row[i];
        n += row[i] >= lb;
      }
    }
    if (use_k && n > top_k) {
      const float tk = select_threshold<false>(val, nullptr, n, static_cast<double>(top_k), s.sel);
      n = compact_ge(idx, val, n, tk);
    }
    kidx = idx, kval = val;
  }
  float* w = s.w.data();
  double total = 0.0;
#pragma omp simd reduction(+ : total)
  for (int64_t j = 0; j < n; ++j) {
    w[j] = weight_of(kval[j], mx, temp);
    total += w[j];
  }

  // Top-p over K, P = {j : kval[j] >= tp}. Compares go through order_key (integer compares vectorise
  // where float compare-selects do not, see exp_nonpos).
  uint32_t ktp = 0;  // key of tp; 0 keeps everything
  if (top_p < 1.f) {
    if (n > 4096) {
      // Tail pruning: the tokens lighter than eps = (1 - p) * W_K / n weigh less than (1 - p) * W_K
      // together, so the pivot lies at or above vmin = the smallest logit of a token weighing >= eps.
      // Only tokens with l >= vmin stay candidates (the 0.999 absorbs the rounding of eps).
      const float eps = static_cast<float>((1.0 - top_p) * total / static_cast<double>(n) * 0.999);
      uint32_t eps_bits, kmin = UINT32_MAX;
      std::memcpy(&eps_bits, &eps, 4);
#pragma omp simd reduction(min : kmin)
      for (int64_t j = 0; j < n; ++j) {
        uint32_t wb;
        std::memcpy(&wb, &w[j], 4);  // w >= 0: float order is integer order
        const uint32_t key = wb >= eps_bits ? order_key(kval[j]) : UINT32_MAX;
        kmin = key < kmin ? key : kmin;
      }
      int32_t* idx = s.idx.data();
      float* val = s.val.data();
      int64_t m = 0;
      for (int64_t j0 = 0; j0 < n; j0 += kBlock) {
        const int64_t j1 = std::min(n, j0 + kBlock);
        int any = 0;
#pragma omp simd reduction(| : any)
        for (int64_t j = j0; j < j1; ++j) any |= order_key(kval[j]) >= kmin;
        if (!any) continue;  // real logits: most blocks hold only tail tokens
        for (int64_t j = j0; j < j1; ++j) {
          idx[m] = kidx ? kidx[j] : static_cast<int32_t>(j);
          val[m] = kval[j];
          w[m] = w[j];
          m += order_key(kval[j]) >= kmin;
        }
      }
      kidx = idx, kval = val, n = m;
    }
    ktp = order_key(select_threshold<true>(kval, w, n, static_cast<double>(top_p) * total, s.sel));
  }
  double mass = 0.0;
#pragma omp simd reduction(+ : mass)
  for (int64_t j = 0; j < n; ++j) mass += weight_if(kval[j], w[j], ktp);

  // Inverse CDF in index order: skip whole chunks by their vector sums, then walk one token at a time.
  const double target = rng::uniform_double(seed, 0) * mass;
  constexpr int64_t kChunk = 256;
  double c = 0.0;
  for (int64_t j0 = 0; j0 < n; j0 += kChunk) {
    const int64_t j1 = std::min(n, j0 + kChunk);
    double cs = 0.0;
#pragma omp simd reduction(+ : cs)
    for (int64_t j = j0; j < j1; ++j) cs += weight_if(kval[j], w[j], ktp);
    if (c + cs <= target) {
      c += cs;
      continue;
    }
    for (int64_t j = j0; j < j1; ++j) {
      if (order_key(kval[j]) >= ktp && w[j] > 0.f) {
        c += w[j];
        if (c > target) return kidx ? kidx[j] : j;
      }
    }
  }
  // Rounding put target at the very top of the mass: the last token of P with positive weight.
  for (int64_t j = n - 1; j >= 0; --j)
    if (order_key(kval[j]) >= ktp && w[j] > 0.f) return kidx ? kidx[j] : j;
  return -1;  // unreachable: the max token has weight 1
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
            const float* min_p,          // [B] in [0, 1], or null (no min-p)
            int64_t B, int64_t V, int64_t row_stride) {
  parallel_for(B, V, [&](int64_t b) {
    thread_local sampling_detail::Scratch scratch;
    scratch.ensure(V);
    out[b] = sampling_detail::sample_row<T>(logits + b * row_stride, V, temperature[b], top_k[b], top_p[b],
                                            min_p ? min_p[b] : 0.f, static_cast<uint64_t>(seeds[b]), scratch,
                                            err[b]);
  });
}

}  // namespace infinilm::cpu
