// InferEngine: owns one RankWorker (thread, model shard, KV cache) per tensor-parallel rank.
#pragma once

#include <ATen/ATen.h>

#include <memory>
#include <mutex>
#include <string>
#include <utility>
#include <vector>

#include "csrc/cache/cache_config.h"
#include "csrc/cache/kv_cache.h"
#include "csrc/engine/communicator.h"
#include "csrc/engine/dist_config.h"
#include "csrc/engine/io.h"
#include "csrc/engine/rank_worker.h"
#include "csrc/hooks/hook_registry.h"
#include "csrc/models/llama/config.h"
#include "csrc/models/llama/model.h"

namespace infinilm::engine {

class InferEngine {
 public:
  using Input = engine::Input;
  using Output = engine::Output;
  using StateDict = std::vector<std::pair<std::string, at::Tensor>>;

  // cache_config null: StaticKVCacheConfig(1, max_position_embeddings). communicators: one per rank, required
  // when tp_size > 1 (rank r's all-reduces go through communicators[r]).
  InferEngine(const models::llama::LlamaConfig& config,
              const distributed::DistConfig& distributed_config = distributed::DistConfig(),
              c10::DeviceType device_type = c10::DeviceType::CPU,
              std::shared_ptr<const cache::CacheConfig> cache_config = nullptr,
              std::vector<std::shared_ptr<Communicator>> communicators = {});
  ~InferEngine();

  void load_param(const std::string& name, const at::Tensor& param);
  std::vector<StateDict> state_dict() const;
  Output forward(const Input& input);
  void reset_cache(std::shared_ptr<const cache::CacheConfig> cache_config = nullptr);
  // Rank 0 calls the registry's hooks during forward; null detaches it.
  void set_hook_registry(std::shared_ptr<models::debug_utils::HookRegistry> registry);

  const models::llama::LlamaConfig& config() const { return config_; }
  const distributed::DistConfig& distributed_config() const { return dist_; }
  int64_t tp_size() const { return dist_.tp_size(); }
  at::Device device(int64_t rank = 0) const { return ranks_.at(rank).worker->device(); }
  std::shared_ptr<const cache::CacheConfig> cache_config() const { return cache_config_; }
  // Rank 0's cache (every rank's has the same geometry).
  const cache::KVCache& kv_cache() const { return *ranks_.at(0).cache; }

 private:
  struct Rank {
    std::unique_ptr<models::llama::LlamaForCausalLM> model;
    std::unique_ptr<cache::KVCache> cache;
    std::unique_ptr<RankWorker> worker;  // declared last: destroyed (joined) first
  };
  // Runs command(rank) on every rank's thread; waits for all, then rethrows the first failure.
  void run_on_all(const std::function<void(Rank&)>& command);

  // Serialises the public calls: ranks must see commands in the same order (their collectives pair up).
  mutable std::mutex call_mu_;
  models::llama::LlamaConfig config_;
  distributed::DistConfig dist_;
  std::shared_ptr<const cache::CacheConfig> cache_config_;
  std::shared_ptr<models::debug_utils::HookRegistry> hooks_;
  std::vector<Rank> ranks_;
};

}  // namespace infinilm::engine
