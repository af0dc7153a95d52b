// The model registry: one line per model_type; everything else asks here.
#include "csrc/models/registry.h"

#include <c10/util/Exception.h>

#include <algorithm>

#include "csrc/models/llama/model.h"

namespace infinilm::models {

namespace {

template <class Model>
std::unique_ptr<CausalLM> make(const ModelConfig& config, int64_t tp_rank, int64_t tp_size, at::Device device,
                               std::shared_ptr<dist::Communicator> comm) {
  return std::make_unique<Model>(config, tp_rank, tp_size, device, std::move(comm));
}

struct Entry {
  const char* model_type;
  ModelFactory factory;
};

// Qwen2 and Mistral are Llama configurations (biases, defaults); Qwen3 adds per-head q/k norms (qk_norm()).
const Entry kModels[] = {
    {"llama", &make<llama::LlamaForCausalLM>},
    {"mistral", &make<llama::LlamaForCausalLM>},
    {"qwen2", &make<llama::LlamaForCausalLM>},
    {"qwen3", &make<llama::LlamaForCausalLM>},
};

const Entry* find(const std::string& model_type) {
  for (const auto& e : kModels) {
    if (model_type == e.model_type) return &e;
  }
  return nullptr;
}

std::string joined() {
  std::string s;
  for (const auto& t : supported_model_types()) s += (s.empty() ? "'" : ", '") + t + "'";
  return s;
}

// A meta-device instance: names and shapes without allocating weights. Its rope table is cut to one
// position, since nothing here reads it.
std::unique_ptr<CausalLM> meta_model(const ModelConfig& config) {
  ModelConfig c = config;
  c.max_position_embeddings = 1;
  return create_model(c, 0, 1, at::Device(at::kMeta), nullptr);
}

}  // namespace

std::vector<std::string> supported_model_types() {
  std::vector<std::string> out;
  for (const auto& e : kModels) out.emplace_back(e.model_type);
  std::sort(out.begin(), out.end());
  return out;
}

bool is_supported_model_type(const std::string& model_type) { return find(model_type) != nullptr; }

std::unique_ptr<CausalLM> create_model(const ModelConfig& config, int64_t tp_rank, int64_t tp_size, at::Device device,
                                       std::shared_ptr<dist::Communicator> comm) {
  const Entry* e = find(config.model_type);
  TORCH_CHECK_VALUE(e != nullptr, "unsupported model_type '", config.model_type, "'; supported: ", joined());
  return e->factory(config, tp_rank, tp_size, device, std::move(comm));
}

std::vector<ParamSpec> param_specs(const ModelConfig& config) { return meta_model(config)->param_specs(); }

cache::CacheShape cache_shape(const ModelConfig& config, int64_t tp_size) {
  TORCH_CHECK_VALUE(tp_size > 0 && config.num_key_value_heads % tp_size == 0, "'num_key_value_heads' (",
                    config.num_key_value_heads, ") must be divisible by tp_size (", tp_size, ")");
  cache::CacheShape s = meta_model(config)->cache_shape();
  s.kv_heads /= tp_size;
  s.max_positions = config.max_position_embeddings;
  return s;
}

}  // namespace infinilm::models
