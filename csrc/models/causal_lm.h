// CausalLM: the interface every model family implements; the engine reaches models only through it.
#pragma once

#include <ATen/ATen.h>

#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include "csrc/cache/kv_cache.h"
#include "csrc/hooks/hook_registry.h"
#include "csrc/models/forward_batch.h"

namespace infinilm::models {

// One parameter under its HF checkpoint name, with its full (unsharded) shape. shard_dim: -1 replicated on
// every rank, 0 split by rows (column-parallel), 1 split by columns (row-parallel).
struct ParamSpec {
  std::string name;
  std::vector<int64_t> shape;
  int shard_dim = -1;
};

using StateDict = std::vector<std::pair<std::string, at::Tensor>>;

// One tensor-parallel rank's weights and forward pass.
class CausalLM {
 public:
  virtual ~CausalLM() = default;
  // HF checkpoint name and the full (unsharded) tensor; the rank copies its slice, converting dtype/device.
  virtual void load_param(const std::string& name, const at::Tensor& full) = 0;
  // Names never given to load_param, in checkpoint order; a forward before all are loaded is refused.
  virtual std::vector<std::string> missing_params() const = 0;
  virtual bool all_loaded() const = 0;
  // This rank's parameters under HF names (views of the live buffers), in checkpoint order.
  virtual StateDict state_dict() const = 0;
  // Every parameter with its full shape, in checkpoint order.
  virtual std::vector<ParamSpec> param_specs() const = 0;
  // float32 logits [n, vocab] of each request's last new token.
  virtual at::Tensor forward(const ForwardBatch& batch, cache::KVCache& cache,
                             const debug_utils::HookRegistry* hooks) const = 0;
  // This rank's KV geometry: the cache the forward writes.
  virtual cache::CacheShape cache_shape() const = 0;
  virtual BatchLimits batch_limits() const = 0;
};

}  // namespace infinilm::models
