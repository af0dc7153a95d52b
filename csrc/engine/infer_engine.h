// InferEngine: owns one RankWorker (thread, model shard, KV cache) per tensor-parallel rank.
#pragma once

#include <ATen/ATen.h>

#include <atomic>
#include <cstdint>
#include <memory>
#include <mutex>
#include <string>
#include <utility>
#include <vector>

#include "csrc/cache/cache_config.h"
#include "csrc/cache/kv_cache.h"
#include "csrc/engine/communicator.h"
#include "csrc/engine/cuda_graphs.h"
#include "csrc/engine/dist_config.h"
#include "csrc/engine/io.h"
#include "csrc/engine/rank_worker.h"
#include "csrc/hooks/hook_registry.h"
#include "csrc/models/causal_lm.h"
#include "csrc/models/llama/config.h"

namespace infinilm::engine {

class InferEngine {
 public:
  using Input = engine::Input;
  using Output = engine::Output;
  using StateDict = std::vector<std::pair<std::string, at::Tensor>>;

  // cache_config null: StaticKVCacheConfig(1, max_position_embeddings). communicators: one per local rank
  // (per entry of distributed_config.tp_device_ids), required when the group has more than one rank. Each
  // communicator names its rank and the group size: in-process mode has communicators[r].rank() == r and
  // size() == tp_device_ids.size(); multi-process mode has one local rank of a larger group.
  InferEngine(const models::llama::LlamaConfig& config,
              const distributed::DistConfig& distributed_config = distributed::DistConfig(),
              c10::DeviceType device_type = c10::DeviceType::CPU,
              std::shared_ptr<const cache::CacheConfig> cache_config = nullptr,
              std::vector<std::shared_ptr<Communicator>> communicators = {});
  ~InferEngine();

  // The checks that need no communicator (heads divisible by world_size, device ids valid), so that callers
  // can raise before building process groups.
  static void check_args(const models::llama::LlamaConfig& config, const distributed::DistConfig& dist,
                         c10::DeviceType device_type, int64_t world_size);

  void load_param(const std::string& name, const at::Tensor& param);
  std::vector<StateDict> state_dict() const;
  Output forward(const Input& input);
  void reset_cache(std::shared_ptr<const cache::CacheConfig> cache_config = nullptr);
  // Rank 0 calls the registry's hooks during forward; null detaches it.
  void set_hook_registry(std::shared_ptr<models::debug_utils::HookRegistry> registry);
  // CUDA-graph replay of decode steps (CUDA, tp_size 1, no hooks attached, no penalties, at most
  // DecodeGraphs::kMaxBatch requests), and of prefill / mixed steps of at most kMaxMixedTokens tokens unless
  // INFINILM_CUDA_GRAPHS_MIXED=0. On by default on CUDA unless INFINILM_CUDA_GRAPHS=0; off drops the graphs.
  void enable_cuda_graphs(bool enable);
  bool cuda_graphs_enabled() const { return graphs_enabled_; }
  // Graphs captured and decode steps replayed so far (rank 0), for tests and benchmarks.
  int64_t num_cuda_graphs() const;
  int64_t cuda_graph_replays() const;
  // Steps run eagerly on a graph's padded static inputs (the INFINILM_EAGER_STATIC_STEPS=1 test hook).
  int64_t eager_static_steps() const { return eager_static_steps_; }

  const models::llama::LlamaConfig& config() const { return config_; }
  const distributed::DistConfig& distributed_config() const { return dist_; }
  // Ranks in the whole group (across processes in multi-process mode); local ranks are tp_device_ids.size().
  int64_t tp_size() const { return world_; }
  // Group rank of each local rank.
  std::vector<int64_t> local_ranks() const;
  at::Device device(int64_t local = 0) const { return ranks_.at(local).worker->device(); }
  // Host seconds local rank 0 has spent in all-reduces (0 without tensor parallelism).
  double comm_seconds() const;
  // Test hook: the next forward fails on group rank `rank` before its model runs (as a crashing rank would).
  void inject_rank_failure(int64_t rank) { inject_failure_rank_ = rank; }
  std::shared_ptr<const cache::CacheConfig> cache_config() const { return cache_config_; }
  // Rank 0's cache (every rank's has the same geometry).
  const cache::KVCache& kv_cache() const { return *ranks_.at(0).cache; }

 private:
  struct Rank {
    std::unique_ptr<models::CausalLM> model;
    std::unique_ptr<cache::KVCache> cache;
    std::shared_ptr<Communicator> comm;
    std::unique_ptr<DecodeGraphs> graphs;  // hold the addresses of model and cache: dropped before them
    std::unique_ptr<RankWorker> worker;  // declared last: destroyed (joined) first
  };
  // Runs command(rank) on every rank's thread; waits for all, then rethrows the first failure. collective:
  // the command runs all-reduces, so a failing rank aborts the others' communicators (they would wait for it
  // forever) and the engine refuses later calls (the ranks' collective sequences no longer pair up).
  void run_on_all(const std::function<void(Rank&)>& command, bool collective = false);
  void check_usable() const;
  // Every parameter of every local rank went through load_param (else a RuntimeError naming the missing ones).
  void check_loaded() const;
  // Drops the captured graphs on each rank's thread (they point at cache and weight memory).
  void clear_graphs();
  // Rows of input.prev_output (-1: none), after checking that it is one of this engine's outputs with ids.
  int64_t prev_rows(const Input& input) const;

  // Serialises the public calls: ranks must see commands in the same order (their collectives pair up).
  mutable std::mutex call_mu_;
  const uint64_t id_;  // Output.engine_id of this engine's steps
  models::llama::LlamaConfig config_;
  distributed::DistConfig dist_;
  std::shared_ptr<const cache::CacheConfig> cache_config_;
  std::shared_ptr<models::debug_utils::HookRegistry> hooks_;
  std::vector<Rank> ranks_;
  int64_t world_ = 1;
  bool graphs_enabled_ = false;
  std::atomic<bool> broken_{false};
  std::atomic<int64_t> inject_failure_rank_{-1};
  std::atomic<int64_t> eager_static_steps_{0};
};

}  // namespace infinilm::engine
