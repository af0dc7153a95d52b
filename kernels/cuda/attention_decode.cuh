// Paged decode attention on FMAs (the float32 path; fp16/bf16 run attention_decode_tc.cuh): flash-decoding with
// one CTA per (query row, KV head, head chunk, split), the query heads of a KV head sharing every K/V load;
// with splits > 1 the last CTA of a (row, KV head, chunk) merges the splits in the same launch.
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

// A token's D elements are PIECES 16-byte pieces; TPT threads (a power of two, at most a warp) own one
// token, thread li holding pieces li, li + TPT, ... (P of them; pieces past PIECES are idle lanes: head
// sizes like 80 and 96 in float32 leave some lanes of the token's group without work).
template <typename T, int D>
struct DecodePieces {
  static constexpr int kVec = Vec<T>::kN;
  static constexpr int kPieces = D / kVec;
  static constexpr int kTpt = kPieces >= 32 ? 32 : (kPieces > 16 ? 32 : (kPieces > 8 ? 16 : (kPieces > 4 ? 8 : 4)));
  static constexpr int kP = (kPieces + kTpt - 1) / kTpt;
  static_assert(D % kVec == 0, "head_dim must be a multiple of 16 bytes");
};

template <typename T, int D, int HPC, int THREADS>
struct DecodeShape {
  static constexpr int kU = HPC >= 8 || DecodePieces<T, D>::kP > 1 ? 2 : 4;  // tokens per thread per iteration
  static constexpr int kStages = 4;            // tiles in flight per CTA: 3 ahead of the one computed
  static constexpr int kTile = THREADS / DecodePieces<T, D>::kTpt * kU;
  static constexpr int kRingBytes = 2 * kStages * kTile * D * static_cast<int>(sizeof(T));
  static constexpr int kMergeBytes = (THREADS / DecodePieces<T, D>::kTpt) * HPC * (D + 2) * 4;
  static constexpr int kSmemBytes = kRingBytes > kMergeBytes ? kRingBytes : kMergeBytes;
};

// THREADS threads; TPT threads own one token, NT = THREADS / TPT tokens are in flight per pass and each
// thread takes U of them per iteration (2 U P 16-byte loads outstanding).
template <typename T, int D, int HPC, int THREADS>
__global__ void __launch_bounds__(THREADS) paged_decode_kernel(const DecodeParams p) {
  using PC = DecodePieces<T, D>;
  constexpr int VEC = PC::kVec, PIECES = PC::kPieces, TPT = PC::kTpt, P = PC::kP;
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
  const int64_t t_begin = ri.start + static_cast<int64_t>(split) * p.part_size;
  const int64_t t_end = min(ri.len, t_begin + p.part_size);
  if (split > 0 && t_begin >= ri.len) return;  // the merge reads only the splits a row uses (split 0 always runs)
  // A row whose tokens all fall in split 0 (a short context in a grid sized for a longer bound, e.g. a CUDA
  // graph's length bucket) is finished by this CTA alone: no partials, no counter, no merge. Only with the fused
  // merge: the separate merge kernel would overwrite the row from partials.
  const bool direct = p.splits == 1 || (p.counters != nullptr && used_splits(p, ri) == 1);

  const int tid = threadIdx.x, g = tid / TPT, li = tid % TPT;
  bool live[P];  // piece li + k * TPT exists
#pragma unroll
  for (int k = 0; k < P; ++k) live[k] = li + k * TPT < PIECES;
  const T* qp = static_cast<const T*>(p.q) + row * p.q_stride_row;
  float q[HPC][P][VEC];
#pragma unroll
  for (int j = 0; j < HPC; ++j) {
#pragma unroll
    for (int k = 0; k < P; ++k) {
      uint4 raw = make_uint4(0, 0, 0, 0);
      if (j < nh && live[k]) raw = *reinterpret_cast<const uint4*>(qp + (h0 + j) * p.q_stride_head + (li + k * TPT) * VEC);
      to_floats<T>(raw, q[j][k]);
#pragma unroll
      for (int i = 0; i < VEC; ++i) q[j][k][i] *= p.scale_log2;
    }
  }

  float m[HPC], l[HPC], acc[HPC][P][VEC];
#pragma unroll
  for (int j = 0; j < HPC; ++j) {
    m[j] = -INFINITY;
    l[j] = 0.f;
#pragma unroll
    for (int k = 0; k < P; ++k) {
#pragma unroll
      for (int i = 0; i < VEC; ++i) acc[j][k][i] = 0.f;
    }
  }

  const T* kc = static_cast<const T*>(p.k_cache);
  const T* vc = static_cast<const T*>(p.v_cache);
  const int64_t bt_row = static_cast<int64_t>(ri.req) * p.max_blocks;
  const int64_t bs_mask = (int64_t{1} << p.log_bs) - 1;
  // Cache offset of token t's row for this CTA's KV head, or -1 when t is past the split or its block id
  // is out of range (such tokens are masked: bad ids never reach memory).
  auto token_offset = [&](int64_t t) -> int64_t {
    if (t >= t_end) return -1;
    const int64_t b = load_index(p.block_tables, p.bt64, bt_row + (t >> p.log_bs));
    if (b < 0 || b >= p.num_blocks) return -1;
    return b * p.block_stride + kvh * p.head_stride + (t & bs_mask) * D;
  };

  // K/V stream through a STAGES-deep cp.async ring in shared memory. Thread (g, li) copies exactly the
  // 16-byte pieces it later reads (token u*NT + g of a tile, its pieces), so no barrier is needed: each
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
      if (off[u] >= 0) valid_ring |= 1u << (st * U + u);
#pragma unroll
      for (int k = 0; k < P; ++k) {
        if (!live[k]) continue;
        const int e = u * NT * D + k * TPT * VEC;
        if (off[u] >= 0) {
          cp_async16(dk + e, kc + off[u] + (li + k * TPT) * VEC);
          cp_async16(dv + e, vc + off[u] + (li + k * TPT) * VEC);
        } else {
          *reinterpret_cast<uint4*>(dk + e) = make_uint4(0, 0, 0, 0);
          *reinterpret_cast<uint4*>(dv + e) = make_uint4(0, 0, 0, 0);
        }
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
    bool valid[U];
    float s[U][HPC];
#pragma unroll
    for (int u = 0; u < U; ++u) {
      valid[u] = (valid_ring >> (st * U + u)) & 1u;
#pragma unroll
      for (int j = 0; j < HPC; ++j) s[u][j] = 0.f;
#pragma unroll
      for (int k = 0; k < P; ++k) {
        if (!live[k]) continue;
        float kf[VEC];
        to_floats<T>(*reinterpret_cast<const uint4*>(ks + u * NT * D + k * TPT * VEC), kf);
#pragma unroll
        for (int j = 0; j < HPC; ++j) {
#pragma unroll
          for (int i = 0; i < VEC; ++i) s[u][j] = fmaf(q[j][k][i], kf[i], s[u][j]);
        }
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
    if (p.softcap_log2 > 0.f) {
#pragma unroll
      for (int u = 0; u < U; ++u) {
#pragma unroll
        for (int j = 0; j < HPC; ++j) s[u][j] = soft_cap_log2(s[u][j], p.softcap_log2);
      }
    }
    float vf[U][P][VEC];
#pragma unroll
    for (int u = 0; u < U; ++u) {
#pragma unroll
      for (int k = 0; k < P; ++k) {
        uint4 raw = make_uint4(0, 0, 0, 0);
        if (live[k]) raw = *reinterpret_cast<const uint4*>(vs + u * NT * D + k * TPT * VEC);
        to_floats<T>(raw, vf[u][k]);
      }
    }
#pragma unroll
    for (int j = 0; j < HPC; ++j) {
      float mx = m[j];
#pragma unroll
      for (int u = 0; u < U; ++u) mx = valid[u] ? fmaxf(mx, s[u][j]) : mx;
      if (mx == -INFINITY) continue;  // nothing valid yet (uniform across the token's threads)
      const float alpha = exp2f(m[j] - mx);
      l[j] *= alpha;
#pragma unroll
      for (int k = 0; k < P; ++k) {
#pragma unroll
        for (int i = 0; i < VEC; ++i) acc[j][k][i] *= alpha;
      }
#pragma unroll
      for (int u = 0; u < U; ++u) {
        const float pe = valid[u] ? exp2f(s[u][j] - mx) : 0.f;
        l[j] += pe;
#pragma unroll
        for (int k = 0; k < P; ++k) {
#pragma unroll
          for (int i = 0; i < VEC; ++i) acc[j][k][i] = fmaf(pe, vf[u][k][i], acc[j][k][i]);
        }
      }
      m[j] = mx;
    }
  }

  // Merge the NT token groups of this CTA (the drained ring's memory holds the per-group partials).
  cp_async_wait<0>();
  __syncthreads();
  auto sm_ml = reinterpret_cast<float(*)[HPC][2]>(decode_smem);                                   // [NT][HPC][2]
  auto sm_acc = reinterpret_cast<float(*)[HPC][D]>(decode_smem + NT * HPC * 2 * sizeof(float));  // [NT][HPC][D]
#pragma unroll
  for (int j = 0; j < HPC; ++j) {
    if (li == 0) {
      sm_ml[g][j][0] = m[j];
      sm_ml[g][j][1] = l[j];
    }
#pragma unroll
    for (int k = 0; k < P; ++k) {
      if (!live[k]) continue;
#pragma unroll
      for (int i = 0; i < VEC; ++i) sm_acc[g][j][(li + k * TPT) * VEC + i] = acc[j][k][i];
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
    if (direct) {
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
  if (!direct && p.counters != nullptr) fused_split_merge<T, D, THREADS>(p, row, h0, nh, ri);
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
  if (p.splits > 1 && p.counters == nullptr) paged_decode_merge_kernel<T, D><<<dim3(p.rows, p.hq), 64, 0, stream>>>(p);
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

// head_dim one of limits::kCudaHeadSizes (checked by the caller); rows, hq, hk > 0.
template <typename T>
inline cudaError_t launch_paged_decode_t(const DecodeParams& p, int head_dim, cudaStream_t stream) {
  if (p.rows == 0) return cudaSuccess;
  switch (head_dim) {
    case 64: return launch_decode_d<T, 64>(p, stream);
    case 80: return launch_decode_d<T, 80>(p, stream);
    case 96: return launch_decode_d<T, 96>(p, stream);
    case 128: return launch_decode_d<T, 128>(p, stream);
    case 256: return launch_decode_d<T, 256>(p, stream);
    default: return cudaErrorInvalidValue;
  }
}

}  // namespace attn
}  // namespace cuda
}  // namespace infinilm
