// CUDA sampling: greedy, temperature, top-k and top-p by value thresholds (radix select, no sort), then an
// inverse-CDF draw with the counter-based uniform of kernels/common/counter_rng.h. Same definition as
// kernels/cpu/sampling.h (read it for the semantics); the differences are only in rounding: weights
// w = exp((l - m) / T) are summed as exact 2^-31 fixed-point integers (deterministic, order-free), where the
// CPU sums them in fp64, so the two agree except when u * W lands within ~1e-9 of a CDF step.
//
// Two launches, no host synchronisation, no allocation (the caller passes a small workspace):
//   1. sample_partial_max_kernel: G blocks per row each find (max, first argmax) of a slice, so greedy rows
//      of a small batch read the vocab with many SMs.
//   2. sample_row_kernel: one 1024-thread block per row merges the slices; greedy rows stop there. Else a
//      3-level radix select (11 + 11 + 10 bits of an order-preserving key) finds the top-k threshold (counts)
//      with one histogram pass over the row per level; when the top-k set fits kCap it is compacted into
//      shared memory in index order, and the top-p select (fixed-point mass histograms, 2^-31 units) and the draw (a block
//      scan in index order) run there; otherwise they stream the row.
// Napkin math (V = 128256, fp32 logits 0.5 MB/row): top-k + top-p reads a row 5 times, from L2 at batch 1
// (~5 us a pass for one SM) and from DRAM at large batch (B=256: 5 x 131 MB = 0.22 ms at 3 TB/s).
// Invalid values cannot raise without a host sync: rows with temperature <= 0 or NaN, or a row whose max is
// -inf, are drawn greedily; top_k < 0 or >= V means no top-k; top_p >= 1 (or NaN) no top-p, top_p <= 0 keeps
// the most likely tokens only; NaN logits are never the max; min_p NaN or <= 0 means no min-p, > 1 acts as 1.
// The output is always a token id in [0, V).
// Min-p (kernels/common/min_p.h) is a key floor computed from the row max: it raises the top-k threshold
// key, so the kept set only shrinks and n_k stays an upper bound of its size.
#pragma once

#include "kernels/common/min_p.h"
#include "kernels/cuda/sampling_select.cuh"

namespace infinilm::cuda {

// Pass 1: (max, first argmax) of slice blockIdx.x of row blockIdx.y.
template <typename T, int VEC>
__global__ void sample_partial_max_kernel(const T* __restrict__ logits,  // [B, V], row stride row_stride
                                          int64_t row_stride, int V, int slice,
                                          float* __restrict__ part_max,  // [B, G]
                                          int* __restrict__ part_idx) {  // [B, G]
  using namespace sampling_detail;
  __shared__ float sv[kWarpSize];
  __shared__ int si[kWarpSize];
  const T* row = logits + blockIdx.y * row_stride;
  const int lo = blockIdx.x * slice, hi = min(V, lo + slice);
  ArgMax a{-INFINITY, 0x7fffffff};
  constexpr int U = 4;
  const int step = blockDim.x * VEC;
  int i = lo + threadIdx.x * VEC;
  for (; i + (U - 1) * step < hi; i += U * step) {
    Pack<T, VEC> p[U];
#pragma unroll
    for (int u = 0; u < U; ++u) p[u] = load_pack_ro<T, VEC>(row + i + u * step);
#pragma unroll
    for (int u = 0; u < U; ++u)
#pragma unroll
      for (int e = 0; e < VEC; ++e) a = better(a, ArgMax{to_float(p[u].v[e]), i + u * step + e});
  }
  for (; i < hi; i += step) {
    const Pack<T, VEC> p = load_pack_ro<T, VEC>(row + i);
#pragma unroll
    for (int e = 0; e < VEC; ++e) a = better(a, ArgMax{to_float(p.v[e]), i + e});
  }
  a = block_argmax(a, sv, si);
  if (threadIdx.x == 0) {
    part_max[blockIdx.y * gridDim.x + blockIdx.x] = a.v;
    part_idx[blockIdx.y * gridDim.x + blockIdx.x] = a.i;
  }
}

// Pass 2: one block per row; see the file comment.
template <typename T, int VEC>
__global__ void __launch_bounds__(sampling_detail::kThreads)
    sample_row_kernel(int64_t* __restrict__ out,        // [B]
                      const T* __restrict__ logits,     // [B, V], row stride row_stride
                      int64_t row_stride, int V,
                      const float* __restrict__ temperature,  // [B]
                      const int64_t* __restrict__ top_k,      // [B]
                      const float* __restrict__ top_p,        // [B]
                      const int64_t* __restrict__ seeds,      // [B]
                      const float* __restrict__ min_p,        // [B] or null
                      const float* __restrict__ part_max,     // [B, G]
                      const int* __restrict__ part_idx, int G) {
  using namespace sampling_detail;
  __shared__ Shared sh;
  const int b = blockIdx.x;
  ArgMax a{-INFINITY, 0x7fffffff};
  for (int g = threadIdx.x; g < G; g += blockDim.x) a = better(a, ArgMax{part_max[b * G + g], part_idx[b * G + g]});
  a = block_argmax(a, sh.sv, sh.si);
  const int argmax = a.i < V ? a.i : 0;  // all-NaN row: token 0
  const float m = a.v, temp = temperature[b];
  const int64_t k = top_k[b];
  if (!(temp > 0.f) || k == 1 || m == -INFINITY || a.i >= V) {
    if (threadIdx.x == 0) out[b] = argmax;
    return;
  }
  const RowSource<T, VEC> row{logits + b * row_stride, V, m, temp};
  // Top-k threshold key (0: everything) and the size of the kept set.
  uint32_t key_k = 0;
  u64 n_k = static_cast<u64>(V);
  if (k > 1 && k < V) key_k = radix_select<false>(row, 0u, static_cast<u64>(k), 0.f, sh, n_k);
  const float q = min_p ? min_p[b] : 0.f;
  if (q > 0.f) key_k = max(key_k, minp::floor_key(m, temp, fminf(q, 1.f)));
  const float p = top_p[b];
  const bool use_p = p < 1.f;
  const uint64_t seed = static_cast<uint64_t>(seeds[b]);
  int tok;
  if (n_k <= static_cast<u64>(kCap)) {
    // Ordered compaction of {key >= key_k} into shared memory, weights computed once. Each thread owns
    // U contiguous packs of a tile (U loads in flight), so one block scan orders a whole tile.
    constexpr int U = 4;
    int n = 0;
    const int tile = blockDim.x * VEC * U;
    for (int base = 0; base < V; base += tile) {
      const int b0 = base + threadIdx.x * VEC * U;
      float x[U][VEC];
      int t[U][VEC];
      int c = 0;
#pragma unroll
      for (int u = 0; u < U; ++u) {
        if (b0 + u * VEC < V) {
          row.chunk(b0 + u * VEC, x[u], t[u]);
#pragma unroll
          for (int e = 0; e < VEC; ++e) c += order_key(x[u][e]) >= key_k;
        }
      }
      u64 total;
      int pos = n + static_cast<int>(block_exclusive_scan(static_cast<u64>(c), sh.scan, total));
      if (c > 0) {
#pragma unroll
        for (int u = 0; u < U; ++u) {
#pragma unroll
          for (int e = 0; e < VEC; ++e) {
            if (b0 + u * VEC < V && order_key(x[u][e]) >= key_k && pos < kCap) {
              sh.cval[pos] = x[u][e], sh.ctok[pos] = t[u][e], sh.cw[pos] = fixed_weight(x[u][e], m, temp);
              ++pos;
            }
          }
        }
      }
      n += static_cast<int>(total);
    }
    __syncthreads();
    const SmemSource cs{sh.cval, sh.ctok, sh.cw, min(n, kCap)};
    uint32_t key_p = 0;
    u64 w_p = 0;
    if (use_p) {
      key_p = radix_select<true>(cs, 0u, 0, p > 0.f ? p : 1e-30f, sh, w_p);
    } else {
      u64 local = 0;
      for (int j = threadIdx.x; j < cs.n; j += blockDim.x) local += cs.w[j];
      block_exclusive_scan(local, sh.scan, w_p);
    }
    tok = draw(cs, key_p, w_p, seed, argmax, sh);
  } else {
    uint32_t key_p = key_k;
    u64 w_p = 0;
    if (use_p) {
      // W_K in one pass, then the floor: tokens with w < (1 - p) W_K / V hold less than (1 - p) W_K together,
      // so none is in P; only tokens above it (halved for rounding) enter the mass histograms and their exp.
      u64 local = 0, w_k = 0;
      row.visit([&](float x, int j) {
        if (order_key(x) >= key_k) local += row.weight(x, j);
      });
      block_exclusive_scan(local, sh.scan, w_k);
      const double tgt = ceil(static_cast<double>(p > 0.f ? p : 0.f) * static_cast<double>(w_k));
      const u64 target = tgt < 1.0 ? 1 : (tgt > static_cast<double>(w_k) ? w_k : static_cast<u64>(tgt));
      const double eps = 0.5 * (1.0 - static_cast<double>(p)) * static_cast<double>(w_k) / kFixedScale / V;
      uint32_t floor_key = key_k;
      if (eps > 0.0) floor_key = max(floor_key, order_key(m + temp * static_cast<float>(log(eps))));
      key_p = radix_select<true>(row, floor_key, target, 0.f, sh, w_p);
    } else {
      u64 local = 0;
      row.visit([&](float x, int j) {
        if (order_key(x) >= key_k) local += row.weight(x, j);
      });
      block_exclusive_scan(local, sh.scan, w_p);
    }
    tok = draw(row, key_p, w_p, seed, argmax, sh);
  }
  if (threadIdx.x == 0) out[b] = tok;
}

// Bytes of workspace sample() needs for B rows of V logits on the current device.
inline size_t sample_workspace_bytes(int64_t B, int64_t V, int* slices_out = nullptr) {
  int dev = 0, sms = 132;
  if (cudaGetDevice(&dev) == cudaSuccess) cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, dev);
  // Enough slices that a small batch covers about two blocks per SM, each slice at least 1024 logits
  // (one 16-byte load per thread of a 256-thread block: a greedy row costs about one memory latency).
  int64_t g = B > 0 ? (2 * sms + B - 1) / B : 1;
  g = std::max<int64_t>(1, std::min<int64_t>(g, (V + 1023) / 1024));
  if (slices_out) *slices_out = static_cast<int>(g);
  return static_cast<size_t>(B * g) * (sizeof(float) + sizeof(int));
}

// out[b] = the token drawn from row b of logits (semantics: kernels/cpu/sampling.h, invalid values: above).
template <typename T>
cudaError_t sample(int64_t* out,               // [B]
                   const T* logits,            // [B, V], row stride row_stride, last dim dense
                   const float* temperature,   // [B]
                   const int64_t* top_k,       // [B]
                   const float* top_p,         // [B]
                   const int64_t* seeds,       // [B]
                   const float* min_p,         // [B] or null (no min-p)
                   int64_t B, int64_t V, int64_t row_stride,
                   void* workspace,            // sample_workspace_bytes(B, V) bytes
                   size_t workspace_bytes, cudaStream_t stream) {
  if (B == 0) return cudaSuccess;
  if (V <= 0 || V > 0x7fffffff - 4096 || B > 65535) return cudaErrorInvalidValue;  // B is a grid y dimension
  int G = 1;
  if (workspace_bytes < sample_workspace_bytes(B, V, &G)) return cudaErrorInvalidValue;
  float* part_max = static_cast<float*>(workspace);
  int* part_idx = reinterpret_cast<int*>(part_max + B * G);
  constexpr int VV = kVec<T>;
  const bool vec_ok = V % VV == 0 && row_stride % VV == 0 && aligned_to(logits, 16);
  const int v = static_cast<int>(V);
  if (vec_ok) {
    const int slice = ceil_div(ceil_div(V, G), VV) * VV;
    sample_partial_max_kernel<T, VV><<<dim3(G, B), 256, 0, stream>>>(logits, row_stride, v, slice, part_max, part_idx);
    sample_row_kernel<T, VV><<<B, sampling_detail::kThreads, 0, stream>>>(out, logits, row_stride, v, temperature,
                                                                         top_k, top_p, seeds, min_p, part_max,
                                                                         part_idx, G);
  } else {
    const int slice = ceil_div(V, G);
    sample_partial_max_kernel<T, 1><<<dim3(G, B), 256, 0, stream>>>(logits, row_stride, v, slice, part_max, part_idx);
    sample_row_kernel<T, 1><<<B, sampling_detail::kThreads, 0, stream>>>(out, logits, row_stride, v, temperature,
                                                                        top_k, top_p, seeds, min_p, part_max,
                                                                        part_idx, G);
  }
  return cudaGetLastError();
}

}  // namespace infinilm::cuda
