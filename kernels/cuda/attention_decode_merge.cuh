// Shared by both paged decode kernels: which request and which cache tokens a query row sees (causal
// bound, sliding window), the logit soft-cap, and the merge of a row's sequence splits: fused into the
// decode launch (the last CTA to finish merges, counted with an atomic), or a separate kernel as fallback.
#pragma once

#include "attention_common.cuh"
#include "attention_params.h"

namespace infinilm {
namespace cuda {
namespace attn {

struct RowInfo {
  int req;
  int64_t start;  // first visible cache token (the sliding window's left edge; 0 without a window)
  int64_t len;    // one past the last visible token, clamped to what its block-table row can hold
};

// In prefill mode (query_start_loc set) row = flattened query token, which sees its request's cache
// up to and including its own position.
__device__ __forceinline__ RowInfo decode_row_info(const DecodeParams& p, int row) {
  RowInfo ri{row, 0, 0};
  if (p.query_start_loc == nullptr) {
    ri.len = load_index(p.seq_lens, p.sl64, row);
  } else {
    int lo = 0, hi = p.num_reqs;  // last request whose start is <= row
    while (hi - lo > 1) {
      const int mid = (lo + hi) / 2;
      if (load_index(p.query_start_loc, p.qsl64, mid) <= row) lo = mid; else hi = mid;
    }
    const int64_t start = load_index(p.query_start_loc, p.qsl64, lo);
    const int64_t end = load_index(p.query_start_loc, p.qsl64, lo + 1);
    ri.req = lo;
    ri.len = (row >= start && row < end) ? load_index(p.seq_lens, p.sl64, lo) - (end - start) + (row - start) + 1 : 0;
  }
  const int64_t cap = p.capacity;
  ri.len = ri.len < 0 ? 0 : (ri.len > cap ? cap : ri.len);
  // The query sits at position len - 1 and sees keys [len - 1 - window_left, len - 1].
  if (p.window_left >= 0 && ri.len - 1 - p.window_left > 0) ri.start = ri.len - 1 - p.window_left;
  return ri;
}

// Splits that hold tokens of this row (at least 1: split 0 always runs and writes zeros for an empty row).
__device__ __forceinline__ int used_splits(const DecodeParams& p, const RowInfo& ri) {
  const int64_t u = (ri.len - ri.start + p.part_size - 1) / p.part_size;
  return u < 1 ? 1 : (u > p.splits ? p.splits : static_cast<int>(u));
}

// Scores in base-2 units (x = s * log2 e): cap * tanh(s / cap), also in base-2 units.
__device__ __forceinline__ float soft_cap_log2(float x, float cap_log2) {
  return cap_log2 > 0.f ? cap_log2 * tanhf(x / cap_log2) : x;
}

// A load served by L2, never by a possibly stale L1 line (the value was written by another SM).
template <typename V>
__device__ __forceinline__ V load_l2(const V* ptr) {
#if defined(__CUDA_ARCH__) && !defined(__HIP_PLATFORM_AMD__)
  return __ldcg(ptr);
#else
  return *ptr;  // HIP: the merging block never read these lines before, and __threadfence orders them
#endif
}

// out[row, h0 + j] for j < nh from the used splits' partials: sum_s o_s 2^(m_s - M) / sum_s l_s 2^(m_s - M).
// Each thread owns float4 slots (head j, 4 dims); the partials come from other SMs, so they are read through
// L2 (load_l2).
template <typename T, int D, int THREADS>
__device__ __forceinline__ void merge_split_partials(const DecodeParams& p, int row, int h0, int nh, int used) {
  constexpr int Q = D / 4;
  static_assert(D % 4 == 0, "float4 slots");
  for (int idx = threadIdx.x; idx < nh * Q; idx += THREADS) {
    const int j = idx / Q, q4 = idx % Q;
    const int64_t rh = static_cast<int64_t>(row) * p.hq + h0 + j;
    const float2* ml = reinterpret_cast<const float2*>(p.part_ml + rh * p.splits * 2);
    const float4* po = reinterpret_cast<const float4*>(p.part_o + rh * p.splits * D) + q4;
    float mx = -INFINITY;
#pragma unroll 8
    for (int s = 0; s < used; ++s) mx = fmaxf(mx, load_l2(ml + s).x);
    float lsum = 0.f;
    float4 acc = make_float4(0.f, 0.f, 0.f, 0.f);
    if (mx != -INFINITY) {
#pragma unroll 4
      for (int s = 0; s < used; ++s) {
        const float2 m_l = load_l2(ml + s);
        const float4 v = load_l2(po + static_cast<int64_t>(s) * Q);
        const float w = exp2f(m_l.x - mx);  // 0 for an empty split (m = -inf)
        lsum = fmaf(m_l.y, w, lsum);
        acc.x = fmaf(v.x, w, acc.x);
        acc.y = fmaf(v.y, w, acc.y);
        acc.z = fmaf(v.z, w, acc.z);
        acc.w = fmaf(v.w, w, acc.w);
      }
    }
    const float inv = lsum > 0.f ? 1.f / lsum : 0.f;
    T* out = static_cast<T*>(p.out) + rh * D + q4 * 4;
    out[0] = from_float<T>(acc.x * inv);
    out[1] = from_float<T>(acc.y * inv);
    out[2] = from_float<T>(acc.z * inv);
    out[3] = from_float<T>(acc.w * inv);
  }
}

// Called by every thread of a CTA after it wrote its split's partials (splits > 1, counters set). The
// classic threadfence reduction: each CTA publishes its partials (fence), then one thread counts it in;
// the CTA that brings the count to `used` merges all of them and resets the counter to 0 for the next
// launch (or graph replay): every other CTA of the slot has already counted, so no one touches it again.
template <typename T, int D, int THREADS>
__device__ __forceinline__ void fused_split_merge(const DecodeParams& p, int row, int h0, int nh, const RowInfo& ri) {
  __shared__ int s_last;
  const int used = used_splits(p, ri);
  __threadfence();
  __syncthreads();
  if (threadIdx.x == 0) {
    int* cnt = p.counters + static_cast<int64_t>(row) * gridDim.y + blockIdx.y;
    const int prev = atomicAdd(cnt, 1);
    const int last = prev == used - 1;
    if (last) atomicExch(cnt, 0);
    s_last = last;
  }
  __syncthreads();
  if (!s_last) return;
  __threadfence();
  merge_split_partials<T, D, THREADS>(p, row, h0, nh, used);
}

// Fallback second pass, one CTA per (row, head), when no counter workspace was given.
template <typename T, int D>
__global__ void __launch_bounds__(64) paged_decode_merge_kernel(const DecodeParams p) {
  const int row = blockIdx.x, h = blockIdx.y;
  const RowInfo ri = decode_row_info(p, row);
  merge_split_partials<T, D, 64>(p, row, h, 1, used_splits(p, ri));
}

}  // namespace attn
}  // namespace cuda
}  // namespace infinilm
