// Compile check: instantiates the norm, rotary (plain and fused with the cache write), activation and cache
// launchers for every dtype/index type, and the L2 prefetch.
#include "kernels/cuda/activation.cuh"
#include "kernels/cuda/cache.cuh"
#include "kernels/cuda/norm.cuh"
#include "kernels/cuda/prefetch.cuh"
#include "kernels/cuda/rotary.cuh"
#include "kernels/cuda/rotary_cache.cuh"

namespace ic = infinilm::cuda;

#define INSTANTIATE_T(T)                                                                                        \
  template cudaError_t ic::rms_norm<T>(T*, const T*, const T*, int64_t, int64_t, int64_t, int64_t, float,       \
                                       cudaStream_t);                                                           \
  template cudaError_t ic::fused_add_rms_norm<T>(T*, T*, const T*, int64_t, int64_t, int64_t, int64_t, float,   \
                                                 cudaStream_t);                                                 \
  template cudaError_t ic::silu_and_mul<T>(T*, const T*, int64_t, int64_t, int64_t, cudaStream_t);              \
  INSTANTIATE_TI(T, int32_t)                                                                                    \
  INSTANTIATE_TI(T, int64_t)

#define INSTANTIATE_TI(T, I)                                                                                    \
  template cudaError_t ic::rotary_embedding<T, I>(const I*, T*, T*, const float*, int64_t, int64_t, int64_t,    \
                                                  int64_t, int64_t, int64_t, int64_t, int64_t, int64_t, bool,   \
                                                  cudaStream_t);                                                \
  template cudaError_t ic::reshape_and_cache<T, I>(const T*, const T*, T*, T*, const I*, int64_t, int64_t,      \
                                                   int64_t, int64_t, int64_t, int64_t, int64_t, int64_t,        \
                                                   int64_t, cudaStream_t);

INSTANTIATE_T(float)
INSTANTIATE_T(__half)
INSTANTIATE_T(__nv_bfloat16)

#define INSTANTIATE_ROPE_CACHE(T, I)                                                                           \
  template cudaError_t ic::rotary_embedding_and_cache<T, I>(                                                  \
      const I*, T*, T*, const T*, T*, T*, const I*, const float*, const T*, const T*, float, int64_t, int64_t, \
      int64_t, int64_t, int64_t, int64_t, int64_t, int64_t, int64_t, int64_t, int64_t, int64_t, int64_t, bool, \
      cudaStream_t);
INSTANTIATE_ROPE_CACHE(float, int32_t)
INSTANTIATE_ROPE_CACHE(float, int64_t)
INSTANTIATE_ROPE_CACHE(__half, int32_t)
INSTANTIATE_ROPE_CACHE(__half, int64_t)
INSTANTIATE_ROPE_CACHE(__nv_bfloat16, int32_t)
INSTANTIATE_ROPE_CACHE(__nv_bfloat16, int64_t)

// The L2 prefetch launcher is not a template: one caller compiles it and its kernel.
cudaError_t prefetch_check(const void* p, int64_t bytes, cudaStream_t s) { return ic::l2_prefetch(p, bytes, s); }
