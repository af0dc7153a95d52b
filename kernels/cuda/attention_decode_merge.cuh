// Shared by both paged decode kernels: which request and how many cache tokens a query row sees, and the
// second pass that merges the sequence splits of one (row, head) into the output.
#pragma once

#include "attention_common.cuh"
#include "attention_params.h"

namespace infinilm {
namespace cuda {
namespace attn {

struct RowInfo {
  int req;
  int64_t len;  // cache tokens this row attends to, clamped to what its block-table row can hold
};

// In prefill mode (query_start_loc set) row = flattened query token, which sees its request's cache
// up to and including its own position.
__device__ __forceinline__ RowInfo decode_row_info(const DecodeParams& p, int row) {
  RowInfo ri{row, 0};
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
  return ri;
}

// Merges the splits of one (row, head): out = sum_s o_s 2^(m_s - M) / sum_s l_s 2^(m_s - M).
// 128 threads: the split weights are computed in parallel, then 4 warps each sum every 4th split with
// float4 loads (independent loads in flight instead of one dependent chain over up to 256 splits).
template <typename T, int D>
__global__ void __launch_bounds__(128) paged_decode_merge_kernel(const DecodeParams p) {
  constexpr int kMaxSplits = 256, Q = D / 4;
  static_assert(Q <= 32, "one float4 per lane covers a head");
  __shared__ float w[kMaxSplits];
  __shared__ float red[4];
  __shared__ float4 part[4][Q];
  const int row = blockIdx.x, h = blockIdx.y, tid = threadIdx.x, warp = tid / 32, lane = tid % 32;
  const RowInfo ri = decode_row_info(p, row);
  const int64_t used64 = (ri.len + p.part_size - 1) / p.part_size;
  const int used = static_cast<int>(used64 < p.splits ? used64 : p.splits);
  const int64_t rh = static_cast<int64_t>(row) * p.hq + h;
  const float* ml = p.part_ml + rh * p.splits * 2;

  float mx = -INFINITY;
  for (int s = tid; s < used; s += 128) mx = fmaxf(mx, ml[2 * s]);
#pragma unroll
  for (int o = 16; o > 0; o /= 2) mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, o));
  if (lane == 0) red[warp] = mx;
  __syncthreads();
  mx = fmaxf(fmaxf(red[0], red[1]), fmaxf(red[2], red[3]));
  __syncthreads();
  float lsum = 0.f;
  for (int s = tid; s < used; s += 128) {
    const float ws = mx == -INFINITY ? 0.f : exp2f(ml[2 * s] - mx);
    w[s] = ws;
    lsum += ml[2 * s + 1] * ws;
  }
#pragma unroll
  for (int o = 16; o > 0; o /= 2) lsum += __shfl_xor_sync(0xffffffffu, lsum, o);
  if (lane == 0) red[warp] = lsum;
  __syncthreads();
  lsum = red[0] + red[1] + red[2] + red[3];

  float4 acc = make_float4(0.f, 0.f, 0.f, 0.f);
  if (lane < Q) {
    const float4* po = reinterpret_cast<const float4*>(p.part_o + rh * p.splits * D) + lane;
#pragma unroll 4
    for (int s = warp; s < used; s += 4) {
      const float4 v = po[static_cast<int64_t>(s) * Q];
      const float ws = w[s];
      acc.x = fmaf(v.x, ws, acc.x);
      acc.y = fmaf(v.y, ws, acc.y);
      acc.z = fmaf(v.z, ws, acc.z);
      acc.w = fmaf(v.w, ws, acc.w);
    }
    part[warp][lane] = acc;
  }
  __syncthreads();
  if (warp == 0 && lane < Q) {
    const float inv = lsum > 0.f ? 1.f / lsum : 0.f;
    float r[4] = {0.f, 0.f, 0.f, 0.f};
#pragma unroll
    for (int k = 0; k < 4; ++k) {
      r[0] += part[k][lane].x;
      r[1] += part[k][lane].y;
      r[2] += part[k][lane].z;
      r[3] += part[k][lane].w;
    }
    T* out = static_cast<T*>(p.out) + rh * D + lane * 4;
#pragma unroll
    for (int k = 0; k < 4; ++k) out[k] = from_float<T>(r[k] * inv);
  }
}

}  // namespace attn
}  // namespace cuda
}  // namespace infinilm
