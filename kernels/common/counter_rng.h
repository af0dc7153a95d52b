// Counter-based random numbers shared by host C++ and CUDA: a splitmix64 hash of (seed, counter).
//
// Stateless by design: the draw of row b depends only on seeds[b] (and a counter, 0 for sampling), never on
// the batch layout, the thread or the device, so the CPU and CUDA sampling kernels draw the same u for the
// same seed. The caller varies seeds between steps (e.g. hash(request seed, step)); one seed always gives
// one u.
#pragma once

#include <cstdint>

#if defined(__CUDACC__)
#define INFINILM_HOST_DEVICE __host__ __device__ __forceinline__
#else
#define INFINILM_HOST_DEVICE inline
#endif

namespace infinilm::rng {

// The splitmix64 finaliser (Steele, Lea & Flood 2014): a bijection on 64 bits with full avalanche.
INFINILM_HOST_DEVICE uint64_t splitmix64_mix(uint64_t z) {
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}

// 64 random bits: output number `counter` (0-based) of the splitmix64 stream whose state starts at `seed`.
INFINILM_HOST_DEVICE uint64_t random_bits(uint64_t seed, uint64_t counter) {
  return splitmix64_mix(seed + (counter + 1) * 0x9E3779B97F4A7C15ull);
}

// Uniform double in [0, 1) with 53 random bits (every value a multiple of 2^-53).
INFINILM_HOST_DEVICE double uniform_double(uint64_t seed, uint64_t counter) {
  return static_cast<double>(random_bits(seed, counter) >> 11) * (1.0 / 9007199254740992.0);
}

}  // namespace infinilm::rng
