// Compile check: instantiates the sampling launchers (sample, apply_penalties, logprobs) for every dtype.
#include "kernels/cuda/sampling.cuh"
#include "kernels/cuda/sampling_extras.cuh"

namespace ic = infinilm::cuda;

#define INSTANTIATE_T(T)                                                                                       \
  template cudaError_t ic::sample<T>(int64_t*, const T*, const float*, const int64_t*, const float*,            \
                                     const int64_t*, const float*, int64_t, int64_t, int64_t, void*, size_t,    \
                                     cudaStream_t);                                                             \
  template cudaError_t ic::apply_penalties<T>(T*, int64_t, const int64_t*, int64_t, const int64_t*, int64_t,    \
                                              const float*, const float*, const float*, int64_t, int64_t,       \
                                              cudaStream_t);                                                    \
  template cudaError_t ic::logprobs<T>(float*, float*, int64_t*, const T*, int64_t, const int64_t*, int64_t,    \
                                       int64_t, int64_t, cudaStream_t);

INSTANTIATE_T(float)
INSTANTIATE_T(__half)
INSTANTIATE_T(__nv_bfloat16)
