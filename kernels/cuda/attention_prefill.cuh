// Paged prefill attention on tensor cores (FlashAttention-2 scheme with m16n8k16 MMAs): one CTA per
// (query head, 128-query tile of one request; 64 at head size 256); K/V tiles of 64 cache tokens (32 at
// head size 256) are gathered from the paged cache into double-buffered shared memory while the previous
// tile is computed. A sliding window starts the walk at the tile holding the first visible key.
//
// Napkin math: causal prefill of S new tokens costs 4 * Hq * D * S^2 / 2 FLOPs (S = 8192, Llama-3-8B
// shapes: 1.1 TFLOP, ~1.4 ms at 780 TFLOP/s), while K/V bytes are a few MiB: compute-bound.
#pragma once

#include "attention_common.cuh"
#include "attention_params.h"

namespace infinilm {
namespace cuda {
namespace attn {

template <int D>
struct PrefillShape {
  static constexpr int kWarps = 4;
  static constexpr int kWM = D > 128 ? 1 : 2;      // 16-row MMA tiles per warp: B fragments serve both
  static constexpr int kBM = kWarps * 16 * kWM;    // 128 queries per CTA (64 at head size 256)
  static_assert(kBM == prefill_block_m(D), "attention_params.h promises this tile height");
  static constexpr int kBN = D > 128 ? 32 : 64;    // cache tokens per K/V tile
  static constexpr int kStride = D + 8;            // padded smem row: ldmatrix rows hit distinct banks
  template <typename T>
  static constexpr int smem_bytes() { return (kBM + 4 * kBN) * kStride * static_cast<int>(sizeof(T)); }
};

// EXT: the sliding window / soft-cap code is compiled in (a separate instantiation, so that the plain
// kernel keeps its registers: at D=128 the extra live values raised the spill from 84 to 172 bytes).
template <typename T, int D, bool EXT>
__global__ void __launch_bounds__(128, 2) paged_prefill_kernel(const PrefillParams p) {
  using S = PrefillShape<D>;
  constexpr int BM = S::kBM, BN = S::kBN, WM = S::kWM, STR = S::kStride, CH = D / 8;
  static_assert(D % 16 == 0 && BN % 16 == 0, "MMA k-steps");
  extern __shared__ __align__(16) unsigned char smem_raw[];
  T* sq = reinterpret_cast<T*>(smem_raw);  // [BM][STR]
  T* sk = sq + BM * STR;                   // [2][BN][STR]
  T* sv = sk + 2 * BN * STR;               // [2][BN][STR]
  __shared__ int s_req, s_m0;

  const int tid = threadIdx.x, warp = tid / 32, lane = tid % 32;
  const int h = blockIdx.x;
  const int tile = p.tiles_upper - 1 - static_cast<int>(blockIdx.y);  // the last (longest causal) tiles first

  // Which request and which 128-row tile of it: scan the per-request tile counts, 32 requests a step.
  if (warp == 0) {
    int running = 0, req = -1, m0 = 0;
    for (int base = 0; base < p.num_reqs; base += 32) {
      const int r = base + lane;
      int cnt = 0;
      if (r < p.num_reqs) {
        const int64_t ql = load_index(p.query_start_loc, p.qsl64, r + 1) - load_index(p.query_start_loc, p.qsl64, r);
        cnt = ql > 0 ? static_cast<int>((ql + BM - 1) / BM) : 0;
      }
      int incl = cnt;
#pragma unroll
      for (int o = 1; o < 32; o *= 2) {
        const int y = __shfl_up_sync(0xffffffffu, incl, o);
        if (lane >= o) incl += y;
      }
      const int excl = running + incl - cnt;
      const unsigned hit = __ballot_sync(0xffffffffu, cnt > 0 && tile >= excl && tile < excl + cnt);
      if (hit) {
        const int src = __ffs(hit) - 1;
        req = base + src;
        m0 = (tile - __shfl_sync(0xffffffffu, excl, src)) * BM;
        break;
      }
      running += __shfl_sync(0xffffffffu, incl, 31);
    }
    if (lane == 0) {
      s_req = req;
      s_m0 = m0;
    }
  }
  __syncthreads();
  const int r = s_req, m0 = s_m0;
  if (r < 0) return;

  const int64_t q_start = load_index(p.query_start_loc, p.qsl64, r);
  const int64_t q_len = load_index(p.query_start_loc, p.qsl64, r + 1) - q_start;
  const int64_t cap = p.capacity;
  int64_t seq = load_index(p.seq_lens, p.sl64, r);
  seq = seq < 0 ? 0 : (seq > cap ? cap : seq);
  const int64_t prefix = seq - q_len;  // negative only on bad input: such rows then see nothing
  const int kvh = h / (p.hq / p.hk);
  const int64_t rows_here = q_len - m0 < BM ? q_len - m0 : BM;
  int64_t kv_hi = prefix + m0 + rows_here;
  kv_hi = kv_hi < seq ? kv_hi : seq;
  const int n_tiles = kv_hi > 0 ? static_cast<int>((kv_hi + BN - 1) / BN) : 0;
  // Sliding window: the tile's first query (position prefix + m0) sees nothing before prefix + m0 - wl.
  const int wl = EXT ? p.window_left : -1;
  const int64_t kv_lo = wl >= 0 && prefix + m0 - wl > 0 ? prefix + m0 - wl : 0;
  const int it0 = n_tiles > 0 ? static_cast<int>(kv_lo / BN) : 0;

  const T* qg = static_cast<const T*>(p.q) + h * p.q_stride_head;
  const T* kc = static_cast<const T*>(p.k_cache);
  const T* vc = static_cast<const T*>(p.v_cache);
  const int64_t bt_row = static_cast<int64_t>(r) * p.max_blocks;
  const int64_t bs_mask = (int64_t{1} << p.log_bs) - 1;

  if (n_tiles > 0) {
    for (int c = tid; c < BM * CH; c += 128) {
      const int row = c / CH, ch = c % CH;
      T* dst = sq + row * STR + ch * 8;
      if (m0 + row < q_len) cp_async16(dst, qg + (q_start + m0 + row) * p.q_stride_tok + ch * 8);
      else *reinterpret_cast<uint4*>(dst) = make_uint4(0, 0, 0, 0);
    }
  }
  // Keys past kv_hi and keys whose block id is out of range are zero-filled (and masked or harmless).
  auto load_kv = [&](int it) {
    const int64_t kb = static_cast<int64_t>(it) * BN;
    T* dk = sk + ((it - it0) & 1) * BN * STR;
    T* dv = sv + ((it - it0) & 1) * BN * STR;
    for (int c = tid; c < BN * CH; c += 128) {
      const int row = c / CH, ch = c % CH;
      const int64_t key = kb + row;
      int64_t b = -1;
      if (key < kv_hi) b = load_index(p.block_tables, p.bt64, bt_row + (key >> p.log_bs));
      if (b >= 0 && b < p.num_blocks) {
        const int64_t off = b * p.block_stride + kvh * p.head_stride + (key & bs_mask) * D + ch * 8;
        cp_async16(dk + row * STR + ch * 8, kc + off);
        cp_async16(dv + row * STR + ch * 8, vc + off);
      } else {
        *reinterpret_cast<uint4*>(dk + row * STR + ch * 8) = make_uint4(0, 0, 0, 0);
        *reinterpret_cast<uint4*>(dv + row * STR + ch * 8) = make_uint4(0, 0, 0, 0);
      }
    }
  };
  if (it0 < n_tiles) load_kv(it0);
  cp_async_commit();

  float o[WM][D / 8][4];
  float mrow[WM][2], lrow[WM][2];
#pragma unroll
  for (int mi = 0; mi < WM; ++mi) {
#pragma unroll
    for (int nd = 0; nd < D / 8; ++nd) {
#pragma unroll
      for (int e = 0; e < 4; ++e) o[mi][nd][e] = 0.f;
    }
#pragma unroll
    for (int hr = 0; hr < 2; ++hr) {
      mrow[mi][hr] = -INFINITY;
      lrow[mi][hr] = 0.f;
    }
  }
  const int wrow = warp * 16 * WM;  // this warp's first row in the tile
  const int64_t pos0 = prefix + m0 + wrow + lane / 4;  // position of this thread's row (mi = 0, hr = 0)

  for (int it = it0; it < n_tiles; ++it) {
    cp_async_wait_all();
    __syncthreads();  // tile it landed; every warp is done with the buffer the next load overwrites
    if (it + 1 < n_tiles) load_kv(it + 1);
    cp_async_commit();
    const T* ks = sk + ((it - it0) & 1) * BN * STR;
    const T* vs = sv + ((it - it0) & 1) * BN * STR;

    // S = Q K^T for this warp's 16*WM rows and BN keys.
    float s[WM][BN / 8][4];
#pragma unroll
    for (int mi = 0; mi < WM; ++mi) {
#pragma unroll
      for (int nj = 0; nj < BN / 8; ++nj) {
#pragma unroll
        for (int e = 0; e < 4; ++e) s[mi][nj][e] = 0.f;
      }
    }
#pragma unroll
    for (int kk = 0; kk < D / 16; ++kk) {
      uint32_t a[WM][4];
#pragma unroll
      for (int mi = 0; mi < WM; ++mi) {
        ldmatrix_x4(a[mi], sq + (wrow + mi * 16 + (lane % 8) + ((lane / 8) % 2) * 8) * STR + kk * 16 + (lane / 16) * 8);
      }
#pragma unroll
      for (int nj = 0; nj < BN / 8; nj += 2) {
        uint32_t b[4];
        ldmatrix_x4(b, ks + (nj * 8 + (lane / 16) * 8 + lane % 8) * STR + kk * 16 + ((lane / 8) % 2) * 8);
        const uint32_t b0[2] = {b[0], b[1]}, b1[2] = {b[2], b[3]};
#pragma unroll
        for (int mi = 0; mi < WM; ++mi) {
          mma_16x8x16<T>(s[mi][nj], a[mi], b0);
          mma_16x8x16<T>(s[mi][nj + 1], a[mi], b1);
        }
      }
    }

    // Mask (causal, end of sequence) only on tiles that reach past the tile's first position. Scores stay
    // unscaled until the exponential: p = 2^(s * scale_log2 - m * scale_log2) is one FFMA per element.
    const int64_t kb = static_cast<int64_t>(it) * BN;
    const bool need_mask = (kb + BN > prefix + m0 + 1) || (kb + BN > seq) || (wl >= 0 && kb < prefix + m0 + BM - 1 - wl);
    const float sl2 = p.scale_log2;
    if (EXT && p.softcap_log2 > 0.f) {  // s -> (cap / scale) tanh(s scale / cap): after the scale below, cap tanh(.)
      const float c = p.softcap_log2 / sl2;
#pragma unroll
      for (int mi = 0; mi < WM; ++mi) {
#pragma unroll
        for (int nj = 0; nj < BN / 8; ++nj) {
#pragma unroll
          for (int e = 0; e < 4; ++e) s[mi][nj][e] = c * tanhf(s[mi][nj][e] / c);
        }
      }
    }
#pragma unroll
    for (int mi = 0; mi < WM; ++mi) {
#pragma unroll
      for (int hr = 0; hr < 2; ++hr) {
        const int64_t pos = pos0 + mi * 16 + hr * 8;
        float mx = mrow[mi][hr];
#pragma unroll
        for (int nj = 0; nj < BN / 8; ++nj) {
#pragma unroll
          for (int e = 0; e < 2; ++e) {
            float& x = s[mi][nj][hr * 2 + e];
            if (need_mask) {
              const int64_t key = kb + nj * 8 + 2 * (lane % 4) + e;
              if (key > pos || key >= seq || (wl >= 0 && key < pos - wl)) x = -INFINITY;
            }
            mx = fmaxf(mx, x);
          }
        }
        mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 1));
        mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 2));
        const float base = mx == -INFINITY ? 0.f : mx * sl2;  // a row with nothing visible yet stays at zero
        const float alpha = exp2f(mrow[mi][hr] * sl2 - base);
        mrow[mi][hr] = mx;
        float rs = 0.f;
#pragma unroll
        for (int nj = 0; nj < BN / 8; ++nj) {
#pragma unroll
          for (int e = 0; e < 2; ++e) {
            float& x = s[mi][nj][hr * 2 + e];
            x = exp2f(fmaf(x, sl2, -base));
            rs += x;
          }
        }
        lrow[mi][hr] = lrow[mi][hr] * alpha + rs;  // this thread's columns only; summed over the quad at the end
#pragma unroll
        for (int nd = 0; nd < D / 8; ++nd) {
          o[mi][nd][hr * 2] *= alpha;
          o[mi][nd][hr * 2 + 1] *= alpha;
        }
      }
    }

    // O += P V: the S accumulators of key tiles 2kt and 2kt+1 are exactly an A fragment.
#pragma unroll
    for (int kt = 0; kt < BN / 16; ++kt) {
      uint32_t a[WM][4];
#pragma unroll
      for (int mi = 0; mi < WM; ++mi) {
        a[mi][0] = pack2<T>(s[mi][2 * kt][0], s[mi][2 * kt][1]);
        a[mi][1] = pack2<T>(s[mi][2 * kt][2], s[mi][2 * kt][3]);
        a[mi][2] = pack2<T>(s[mi][2 * kt + 1][0], s[mi][2 * kt + 1][1]);
        a[mi][3] = pack2<T>(s[mi][2 * kt + 1][2], s[mi][2 * kt + 1][3]);
      }
#pragma unroll
      for (int nd = 0; nd < D / 8; nd += 2) {
        uint32_t b[4];
        ldmatrix_x4_trans(b, vs + (kt * 16 + ((lane / 8) % 2) * 8 + lane % 8) * STR + nd * 8 + (lane / 16) * 8);
        const uint32_t b0[2] = {b[0], b[1]}, b1[2] = {b[2], b[3]};
#pragma unroll
        for (int mi = 0; mi < WM; ++mi) {
          mma_16x8x16<T>(o[mi][nd], a[mi], b0);
          mma_16x8x16<T>(o[mi][nd + 1], a[mi], b1);
        }
      }
    }
  }
  cp_async_wait_all();

#pragma unroll
  for (int mi = 0; mi < WM; ++mi) {
#pragma unroll
    for (int hr = 0; hr < 2; ++hr) {
      float l = lrow[mi][hr];
      l += __shfl_xor_sync(0xffffffffu, l, 1);
      l += __shfl_xor_sync(0xffffffffu, l, 2);
      const float inv = l > 0.f ? 1.f / l : 0.f;
      const int row = wrow + mi * 16 + hr * 8 + lane / 4;
      if (m0 + row >= q_len) continue;
      T* dst = static_cast<T*>(p.out) + ((q_start + m0 + row) * p.hq + h) * D + 2 * (lane % 4);
#pragma unroll
      for (int nd = 0; nd < D / 8; ++nd) {
        *reinterpret_cast<uint32_t*>(dst + nd * 8) = pack2<T>(o[mi][nd][hr * 2] * inv, o[mi][nd][hr * 2 + 1] * inv);
      }
    }
  }
}

template <typename T, int D, bool EXT>
inline cudaError_t launch_prefill_d_x(const PrefillParams& p, cudaStream_t stream) {
  constexpr int smem = PrefillShape<D>::template smem_bytes<T>();
  cudaError_t err =
      cudaFuncSetAttribute(paged_prefill_kernel<T, D, EXT>, cudaFuncAttributeMaxDynamicSharedMemorySize, smem);
  if (err != cudaSuccess) return err;
  paged_prefill_kernel<T, D, EXT><<<dim3(p.hq, p.tiles_upper), 128, smem, stream>>>(p);
  return cudaGetLastError();
}

template <typename T, int D>
inline cudaError_t launch_prefill_d(const PrefillParams& p, cudaStream_t stream) {
  const bool ext = p.window_left >= 0 || p.softcap_log2 > 0.f;
  return ext ? launch_prefill_d_x<T, D, true>(p, stream) : launch_prefill_d_x<T, D, false>(p, stream);
}

// T is __half or __nv_bfloat16; head_dim one of limits::kCudaHeadSizes (checked by the caller).
template <typename T>
inline cudaError_t launch_paged_prefill_t(const PrefillParams& p, int head_dim, cudaStream_t stream) {
  if (p.tiles_upper == 0 || p.num_reqs == 0) return cudaSuccess;
  switch (head_dim) {
    case 64: return launch_prefill_d<T, 64>(p, stream);
    case 80: return launch_prefill_d<T, 80>(p, stream);
    case 96: return launch_prefill_d<T, 96>(p, stream);
    case 128: return launch_prefill_d<T, 128>(p, stream);
    case 256: return launch_prefill_d<T, 256>(p, stream);
    default: return cudaErrorInvalidValue;
  }
}

}  // namespace attn
}  // namespace cuda
}  // namespace infinilm
