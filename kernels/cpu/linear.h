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

namespace infinilm::cpu {

// Rows of x up to which skinny_linear beats the general GEMM torch uses (measured on the 2-core EPYC, fp32:
// 1.5-3x faster than MKL up to 16 rows; bf16: 1.3-3x faster than oneDNN up to 4 rows, slower from 8, where the
// bf16 -> float conversion of each weight vector is repeated per group of 4 rows and the loop is no longer
// bandwidth-bound).
constexpr int64_t kSkinnyLinearMaxRowsF32 = 16;
constexpr int64_t kSkinnyLinearMaxRowsBF16 = 4;

// y[m, n] = sum_k x[m, k] * w[n, k] (+ bias[n]); T = float or bf16_t. scratch: M*K floats, where x is
// converted (or gathered from strided rows) unless it is float with dense rows.
template <typename T>
void skinny_linear(T* y, const T* x, const T* w, const T* bias, float* scratch, int64_t M, int64_t N, int64_t K,
                   int64_t ldx, int64_t ldy) {
  INFINILM_CPU_ISA_CALL(skinny_linear<T>, y, x, w, bias, scratch, M, N, K, ldx, ldy);
}

}  // namespace infinilm::cpu
