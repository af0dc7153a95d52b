// CPU SiLU-and-mul: out = silu(x[:, :d]) * x[:, d:], computed in float (baseline and AVX2 builds).
//
// Napkin math: reads 2*d and writes d elements per row; at 1B-model sizes (d = 8192) a row is L2-resident,
// so the exp polynomial and the division set the pace. The AVX2 build replaces the division by a reciprocal
// estimate and a Newton step (2x on a Zen 2 core, where a float division costs more than the exponential).
#pragma once

#include "kernels/cpu/common.h"
#include "kernels/cpu/isa.h"

#define INFINILM_ISA generic
#include "kernels/cpu/activation_impl.h"
#undef INFINILM_ISA
#ifdef INFINILM_CPU_HAVE_AVX2
#pragma GCC push_options
#pragma GCC target("avx2,fma,f16c")
#include <immintrin.h>
#define INFINILM_ISA avx2
#define INFINILM_ACTIVATION_AVX2 1
#include "kernels/cpu/activation_impl.h"
#undef INFINILM_ACTIVATION_AVX2
#undef INFINILM_ISA
#pragma GCC pop_options
#endif

namespace infinilm::cpu {

template <typename T>
void silu_and_mul(T* out, const T* in, int64_t rows, int64_t d, int64_t in_stride) {
  INFINILM_CPU_ISA_CALL(silu_and_mul<T>, out, in, rows, d, in_stride);
}

}  // namespace infinilm::cpu
