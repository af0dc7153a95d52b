// Argument checks of the linear op (y = x W^T + b), shared by its CPU and CUDA glue.
#pragma once

#include <optional>
#include <utility>
#include <vector>

#include "csrc/ops/checks.h"

namespace infinilm {

inline void check_linear_args(const at::Tensor& input, const at::Tensor& weight,
                              const std::optional<at::Tensor>& bias) {
  INFINILM_CHECK_FLOAT(input);
  INFINILM_CHECK_SAME_DTYPE(input, weight);
  INFINILM_CHECK_SAME_DEVICE(input, weight);
  INFINILM_CHECK_DIM(weight, 2);
  TORCH_CHECK_VALUE(input.dim() >= 1, "infinilm: 'input' must have at least 1 dimension, got shape ", input.sizes());
  TORCH_CHECK_VALUE(input.size(-1) == weight.size(1), "infinilm: 'input' ", input.sizes(), " has ", input.size(-1),
                    " features but 'weight' [out, in] = ", weight.sizes(), " takes ", weight.size(1));
  if (bias.has_value() && bias->defined()) {
    const at::Tensor& b = *bias;
    INFINILM_CHECK_SAME_DTYPE(input, b);
    INFINILM_CHECK_SAME_DEVICE(input, b);
    TORCH_CHECK_VALUE(b.dim() == 1 && b.size(0) == weight.size(0), "infinilm: 'bias' must have shape [",
                      weight.size(0), "] (the rows of 'weight'), got ", b.sizes());
  }
}

// silu_and_mul_linear: input [..., 2K] (gate | up) against weight [N, K].
inline void check_silu_and_mul_linear_args(const at::Tensor& input, const at::Tensor& weight,
                                           const std::optional<at::Tensor>& bias) {
  INFINILM_CHECK_FLOAT(input);
  INFINILM_CHECK_DIM(weight, 2);
  TORCH_CHECK_VALUE(input.dim() >= 1 && input.size(-1) == 2 * weight.size(1), "infinilm: 'input' ", input.sizes(),
                    " must be [..., 2K] (gate | up) for 'weight' [N, K] = ", weight.sizes());
  check_linear_args(input.narrow(-1, 0, weight.size(1)), weight, bias);
}

// The op's [..., K] input as [rows, K] and the output shape [..., N].
inline std::pair<at::Tensor, std::vector<int64_t>> linear_rows(const at::Tensor& input, const at::Tensor& weight) {
  std::vector<int64_t> out = input.sizes().vec();
  out.back() = weight.size(0);
  return {input.dim() == 2 ? input : input.reshape({-1, input.size(-1)}), std::move(out)};
}

}  // namespace infinilm
