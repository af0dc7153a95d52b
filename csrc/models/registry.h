// The model registry: model_type -> factory, the one list of the model families this build serves.
#pragma once

#include <ATen/ATen.h>

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "csrc/dist/communicator.h"
#include "csrc/models/causal_lm.h"
#include "csrc/models/llama/config.h"

namespace infinilm::models {

// Every family is configured by the one config class users pass (its fields are HF config.json's).
using ModelConfig = llama::LlamaConfig;

// comm may be null when tp_size == 1.
using ModelFactory = std::unique_ptr<CausalLM> (*)(const ModelConfig& config, int64_t tp_rank, int64_t tp_size,
                                                  at::Device device, std::shared_ptr<dist::Communicator> comm);

// The registered model_type names, sorted.
std::vector<std::string> supported_model_types();
bool is_supported_model_type(const std::string& model_type);

// One rank of the model config.model_type names; ValueError for a type nobody registered.
std::unique_ptr<CausalLM> create_model(const ModelConfig& config, int64_t tp_rank, int64_t tp_size, at::Device device,
                                       std::shared_ptr<dist::Communicator> comm);

// The parameters (HF names, full shapes, shard dims) a model of this config loads, in checkpoint order.
std::vector<ParamSpec> param_specs(const ModelConfig& config);
// One rank's KV geometry for tp_size ranks.
cache::CacheShape cache_shape(const ModelConfig& config, int64_t tp_size);

}  // namespace infinilm::models
