// Torch-free CPU helpers: 16-bit float storage types, their float conversions, and the parallel loops.
#pragma once

#include <cmath>
#include <cstdint>
#include <cstring>
#include <thread>
#include <type_traits>

#include "kernels/cpu/thread_pool.h"

#ifdef _OPENMP
#include <omp.h>
#endif

namespace infinilm::cpu {

// Storage-only 16-bit floats; all arithmetic happens in float.
struct bf16_t { uint16_t bits; };
struct fp16_t { uint16_t bits; };

inline float to_float(float x) { return x; }

inline float to_float(bf16_t x) {
  uint32_t u = static_cast<uint32_t>(x.bits) << 16;
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}

inline float to_float(fp16_t x) {
  // IEEE half -> single, exact, including subnormals, inf and NaN.
  const uint32_t h = x.bits;
  const uint32_t sign = (h & 0x8000u) << 16;
  const uint32_t exp = (h >> 10) & 0x1fu;
  uint32_t mant = h & 0x3ffu;
  uint32_t u;
  if (exp == 0x1f) {
    u = sign | 0x7f800000u | (mant << 13);
  } else if (exp != 0) {
    u = sign | ((exp + 112u) << 23) | (mant << 13);
  } else if (mant == 0) {
    u = sign;
  } else {  // subnormal: normalise
    int e = -1;
    do { mant <<= 1; ++e; } while ((mant & 0x400u) == 0);
    u = sign | ((112u - e) << 23) | ((mant & 0x3ffu) << 13);
  }
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}

template <typename T> inline T from_float(float f);

template <> inline float from_float<float>(float f) { return f; }

template <> inline bf16_t from_float<bf16_t>(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  if ((u & 0x7fffffffu) > 0x7f800000u) return bf16_t{static_cast<uint16_t>((u >> 16) | 0x40u)};  // NaN stays NaN
  u += 0x7fffu + ((u >> 16) & 1u);  // round to nearest even
  return bf16_t{static_cast<uint16_t>(u >> 16)};
}

template <> inline fp16_t from_float<fp16_t>(float f) {
  // single -> half, round to nearest even, with overflow to inf and gradual underflow.
  uint32_t u;
  std::memcpy(&u, &f, 4);
  const uint32_t sign = (u >> 16) & 0x8000u;
  const uint32_t absu = u & 0x7fffffffu;
  if (absu > 0x7f800000u) return fp16_t{static_cast<uint16_t>(sign | 0x7e00u)};
  if (absu >= 0x477ff000u) return fp16_t{static_cast<uint16_t>(sign | 0x7c00u)};  // rounds to >= 65520 -> inf
  if (absu >= 0x38800000u) {  // normal half
    uint32_t m = absu + 0xc8000fffu + ((absu >> 13) & 1u);  // rebias exponent (-112 << 23) and round
    return fp16_t{static_cast<uint16_t>(sign | (m >> 13))};
  }
  if (absu < 0x33000001u) return fp16_t{static_cast<uint16_t>(sign)};  // underflow to zero
  // subnormal half
  const uint32_t e = absu >> 23;
  uint32_t m = (absu & 0x7fffffu) | 0x800000u;
  const uint32_t shift = 126u - e;  // half subnormals count units of 2^-24
  const uint32_t full = m >> shift;
  const uint32_t rem = m & ((1u << shift) - 1u);
  const uint32_t half = 1u << (shift - 1u);
  uint32_t r = full;
  if (rem > half || (rem == half && (full & 1u))) ++r;
  return fp16_t{static_cast<uint16_t>(sign | r)};
}

// exp(x) in float with ~2 ulp error, written with plain arithmetic so `#pragma omp simd` loops vectorise
// it (libm's expf is a scalar call). NaN propagates; the input is clamped to the finite float range.
inline float exp_approx(float x) {
  x = x > 88.3762626647949f ? 88.3762626647949f : x;
  x = x < -87.3365447504f ? -87.3365447504f : x;
  const float n = (x * 1.44269504088896341f + 12582912.f) - 12582912.f;  // round(x / ln 2)
  const float r = (x - n * 0.693359375f) + n * 2.12194440e-4f;           // Cody-Waite reduction
  float p = 1.38888889e-3f;  // 1/720 ... 1/6 as literals: GCC keeps inexact constant divisions at run time
  p = p * r + 8.33333333e-3f;
  p = p * r + 4.16666667e-2f;
  p = p * r + 1.66666667e-1f;
  p = p * r + 0.5f;
  p = p * r + 1.f;
  p = p * r + 1.f;
  const int32_t e = static_cast<int32_t>(n) + 127;
  uint32_t bits = static_cast<uint32_t>(e) << 23;
  float scale;
  std::memcpy(&scale, &bits, 4);
  return p * scale;
}

// Threads a kernel called here may use: torch's intra-op count for this thread (at::set_num_threads sets the
// OpenMP value per thread), 1 inside a pool item or an OpenMP region.
inline int cpu_threads() {
  if (ThreadPool::in_pool_job()) return 1;
#ifdef _OPENMP
  return omp_in_parallel() ? 1 : omp_get_max_threads();
#else
  const unsigned n = std::thread::hardware_concurrency();
  return n == 0 ? 1 : static_cast<int>(n);
#endif
}

// Runs body(i) for i in [0, n) on this thread's pool (kernels/cpu/thread_pool.h) when the work is large
// enough: contiguous ranges of items, a few per thread so that a late or preempted worker costs little.
template <typename F>
inline void parallel_for(int64_t n, int64_t work_per_item, F&& body) {
  const int threads = n > 1 && n * work_per_item >= 32768 ? cpu_threads() : 1;
  if (threads <= 1) {
    for (int64_t i = 0; i < n; ++i) body(i);
    return;
  }
  const int64_t tasks = n < 16 * threads ? n : 16 * threads;
  struct Ctx { std::remove_reference_t<F>* body; int64_t n, tasks; } ctx{&body, n, tasks};
  pool_for_this_thread(threads)->run(tasks, [](void* p, int64_t t) {
    const Ctx& c = *static_cast<Ctx*>(p);
    const int64_t i1 = (t + 1) * c.n / c.tasks;
    for (int64_t i = t * c.n / c.tasks; i < i1; ++i) (*c.body)(i);
  }, &ctx);
}

// Like parallel_for, one item per claim, for items of uneven cost (attention tiles).
template <typename F>
inline void parallel_for_each(int64_t n, F&& body) {
  const int threads = n > 1 ? cpu_threads() : 1;
  if (threads <= 1) {
    for (int64_t i = 0; i < n; ++i) body(i);
    return;
  }
  using B = std::remove_reference_t<F>;
  pool_for_this_thread(threads)->run(n, [](void* p, int64_t i) { (*static_cast<B*>(p))(i); },
                                     const_cast<void*>(static_cast<const void*>(&body)));
}

}  // namespace infinilm::cpu
