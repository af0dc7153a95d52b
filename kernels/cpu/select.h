// Threshold selection without sorting: the k-th largest value, or the value where a weighted mass from
// the top reaches a target, by a 3-level radix select on an order-preserving 32-bit key (12 + 12 + 8 bits):
// one histogram pass per level over the candidates left by the previous level. O(n), exact (counts) or
// fp64-exact up to summation order (weights).
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <vector>

namespace infinilm::cpu {

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

// Per-thread buffers of select_threshold, grown once to the largest n.
struct SelectScratch {
  std::vector<float> cand_v[2], cand_w[2];  // [n] survivors of levels 0 and 1
  double hist_w[4096];
  uint32_t hist_n[4096];

  void ensure(int64_t n) {
    if (static_cast<int64_t>(cand_v[0].size()) >= n) return;
    for (auto* v : {&cand_v[0], &cand_v[1], &cand_w[0], &cand_w[1]}) v->resize(n);
  }
};

// The largest value t among v[0, n) with sum_{v[i] >= t} weight_i >= target, where weight_i = w[i] when
// kWeighted, else 1 (then target = k gives the k-th largest). Requires 0 < target <= the total weight; if
// rounding leaves the total just short of target, returns the smallest value of positive weight.
template <bool kWeighted>
float select_threshold(const float* v,  // [n]
                       const float* w,  // [n] weights (kWeighted only)
                       int64_t n, double target, SelectScratch& s) {
  static constexpr int kShift[3] = {20, 8, 0};
  static constexpr uint32_t kMask[3] = {0xfffu, 0xfffu, 0xffu};
  uint32_t prefix = 0;
  for (int level = 0; level < 3; ++level) {
    const int sh = kShift[level];
    const uint32_t mask = kMask[level];
    auto* hist = [&] {
      if constexpr (kWeighted) return s.hist_w; else return s.hist_n;
    }();
    std::fill(hist, hist + mask + 1, 0);
    for (int64_t i = 0; i < n; ++i) {
      if constexpr (kWeighted) hist[(order_key(v[i]) >> sh) & mask] += static_cast<double>(w[i]);
      else ++hist[(order_key(v[i]) >> sh) & mask];
    }
    // Walk digits from the largest values down until the mass at or above the digit reaches target.
    int64_t d = mask, lowest = -1;
    double above = 0.0;
    for (; d >= 0; --d) {
      if (hist[d] == 0) continue;
      lowest = d;
      if (above + static_cast<double>(hist[d]) >= target) break;
      above += static_cast<double>(hist[d]);
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

}  // namespace infinilm::cpu
