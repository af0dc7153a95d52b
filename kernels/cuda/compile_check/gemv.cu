// Compile check: instantiates both skinny-GEMM (decode GEMV) launchers for both half-precision dtypes.
#include "kernels/cuda/gemv.cuh"
#include "kernels/cuda/gemv_rows.cuh"

namespace ic = infinilm::cuda;

#define INSTANTIATE_T(T)                                                                                   \
  template cudaError_t ic::gemv<T>(T*, const T*, const T*, const T*, int64_t, int64_t, int64_t, int64_t, \
                                   int64_t, int, cudaStream_t);                                          \
  template cudaError_t ic::gemv_silu_and_mul<T>(T*, const T*, const T*, const T*, int64_t, int64_t, int64_t,   \
                                                int64_t, int64_t, int, cudaStream_t);                \
  template cudaError_t ic::gemv_rows<T>(T*, const T*, const T*, const T*, int64_t, int64_t, int64_t, int64_t, \
                                        int64_t, int, cudaStream_t);                                          \
  template cudaError_t ic::gemv_rows_silu_and_mul<T>(T*, const T*, const T*, const T*, int64_t, int64_t,     \
                                                     int64_t, int64_t, int64_t, int, cudaStream_t);

INSTANTIATE_T(__half)
INSTANTIATE_T(__nv_bfloat16)
