// SiLU-and-mul body, compiled once per ISA by kernels/cpu/activation.h (no include guard on purpose).
namespace infinilm::cpu::INFINILM_ISA {

template <typename T>
void silu_and_mul(T* out,        // [rows, d], contiguous
                  const T* in,   // [rows, 2d], row stride in_stride
                  int64_t rows, int64_t d, int64_t in_stride) {
  parallel_for(rows, d, [&](int64_t r) {
    const T* g = in + r * in_stride;
    const T* u = g + d;
    T* y = out + r * d;
#pragma omp simd
    for (int64_t i = 0; i < d; ++i) {
      const float a = to_float(g[i]);
      y[i] = from_float<T>(a / (1.f + exp_approx(-a)) * to_float(u[i]));
    }
  });
}

}  // namespace infinilm::cpu::INFINILM_ISA
