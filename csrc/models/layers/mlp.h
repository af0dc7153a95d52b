// The gated (SwiGLU) MLP: fused gate/up projection, silu(gate) * up, row-parallel down projection.
#pragma once

#include <ATen/ATen.h>

#include "csrc/models/layers/common.h"

namespace infinilm::models::layers {

struct GatedMlpWeights {
  at::Tensor gate_up_w, gate_up_b;  // [2 I, H], [2 I] (this rank's I)
  at::Tensor down_w, down_b;        // [H, I], [H]
};

// x: the normalised hidden states [T, H]; returns [T, H], summed over ranks.
at::Tensor gated_mlp(const GatedMlpWeights& w, const at::Tensor& x, const TensorParallel& tp, const Hooks& hook);

}  // namespace infinilm::models::layers
