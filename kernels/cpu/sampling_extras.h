// CPU sampling extras: vLLM's repetition / presence / frequency penalties in place, and log-probabilities
// (the sampled token's and the top k) in one pass per row, without materialising a log-softmax.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <utility>
#include <vector>

#include "kernels/common/penalty.h"
#include "kernels/cpu/common.h"
#include "kernels/cpu/sampling.h"

namespace infinilm::cpu {


// In place on logits [B, V] (row stride row_stride). prompt [B, Lp] / output [B, Lo]: token ids, -1 (or any
// id outside [0, V)) is padding. Each distinct token of a row is penalised once; 16-bit logits are rounded
// once, after the fp32 computation. O(Lp + Lo) per row: only the listed tokens are touched.
template <typename T>
void apply_penalties(T* logits,                // [B, V]
                     int64_t row_stride,
                     const int64_t* prompt,    // [B, Lp]
                     int64_t Lp,
                     const int64_t* output,    // [B, Lo]
                     int64_t Lo,
                     const float* rep,         // [B] > 0
                     const float* pres,        // [B]
                     const float* freq,        // [B]
                     int64_t B, int64_t V) {
  using namespace penalty;
  parallel_for(B, Lp + Lo + 1, [&](int64_t b) {
    thread_local std::vector<uint32_t> state;  // [V] per token of the row; all zero between rows
    if (static_cast<int64_t>(state.size()) < V) state.assign(V, 0);
    const int64_t* pr = prompt + b * Lp;
    const int64_t* out = output + b * Lo;
    for (int64_t j = 0; j < Lo; ++j)
      if (out[j] >= 0 && out[j] < V) ++state[out[j]];
    for (int64_t j = 0; j < Lp; ++j)
      if (pr[j] >= 0 && pr[j] < V) state[pr[j]] |= kPromptBit;
    T* row = logits + b * row_stride;
    auto visit = [&](int64_t t) {
      if (t < 0 || t >= V || (state[t] & kDoneBit)) return;
      row[t] = from_float<T>(penalty::apply(to_float(row[t]), state[t], rep[b], pres[b], freq[b]));
      state[t] |= kDoneBit;
    };
    for (int64_t j = 0; j < Lo; ++j) visit(out[j]);
    for (int64_t j = 0; j < Lp; ++j) visit(pr[j]);
    for (int64_t j = 0; j < Lo; ++j)
      if (out[j] >= 0 && out[j] < V) state[out[j]] = 0;
    for (int64_t j = 0; j < Lp; ++j)
      if (pr[j] >= 0 && pr[j] < V) state[pr[j]] = 0;
  });
}

namespace extras_detail {

struct Cand {
  float v;
  int64_t i;
};
// Larger value first; ties by lower index (the order of the returned top k).
inline bool better(const Cand& a, const Cand& b) { return a.v > b.v || (a.v == b.v && a.i < b.i); }

}  // namespace extras_detail

// Per row b of logits [B, V]: lse = log sum_j exp(l_j) (fp64 sum of fp32 exp(l_j - m), m the row max);
// sampled[b] = l[ids[b]] - lse; top_lp[b, :k] / top_ids[b, :k] = the k largest l - lse in decreasing
// order (ties: lower token id first). One pass: each 256-token chunk updates the running max and sum and,
// when its max beats the k-th best so far, a size-k heap. ids[b] in [0, V) (the caller checks). A row
// with a NaN gives NaN log-probabilities.
template <typename T>
void logprobs(float* sampled,         // [B]
              float* top_lp,          // [B, k]
              int64_t* top_ids,       // [B, k]
              const T* logits,        // [B, V], row stride row_stride
              int64_t row_stride,
              const int64_t* ids,     // [B]
              int64_t B, int64_t V, int64_t k) {
  using namespace extras_detail;
  parallel_for(B, V, [&](int64_t b) {
    constexpr int64_t kChunk = 256;
    const T* row = logits + b * row_stride;
    thread_local std::vector<Cand> heap;  // min-heap under `better`: heap.front() is the worst kept
    heap.clear();
    auto worse = [](const Cand& a, const Cand& c) { return better(a, c); };
    float m = -INFINITY;
    double s = 0.0;
    int nan = 0;
    float buf[kChunk];
    for (int64_t c0 = 0; c0 < V; c0 += kChunk) {
      const int64_t len = std::min(kChunk, V - c0);
      float cm = -INFINITY;
#pragma omp simd reduction(max : cm) reduction(| : nan)
      for (int64_t j = 0; j < len; ++j) {
        const float f = to_float(row[c0 + j]);
        buf[j] = f;
        cm = f > cm ? f : cm;
        nan |= f != f;
      }
      if (cm > m) {  // rescale the running sum to the new max
        if (m > -INFINITY) s *= std::exp(static_cast<double>(m) - static_cast<double>(cm));
        m = cm;
      }
      if (m > -INFINITY) {
        double cs = 0.0;
#pragma omp simd reduction(+ : cs)
        for (int64_t j = 0; j < len; ++j) cs += static_cast<double>(sampling_detail::exp_nonpos(buf[j] - m));
        s += cs;
      }
      if (k == 0) continue;
      if (static_cast<int64_t>(heap.size()) == k && !(cm > heap.front().v)) continue;  // ties lose: higher ids
      for (int64_t j = 0; j < len; ++j) {
        const Cand c{buf[j], c0 + j};
        if (static_cast<int64_t>(heap.size()) < k) {
          heap.push_back(c);
          std::push_heap(heap.begin(), heap.end(), worse);
        } else if (better(c, heap.front())) {
          std::pop_heap(heap.begin(), heap.end(), worse);
          heap.back() = c;
          std::push_heap(heap.begin(), heap.end(), worse);
        }
      }
    }
    const double lse = nan ? NAN : static_cast<double>(m) + std::log(s);
    auto lp = [&](float x) { return static_cast<float>(static_cast<double>(x) - lse); };
    sampled[b] = lp(to_float(row[ids[b]]));
    std::sort(heap.begin(), heap.end(), better);
    for (int64_t j = 0; j < k; ++j) {
      top_lp[b * k + j] = lp(heap[j].v);
      top_ids[b * k + j] = heap[j].i;
    }
  });
}

}  // namespace infinilm::cpu
