// CUDA glue helpers: torch dtype -> kernel type (float, __half, __nv_bfloat16), index dispatch, error checks.
#pragma once

#include <ATen/ATen.h>
#include <c10/cuda/CUDAStream.h>
#include <c10/cuda/CUDAGuard.h>
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

namespace infinilm {

// A launcher's cudaError_t becomes a c10::Error naming the op.
inline void cuda_check(cudaError_t err, const char* op) {
  TORCH_CHECK(err == cudaSuccess, "infinilm: ", op, " CUDA launch failed: ", cudaGetErrorString(err));
}

template <typename T>
inline T* cuda_ptr(const at::Tensor& t) {
  return reinterpret_cast<T*>(t.data_ptr());
}

}  // namespace infinilm

// Runs the body with `scalar_t` bound to the CUDA kernel type of dtype `st`.
#define INFINILM_DISPATCH_FLOAT_CUDA(st, name, ...)                                             \
  [&] {                                                                                        \
    switch (st) {                                                                              \
      case at::kFloat: { using scalar_t = float; return __VA_ARGS__(); }                       \
      case at::kHalf: { using scalar_t = __half; return __VA_ARGS__(); }                       \
      case at::kBFloat16: { using scalar_t = __nv_bfloat16; return __VA_ARGS__(); }            \
      default: TORCH_CHECK_TYPE(false, "infinilm: ", name, " does not support dtype ", st);    \
    }                                                                                          \
  }()

// Runs the body with `index_t` bound to int32_t or int64_t (index tensors are read without a cast).
#define INFINILM_DISPATCH_INDEX_CUDA(st, name, ...)                                             \
  [&] {                                                                                        \
    switch (st) {                                                                              \
      case at::kInt: { using index_t = int32_t; return __VA_ARGS__(); }                        \
      case at::kLong: { using index_t = int64_t; return __VA_ARGS__(); }                       \
      default: TORCH_CHECK_TYPE(false, "infinilm: ", name, " needs int32 or int64 indices, got ", st); \
    }                                                                                          \
  }()

