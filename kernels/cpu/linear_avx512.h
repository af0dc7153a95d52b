// Skinny linear for CPUs with AVX-512 (and AVX512-BF16 for bf16): tiles of 4 rows of x by 4 rows of w.
//
// Napkin math: each k-step loads 4 vectors of w and 4 of x for 16 FMAs, so with M >= 4 the core is
// FMA-bound rather than load-bound (the AVX2 body loads 1.25 vectors per FMA); bf16 goes through
// vdpbf16ps, two products per lane and no conversion of w, so bf16 batches of 8-16 rows stay near fp32's
// FLOP rate on half the bytes. Rows of w are taken 4 at a time and reused from L1 by every group of 4 rows
// of x. Tails along k use masked loads (zeros add nothing).
#pragma once

#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#define INFINILM_CPU_HAVE_AVX512 1

#include "kernels/cpu/common.h"

#pragma GCC push_options
#pragma GCC target("avx512f,avx512bw,avx512vl,avx512dq,avx512bf16,fma")
#include <immintrin.h>

namespace infinilm::cpu::avx512 {
namespace linear_detail {

inline __m512 load16(const float* p, __mmask16 m) { return _mm512_maskz_loadu_ps(m, p); }

// MR rows of x (row stride ldx, float) times NR rows of w (stride K); y[m][n] = dot + bias.
template <int MR, int NR, typename T>
inline void tile_f32(T* y, int64_t ldy, const float* x, int64_t ldx, const float* w, int64_t K, const T* bias) {
  __m512 acc[MR][NR];
  for (int m = 0; m < MR; ++m)
    for (int n = 0; n < NR; ++n) acc[m][n] = _mm512_setzero_ps();
  for (int64_t k = 0; k < K; k += 16) {
    const __mmask16 mask = K - k >= 16 ? static_cast<__mmask16>(0xffff) : static_cast<__mmask16>((1u << (K - k)) - 1);
    __m512 wv[NR];
    for (int n = 0; n < NR; ++n) wv[n] = load16(w + n * K + k, mask);
    for (int m = 0; m < MR; ++m) {
      const __m512 xv = load16(x + m * ldx + k, mask);
      for (int n = 0; n < NR; ++n) acc[m][n] = _mm512_fmadd_ps(wv[n], xv, acc[m][n]);
    }
  }
  for (int n = 0; n < NR; ++n) {
    const float b = bias != nullptr ? to_float(bias[n]) : 0.f;
    for (int m = 0; m < MR; ++m) y[m * ldy + n] = from_float<T>(_mm512_reduce_add_ps(acc[m][n]) + b);
  }
}

// bf16 x and w: 32 elements (16 pairs) per vdpbf16ps.
template <int MR, int NR>
inline void tile_bf16(bf16_t* y, int64_t ldy, const bf16_t* x, int64_t ldx, const bf16_t* w, int64_t K,
                      const bf16_t* bias) {
  __m512 acc[MR][NR];
  for (int m = 0; m < MR; ++m)
    for (int n = 0; n < NR; ++n) acc[m][n] = _mm512_setzero_ps();
  for (int64_t k = 0; k < K; k += 32) {
    const __mmask32 mask = K - k >= 32 ? static_cast<__mmask32>(0xffffffffu)
                                       : static_cast<__mmask32>((1ull << (K - k)) - 1);
    __m512bh wv[NR];
    for (int n = 0; n < NR; ++n) wv[n] = (__m512bh)_mm512_maskz_loadu_epi16(mask, w + n * K + k);
    for (int m = 0; m < MR; ++m) {
      const __m512bh xv = (__m512bh)_mm512_maskz_loadu_epi16(mask, x + m * ldx + k);
      for (int n = 0; n < NR; ++n) acc[m][n] = _mm512_dpbf16_ps(acc[m][n], wv[n], xv);
    }
  }
  for (int n = 0; n < NR; ++n) {
    const float b = bias != nullptr ? to_float(bias[n]) : 0.f;
    for (int m = 0; m < MR; ++m) y[m * ldy + n] = from_float<bf16_t>(_mm512_reduce_add_ps(acc[m][n]) + b);
  }
}

template <int NR, typename T, typename X>
inline void tile_rows(int mr, T* y, int64_t ldy, const X* x, int64_t ldx, const T* w, int64_t K, const T* bias) {
  if constexpr (std::is_same_v<T, float>) {
    switch (mr) {
      case 1: return tile_f32<1, NR>(y, ldy, x, ldx, w, K, bias);
      case 2: return tile_f32<2, NR>(y, ldy, x, ldx, w, K, bias);
      case 3: return tile_f32<3, NR>(y, ldy, x, ldx, w, K, bias);
      default: return tile_f32<4, NR>(y, ldy, x, ldx, w, K, bias);
    }
  } else {
    switch (mr) {
      case 1: return tile_bf16<1, NR>(y, ldy, x, ldx, w, K, bias);
      case 2: return tile_bf16<2, NR>(y, ldy, x, ldx, w, K, bias);
      case 3: return tile_bf16<3, NR>(y, ldy, x, ldx, w, K, bias);
      default: return tile_bf16<4, NR>(y, ldy, x, ldx, w, K, bias);
    }
  }
}

}  // namespace linear_detail

// Same contract as the baseline/AVX2 skinny_linear (kernels/cpu/linear.h); x rows are read in place.
template <typename T>
void skinny_linear(T* y,            // [M, N], row stride ldy
                   const T* x,      // [M, K], row stride ldx
                   const T* w,      // [N, K] dense
                   const T* bias,   // [N] or null
                   float* /*scratch*/, int64_t M, int64_t N, int64_t K, int64_t ldx, int64_t ldy) {
  constexpr int64_t kBlock = 64;
  const int64_t blocks = (N + kBlock - 1) / kBlock;
  parallel_for(blocks, kBlock * K * (M < 4 ? 1 : M / 4), [&](int64_t blk) {
    const int64_t n_end = (blk + 1) * kBlock < N ? (blk + 1) * kBlock : N;
    for (int64_t n0 = blk * kBlock; n0 < n_end; n0 += 4) {
      const int nr = static_cast<int>(n_end - n0 < 4 ? n_end - n0 : 4);
      const T* wn = w + n0 * K;
      const T* bn = bias != nullptr ? bias + n0 : nullptr;
      for (int64_t m0 = 0; m0 < M; m0 += 4) {
        const int mr = static_cast<int>(M - m0 < 4 ? M - m0 : 4);
        T* yt = y + m0 * ldy + n0;
        const T* xt = x + m0 * ldx;
        switch (nr) {
          case 1: linear_detail::tile_rows<1>(mr, yt, ldy, xt, ldx, wn, K, bn); break;
          case 2: linear_detail::tile_rows<2>(mr, yt, ldy, xt, ldx, wn, K, bn); break;
          case 3: linear_detail::tile_rows<3>(mr, yt, ldy, xt, ldx, wn, K, bn); break;
          default: linear_detail::tile_rows<4>(mr, yt, ldy, xt, ldx, wn, K, bn); break;
        }
      }
    }
  });
}

}  // namespace infinilm::cpu::avx512

#pragma GCC pop_options
#endif
