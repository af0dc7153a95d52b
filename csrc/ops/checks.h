// Named input checks shared by every op's glue: each failure names the argument and the values seen.
#pragma once

#include <ATen/ATen.h>
#include <c10/util/Exception.h>

#include <sstream>
#include <string>

namespace infinilm {

inline std::string shape_str(const at::Tensor& t) {
  std::ostringstream os;
  os << t.sizes();
  return os.str();
}

inline bool is_float_dtype(at::ScalarType s) {
  return s == at::kFloat || s == at::kHalf || s == at::kBFloat16;
}

inline bool is_index_dtype(at::ScalarType s) { return s == at::kLong || s == at::kInt; }

}  // namespace infinilm

// A tensor argument must be defined.
#define INFINILM_CHECK_DEFINED(x) TORCH_CHECK_VALUE((x).defined(), "infinilm: argument '" #x "' is undefined")

// Floating tensor of a supported dtype (float32, float16, bfloat16).
#define INFINILM_CHECK_FLOAT(x)                                                                        \
  TORCH_CHECK_TYPE(::infinilm::is_float_dtype((x).scalar_type()), "infinilm: '" #x                     \
                   "' must be float32, float16 or bfloat16, got ",                                     \
                   (x).scalar_type())

// Integer index tensor (int32 or int64).
#define INFINILM_CHECK_INDEX(x)                                                                        \
  TORCH_CHECK_TYPE(::infinilm::is_index_dtype((x).scalar_type()), "infinilm: '" #x                     \
                   "' must be int32 or int64, got ",                                                   \
                   (x).scalar_type())

#define INFINILM_CHECK_DTYPE(x, dt)                                                                    \
  TORCH_CHECK_TYPE((x).scalar_type() == (dt), "infinilm: '" #x "' must be ", (dt), ", got ",           \
                   (x).scalar_type())

#define INFINILM_CHECK_SAME_DTYPE(x, y)                                                                \
  TORCH_CHECK_TYPE((x).scalar_type() == (y).scalar_type(), "infinilm: '" #x "' (", (x).scalar_type(), \
                   ") and '" #y "' (", (y).scalar_type(), ") must have the same dtype")

#define INFINILM_CHECK_DIM(x, n)                                                                       \
  TORCH_CHECK_VALUE((x).dim() == (n), "infinilm: '" #x "' must have ", (n), " dimensions, got shape ", \
                    (x).sizes())

#define INFINILM_CHECK_SIZE(x, d, n)                                                                   \
  TORCH_CHECK_VALUE((x).size(d) == (n), "infinilm: '" #x "' must have size ", (n), " in dimension ",   \
                    (d), ", got shape ", (x).sizes())

#define INFINILM_CHECK_CONTIGUOUS(x)                                                                   \
  TORCH_CHECK_VALUE((x).is_contiguous(), "infinilm: '" #x "' must be contiguous, got shape ",          \
                    (x).sizes(), " strides ", (x).strides())

// The innermost dimension must be dense (stride 1); outer strides may be arbitrary.
#define INFINILM_CHECK_LAST_DIM_CONTIGUOUS(x)                                                          \
  TORCH_CHECK_VALUE((x).dim() == 0 || (x).stride(-1) == 1 || (x).size(-1) == 1, "infinilm: '" #x       \
                    "' must have stride 1 in its last dimension, got strides ",                       \
                    (x).strides())

#define INFINILM_CHECK_SAME_DEVICE(x, y)                                                               \
  TORCH_CHECK_VALUE((x).device() == (y).device(), "infinilm: '" #x "' is on ", (x).device(),           \
                    " but '" #y "' is on ", (y).device())

#define INFINILM_CHECK_CPU(x)                                                                          \
  TORCH_CHECK_VALUE((x).device().is_cpu(), "infinilm: '" #x "' must be on the CPU, got ", (x).device())

#define INFINILM_CHECK_CUDA(x)                                                                         \
  TORCH_CHECK_VALUE((x).device().is_cuda(), "infinilm: '" #x "' must be on a CUDA device, got ",       \
                    (x).device())
