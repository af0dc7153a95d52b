// Paged prefill attention on Hopper's warpgroup MMA (sm_90a), first version: opt-in behind
// INFINILM_CUDA_PREFILL=wgmma (attention_launch.cuh) until measured.
// benchmarks/prefill_wgmma_check.cu compares it with the mma.sync kernel (attention_prefill.cuh) and times
// both; kernels/cuda/wgmma.cuh's conventions are checked first by benchmarks/wgmma_probe.cu.
//
// One CTA per (query head, 128-query tile of one request), the same grid and tile order as the mma.sync kernel
// (PrefillParams::tiles_upper is shared). Two warpgroups, 64 query rows each, share double-buffered K/V tiles of
// 64 cache tokens gathered by cp.async into 128B-swizzled shared memory (K and V tiles have the same bytes: token
// rows of 128-byte column blocks; K is read K-major for S = Q K^T, V MN-major for O += P V). Per tile and
// warpgroup: S (64x64, fp32) from D/16 shared-memory wgmmas, the online softmax on the accumulators, P packed
// into A fragments in registers (the accumulator layout of S is the A-fragment layout), O (64xD) from register-A
// wgmmas, 64 columns each. No TMA, no producer warpgroup, no overlap of softmax with the next tile's MMAs yet:
// those are the next steps once this one is measured. No window / soft-cap (those keep the mma.sync kernel).
#pragma once

#include "attention_common.cuh"
#include "attention_params.h"
#include "wgmma.cuh"

namespace infinilm {
namespace cuda {
namespace attn {

// V's MN-major descriptor (wgmma.cuh): SBO strides the 8-token groups; LBO would stride the 64-column atoms of an
// N > 64 wgmma (a V tile's column blocks lie BN * 128 bytes apart), unused by the N = 64 ones here.
constexpr uint32_t kWgmmaVSbo = 1024;
template <int BN>
constexpr uint32_t kWgmmaVLbo = BN * 128;

template <int D>
struct PrefillWgShape {
  static constexpr int kBM = 128, kBN = 64, kThreads = 256;
  static_assert(kBM == prefill_block_m(D), "the grid is the mma.sync kernel's");
  static constexpr int kQBytes = kBM * D * 2;   // two 64-row K-major regions
  static constexpr int kKVBytes = kBN * D * 2;  // one K or V tile
  static constexpr int kSmemBytes = kQBytes + 4 * kKVBytes + 1024;  // + alignment slack
};

template <typename T, int D>
__global__ void __launch_bounds__(256, D > 64 ? 1 : 2) paged_prefill_wgmma_kernel(const PrefillParams p) {
#if defined(INFINILM_HAS_WGMMA)
  using S = PrefillWgShape<D>;
  constexpr int BM = S::kBM, BN = S::kBN, CH = D / 8, NC = D / 64;
  constexpr bool kBf16 = std::is_same<T, __nv_bfloat16>::value;
  static_assert(D % 64 == 0, "64-column wgmma chunks");
  extern __shared__ __align__(16) unsigned char smem_wg[];
  // The swizzle works on shared-window addresses: align that address (the slack in kSmemBytes covers it; an
  // __align__(1024) here would pad the static shared memory of every kernel in the translation unit).
  const uint32_t raw_addr = wg::smem_addr(smem_wg);
  unsigned char* base = smem_wg + (((raw_addr + 1023u) & ~1023u) - raw_addr);
  unsigned char* sq = base;                   // [2 warpgroups][64 rows][D], K-major SW128
  unsigned char* skv = base + S::kQBytes;     // [2 buffers][K, V][BN tokens][D], SW128
  __shared__ int s_req, s_m0;

  const int tid = threadIdx.x, wgi = tid / 128, warp = (tid % 128) / 32, lane = tid % 32;
  const int h = blockIdx.x;
  const int tile = p.tiles_upper - 1 - static_cast<int>(blockIdx.y);

  if (tid < 32) {  // which request and 128-row tile: as the mma.sync kernel
    int running = 0, req = -1, m0 = 0;
    for (int b0 = 0; b0 < p.num_reqs; b0 += 32) {
      const int r = b0 + lane;
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
        req = b0 + src;
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
  int64_t seq = load_index(p.seq_lens, p.sl64, r);
  seq = seq < 0 ? 0 : (seq > p.capacity ? p.capacity : seq);
  const int64_t prefix = seq - q_len;
  const int kvh = h / (p.hq / p.hk);
  const int64_t rows_here = q_len - m0 < BM ? q_len - m0 : BM;
  int64_t kv_hi = prefix + m0 + rows_here;
  kv_hi = kv_hi < seq ? kv_hi : seq;
  const int n_tiles = kv_hi > 0 ? static_cast<int>((kv_hi + BN - 1) / BN) : 0;
  // This warpgroup's rows: m0 + 64 wgi ..; the keys they can see end at wg_hi.
  const int64_t wg_first = m0 + 64 * wgi;
  const bool wg_live = wg_first < q_len;
  int64_t wg_hi = prefix + (wg_first + 64 < q_len ? wg_first + 64 : q_len);
  wg_hi = wg_hi < seq ? wg_hi : seq;
  const int wg_tiles = wg_live && wg_hi > 0 ? static_cast<int>((wg_hi + BN - 1) / BN) : 0;

  const T* qg = static_cast<const T*>(p.q) + h * p.q_stride_head;
  const T* kc = static_cast<const T*>(p.k_cache);
  const T* vc = static_cast<const T*>(p.v_cache);
  const int64_t bt_row = static_cast<int64_t>(r) * p.max_blocks;
  const int64_t bs_mask = (int64_t{1} << p.log_bs) - 1;

  if (n_tiles > 0) {
    for (int c = tid; c < BM * CH; c += S::kThreads) {
      const int row = c / CH, ch = c % CH;
      unsigned char* dst = sq + (row / 64) * (64 * D * 2) + wg::sw128_offset(row % 64, ch * 8, 64);
      if (m0 + row < q_len) cp_async16(dst, qg + (q_start + m0 + row) * p.q_stride_tok + ch * 8);
      else *reinterpret_cast<uint4*>(dst) = make_uint4(0, 0, 0, 0);
    }
  }
  auto load_kv = [&](int it) {
    const int64_t kb = static_cast<int64_t>(it) * BN;
    unsigned char* dk = skv + (it & 1) * 2 * S::kKVBytes;
    unsigned char* dv = dk + S::kKVBytes;
    for (int c = tid; c < BN * CH; c += S::kThreads) {
      const int row = c / CH, ch = c % CH;
      const int64_t key = kb + row;
      const uint32_t off_s = wg::sw128_offset(row, ch * 8, BN);
      int64_t b = -1;
      if (key < kv_hi) b = load_index(p.block_tables, p.bt64, bt_row + (key >> p.log_bs));
      if (b >= 0 && b < p.num_blocks) {
        const int64_t off = b * p.block_stride + kvh * p.head_stride + (key & bs_mask) * D + ch * 8;
        cp_async16(dk + off_s, kc + off);
        cp_async16(dv + off_s, vc + off);
      } else {
        *reinterpret_cast<uint4*>(dk + off_s) = make_uint4(0, 0, 0, 0);
        *reinterpret_cast<uint4*>(dv + off_s) = make_uint4(0, 0, 0, 0);
      }
    }
  };
  if (n_tiles > 0) load_kv(0);
  cp_async_commit();

  float o[NC][32];
#pragma unroll
  for (int c = 0; c < NC; ++c) {
#pragma unroll
    for (int i = 0; i < 32; ++i) o[c][i] = 0.f;
  }
  float mrow[2] = {-INFINITY, -INFINITY}, lrow[2] = {0.f, 0.f};
  const int64_t pos0 = prefix + wg_first + 16 * warp + lane / 4;  // this thread's first row's position
  const uint32_t q_addr = wg::smem_addr(sq + wgi * (64 * D * 2));
  const float sl2 = p.scale_log2;

  for (int it = 0; it < n_tiles; ++it) {
    cp_async_wait_all();
    wg::fence_proxy_async();
    __syncthreads();  // tile it landed; both warpgroups' MMAs on tile it - 1 completed (waited below)
    if (it + 1 < n_tiles) load_kv(it + 1);
    cp_async_commit();
    if (it >= wg_tiles) continue;  // warpgroup-uniform: rows that see no key of this tile (causal)
    const uint32_t k_addr = wg::smem_addr(skv + (it & 1) * 2 * S::kKVBytes);
    const uint32_t v_addr = k_addr + S::kKVBytes;

    float s[32];
    wg::fence_operands(s);
    wg::fence();
#pragma unroll
    for (int ks = 0; ks < D / 16; ++ks) {
      const uint32_t koff = (ks * 16 / 64) * 64 * 128 + ((ks * 16) % 64) * 2;
      const uint32_t kvoff = (ks * 16 / 64) * BN * 128 + ((ks * 16) % 64) * 2;
      wg::mma_ss<kBf16, 0>(s, wg::make_desc(q_addr + koff, 16, 1024), wg::make_desc(k_addr + kvoff, 16, 1024),
                           ks > 0 ? 1 : 0);
    }
    wg::commit();
    wg::wait<0>();
    wg::fence_operands(s);

    // s[j * 4 + hr * 2 + e]: row pos0 + 8 hr, key kb + 8 j + 2 (lane % 4) + e.
    const int64_t kb = static_cast<int64_t>(it) * BN;
    const bool need_mask = (kb + BN > prefix + wg_first + 1) || (kb + BN > seq);
#pragma unroll
    for (int hr = 0; hr < 2; ++hr) {
      const int64_t pos = pos0 + hr * 8;
      float mx = mrow[hr];
#pragma unroll
      for (int j = 0; j < BN / 8; ++j) {
#pragma unroll
        for (int e = 0; e < 2; ++e) {
          float& x = s[j * 4 + hr * 2 + e];
          if (need_mask) {
            const int64_t key = kb + j * 8 + 2 * (lane % 4) + e;
            if (key > pos || key >= seq) x = -INFINITY;
          }
          mx = fmaxf(mx, x);
        }
      }
      mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 1));
      mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 2));
      const float b = mx == -INFINITY ? 0.f : mx * sl2;
      const float alpha = exp2f(mrow[hr] * sl2 - b);
      mrow[hr] = mx;
      float rs = 0.f;
#pragma unroll
      for (int j = 0; j < BN / 8; ++j) {
#pragma unroll
        for (int e = 0; e < 2; ++e) {
          float& x = s[j * 4 + hr * 2 + e];
          x = exp2f(fmaf(x, sl2, -b));
          rs += x;
        }
      }
      lrow[hr] = lrow[hr] * alpha + rs;
#pragma unroll
      for (int c = 0; c < NC; ++c) {
#pragma unroll
        for (int j = 0; j < 8; ++j) {
          o[c][j * 4 + hr * 2] *= alpha;
          o[c][j * 4 + hr * 2 + 1] *= alpha;
        }
      }
    }

    // O += P V over the tile's 64 keys: 4 k-steps of 16; P's accumulators 2t and 2t + 1 are the A fragment.
    uint32_t a[BN / 16][4];
#pragma unroll
    for (int t = 0; t < BN / 16; ++t) {
      a[t][0] = pack2<T>(s[(2 * t) * 4 + 0], s[(2 * t) * 4 + 1]);
      a[t][1] = pack2<T>(s[(2 * t) * 4 + 2], s[(2 * t) * 4 + 3]);
      a[t][2] = pack2<T>(s[(2 * t + 1) * 4 + 0], s[(2 * t + 1) * 4 + 1]);
      a[t][3] = pack2<T>(s[(2 * t + 1) * 4 + 2], s[(2 * t + 1) * 4 + 3]);
    }
#pragma unroll
    for (int c = 0; c < NC; ++c) wg::fence_operands(o[c]);
#pragma unroll
    for (int t = 0; t < BN / 16; ++t) wg::fence_operands(a[t]);
    wg::fence();  // after the rescale of o and the packing of a: both are wgmma register operands
#pragma unroll
    for (int t = 0; t < BN / 16; ++t) {
#pragma unroll
      for (int c = 0; c < NC; ++c) {
        const uint64_t dv =
            wg::make_desc(v_addr + c * BN * 128 + t * 16 * 128, kWgmmaVLbo<BN>, kWgmmaVSbo);
        wg::mma_rs<kBf16, 1>(o[c], a[t], dv, 1);
      }
    }
    wg::commit();
    wg::wait<0>();
#pragma unroll
    for (int c = 0; c < NC; ++c) wg::fence_operands(o[c]);
#pragma unroll
    for (int t = 0; t < BN / 16; ++t) wg::fence_operands(a[t]);
  }
  cp_async_wait_all();
  if (!wg_live) return;

#pragma unroll
  for (int hr = 0; hr < 2; ++hr) {
    float l = lrow[hr];
    l += __shfl_xor_sync(0xffffffffu, l, 1);
    l += __shfl_xor_sync(0xffffffffu, l, 2);
    const float inv = l > 0.f ? 1.f / l : 0.f;
    const int64_t row = wg_first + 16 * warp + lane / 4 + hr * 8;
    if (row >= q_len) continue;
    T* dst = static_cast<T*>(p.out) + ((q_start + row) * p.hq + h) * D + 2 * (lane % 4);
#pragma unroll
    for (int c = 0; c < NC; ++c) {
#pragma unroll
      for (int j = 0; j < 8; ++j) {
        *reinterpret_cast<uint32_t*>(dst + c * 64 + j * 8) =
            pack2<T>(o[c][j * 4 + hr * 2] * inv, o[c][j * 4 + hr * 2 + 1] * inv);
      }
    }
  }
#else
#if defined(__HIP_PLATFORM_AMD__)
  __builtin_trap();  // no sm_90a code in this build: the launcher refuses before this can run
#else
  __trap();
#endif
#endif
}

// cudaErrorNotSupported where this build has no sm_90a code (the caller keeps the mma.sync kernel) or for
// options it does not implement (window, soft-cap) and head sizes other than 64 / 128.
// INFINILM_SM90A: defined by builds whose device code targets sm_90a (elsewhere the kernel is a trapping stub).
template <typename T>
inline cudaError_t launch_paged_prefill_wgmma_t(const PrefillParams& p, int head_dim, cudaStream_t stream) {
#if !defined(INFINILM_SM90A)
  (void)p;
  (void)head_dim;
  (void)stream;
  return cudaErrorNotSupported;
#else
  if (p.window_left >= 0 || p.softcap_log2 > 0.f) return cudaErrorNotSupported;
  if (p.tiles_upper == 0 || p.num_reqs == 0) return cudaSuccess;
  auto go = [&](auto kernel, int smem, cudaError_t attr) {
    if (attr != cudaSuccess) return attr;
    kernel<<<dim3(p.hq, p.tiles_upper), PrefillWgShape<64>::kThreads, smem, stream>>>(p);
    return cudaGetLastError();
  };
  // The shared-memory opt-in once per kernel and process (the device's current context; one GPU kind per run).
  auto opt_in = [](auto kernel, int smem) {
    return cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, smem);
  };
  switch (head_dim) {
    case 64: {
      static const cudaError_t attr = opt_in(paged_prefill_wgmma_kernel<T, 64>, PrefillWgShape<64>::kSmemBytes);
      return go(paged_prefill_wgmma_kernel<T, 64>, PrefillWgShape<64>::kSmemBytes, attr);
    }
    case 128: {
      static const cudaError_t attr = opt_in(paged_prefill_wgmma_kernel<T, 128>, PrefillWgShape<128>::kSmemBytes);
      return go(paged_prefill_wgmma_kernel<T, 128>, PrefillWgShape<128>::kSmemBytes, attr);
    }
    default: return cudaErrorNotSupported;
  }
#endif
}

}  // namespace attn
}  // namespace cuda
}  // namespace infinilm
