// Run-time ISA choice for the CPU kernels: bodies are compiled for the x86-64 baseline and again for AVX2+FMA.
//
// Usage: a kernel header defines its bodies in `kernels/cpu/<name>_impl.h`, inside namespace INFINILM_ISA,
// and includes it through INFINILM_CPU_MULTIVERSION; its public template calls
// INFINILM_CPU_ISA_CALL(fn, args...). INFINILM_CPU_GENERIC=1 forces the baseline (tests cover both).
#pragma once

#include <cstdlib>

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

}  // namespace infinilm::cpu

#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#define INFINILM_CPU_HAVE_AVX2 1
#define INFINILM_CPU_ISA_CALL(fn, ...) \
  (::infinilm::cpu::cpu_use_avx2() ? ::infinilm::cpu::avx2::fn(__VA_ARGS__) : ::infinilm::cpu::generic::fn(__VA_ARGS__))
#else
#define INFINILM_CPU_ISA_CALL(fn, ...) ::infinilm::cpu::generic::fn(__VA_ARGS__)
#endif
