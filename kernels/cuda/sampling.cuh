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
// the most likely tokens only; NaN logits are never the max. The output is always a token id in [0, V).
#pragma once

#include "kernels/common/counter_rng.h"
#include "kernels/cuda/common.cuh"

namespace infinilm::cuda {

namespace sampling_detail {

constexpr int kThreads = 1024;   // threads of the per-row block
constexpr int kCap = 1024;       // top-k sets up to this size are compacted into shared memory
constexpr int kBins = 2048;      // histogram bins per radix level
constexpr float kFixedScale = 2147483648.0f;  // 2^31: weight w in [0, 1] -> integer mass (< 2^48 a row)

typedef unsigned long long u64;

// Monotone float -> uint32 (a < b <=> key(a) < key(b)), -0.0 folded onto +0.0 (as kernels/cpu/sampling.h).
__device__ __forceinline__ uint32_t order_key(float x) {
  const uint32_t u = __float_as_uint(x + 0.0f);
  return (u & 0x80000000u) ? ~u : (u | 0x80000000u);
}

__device__ __forceinline__ u64 fixed_weight(float x, float m, float temp) {
  return __float2ull_rn(expf((x - m) / temp) * kFixedScale);
}

struct ArgMax {
  float v;
  int i;
};

// Larger value wins; on equal values the lower index (the first maximum). NaN never wins.
__device__ __forceinline__ ArgMax better(ArgMax a, ArgMax b) { return (b.v > a.v || (b.v == a.v && b.i < a.i)) ? b : a; }

__device__ __forceinline__ ArgMax block_argmax(ArgMax a, float* sv, int* si) {
  const int lane = threadIdx.x % kWarpSize, warp = threadIdx.x / kWarpSize, warps = blockDim.x / kWarpSize;
#pragma unroll
  for (int o = kWarpSize / 2; o > 0; o >>= 1)
    a = better(a, ArgMax{__shfl_xor_sync(kFullMask, a.v, o), __shfl_xor_sync(kFullMask, a.i, o)});
  if (lane == 0) sv[warp] = a.v, si[warp] = a.i;
  __syncthreads();
  a = lane < warps ? ArgMax{sv[lane], si[lane]} : ArgMax{-INFINITY, 0x7fffffff};
#pragma unroll
  for (int o = kWarpSize / 2; o > 0; o >>= 1)
    a = better(a, ArgMax{__shfl_xor_sync(kFullMask, a.v, o), __shfl_xor_sync(kFullMask, a.i, o)});
  __syncthreads();
  return a;
}

// The row in global memory: thread-strided VEC-wide packs, U packs in flight per thread.
template <typename T, int VEC>
struct RowSource {
  const T* row;
  int n;
  float m, temp;
  static constexpr int kPer = VEC;  // contiguous elements per thread in index-order passes

  template <typename F>
  __device__ __forceinline__ void visit(F&& f) const {
    constexpr int U = 4;
    const int step = blockDim.x * VEC;
    int i = threadIdx.x * VEC;
    for (; i + (U - 1) * step < n; i += U * step) {
      Pack<T, VEC> p[U];
#pragma unroll
      for (int u = 0; u < U; ++u) p[u] = load_pack_ro<T, VEC>(row + i + u * step);
#pragma unroll
      for (int u = 0; u < U; ++u)
#pragma unroll
        for (int e = 0; e < VEC; ++e) f(to_float(p[u].v[e]), i + u * step + e);
    }
    for (; i < n; i += step) {
      const Pack<T, VEC> p = load_pack_ro<T, VEC>(row + i);
#pragma unroll
      for (int e = 0; e < VEC; ++e) f(to_float(p.v[e]), i + e);
    }
  }
  // Elements [base, base + VEC) of an index-order pass (base a multiple of VEC, n a multiple of VEC).
  __device__ __forceinline__ void chunk(int base, float (&x)[VEC], int (&tok)[VEC]) const {
    const Pack<T, VEC> p = load_pack_ro<T, VEC>(row + base);
#pragma unroll
    for (int e = 0; e < VEC; ++e) x[e] = to_float(p.v[e]), tok[e] = base + e;
  }
  __device__ __forceinline__ u64 weight(float x, int) const { return fixed_weight(x, m, temp); }
};

// The compacted top-k set in shared memory, in increasing token order, with precomputed weights.
struct SmemSource {
  const float* val;
  const int* tok;
  const u64* w;
  int n;
  static constexpr int kPer = 1;

  template <typename F>
  __device__ __forceinline__ void visit(F&& f) const {
    for (int j = threadIdx.x; j < n; j += blockDim.x) f(val[j], j);
  }
  __device__ __forceinline__ void chunk(int base, float (&x)[1], int (&t)[1]) const { x[0] = val[base], t[0] = tok[base]; }
  __device__ __forceinline__ u64 weight(float, int j) const { return w[j]; }
};

struct Shared {
  // Masses are 64-bit sums kept as two 32-bit words, so every update is a native 32-bit shared atomic
  // (a 64-bit shared atomicAdd is a compare-and-swap loop, slow when the top bins are contended).
  union {
    uint32_t cnt[kBins];
    struct {
      uint32_t lo[kBins], hi[kBins];
    } mass;
  } hist;
  float cval[kCap];
  int ctok[kCap];
  u64 cw[kCap];
  u64 scan[kWarpSize];
  float sv[kWarpSize];
  int si[kWarpSize];
  u64 found_above, found_bin;
  int found_digit, found_tok;
};

__device__ __forceinline__ u64 bin_mass(const Shared& sh, int d) {
  return (static_cast<u64>(sh.hist.mass.hi[d]) << 32) | sh.hist.mass.lo[d];
}

// The largest key t such that the weight (count, or fixed-point mass when WEIGHTED) of elements with
// key >= t and key >= floor_key reaches the target. With frac > 0 the target is ceil(frac * total weight),
// taken after the first level. Returns t; `at_or_above` gets the weight of elements with key >= t.
template <bool WEIGHTED, class Src>
__device__ uint32_t radix_select(const Src& src, uint32_t floor_key, u64 target, float frac, Shared& sh,
                                 u64& at_or_above) {
  constexpr int kShift[3] = {21, 10, 0};
  constexpr uint32_t kMask[3] = {0x7ffu, 0x7ffu, 0x3ffu};
  uint32_t prefix = 0, pmask = 0;
  u64 above = 0;
#pragma unroll 1
  for (int level = 0; level < 3; ++level) {
    const int shift = kShift[level];
    const uint32_t mask = kMask[level];
    const int nb = static_cast<int>(mask) + 1;
    for (int d = threadIdx.x; d < nb; d += blockDim.x) {
      if (WEIGHTED) sh.hist.mass.lo[d] = sh.hist.mass.hi[d] = 0;
      else sh.hist.cnt[d] = 0;
    }
    __syncthreads();
    src.visit([&](float x, int j) {
      const uint32_t key = order_key(x);
      if ((key & pmask) == prefix && key >= floor_key) {
        const uint32_t d = (key >> shift) & mask;
        if (WEIGHTED) {
          const uint32_t v = static_cast<uint32_t>(src.weight(x, j));  // <= 2^31
          const uint32_t old = atomicAdd(&sh.hist.mass.lo[d], v);
          if (old + v < old) atomicAdd(&sh.hist.mass.hi[d], 1u);  // this add wrapped the low word: carry
        } else {
          atomicAdd(&sh.hist.cnt[d], 1u);
        }
      }
    });
    __syncthreads();
    // Suffix sums from the top bin down: thread t owns bins nb-1-t*per ... nb-(t+1)*per.
    const int per = (nb + blockDim.x - 1) / blockDim.x;
    u64 local = 0;
    for (int q = 0; q < per; ++q) {
      const int d = nb - 1 - threadIdx.x * per - q;
      if (d >= 0) local += WEIGHTED ? bin_mass(sh, d) : sh.hist.cnt[d];
    }
    u64 total;
    u64 a = block_exclusive_scan(local, sh.scan, total);
    if (level == 0 && frac > 0.f) {
      const double t = ceil(static_cast<double>(frac) * static_cast<double>(total));
      target = t < 1.0 ? 1 : static_cast<u64>(t);
    }
    if (target > total) target = total;  // (cannot happen with exact counts; keeps the walk defined)
    if (target == 0) target = 1;
    for (int q = 0; q < per; ++q) {
      const int d = nb - 1 - threadIdx.x * per - q;
      if (d < 0) break;
      const u64 h = WEIGHTED ? bin_mass(sh, d) : sh.hist.cnt[d];
      if (h > 0 && a < target && a + h >= target) {
        sh.found_digit = d;
        sh.found_above = a;
        sh.found_bin = h;
      }
      a += h;
    }
    __syncthreads();
    const int d = sh.found_digit;
    target -= sh.found_above;
    above += sh.found_above;
    at_or_above = above + sh.found_bin;
    prefix |= static_cast<uint32_t>(d) << shift;
    pmask |= mask << shift;
    __syncthreads();  // everyone has read found_* and the histogram before the next level clears them
  }
  return prefix;
}

// Inverse CDF in index order over elements with key >= floor_key: the first token whose running mass
// exceeds floor(u * total), u = r / 2^53. Exact integer arithmetic, so a crossing always exists.
template <class Src>
__device__ int draw(const Src& src, uint32_t floor_key, u64 total, uint64_t seed, int fallback, Shared& sh) {
  constexpr int P = Src::kPer;
  const u64 r = rng::random_bits(seed, 0) >> 11;
  const u64 hi = __umul64hi(r, total), lo = r * total;
  const u64 tgt = (hi << 11) | (lo >> 53);
  if (threadIdx.x == 0) sh.found_tok = fallback;
  u64 run = 0;
  const int tile = blockDim.x * P;
  for (int base = 0; base < src.n; base += tile) {
    const int b0 = base + threadIdx.x * P;
    float x[P];
    int tok[P];
    u64 w[P];
    u64 local = 0;
    if (b0 < src.n) {
      src.chunk(b0, x, tok);
#pragma unroll
      for (int e = 0; e < P; ++e) {
        w[e] = order_key(x[e]) >= floor_key ? src.weight(x[e], b0 + e) : 0;
        local += w[e];
      }
    }
    u64 sum;
    const u64 excl = run + block_exclusive_scan(local, sh.scan, sum);
    if (local > 0 && excl <= tgt && tgt < excl + local) {
      u64 c = excl;
#pragma unroll
      for (int e = 0; e < P; ++e) {
        c += w[e];
        if (c > tgt) {
          sh.found_tok = tok[e];
          break;
        }
      }
    }
    run += sum;
    if (run > tgt) break;  // uniform across the block
  }
  __syncthreads();
  return sh.found_tok;
}

}  // namespace sampling_detail

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
                                                                         top_k, top_p, seeds, part_max, part_idx, G);
  } else {
    const int slice = ceil_div(V, G);
    sample_partial_max_kernel<T, 1><<<dim3(G, B), 256, 0, stream>>>(logits, row_stride, v, slice, part_max, part_idx);
    sample_row_kernel<T, 1><<<B, sampling_detail::kThreads, 0, stream>>>(out, logits, row_stride, v, temperature,
                                                                        top_k, top_p, seeds, part_max, part_idx, G);
  }
  return cudaGetLastError();
}

}  // namespace infinilm::cuda
