// CPU RMSNorm and fused residual-add + RMSNorm on raw pointers (fp32 accumulation).
//
// Napkin math: one pass reads x (and residual) once and writes y once: 2*T*H (fused: 4*T*H)
// elements; the row stays in L1/L2 between the sum-of-squares pass and the scale pass.
#pragma once

#include "kernels/cpu/common.h"
#include "kernels/cpu/isa.h"

#define INFINILM_ISA generic
#include "kernels/cpu/norm_impl.h"
#undef INFINILM_ISA
#ifdef INFINILM_CPU_HAVE_AVX2
#pragma GCC push_options
#pragma GCC target("avx2,fma,f16c")
#define INFINILM_ISA avx2
#include "kernels/cpu/norm_impl.h"
#undef INFINILM_ISA
#pragma GCC pop_options
#endif

namespace infinilm::cpu {

// out[r, :] = in[r, :] * rsqrt(mean(in[r, :]^2) + eps) * weight[:]
template <typename T>
void rms_norm(T* out, const T* in, const T* weight, int64_t rows, int64_t hidden, int64_t in_stride,
              int64_t out_stride, float eps) {
  INFINILM_CPU_ISA_CALL(rms_norm<T>, out, in, weight, rows, hidden, in_stride, out_stride, eps);
}

// residual[r, :] += x[r, :] (rounded to T), then x[r, :] = rms_norm(residual[r, :]).
template <typename T>
void fused_add_rms_norm(T* x, T* residual, const T* weight, int64_t rows, int64_t hidden, int64_t x_stride,
                        int64_t res_stride, float eps) {
  INFINILM_CPU_ISA_CALL(fused_add_rms_norm<T>, x, residual, weight, rows, hidden, x_stride, res_stride, eps);
}

}  // namespace infinilm::cpu
