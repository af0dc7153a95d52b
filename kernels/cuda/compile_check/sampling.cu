// Compile check: instantiates the sampling launcher for every logits dtype.
#include "kernels/cuda/sampling.cuh"

namespace ic = infinilm::cuda;

#define INSTANTIATE_T(T)                                                                                       \
  template cudaError_t ic::sample<T>(int64_t*, const T*, const float*, const int64_t*, const float*,            \
                                     const int64_t*, int64_t, int64_t, int64_t, void*, size_t, cudaStream_t);

INSTANTIATE_T(float)
INSTANTIATE_T(__half)
INSTANTIATE_T(__nv_bfloat16)
