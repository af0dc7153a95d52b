// Building blocks of the CUDA sampler (kernels/cuda/sampling.cuh): order-preserving keys, block argmax, the
// row / shared-memory candidate sources, the 3-level radix select over counts or fixed-point masses, and the
// index-order inverse-CDF draw. Torch-free.
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

}  // namespace infinilm::cuda
