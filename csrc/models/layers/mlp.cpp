// gated_mlp: the MLP half of a Llama-style decoder layer.
#include "csrc/models/layers/mlp.h"

#include "csrc/ops/ops.h"

namespace infinilm::models::layers {

at::Tensor gated_mlp(const GatedMlpWeights& w, const at::Tensor& x, const TensorParallel& tp, const Hooks& hook) {
  at::Tensor gate_up = infinilm::linear(x, w.gate_up_w, w.gate_up_b);  // [T, 2 I]
  hook("mlp_gate_up", gate_up);
  if (!hook.on()) {  // the activation folded into the down projection (one kernel on CUDA decode steps)
    at::Tensor h = infinilm::silu_and_mul_linear(gate_up, w.down_w, tp.size == 1 ? w.down_b : at::Tensor());
    if (tp.size > 1) {  // row-parallel: partial sums reduced, then the replicated bias once
      tp.comm->all_reduce_sum(h);
      if (w.down_b.defined()) h.add_(w.down_b);
    }
    return h;
  }
  at::Tensor act = infinilm::silu_and_mul(gate_up);  // [T, I]
  hook("mlp_intermediate", act);
  at::Tensor h = tp.row_linear(act, w.down_w, w.down_b);  // [T, H]
  hook("mlp", h);
  return h;
}

}  // namespace infinilm::models::layers
