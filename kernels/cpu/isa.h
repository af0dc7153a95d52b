// Run-time ISA choice for the CPU kernels: bodies are compiled for the x86-64 baseline and again for AVX2+FMA
// (and, for the skinny linear, AVX-512 with AVX512-BF16: kernels/cpu/linear_avx512.h).
//
// Usage: a kernel header defines its bodies in `kernels/cpu/<name>_impl.h`, inside namespace INFINILM_ISA,
// and includes it through INFINILM_CPU_MULTIVERSION; its public template calls
// INFINILM_CPU_ISA_CALL(fn, args...). INFINILM_CPU_GENERIC=1 forces the baseline; INFINILM_CPU_ISA=avx2 caps
// the choice at AVX2 (tests cover every build the CPU can run).
#pragma once

#include <cstdlib>
#include <cstring>

namespace infinilm::cpu {

inline bool cpu_use_avx2() {
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
  static const bool ok = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
  const char* force = std::getenv("INFINILM_CPU_GENERIC");
  return ok && (force == nullptr || force[0] == '\0' || force[0] == '0');
#else
  return false;
#endif
}

// AVX-512 F/BW/VL/DQ and AVX512-BF16 (Zen 4, Sapphire Rapids and later), unless capped by the environment.
inline bool cpu_use_avx512() {
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
  static const bool ok = __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
                         __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq") &&
                         __builtin_cpu_supports("avx512bf16");
  if (!ok || !cpu_use_avx2()) return false;
  const char* cap = std::getenv("INFINILM_CPU_ISA");
  return cap == nullptr || cap[0] == '\0' || std::strcmp(cap, "avx2") != 0;
#else
  return false;
#endif
}

// 0 baseline, 1 AVX2, 2 AVX-512: part of the key of every per-shape choice made by measurement.
inline int cpu_isa_level() { return cpu_use_avx512() ? 2 : cpu_use_avx2() ? 1 : 0; }

}  // namespace infinilm::cpu

#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#define INFINILM_CPU_HAVE_AVX2 1
#define INFINILM_CPU_ISA_CALL(fn, ...) \
  (::infinilm::cpu::cpu_use_avx2() ? ::infinilm::cpu::avx2::fn(__VA_ARGS__) : ::infinilm::cpu::generic::fn(__VA_ARGS__))
#else
#define INFINILM_CPU_ISA_CALL(fn, ...) ::infinilm::cpu::generic::fn(__VA_ARGS__)
#endif
