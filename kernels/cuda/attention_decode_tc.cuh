// Paged decode attention on tensor cores (fp16/bf16): one warp per CTA and (row, KV head, 16-head chunk,
// split); the query heads that share a KV head are the 16 MMA rows (padding rows are zero), so every K/V
// byte is loaded once for the whole GQA group. K/V tiles of 16 tokens stream through a 4-deep cp.async
// ring that only this warp touches (no block barriers).
//
// Why tensor cores for a memory-bound op: with FMAs a token costs ~2*G*D FMAs plus shuffles, and at
// Llama-3-8B shapes the SIMT kernel was issue-bound at ~80% of copy bandwidth; one m16n8k16 does 2048
// FMAs, so the instruction stream shrinks ~10x even with 3/4 of the rows idle.
#pragma once

#include "attention_common.cuh"
#include "attention_decode_merge.cuh"
#include "attention_params.h"

namespace infinilm {
namespace cuda {
namespace attn {

template <int D>
struct DecodeTcShape {
  static constexpr int kTile = 16;      // tokens per MMA step
  static constexpr int kStages = 4;     // tiles in flight: 3 ahead of the one computed
  static constexpr int kStride = D + 8; // padded smem row: ldmatrix rows hit distinct banks
};

template <typename T, int D>
__global__ void __launch_bounds__(32) paged_decode_tc_kernel(const DecodeParams p) {
  using S = DecodeTcShape<D>;
  constexpr int TILE = S::kTile, STAGES = S::kStages, STR = S::kStride, CH = D / 8;
  __shared__ __align__(16) T ring_k[STAGES][TILE * STR];
  __shared__ __align__(16) T ring_v[STAGES][TILE * STR];

  const int lane = threadIdx.x, g = lane / 4, t4 = lane % 4;
  const int row = blockIdx.x, split = blockIdx.z;
  const int group = p.hq / p.hk, chunks = (group + 15) / 16;
  const int kvh = blockIdx.y / chunks, chunk = blockIdx.y % chunks;
  const int h0 = kvh * group + chunk * 16, nh = min(16, group - chunk * 16);
  const RowInfo ri = decode_row_info(p, row);
  const int64_t t_begin = static_cast<int64_t>(split) * p.part_size;
  const int64_t t_end = min(ri.len, t_begin + p.part_size);
  if (p.splits > 1 && t_begin >= ri.len) return;  // the merge reads only the splits a row uses

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
  const int n_tiles = span > 0 ? static_cast<int>((span + TILE - 1) / TILE) : 0;

  // Lane k < 16 owns the cache row offset of token k of the next tile to issue (-1: masked).
  int64_t my_off = -1;
  auto fetch_offset = [&](int tile) {
    my_off = -1;
    const int64_t tok = t_begin + static_cast<int64_t>(tile) * TILE + (lane & 15);
    if (tok < t_end) {
      const int64_t b = load_index(p.block_tables, p.bt64, bt_row + (tok >> p.log_bs));
      if (b >= 0 && b < p.num_blocks) my_off = b * p.block_stride + kvh * p.head_stride + (tok & bs_mask) * D;
    }
  };
  uint64_t valid_ring = 0;  // 16 bits per stage: token k of the tile in that stage is real
  auto issue = [&](int tile) {
    const int st = tile % STAGES;
    const unsigned vbits = __ballot_sync(0xffffffffu, my_off >= 0) & 0xffffu;
    valid_ring = (valid_ring & ~(uint64_t{0xffff} << (16 * st))) | (static_cast<uint64_t>(vbits) << (16 * st));
#pragma unroll
    for (int i = 0; i < TILE * CH / 32; ++i) {
      const int c = lane + 32 * i, key = c / CH, piece = c % CH;
      const int64_t off = __shfl_sync(0xffffffffu, my_off, key);
      T* dk = &ring_k[st][key * STR + piece * 8];
      T* dv = &ring_v[st][key * STR + piece * 8];
      if (off >= 0) {
        cp_async16(dk, kc + off + piece * 8);
        cp_async16(dv, vc + off + piece * 8);
      } else {
        *reinterpret_cast<uint4*>(dk) = make_uint4(0, 0, 0, 0);
        *reinterpret_cast<uint4*>(dv) = make_uint4(0, 0, 0, 0);
      }
    }
  };
  fetch_offset(0);
#pragma unroll
  for (int j = 0; j < STAGES - 1; ++j) {
    if (j < n_tiles) {
      issue(j);
      fetch_offset(j + 1);
    }
    cp_async_commit();
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
      fetch_offset(it + STAGES);  // block ids load while the ring drains
    }
    cp_async_commit();
    cp_async_wait<STAGES - 1>();
    __syncwarp();  // other lanes' copies of this tile are visible after their waits
    const int st = it % STAGES;
    const T* ks = ring_k[st];
    const T* vs = ring_v[st];
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
          x = ((vbits >> key) & 1u) ? x * p.scale_log2 : -INFINITY;
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

#pragma unroll
  for (int hr = 0; hr < 2; ++hr) {
    const int hl = g + hr * 8;
    float l = lrow[hr];
    l += __shfl_xor_sync(0xffffffffu, l, 1);
    l += __shfl_xor_sync(0xffffffffu, l, 2);
    if (hl >= nh) continue;
    const int64_t rh = static_cast<int64_t>(row) * p.hq + h0 + hl;
    if (p.splits == 1) {
      const float inv = l > 0.f ? 1.f / l : 0.f;
      T* dst = static_cast<T*>(p.out) + rh * D + 2 * t4;
#pragma unroll
      for (int nd = 0; nd < D / 8; ++nd) {
        *reinterpret_cast<uint32_t*>(dst + nd * 8) = pack2<T>(o[nd][hr * 2] * inv, o[nd][hr * 2 + 1] * inv);
      }
    } else {
      const int64_t ps = rh * p.splits + split;
      float* dst = p.part_o + ps * D + 2 * t4;
#pragma unroll
      for (int nd = 0; nd < D / 8; ++nd) {
        *reinterpret_cast<float2*>(dst + nd * 8) = make_float2(o[nd][hr * 2], o[nd][hr * 2 + 1]);
      }
      if (t4 == 0) {
        p.part_ml[ps * 2] = mrow[hr];
        p.part_ml[ps * 2 + 1] = l;
      }
    }
  }
}

template <typename T, int D>
inline cudaError_t launch_decode_tc_d(const DecodeParams& p, cudaStream_t stream) {
  const int chunks = (p.hq / p.hk + 15) / 16;
  const dim3 grid(p.rows, p.hk * chunks, p.splits);
  paged_decode_tc_kernel<T, D><<<grid, 32, 0, stream>>>(p);
  if (p.splits > 1) paged_decode_merge_kernel<T, D><<<dim3(p.rows, p.hq), 128, 0, stream>>>(p);
  return cudaGetLastError();
}

// T is __half or __nv_bfloat16; head_dim 64 or 128 (checked by the caller).
template <typename T>
inline cudaError_t launch_paged_decode_tc_t(const DecodeParams& p, int head_dim, cudaStream_t stream) {
  if (p.rows == 0) return cudaSuccess;
  switch (head_dim) {
    case 64: return launch_decode_tc_d<T, 64>(p, stream);
    case 128: return launch_decode_tc_d<T, 128>(p, stream);
    default: return cudaErrorInvalidValue;
  }
}

}  // namespace attn
}  // namespace cuda
}  // namespace infinilm
