// LlamaForCausalLM on at::Tensor: one tensor-parallel rank's weights and its forward pass over a KVCache.
#pragma once

#include <ATen/ATen.h>

#include <map>
#include <memory>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "csrc/cache/kv_cache.h"
#include "csrc/dist/communicator.h"
#include "csrc/hooks/hook_registry.h"
#include "csrc/models/causal_lm.h"
#include "csrc/models/forward_batch.h"
#include "csrc/models/layers/attention.h"
#include "csrc/models/layers/mlp.h"
#include "csrc/models/llama/config.h"

namespace infinilm::models::llama {

using ForwardBatch = models::ForwardBatch;

// Llama, and Qwen2, Mistral and Qwen3 as its configurations (see LlamaConfig).
class LlamaForCausalLM : public CausalLM {
 public:
  // comm may be null when tp_size == 1.
  LlamaForCausalLM(const LlamaConfig& config, int64_t tp_rank, int64_t tp_size, at::Device device,
                   std::shared_ptr<dist::Communicator> comm);

  // HF checkpoint name and the full (unsharded) tensor; this rank copies its slice, converting dtype/device.
  void load_param(const std::string& name, const at::Tensor& full) override;
  // Names never given to load_param, in checkpoint order (buffers start uninitialised: a forward before
  // every parameter is loaded would compute on garbage). A tied lm_head is the embedding, not a name of its own.
  std::vector<std::string> missing_params() const override;
  bool all_loaded() const override { return num_missing_ == 0; }
  // This rank's parameters under HF names (views of the live buffers), in checkpoint order.
  StateDict state_dict() const override;
  std::vector<ParamSpec> param_specs() const override;
  // float32 logits [n, vocab] of each request's last new token.
  at::Tensor forward(const ForwardBatch& batch, cache::KVCache& cache,
                     const debug_utils::HookRegistry* hooks) const override;
  cache::CacheShape cache_shape() const override;
  BatchLimits batch_limits() const override { return {config_.vocab_size, config_.max_position_embeddings}; }

  const LlamaConfig& config() const { return config_; }
  int64_t local_kv_heads() const { return kv_heads_; }

 private:
  struct Layer {
    at::Tensor input_norm, post_norm;  // [H]
    layers::AttentionWeights attn;
    layers::GatedMlpWeights mlp;
  };
  // shard_dim: -1 replicated, 0 rows (column-parallel), 1 columns (row-parallel).
  struct Param {
    at::Tensor dst;
    int shard_dim;
    bool loaded = false;
  };
  void add_param(const std::string& name, at::Tensor dst, int shard_dim);
  const at::Tensor& lm_head() const { return config_.tie_word_embeddings ? embed_ : lm_head_; }

  LlamaConfig config_;
  int64_t tp_rank_, tp_size_;
  int64_t q_heads_, kv_heads_, inter_;  // this rank's shares
  at::Device device_;
  std::shared_ptr<dist::Communicator> comm_;
  at::Tensor embed_, norm_, lm_head_;  // [V, H], [H], [V, H] (undefined when tied)
  at::Tensor rope_;                    // float32 [max_position_embeddings, head_dim] cos | sin
  std::vector<Layer> layers_;
  std::map<std::string, Param> params_;
  std::vector<std::string> order_;  // checkpoint order for state_dict
  size_t num_missing_ = 0;          // parameters not loaded yet
};

}  // namespace infinilm::models::llama
