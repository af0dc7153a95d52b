// CUDA sampling extras: vLLM's penalties in place (apply_penalties) and log-probabilities (logprobs) of
// the sampled token and the top k, with the semantics of kernels/cpu/sampling_extras.h. Torch-free, no host
// synchronisation, no allocation: both are CUDA-graph safe.
//
// apply_penalties: one block per row. The vocab is walked in chunks of kPenChunk tokens; for each chunk the
// block builds the state words (kernels/common/penalty.h) of the listed tokens in shared memory with
// atomics, then every distinct listed token claims its word once (atomicOr of the done bit) and is
// penalised. Work per row: (V / kPenChunk) x (Lp + Lo) list reads (L2-resident) + one read-modify-write per
// distinct token; the logits are never streamed. Ids outside [0, V) are padding; a repetition penalty that
// is NaN or <= 0 counts as 1 (no host check is possible here; the engine checks on the host).
//
// logprobs: one 1024-thread block per row. Pass 1: per-thread online (max, sum of exp) merged across the
// block (fp64 merge) -> lse. Top k: the radix select of sampling_select.cuh finds the key of the k-th
// largest logit (3 passes), one ordered pass compacts the tokens above it and the first tied ones into
// shared memory, and each candidate's rank (value desc, id asc) places it in the output. Napkin math:
// 5 reads of the row (V = 128256 fp32: 0.5 MB, from L2 at small batch), no [B, V] output written.
#pragma once

#include "kernels/common/penalty.h"
#include "kernels/cuda/sampling_select.cuh"

namespace infinilm::cuda {

namespace extras_detail {
constexpr int kPenChunk = 8192;  // 32 KB of state words in shared memory
constexpr int kPenThreads = 256;
}  // namespace extras_detail

template <typename T>
__global__ void __launch_bounds__(extras_detail::kPenThreads)
    apply_penalties_kernel(T* __restrict__ logits,  // [B, V], row stride row_stride
                           int64_t row_stride, int V,
                           const int64_t* __restrict__ prompt,  // [B, Lp]
                           int Lp,
                           const int64_t* __restrict__ output,  // [B, Lo]
                           int Lo,
                           const float* __restrict__ rep,   // [B]
                           const float* __restrict__ pres,  // [B]
                           const float* __restrict__ freq) {  // [B]
  using namespace extras_detail;
  __shared__ uint32_t st[kPenChunk];
  const int b = blockIdx.x;
  const int64_t* pr = prompt + static_cast<int64_t>(b) * Lp;
  const int64_t* out = output + static_cast<int64_t>(b) * Lo;
  T* row = logits + b * row_stride;
  float r = rep[b];
  if (!(r > 0.f)) r = 1.f;
  const float pp = pres[b], fq = freq[b];
  if (Lp + Lo == 0) return;
  for (int base = 0; base < V; base += kPenChunk) {
    for (int i = threadIdx.x; i < kPenChunk; i += blockDim.x) st[i] = 0;
    __syncthreads();
    auto local = [&](int64_t tok) -> int {  // index in this chunk, or -1
      return (tok >= base && tok < V && tok < static_cast<int64_t>(base) + kPenChunk) ? static_cast<int>(tok - base)
                                                                                      : -1;
    };
    for (int j = threadIdx.x; j < Lo; j += blockDim.x) {
      const int t = local(out[j]);
      if (t >= 0) atomicAdd(&st[t], 1u);
    }
    for (int j = threadIdx.x; j < Lp; j += blockDim.x) {
      const int t = local(pr[j]);
      if (t >= 0) atomicOr(&st[t], penalty::kPromptBit);
    }
    __syncthreads();
    for (int j = threadIdx.x; j < Lo + Lp; j += blockDim.x) {
      const int64_t tok = j < Lo ? out[j] : pr[j - Lo];
      const int t = local(tok);
      if (t < 0) continue;
      const uint32_t old = atomicOr(&st[t], penalty::kDoneBit);
      if (old & penalty::kDoneBit) continue;
      row[tok] = from_float<T>(penalty::apply(to_float(row[tok]), old, r, pp, fq));
    }
    __syncthreads();  // the chunk's words are read before the next chunk clears them
  }
}

template <typename T>
cudaError_t apply_penalties(T* logits,               // [B, V], row stride row_stride, last dim dense
                            int64_t row_stride,
                            const int64_t* prompt,   // [B, Lp]
                            int64_t Lp,
                            const int64_t* output,   // [B, Lo]
                            int64_t Lo,
                            const float* rep,        // [B]
                            const float* pres,       // [B]
                            const float* freq,       // [B]
                            int64_t B, int64_t V, cudaStream_t stream) {
  if (B == 0) return cudaSuccess;
  if (V <= 0 || V > 0x7fffffff - extras_detail::kPenChunk || B > 0x7fffffff || Lp + Lo > 0x7fffffff)
    return cudaErrorInvalidValue;
  apply_penalties_kernel<T><<<static_cast<unsigned>(B), extras_detail::kPenThreads, 0, stream>>>(
      logits, row_stride, static_cast<int>(V), prompt, static_cast<int>(Lp), output, static_cast<int>(Lo), rep, pres,
      freq);
  return cudaGetLastError();
}

// Pass 1 .. 4 of logprobs for row blockIdx.x; see the file comment.
template <typename T, int VEC>
__global__ void __launch_bounds__(sampling_detail::kThreads)
    logprobs_kernel(float* __restrict__ sampled,     // [B]
                    float* __restrict__ top_lp,      // [B, k]
                    int64_t* __restrict__ top_ids,   // [B, k]
                    const T* __restrict__ logits,    // [B, V], row stride row_stride
                    int64_t row_stride, int V,
                    const int64_t* __restrict__ ids,  // [B]
                    int k) {
  using namespace sampling_detail;
  __shared__ Shared sh;
  __shared__ double red_s[kWarpSize];
  __shared__ float red_m[kWarpSize];
  __shared__ int nan_flag;
  const int b = blockIdx.x;
  const RowSource<T, VEC> row{logits + b * row_stride, V, 0.f, 1.f};
  if (threadIdx.x == 0) nan_flag = 0;
  // Online max and sum of exp per thread.
  float m = -INFINITY, s = 0.f;
  bool nan = false;
  row.visit([&](float x, int) {
    if (x != x) {
      nan = true;
    } else if (x > m) {
      s = s * expf(m - x) + 1.f;  // m = -inf: s is 0 and expf(-inf) = 0
      m = x;
    } else if (x > -INFINITY) {
      s += expf(x - m);
    }
  });
  __syncthreads();
  if (nan) nan_flag = 1;
  const float bm = block_max(m, red_m, -INFINITY);
  double ds = m > -INFINITY ? static_cast<double>(s) * exp(static_cast<double>(m) - static_cast<double>(bm)) : 0.0;
  ds = block_sum(ds, red_s);
  const double lse = nan_flag ? NAN : static_cast<double>(bm) + log(ds);
  const int64_t id = ids[b];
  if (threadIdx.x == 0) {
    sampled[b] = id >= 0 && id < V ? static_cast<float>(static_cast<double>(to_float(row.row[id])) - lse) : NAN;
  }
  if (k <= 0) return;
  // Key of the k-th largest; tokens with a larger key are all in, then the first ties by id.
  u64 n_ge = 0;
  const uint32_t key_k = radix_select<false>(row, 0u, static_cast<u64>(k), 0.f, sh, n_ge);
  const int n_gt = static_cast<int>(n_ge - sh.found_bin);  // < k
  const int want_eq = k - n_gt;
  int pos_gt = 0, pos_eq = 0;
  constexpr int P = RowSource<T, VEC>::kPer;
  const int tile = blockDim.x * P;
  for (int base = 0; base < V; base += tile) {
    const int b0 = base + threadIdx.x * P;
    float x[P];
    int tok[P];
    int cg = 0, ce = 0;
    if (b0 < V) {
      row.chunk(b0, x, tok);
#pragma unroll
      for (int e = 0; e < P; ++e) {
        const uint32_t key = order_key(x[e]);
        cg += key > key_k;
        ce += key == key_k;
      }
    }
    u64 tg, te;
    int g = pos_gt + static_cast<int>(block_exclusive_scan(static_cast<u64>(cg), sh.scan, tg));
    int q = pos_eq + static_cast<int>(block_exclusive_scan(static_cast<u64>(ce), sh.scan, te));
    if (cg + ce > 0) {
#pragma unroll
      for (int e = 0; e < P; ++e) {
        const uint32_t key = order_key(x[e]);
        if (key > key_k) {
          sh.cval[g] = x[e], sh.ctok[g] = tok[e], ++g;
        } else if (key == key_k) {
          if (q < want_eq) sh.cval[n_gt + q] = x[e], sh.ctok[n_gt + q] = tok[e];
          ++q;
        }
      }
    }
    pos_gt += static_cast<int>(tg);
    pos_eq += static_cast<int>(te);
    if (pos_eq >= want_eq && pos_gt >= n_gt) break;  // uniform: every kept token is in
  }
  __syncthreads();
  for (int j = threadIdx.x; j < k; j += blockDim.x) {
    const float v = sh.cval[j];
    const int t = sh.ctok[j];
    int rank = 0;
    for (int i = 0; i < k; ++i) {
      const float w = sh.cval[i];
      rank += w > v || (w == v && sh.ctok[i] < t);
    }
    top_lp[static_cast<int64_t>(b) * k + rank] = static_cast<float>(static_cast<double>(v) - lse);
    top_ids[static_cast<int64_t>(b) * k + rank] = t;
  }
}

// Log-probabilities of rows of logits: sampled[b] at ids[b], the top k of each row (k <= kCap = 1024).
template <typename T>
cudaError_t logprobs(float* sampled,        // [B]
                     float* top_lp,         // [B, k]
                     int64_t* top_ids,      // [B, k]
                     const T* logits,       // [B, V], row stride row_stride, last dim dense
                     int64_t row_stride,
                     const int64_t* ids,    // [B]
                     int64_t B, int64_t V, int64_t k, cudaStream_t stream) {
  using namespace sampling_detail;
  if (B == 0) return cudaSuccess;
  if (V <= 0 || V > 0x7fffffff - 4096 || B > 0x7fffffff || k < 0 || k > kCap || k > V) return cudaErrorInvalidValue;
  constexpr int VV = kVec<T>;
  const bool vec_ok = V % VV == 0 && row_stride % VV == 0 && aligned_to(logits, 16);
  const unsigned grid = static_cast<unsigned>(B);
  if (vec_ok) {
    logprobs_kernel<T, VV><<<grid, kThreads, 0, stream>>>(sampled, top_lp, top_ids, logits, row_stride,
                                                          static_cast<int>(V), ids, static_cast<int>(k));
  } else {
    logprobs_kernel<T, 1><<<grid, kThreads, 0, stream>>>(sampled, top_lp, top_ids, logits, row_stride,
                                                         static_cast<int>(V), ids, static_cast<int>(k));
  }
  return cudaGetLastError();
}

}  // namespace infinilm::cuda
