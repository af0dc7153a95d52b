// Paged decode attention on FMAs (the float32 path; fp16/bf16 run attention_decode_tc.cuh): flash-decoding with
// one CTA per (query row, KV head, head chunk, split), the query heads of a KV head sharing every K/V load.
//
// Napkin math: a step reads K and V once, 2 * len * Hk * D * sizeof(T) bytes per row (Llama-3-8B, 32k
// context, bf16: 128 MiB, ~44 us at 3 TB/s); the arithmetic (2 * G FMAs per loaded element) and the split
// partials (rows * Hq * splits * (D + 2) floats) are small beside it, so the kernel is memory-bound.
#pragma once

#include "attention_common.cuh"
#include "attention_decode_merge.cuh"
#include "attention_params.h"

namespace infinilm {
namespace cuda {
namespace attn {

template <typename T, int D, int HPC, int THREADS>
struct DecodeShape {
  static constexpr int kU = HPC >= 8 ? 2 : 4;  // 8 heads keep 2x the accumulators: fewer tokens per thread
  static constexpr int kStages = 4;            // tiles in flight per CTA: 3 ahead of the one computed
  static constexpr int kTile = THREADS / (D / Vec<T>::kN) * kU;
  static constexpr int kRingBytes = 2 * kStages * kTile * D * static_cast<int>(sizeof(T));
  static constexpr int kMergeBytes = (THREADS / (D / Vec<T>::kN)) * HPC * (D + 2) * 4;
  static constexpr int kSmemBytes = kRingBytes > kMergeBytes ? kRingBytes : kMergeBytes;
};

// THREADS threads; TPT = D / VEC threads own one token (16 bytes each), NT = THREADS / TPT tokens are
// in flight per pass and each thread takes U of them per iteration (2U 16-byte loads outstanding).
template <typename T, int D, int HPC, int THREADS>
__global__ void __launch_bounds__(THREADS) paged_decode_kernel(const DecodeParams p) {
  constexpr int VEC = Vec<T>::kN;
  constexpr int TPT = D / VEC;
  static_assert(TPT <= 32 && 32 % TPT == 0, "a token's threads must sit inside one warp");
  constexpr int NT = THREADS / TPT;
  constexpr int U = DecodeShape<T, D, HPC, THREADS>::kU;
  constexpr int TILE = NT * U;
  constexpr int STAGES = DecodeShape<T, D, HPC, THREADS>::kStages;

  const int row = blockIdx.x, split = blockIdx.z;
  const int group = p.hq / p.hk, chunks = (group + HPC - 1) / HPC;
  const int kvh = blockIdx.y / chunks, chunk = blockIdx.y % chunks;
  const int h0 = kvh * group + chunk * HPC;
  const int nh = min(HPC, group - chunk * HPC);
  const RowInfo ri = decode_row_info(p, row);
  const int64_t t_begin = static_cast<int64_t>(split) * p.part_size;
  const int64_t t_end = min(ri.len, t_begin + p.part_size);
  if (p.splits > 1 && t_begin >= ri.len) return;  // the merge reads only the splits a row uses

  const int tid = threadIdx.x, g = tid / TPT, li = tid % TPT;
  const T* qp = static_cast<const T*>(p.q) + row * p.q_stride_row + li * VEC;
  float q[HPC][VEC];
#pragma unroll
  for (int j = 0; j < HPC; ++j) {
    uint4 raw = make_uint4(0, 0, 0, 0);
    if (j < nh) raw = *reinterpret_cast<const uint4*>(qp + (h0 + j) * p.q_stride_head);
    to_floats<T>(raw, q[j]);
#pragma unroll
    for (int i = 0; i < VEC; ++i) q[j][i] *= p.scale_log2;
  }

  float m[HPC], l[HPC], acc[HPC][VEC];
#pragma unroll
  for (int j = 0; j < HPC; ++j) {
    m[j] = -INFINITY;
    l[j] = 0.f;
#pragma unroll
    for (int i = 0; i < VEC; ++i) acc[j][i] = 0.f;
  }

  const T* kc = static_cast<const T*>(p.k_cache);
  const T* vc = static_cast<const T*>(p.v_cache);
  const int64_t bt_row = static_cast<int64_t>(ri.req) * p.max_blocks;
  const int64_t bs_mask = (int64_t{1} << p.log_bs) - 1;
  // Cache offset of token t's 16 bytes for this thread, or -1 when t is past the split or its block id
  // is out of range (such tokens are masked: bad ids never reach memory).
  auto token_offset = [&](int64_t t) -> int64_t {
    if (t >= t_end) return -1;
    const int64_t b = load_index(p.block_tables, p.bt64, bt_row + (t >> p.log_bs));
    if (b < 0 || b >= p.num_blocks) return -1;
    return b * p.block_stride + kvh * p.head_stride + (t & bs_mask) * D + li * VEC;
  };

  // K/V stream through a STAGES-deep cp.async ring in shared memory. Thread (g, li) copies exactly the
  // 16-byte pieces it later reads (token u*NT + g of a tile, piece li), so no barrier is needed: each
  // thread's own wait_group orders its copies before its reads. Masked slots are zero-filled.
  extern __shared__ __align__(16) unsigned char decode_smem[];
  T* ring_k = reinterpret_cast<T*>(decode_smem);  // [STAGES][TILE][D]
  T* ring_v = ring_k + STAGES * TILE * D;         // [STAGES][TILE][D]
  const int slot0 = g * D + li * VEC;
  const int64_t span = t_end - t_begin;
  const int n_tiles = span > 0 ? static_cast<int>((span + TILE - 1) / TILE) : 0;
  int64_t off[U];  // cache offsets of the next tile to issue (block ids fetched one tile ahead)
  uint32_t valid_ring = 0;  // bit stage*U + u: token u of the tile in that stage is real
  auto fetch_offsets = [&](int tile) {
#pragma unroll
    for (int u = 0; u < U; ++u) off[u] = token_offset(t_begin + static_cast<int64_t>(tile) * TILE + u * NT + g);
  };
  auto issue = [&](int tile) {
    const int st = tile % STAGES;
    T* dk = ring_k + st * TILE * D + slot0;
    T* dv = ring_v + st * TILE * D + slot0;
    valid_ring &= ~(((1u << U) - 1) << (st * U));
#pragma unroll
    for (int u = 0; u < U; ++u) {
      if (off[u] >= 0) {
        cp_async16(dk + u * NT * D, kc + off[u]);
        cp_async16(dv + u * NT * D, vc + off[u]);
        valid_ring |= 1u << (st * U + u);
      } else {
        *reinterpret_cast<uint4*>(dk + u * NT * D) = make_uint4(0, 0, 0, 0);
        *reinterpret_cast<uint4*>(dv + u * NT * D) = make_uint4(0, 0, 0, 0);
      }
    }
  };
  fetch_offsets(0);
#pragma unroll
  for (int j = 0; j < STAGES - 1; ++j) {
    if (j < n_tiles) {
      issue(j);
      fetch_offsets(j + 1);
    }
    cp_async_commit();
  }

  for (int it = 0; it < n_tiles; ++it) {
    if (it + STAGES - 1 < n_tiles) {
      issue(it + STAGES - 1);
      fetch_offsets(it + STAGES);  // block ids load while the ring drains
    }
    cp_async_commit();
    cp_async_wait<STAGES - 1>();  // this thread's copies for tile `it` have landed
    const int st = it % STAGES;
    const T* ks = ring_k + st * TILE * D + slot0;
    const T* vs = ring_v + st * TILE * D + slot0;
    uint4 kr[U], vr[U];
    bool valid[U];
#pragma unroll
    for (int u = 0; u < U; ++u) {
      valid[u] = (valid_ring >> (st * U + u)) & 1u;
      kr[u] = *reinterpret_cast<const uint4*>(ks + u * NT * D);
      vr[u] = *reinterpret_cast<const uint4*>(vs + u * NT * D);
    }

    float s[U][HPC];
#pragma unroll
    for (int u = 0; u < U; ++u) {
      float kf[VEC];
      to_floats<T>(kr[u], kf);
#pragma unroll
      for (int j = 0; j < HPC; ++j) {
        float d = 0.f;
#pragma unroll
        for (int i = 0; i < VEC; ++i) d = fmaf(q[j][i], kf[i], d);
        s[u][j] = d;
      }
    }
#pragma unroll
    for (int o = TPT / 2; o > 0; o /= 2) {
#pragma unroll
      for (int u = 0; u < U; ++u) {
#pragma unroll
        for (int j = 0; j < HPC; ++j) s[u][j] += __shfl_xor_sync(0xffffffffu, s[u][j], o);
      }
    }
    float vf[U][VEC];
#pragma unroll
    for (int u = 0; u < U; ++u) to_floats<T>(vr[u], vf[u]);
#pragma unroll
    for (int j = 0; j < HPC; ++j) {
      float mx = m[j];
#pragma unroll
      for (int u = 0; u < U; ++u) mx = valid[u] ? fmaxf(mx, s[u][j]) : mx;
      if (mx == -INFINITY) continue;  // nothing valid yet (uniform across the token's threads)
      const float alpha = exp2f(m[j] - mx);
      l[j] *= alpha;
#pragma unroll
      for (int i = 0; i < VEC; ++i) acc[j][i] *= alpha;
#pragma unroll
      for (int u = 0; u < U; ++u) {
        const float pe = valid[u] ? exp2f(s[u][j] - mx) : 0.f;
        l[j] += pe;
#pragma unroll
        for (int i = 0; i < VEC; ++i) acc[j][i] = fmaf(pe, vf[u][i], acc[j][i]);
      }
      m[j] = mx;
    }
  }

  // Merge the NT token groups of this CTA (the drained ring's memory holds the per-group partials).
  cp_async_wait<0>();
  __syncthreads();
  auto sm_ml = reinterpret_cast<float(*)[HPC][2]>(decode_smem);                        // [NT][HPC][2]
  auto sm_acc = reinterpret_cast<float(*)[HPC][D]>(decode_smem + NT * HPC * 2 * sizeof(float));  // [NT][HPC][D]
#pragma unroll
  for (int j = 0; j < HPC; ++j) {
    if (li == 0) {
      sm_ml[g][j][0] = m[j];
      sm_ml[g][j][1] = l[j];
    }
#pragma unroll
    for (int i = 0; i < VEC; i += 4) {
      *reinterpret_cast<float4*>(&sm_acc[g][j][li * VEC + i]) =
          make_float4(acc[j][i], acc[j][i + 1], acc[j][i + 2], acc[j][i + 3]);
    }
  }
  __syncthreads();
  for (int idx = tid; idx < nh * D; idx += THREADS) {
    const int j = idx / D, d = idx % D, h = h0 + j;
    float mx = -INFINITY;
#pragma unroll
    for (int gg = 0; gg < NT; ++gg) mx = fmaxf(mx, sm_ml[gg][j][0]);
    float lsum = 0.f, o = 0.f;
    if (mx != -INFINITY) {
#pragma unroll
      for (int gg = 0; gg < NT; ++gg) {
        const float w = exp2f(sm_ml[gg][j][0] - mx);
        lsum += sm_ml[gg][j][1] * w;
        o += sm_acc[gg][j][d] * w;
      }
    }
    const int64_t rh = static_cast<int64_t>(row) * p.hq + h;
    if (p.splits == 1) {
      static_cast<T*>(p.out)[rh * D + d] = from_float<T>(lsum > 0.f ? o / lsum : 0.f);
    } else {
      const int64_t ps = rh * p.splits + split;
      p.part_o[ps * D + d] = o;
      if (d == 0) {
        p.part_ml[ps * 2] = mx;
        p.part_ml[ps * 2 + 1] = lsum;
      }
    }
  }
}

template <typename T, int D, int HPC>
inline cudaError_t launch_decode_d_h(const DecodeParams& p, cudaStream_t stream) {
  constexpr int kThreads = 128;
  const int chunks = (p.hq / p.hk + HPC - 1) / HPC;
  const dim3 grid(p.rows, p.hk * chunks, p.splits);
  constexpr int smem = DecodeShape<T, D, HPC, kThreads>::kSmemBytes;
  const cudaError_t err =
      cudaFuncSetAttribute(paged_decode_kernel<T, D, HPC, kThreads>, cudaFuncAttributeMaxDynamicSharedMemorySize, smem);
  if (err != cudaSuccess) return err;
  paged_decode_kernel<T, D, HPC, kThreads><<<grid, kThreads, smem, stream>>>(p);
  if (p.splits > 1) paged_decode_merge_kernel<T, D><<<dim3(p.rows, p.hq), 128, 0, stream>>>(p);
  return cudaGetLastError();
}

template <typename T, int D>
inline cudaError_t launch_decode_d(const DecodeParams& p, cudaStream_t stream) {
  switch (decode_heads_per_cta(p.hq / p.hk)) {
    case 1: return launch_decode_d_h<T, D, 1>(p, stream);
    case 2: return launch_decode_d_h<T, D, 2>(p, stream);
    case 4: return launch_decode_d_h<T, D, 4>(p, stream);
    default: return launch_decode_d_h<T, D, 8>(p, stream);
  }
}

// head_dim must be 64 or 128 (checked by the caller); rows, hq, hk > 0.
template <typename T>
inline cudaError_t launch_paged_decode_t(const DecodeParams& p, int head_dim, cudaStream_t stream) {
  if (p.rows == 0) return cudaSuccess;
  switch (head_dim) {
    case 64: return launch_decode_d<T, 64>(p, stream);
    case 128: return launch_decode_d<T, 128>(p, stream);
    default: return cudaErrorInvalidValue;
  }
}

}  // namespace attn
}  // namespace cuda
}  // namespace infinilm
