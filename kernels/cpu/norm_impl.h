// RMSNorm bodies, compiled once per ISA by kernels/cpu/norm.h (no include guard on purpose).
namespace infinilm::cpu::INFINILM_ISA {


// out[r, :] = in[r, :] * rsqrt(mean(in[r, :]^2) + eps) * weight[:]
template <typename T>
void rms_norm(T* out,            // [rows, hidden], row stride out_stride
              const T* in,       // [rows, hidden], row stride in_stride
              const T* weight,   // [hidden]
              int64_t rows, int64_t hidden, int64_t in_stride, int64_t out_stride, float eps) {
  parallel_for(rows, hidden, [&](int64_t r) {
    const T* x = in + r * in_stride;
    T* y = out + r * out_stride;
    float ss = 0.f;
#pragma omp simd reduction(+ : ss)
    for (int64_t i = 0; i < hidden; ++i) {
      const float v = to_float(x[i]);
      ss += v * v;
    }
    const float inv = 1.f / std::sqrt(ss / static_cast<float>(hidden) + eps);
#pragma omp simd
    for (int64_t i = 0; i < hidden; ++i) y[i] = from_float<T>(to_float(x[i]) * inv * to_float(weight[i]));
  });
}

// residual[r, :] += x[r, :] (rounded to T), then x[r, :] = rms_norm(residual[r, :]).
template <typename T>
void fused_add_rms_norm(T* x,          // [rows, hidden], row stride x_stride; overwritten with the norm
                        T* residual,   // [rows, hidden], row stride res_stride; overwritten with the sum
                        const T* weight,  // [hidden]
                        int64_t rows, int64_t hidden, int64_t x_stride, int64_t res_stride, float eps) {
  parallel_for(rows, hidden, [&](int64_t r) {
    T* xr = x + r * x_stride;
    T* rr = residual + r * res_stride;
    // Blocks through float scratch: conversion loops and float loops vectorise on their own, where one fused
    // loop over bf16 loads, a bf16 store and a reduction did not.
    constexpr int64_t kBlock = 256;
    float a[kBlock], b[kBlock];
    float ss = 0.f;
    for (int64_t i0 = 0; i0 < hidden; i0 += kBlock) {
      const int64_t n = hidden - i0 < kBlock ? hidden - i0 : kBlock;
#pragma omp simd
      for (int64_t i = 0; i < n; ++i) {
        a[i] = to_float(xr[i0 + i]);
        b[i] = to_float(rr[i0 + i]);
      }
#pragma omp simd
      for (int64_t i = 0; i < n; ++i) rr[i0 + i] = from_float<T>(a[i] + b[i]);
#pragma omp simd reduction(+ : ss)
      for (int64_t i = 0; i < n; ++i) {
        const float v = to_float(rr[i0 + i]);  // the sum as stored, rounded to T
        ss += v * v;
      }
    }
    const float inv = 1.f / std::sqrt(ss / static_cast<float>(hidden) + eps);
#pragma omp simd
    for (int64_t i = 0; i < hidden; ++i) xr[i] = from_float<T>(to_float(rr[i]) * inv * to_float(weight[i]));
  });
}

}  // namespace infinilm::cpu::INFINILM_ISA
