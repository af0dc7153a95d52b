# Minimal hipify for the torch-free kernels in kernels/cuda (Debian ships hipcc but no hipify-perl): the CUDA
# names these kernels use, mapped to HIP's; hip_compat.h (force-included by hipcc) fills in what HIP 5.2 lacks.
s|#include <cuda_runtime.h>|#include <hip/hip_runtime.h>|
s|#include <cuda_fp16.h>|#include <hip/hip_fp16.h>|
s|#include <cuda_bf16.h>|#include <hip/hip_bfloat16.h>|
s/defined(__CUDACC__)/(defined(__CUDACC__) || defined(__HIPCC__))/g
s/\bcudaError_t\b/hipError_t/g
s/\bcudaStream_t\b/hipStream_t/g
s/\bcudaSuccess\b/hipSuccess/g
s/\bcudaErrorInvalidValue\b/hipErrorInvalidValue/g
s/\bcudaErrorNotSupported\b/hipErrorNotSupported/g
s/\bcudaGetLastError\b/hipGetLastError/g
s/\bcudaFuncSetAttribute\b/hipFuncSetAttribute/g
s/\bcudaFuncAttributeMaxDynamicSharedMemorySize\b/hipFuncAttributeMaxDynamicSharedMemorySize/g
s/\bcudaGetDevice\b/hipGetDevice/g
s/\bcudaDeviceGetAttribute\b/hipDeviceGetAttribute/g
s/\bcudaDevAttrMultiProcessorCount\b/hipDeviceAttributeMultiprocessorCount/g
s/\b__nv_bfloat16\b/hip_bfloat16/g
s/\bcudaOccupancyMaxActiveBlocksPerMultiprocessor\b/hipOccupancyMaxActiveBlocksPerMultiprocessor/g
