// Maps a torch float dtype to the torch-free CPU kernel storage type (float, fp16_t, bf16_t).
#pragma once

#include <ATen/ATen.h>

#include "kernels/cpu/common.h"

namespace infinilm {

template <typename T>
inline T* ptr(const at::Tensor& t) {
  return reinterpret_cast<T*>(t.data_ptr());
}

}  // namespace infinilm

// Runs the body with `scalar_t` bound to the kernel type of dtype `st`.
#define INFINILM_DISPATCH_FLOAT_CPU(st, name, ...)                                              \
  [&] {                                                                                        \
    switch (st) {                                                                              \
      case at::kFloat: { using scalar_t = float; return __VA_ARGS__(); }                       \
      case at::kHalf: { using scalar_t = ::infinilm::cpu::fp16_t; return __VA_ARGS__(); }      \
      case at::kBFloat16: { using scalar_t = ::infinilm::cpu::bf16_t; return __VA_ARGS__(); }  \
      default: TORCH_CHECK_TYPE(false, "infinilm: ", name, " does not support dtype ", st);    \
    }                                                                                          \
  }()
