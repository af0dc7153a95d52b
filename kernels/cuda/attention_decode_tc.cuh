// Paged decode attention on tensor cores (fp16/bf16): one CTA of W warps per (row, KV head, 16-head chunk,
// split); the query heads that share a KV head are the 16 MMA rows (padding rows are zero), so every K/V
// byte is loaded once for the whole GQA group. Each warp streams its own 16-token tiles through a 3-4 deep
// cp.async ring that only it touches (no block barriers in the loop); the warps' results are combined in
// shared memory, and with splits > 1 the last CTA of a (row, KV head) merges the splits in the same launch.
//
// Why tensor cores for a memory-bound op: with FMAs a token costs ~2*G*D FMAs plus shuffles, and at
// Llama-3-8B shapes the SIMT kernel was issue-bound at ~80% of copy bandwidth; one m16n8k16 does 2048
// FMAs, so the instruction stream shrinks ~10x even with 3/4 of the rows idle.
#pragma once

#include "attention_common.cuh"
#include "attention_decode_merge.cuh"
#include "attention_params.h"
#include "pdl.cuh"

namespace infinilm {
namespace cuda {
namespace attn {

// W: warps per CTA, decode_tc_warps(D) by default; a small grid (decode_split_plan's choice, DecodeParams::warps)
// takes twice as many with a 2-deep ring: a warp's tiles are walked one after another (~1 us each on an H200 at
// batch 1), so more warps per CTA make a short context cheaper without the global split merge.
template <int D, int W = decode_tc_warps(D)>
struct DecodeTcShape {
  static constexpr int kTile = 16;                           // tokens per MMA step
  static constexpr int kWarps = W;                           // independent workers per CTA
  static constexpr bool kWide = W > decode_tc_warps(D);
  static constexpr int kStages = kWide ? 2 : (D <= 96 ? 4 : 3);  // tiles in flight per warp (1-3 ahead)
  static constexpr int kStride = D + 8;                      // padded smem row: ldmatrix rows hit distinct banks
  template <typename T>
  static constexpr int ring_bytes() { return kWarps * 2 * kStages * kTile * kStride * static_cast<int>(sizeof(T)); }
  static constexpr int kCombineBytes = kWarps * 16 * (D + 2) * 4;  // per-warp (m, l, o) of 16 heads
  template <typename T>
  static constexpr int smem_bytes() { return ring_bytes<T>() > kCombineBytes ? ring_bytes<T>() : kCombineBytes; }
};

// Warp w of the CTA takes tiles w, w + W, w + 2W, ... of the split [t_begin, t_end) (16 tokens each).
template <typename T, int D, int WARPS>
__global__ void __launch_bounds__(32 * WARPS) paged_decode_tc_kernel(const DecodeParams p) {
  using S = DecodeTcShape<D, WARPS>;
  pdl_trigger();  // the output projection launched after this may stream its weights meanwhile
  constexpr int TILE = S::kTile, STAGES = S::kStages, STR = S::kStride, CH = D / 8, W = S::kWarps;
  static_assert(D % 16 == 0 && CH % 2 == 0, "head_dim must be a multiple of 16");
  extern __shared__ __align__(16) unsigned char tc_smem[];
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, g = lane / 4, t4 = lane % 4;
  T* ring_k = reinterpret_cast<T*>(tc_smem) + warp * 2 * STAGES * TILE * STR;  // [STAGES][TILE * STR]
  T* ring_v = ring_k + STAGES * TILE * STR;                                      // [STAGES][TILE * STR]

  const int row = blockIdx.x, split = blockIdx.z;
  const int group = p.hq / p.hk, chunks = (group + 15) / 16;
  const int kvh = blockIdx.y / chunks, chunk = blockIdx.y % chunks;
  const int h0 = kvh * group + chunk * 16, nh = min(16, group - chunk * 16);
  const RowInfo ri = decode_row_info(p, row);
  const int64_t t_begin = ri.start + static_cast<int64_t>(split) * p.part_size;
  const int64_t t_end = min(ri.len, t_begin + p.part_size);
  if (split > 0 && t_begin >= ri.len) return;  // the merge reads only the splits a row uses (split 0 always runs)
  // A row whose tokens all fall in split 0 (a short context in a grid sized for a longer bound, e.g. a CUDA
  // graph's length bucket) is finished by this CTA alone: no partials, no counter, no merge. Only with the fused
  // merge: the separate merge kernel would overwrite the row from partials.
  const bool direct = p.splits == 1 || (p.counters != nullptr && used_splits(p, ri) == 1);

  // Q as A fragments for all D/16 k-steps: rows g and g+8 are heads h0+g, h0+g+8 (zero past nh).
  uint32_t qa[D / 16][4];
  {
    const T* qp = static_cast<const T*>(p.q) + row * p.q_stride_row;
    const T* r0 = qp + (h0 + g) * p.q_stride_head;
    const T* r1 = qp + (h0 + g + 8) * p.q_stride_head;
#pragma unroll
    for (int kk = 0; kk < D / 16; ++kk) {
      const int c = kk * 16 + 2 * t4;
      qa[kk][0] = g < nh ? *reinterpret_cast<const uint32_t*>(r0 + c) : 0u;
      qa[kk][1] = g + 8 < nh ? *reinterpret_cast<const uint32_t*>(r1 + c) : 0u;
      qa[kk][2] = g < nh ? *reinterpret_cast<const uint32_t*>(r0 + c + 8) : 0u;
      qa[kk][3] = g + 8 < nh ? *reinterpret_cast<const uint32_t*>(r1 + c + 8) : 0u;
    }
  }

  const T* kc = static_cast<const T*>(p.k_cache);
  const T* vc = static_cast<const T*>(p.v_cache);
  const int64_t bt_row = static_cast<int64_t>(ri.req) * p.max_blocks;
  const int64_t bs_mask = (int64_t{1} << p.log_bs) - 1;
  const int64_t span = t_end - t_begin;
  const int all_tiles = span > 0 ? static_cast<int>((span + TILE - 1) / TILE) : 0;
  const int n_tiles = all_tiles > warp ? (all_tiles - warp + W - 1) / W : 0;  // this warp's tiles

  // Lane k < 16 owns the cache row offset of token k of the next tile to issue (-1: masked).
  auto offset_of = [&](int tile) -> int64_t {
    const int64_t tok = t_begin + static_cast<int64_t>(tile * W + warp) * TILE + (lane & 15);
    if (tok >= t_end) return -1;
    const int64_t b = load_index(p.block_tables, p.bt64, bt_row + (tok >> p.log_bs));
    return b >= 0 && b < p.num_blocks ? b * p.block_stride + kvh * p.head_stride + (tok & bs_mask) * D : -1;
  };
  int64_t my_off = -1, next_off = -1;  // the next tile to issue, and the one after it
  uint64_t valid_ring = 0;  // 16 bits per stage: token k of the tile in that stage is real
  auto issue = [&](int tile) {
    const int st = tile % STAGES;
    const unsigned vbits = __ballot_sync(0xffffffffu, my_off >= 0) & 0xffffu;
    valid_ring = (valid_ring & ~(uint64_t{0xffff} << (16 * st))) | (static_cast<uint64_t>(vbits) << (16 * st));
#pragma unroll
    for (int i = 0; i < TILE * CH / 32; ++i) {
      const int c = lane + 32 * i, key = c / CH, piece = c % CH;
      const int64_t off = __shfl_sync(0xffffffffu, my_off, key);
      T* dk = ring_k + st * TILE * STR + key * STR + piece * 8;
      T* dv = ring_v + st * TILE * STR + key * STR + piece * 8;
      if (off >= 0) {
        cp_async16(dk, kc + off + piece * 8);
        cp_async16(dv, vc + off + piece * 8);
      } else {
        *reinterpret_cast<uint4*>(dk) = make_uint4(0, 0, 0, 0);
        *reinterpret_cast<uint4*>(dv) = make_uint4(0, 0, 0, 0);
      }
    }
  };
  // The ring's first tiles: their block-table entries are loaded together (independent loads), not one
  // round trip per tile: a short context is then one block-table latency plus one K/V latency.
  {
    int64_t first[STAGES + 1];
#pragma unroll
    for (int j = 0; j <= STAGES; ++j) first[j] = j < n_tiles ? offset_of(j) : -1;
#pragma unroll
    for (int j = 0; j < STAGES - 1; ++j) {
      if (j < n_tiles) {
        my_off = first[j];
        issue(j);
      }
      cp_async_commit();
    }
    my_off = first[STAGES - 1];
    next_off = first[STAGES];
  }

  float o[D / 8][4];
#pragma unroll
  for (int nd = 0; nd < D / 8; ++nd) {
#pragma unroll
    for (int e = 0; e < 4; ++e) o[nd][e] = 0.f;
  }
  float mrow[2] = {-INFINITY, -INFINITY}, lrow[2] = {0.f, 0.f};

  for (int it = 0; it < n_tiles; ++it) {
    if (it + STAGES - 1 < n_tiles) {
      issue(it + STAGES - 1);
      my_off = next_off;  // block ids load two tiles ahead of their issue: the load has two tiles' math to land
      next_off = it + STAGES + 1 < n_tiles ? offset_of(it + STAGES + 1) : -1;
    }
    cp_async_commit();
    cp_async_wait<STAGES - 1>();
    __syncwarp();  // other lanes' copies of this tile are visible after their waits
    const int st = it % STAGES;
    const T* ks = ring_k + st * TILE * STR;
    const T* vs = ring_v + st * TILE * STR;
    const unsigned vbits = static_cast<unsigned>(valid_ring >> (16 * st)) & 0xffffu;

    // Two accumulators per key half (even/odd k-steps): four short MMA chains instead of two long ones.
    float s[2][4] = {{0.f, 0.f, 0.f, 0.f}, {0.f, 0.f, 0.f, 0.f}};
    float s2[2][4] = {{0.f, 0.f, 0.f, 0.f}, {0.f, 0.f, 0.f, 0.f}};
#pragma unroll
    for (int kk = 0; kk < D / 16; ++kk) {
      uint32_t b[4];
      ldmatrix_x4(b, ks + ((lane / 16) * 8 + lane % 8) * STR + kk * 16 + ((lane / 8) % 2) * 8);
      const uint32_t b0[2] = {b[0], b[1]}, b1[2] = {b[2], b[3]};
      mma_16x8x16<T>(kk % 2 ? s2[0] : s[0], qa[kk], b0);
      mma_16x8x16<T>(kk % 2 ? s2[1] : s[1], qa[kk], b1);
    }
#pragma unroll
    for (int e = 0; e < 4; ++e) {
      s[0][e] += s2[0][e];
      s[1][e] += s2[1][e];
    }
#pragma unroll
    for (int hr = 0; hr < 2; ++hr) {
      float mx = mrow[hr];
#pragma unroll
      for (int nj = 0; nj < 2; ++nj) {
#pragma unroll
        for (int e = 0; e < 2; ++e) {
          float& x = s[nj][hr * 2 + e];
          const int key = nj * 8 + 2 * t4 + e;
          x = ((vbits >> key) & 1u) ? soft_cap_log2(x * p.scale_log2, p.softcap_log2) : -INFINITY;
          mx = fmaxf(mx, x);
        }
      }
      mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 1));
      mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 2));
      const float base = mx == -INFINITY ? 0.f : mx;
      const float alpha = exp2f(mrow[hr] - base);
      mrow[hr] = mx;
      float rs = 0.f;
#pragma unroll
      for (int nj = 0; nj < 2; ++nj) {
#pragma unroll
        for (int e = 0; e < 2; ++e) {
          float& x = s[nj][hr * 2 + e];
          x = exp2f(x - base);
          rs += x;
        }
      }
      lrow[hr] = lrow[hr] * alpha + rs;
#pragma unroll
      for (int nd = 0; nd < D / 8; ++nd) {
        o[nd][hr * 2] *= alpha;
        o[nd][hr * 2 + 1] *= alpha;
      }
    }
    uint32_t pa[4];
    pa[0] = pack2<T>(s[0][0], s[0][1]);
    pa[1] = pack2<T>(s[0][2], s[0][3]);
    pa[2] = pack2<T>(s[1][0], s[1][1]);
    pa[3] = pack2<T>(s[1][2], s[1][3]);
#pragma unroll
    for (int nd = 0; nd < D / 8; nd += 2) {
      uint32_t b[4];
      ldmatrix_x4_trans(b, vs + (((lane / 8) % 2) * 8 + lane % 8) * STR + nd * 8 + (lane / 16) * 8);
      const uint32_t b0[2] = {b[0], b[1]}, b1[2] = {b[2], b[3]};
      mma_16x8x16<T>(o[nd], pa, b0);
      mma_16x8x16<T>(o[nd + 1], pa, b1);
    }
    __syncwarp();  // every lane is done reading this stage before it is refilled
  }
  cp_async_wait<0>();
  __syncthreads();  // every warp is done with its ring: the memory now holds the per-warp results

  // Combine the W warps: sm_ml [W][16][2] (max, sum), sm_o [W][16][D].
  float* sm_ml = reinterpret_cast<float*>(tc_smem);
  float* sm_o = sm_ml + W * 16 * 2;
#pragma unroll
  for (int hr = 0; hr < 2; ++hr) {
    const int hl = g + hr * 8;
    float l = lrow[hr];
    l += __shfl_xor_sync(0xffffffffu, l, 1);
    l += __shfl_xor_sync(0xffffffffu, l, 2);
    if (t4 == 0) {
      sm_ml[(warp * 16 + hl) * 2] = mrow[hr];
      sm_ml[(warp * 16 + hl) * 2 + 1] = l;
    }
    float* dst = sm_o + (warp * 16 + hl) * D + 2 * t4;
#pragma unroll
    for (int nd = 0; nd < D / 8; ++nd) *reinterpret_cast<float2*>(dst + nd * 8) = make_float2(o[nd][hr * 2], o[nd][hr * 2 + 1]);
  }
  __syncthreads();
  for (int idx = threadIdx.x; idx < nh * D; idx += 32 * W) {
    const int j = idx / D, d = idx % D;
    float mx = -INFINITY;
#pragma unroll
    for (int w = 0; w < W; ++w) mx = fmaxf(mx, sm_ml[(w * 16 + j) * 2]);
    float lsum = 0.f, acc = 0.f;
    if (mx != -INFINITY) {
#pragma unroll
      for (int w = 0; w < W; ++w) {
        const float wt = exp2f(sm_ml[(w * 16 + j) * 2] - mx);
        lsum = fmaf(sm_ml[(w * 16 + j) * 2 + 1], wt, lsum);
        acc = fmaf(sm_o[(w * 16 + j) * D + d], wt, acc);
      }
    }
    const int64_t rh = static_cast<int64_t>(row) * p.hq + h0 + j;
    if (direct) {
      static_cast<T*>(p.out)[rh * D + d] = from_float<T>(lsum > 0.f ? acc / lsum : 0.f);
    } else {
      const int64_t ps = rh * p.splits + split;
      p.part_o[ps * D + d] = acc;
      if (d == 0) {
        p.part_ml[ps * 2] = mx;
        p.part_ml[ps * 2 + 1] = lsum;
      }
    }
  }
  if (!direct && p.counters != nullptr) fused_split_merge<T, D, 32 * W>(p, row, h0, nh, ri);
}

template <typename T, int D, int W>
inline cudaError_t launch_decode_tc_dw(const DecodeParams& p, const dim3 grid, cudaStream_t stream) {
  constexpr int smem = DecodeTcShape<D, W>::template smem_bytes<T>();
  const cudaError_t err =
      cudaFuncSetAttribute(paged_decode_tc_kernel<T, D, W>, cudaFuncAttributeMaxDynamicSharedMemorySize, smem);
  if (err != cudaSuccess) return err;
  paged_decode_tc_kernel<T, D, W><<<grid, 32 * W, smem, stream>>>(p);
  return cudaSuccess;
}

template <typename T, int D>
inline cudaError_t launch_decode_tc_d(const DecodeParams& p, cudaStream_t stream) {
  const int chunks = (p.hq / p.hk + 15) / 16;
  const dim3 grid(p.rows, p.hk * chunks, p.splits);
  constexpr int W = decode_tc_warps(D);
  const cudaError_t err = p.warps > W ? launch_decode_tc_dw<T, D, 2 * W>(p, grid, stream)
                                      : launch_decode_tc_dw<T, D, W>(p, grid, stream);
  if (err != cudaSuccess) return err;
  if (p.splits > 1 && p.counters == nullptr) paged_decode_merge_kernel<T, D><<<dim3(p.rows, p.hq), 64, 0, stream>>>(p);
  return cudaGetLastError();
}

// T is __half or __nv_bfloat16; head_dim one of limits::kCudaHeadSizes (checked by the caller).
template <typename T>
inline cudaError_t launch_paged_decode_tc_t(const DecodeParams& p, int head_dim, cudaStream_t stream) {
  if (p.rows == 0) return cudaSuccess;
  switch (head_dim) {
    case 64: return launch_decode_tc_d<T, 64>(p, stream);
    case 80: return launch_decode_tc_d<T, 80>(p, stream);
    case 96: return launch_decode_tc_d<T, 96>(p, stream);
    case 128: return launch_decode_tc_d<T, 128>(p, stream);
    case 256: return launch_decode_tc_d<T, 256>(p, stream);
    default: return cudaErrorInvalidValue;
  }
}

}  // namespace attn
}  // namespace cuda
}  // namespace infinilm
