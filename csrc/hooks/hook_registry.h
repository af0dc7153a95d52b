// HookRegistry: debug callbacks the model calls with named intermediate tensors.
#pragma once

#include <ATen/ATen.h>

#include <functional>
#include <mutex>
#include <string>
#include <utility>
#include <vector>

namespace infinilm::models::debug_utils {

// (hook_name, tensor, layer_idx); layer_idx is -1 outside the decoder layers.
using HookCallback = std::function<void(const std::string&, const at::Tensor&, int64_t)>;

// Names are exact ("layer0_attention_q") or patterns ending in '*' ("layer0_*", "*"). For each point the
// model reaches, the exact name's callback runs if registered; otherwise the pattern with the longest
// matching prefix. Registering a name again replaces its callback. A callback that throws is logged to
// stderr and the forward pass continues (as upstream).
class HookRegistry {
 public:
  void register_hook(const std::string& name, HookCallback callback);
  void clear();
  bool has_hooks() const;
  // The callback that `name` resolves to, or an empty function.
  HookCallback find(const std::string& name) const;
  // Runs the resolved callback (if any) on a copy of `tensor`, so later in-place kernels can't change it.
  void call(const std::string& name, const at::Tensor& tensor, int64_t layer_idx) const;

 private:
  mutable std::mutex mu_;
  std::vector<std::pair<std::string, HookCallback>> hooks_;  // registration order
};

}  // namespace infinilm::models::debug_utils
