// CPU linear for few rows (decode steps): y[M, N] = x[M, K] @ w[N, K]^T (+ bias), fp32 accumulation.
//
// Napkin math: with M <= 16 the product is a stream over w (N*K elements read once) with M FMAs per element,
// so it runs at memory bandwidth when w is read in long unit-stride rows and x stays in L1/L2. MKL's sgemm
// on this shape (an "NT" product with a tiny M) reached 8-13 GB/s on a 2-core EPYC where a plain row-dot
// stream reaches 19-30 GB/s (benchmarks/bench_engine.py). Blocks of 64 rows of w are shared out among the
// threads; each block is read from memory once and again from L2 for every further group of 4 rows of x.
#pragma once

#include "kernels/cpu/common.h"
#include "kernels/cpu/isa.h"

#include <type_traits>

#define INFINILM_ISA generic
#include "kernels/cpu/linear_impl.h"
#undef INFINILM_ISA
#ifdef INFINILM_CPU_HAVE_AVX2
#pragma GCC push_options
#pragma GCC target("avx2,fma,f16c")
#define INFINILM_ISA avx2
#include "kernels/cpu/linear_impl.h"
#undef INFINILM_ISA
#pragma GCC pop_options
#endif
#include "kernels/cpu/linear_avx512.h"

namespace infinilm::cpu {

// Rows of x up to which skinny_linear is a candidate; which build (or torch's GEMM) runs a shape is measured
// (csrc/ops/linear_cpu.cpp). On the 2-core Zen 2 EPYC the AVX2 body was 1.5-3x MKL up to 16 fp32 rows and
// 1.3-3x oneDNN up to 4 bf16 rows, slower from 8 (the bf16 -> float conversion of w is repeated per group of
// 4 rows). The AVX-512 body keeps bf16 in vdpbf16ps: on a shared 2-core Zen 4 EPYC, streaming the weights,
// bf16 at 8-16 rows ran 3-4x the AVX2 body and oneDNN, while the AVX2 body stayed ahead (1.3-1.7x) for fp32
// and for 1-4 bf16 rows (its one-row-at-a-time stream; the AVX-512 tile reads 4 rows of w at once).
constexpr int64_t kSkinnyLinearMaxRowsF32 = 16;
constexpr int64_t kSkinnyLinearMaxRowsBF16 = 4;
constexpr int64_t kSkinnyLinearMaxRowsAVX512 = 16;

inline int64_t skinny_linear_max_rows(bool is_bf16) {
  if (cpu_use_avx512()) return kSkinnyLinearMaxRowsAVX512;
  return is_bf16 ? kSkinnyLinearMaxRowsBF16 : kSkinnyLinearMaxRowsF32;
}

// y[m, n] = sum_k x[m, k] * w[n, k] (+ bias[n]); T = float or bf16_t. scratch: M*K floats, where x is
// converted (or gathered from strided rows) unless it is float with dense rows. isa: 0 baseline, 1 AVX2,
// 2 AVX-512 (at most cpu_isa_level(): the caller picks among the builds this CPU runs).
template <typename T>
void skinny_linear_isa(int isa, T* y, const T* x, const T* w, const T* bias, float* scratch, int64_t M, int64_t N,
                       int64_t K, int64_t ldx, int64_t ldy) {
#ifdef INFINILM_CPU_HAVE_AVX512
  if (isa >= 2) return avx512::skinny_linear<T>(y, x, w, bias, scratch, M, N, K, ldx, ldy);
#endif
#ifdef INFINILM_CPU_HAVE_AVX2
  if (isa >= 1) return avx2::skinny_linear<T>(y, x, w, bias, scratch, M, N, K, ldx, ldy);
#endif
  generic::skinny_linear<T>(y, x, w, bias, scratch, M, N, K, ldx, ldy);
}

template <typename T>
void skinny_linear(T* y, const T* x, const T* w, const T* bias, float* scratch, int64_t M, int64_t N, int64_t K,
                   int64_t ldx, int64_t ldy) {
  skinny_linear_isa<T>(cpu_isa_level(), y, x, w, bias, scratch, M, N, K, ldx, ldy);
}

}  // namespace infinilm::cpu
