// SiLU-and-mul body, compiled once per ISA by kernels/cpu/activation.h (no include guard on purpose).
namespace infinilm::cpu::INFINILM_ISA {

template <typename T>
void silu_and_mul(T* out,        // [rows, d], contiguous
                  const T* in,   // [rows, 2d], row stride in_stride
                  int64_t rows, int64_t d, int64_t in_stride) {
  // Rows of fewer threads than cores split into column chunks so that a decode step's single row uses them all.
  constexpr int64_t kChunk = 1024;
  const int64_t per_row = rows >= 4 ? 1 : (d + kChunk - 1) / kChunk;
  const int64_t width = (d + per_row - 1) / per_row;
  parallel_for(rows * per_row, width, [&](int64_t item) {
    const int64_t r = item / per_row, c0 = (item % per_row) * width;
    const int64_t c1 = c0 + width < d ? c0 + width : d;
    const T* g = in + r * in_stride;
    const T* u = g + d;
    T* y = out + r * d;
    // Blocks through float scratch: each loop is a plain conversion or float loop that vectorises on its own
    // (one fused loop over bf16 inputs and outputs did not).
    constexpr int64_t kBlock = 256;
    float a[kBlock], b[kBlock];
    for (int64_t i0 = c0; i0 < c1; i0 += kBlock) {
      const int64_t n = c1 - i0 < kBlock ? c1 - i0 : kBlock;
#pragma omp simd
      for (int64_t i = 0; i < n; ++i) {
        a[i] = to_float(g[i0 + i]);
        b[i] = to_float(u[i0 + i]);
      }
      int64_t i = 0;
#ifdef INFINILM_ACTIVATION_AVX2
      // The division costs more than the exponential: reciprocal estimate + one Newton step (about 2 ulp).
      for (; i + 8 <= n; i += 8) {
        float e[8];
#pragma omp simd
        for (int j = 0; j < 8; ++j) e[j] = 1.f + exp_approx(-a[i + j]);
        const __m256 den = _mm256_loadu_ps(e);
        __m256 r = _mm256_rcp_ps(den);
        r = _mm256_mul_ps(r, _mm256_fnmadd_ps(den, r, _mm256_set1_ps(2.f)));
        _mm256_storeu_ps(a + i, _mm256_mul_ps(_mm256_mul_ps(_mm256_loadu_ps(a + i), r), _mm256_loadu_ps(b + i)));
      }
#endif
#pragma omp simd
      for (int64_t j = i; j < n; ++j) a[j] = a[j] / (1.f + exp_approx(-a[j])) * b[j];
#pragma omp simd
      for (int64_t i = 0; i < n; ++i) y[i0 + i] = from_float<T>(a[i]);
    }
  });
}

}  // namespace infinilm::cpu::INFINILM_ISA
