// HookRegistry: name resolution (exact, then longest prefix* pattern) and guarded calls.
#include "csrc/hooks/hook_registry.h"

#include <exception>
#include <iostream>

namespace infinilm::models::debug_utils {

void HookRegistry::register_hook(const std::string& name, HookCallback callback) {
  TORCH_CHECK_VALUE(!name.empty(), "HookRegistry.register_hook: 'name' must not be empty");
  TORCH_CHECK_VALUE(static_cast<bool>(callback), "HookRegistry.register_hook: callback for '", name, "' is empty");
  std::lock_guard<std::mutex> lock(mu_);
  for (auto& [n, cb] : hooks_) {
    if (n == name) {
      cb = std::move(callback);
      return;
    }
  }
  hooks_.emplace_back(name, std::move(callback));
}

void HookRegistry::clear() {
  std::vector<std::pair<std::string, HookCallback>> old;
  {
    std::lock_guard<std::mutex> lock(mu_);
    old.swap(hooks_);
  }
}

bool HookRegistry::has_hooks() const {
  std::lock_guard<std::mutex> lock(mu_);
  return !hooks_.empty();
}

HookCallback HookRegistry::find(const std::string& name) const {
  std::lock_guard<std::mutex> lock(mu_);
  const HookCallback* best = nullptr;
  size_t best_len = 0;
  for (const auto& [n, cb] : hooks_) {
    if (n == name) return cb;
    if (!n.empty() && n.back() == '*') {
      const size_t len = n.size() - 1;
      if (name.compare(0, len, n, 0, len) == 0 && (best == nullptr || len > best_len)) {
        best = &cb;
        best_len = len;
      }
    }
  }
  return best ? *best : HookCallback();
}

void HookRegistry::call(const std::string& name, const at::Tensor& tensor, int64_t layer_idx) const {
  HookCallback cb = find(name);
  if (!cb) return;
  try {
    cb(name, tensor.clone(), layer_idx);
  } catch (const std::exception& e) {
    std::cerr << "infinilm HookRegistry: hook '" << name << "' (layer " << layer_idx << ") raised: " << e.what()
              << std::endl;
  }
}

}  // namespace infinilm::models::debug_utils
