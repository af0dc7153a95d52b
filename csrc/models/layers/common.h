// Pieces every decoder layer shares: the tensor-parallel context (row-parallel linear) and per-layer hooks.
#pragma once

#include <ATen/ATen.h>

#include <cstdint>
#include <memory>
#include <string>

#include "csrc/dist/communicator.h"
#include "csrc/hooks/hook_registry.h"
#include "csrc/ops/ops.h"

namespace infinilm::models::layers {

// This rank's place in the tensor-parallel group; comm is null when size == 1.
struct TensorParallel {
  int64_t rank = 0, size = 1;
  std::shared_ptr<dist::Communicator> comm;

  // y = x w^T + b where each rank holds a slice of the input features: partial sums are reduced, then the
  // (replicated) bias is added once.
  at::Tensor row_linear(const at::Tensor& x, const at::Tensor& w, const at::Tensor& b) const {
    if (size == 1) return infinilm::linear(x, w, b);
    at::Tensor y = infinilm::linear(x, w);
    comm->all_reduce_sum(y);
    if (b.defined()) y.add_(b);
    return y;
  }
};

// Debug hooks at named points: "layer{i}_<suffix>" inside layer i, "<suffix>" outside (layer -1). Names are
// built only when a registry with hooks is attached.
class Hooks {
 public:
  explicit Hooks(const debug_utils::HookRegistry* registry, int64_t layer = -1)
      : registry_(registry != nullptr && registry->has_hooks() ? registry : nullptr), layer_(layer) {}
  Hooks at(int64_t layer) const {
    Hooks h(nullptr, layer);
    h.registry_ = registry_;
    return h;
  }
  bool on() const { return registry_ != nullptr; }
  void operator()(const char* suffix, const at::Tensor& t) const {
    if (!registry_) return;
    registry_->call(layer_ < 0 ? std::string(suffix) : "layer" + std::to_string(layer_) + "_" + suffix, t, layer_);
  }

 private:
  const debug_utils::HookRegistry* registry_;
  int64_t layer_;
};

}  // namespace infinilm::models::layers
