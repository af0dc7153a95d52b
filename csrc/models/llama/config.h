// LlamaConfig: the model hyper-parameters of the spec (plus dtype, model_type and rope_scaling).
#pragma once

#include <ATen/ATen.h>

#include <cstdint>
#include <map>
#include <string>
#include <vector>

namespace infinilm::models::llama {

struct LlamaConfig {
  // Defaults are HF transformers' LlamaConfig defaults (Llama-2-7B shapes).
  int64_t vocab_size = 32000;
  int64_t hidden_size = 4096;
  int64_t intermediate_size = 11008;
  int64_t num_hidden_layers = 32;
  int64_t num_attention_heads = 32;
  int64_t num_key_value_heads = 32;
  int64_t head_dim = 128;
  int64_t max_position_embeddings = 2048;
  // Mistral's sliding window: a token sees itself and the sliding_window - 1 tokens before it; 0 = no window.
  int64_t sliding_window = 0;
  double rms_norm_eps = 1e-6;
  std::string hidden_act = "silu";
  double rope_theta = 10000.0;
  bool attention_bias = false;  // q/k/v bias; o_proj bias too except for model_type "qwen2"
  bool mlp_bias = false;        // gate/up/down bias (HF LlamaConfig.mlp_bias)
  bool tie_word_embeddings = false;
  bool use_cache = true;
  std::vector<int64_t> eos_token_id = {2};
  std::vector<int64_t> bos_token_id = {1};

  std::string model_type = "llama";  // "llama", "qwen2", "mistral" or "qwen3"
  std::string dtype = "float32";     // "float32", "float16" or "bfloat16" (a "torch." prefix is accepted)

  // rope_scaling (HF's rope_scaling / rope_parameters): a type of limits::kRopeTypes; set by parse_rope.
  std::string rope_type = "default";
  double rope_factor = 1.0;
  double rope_low_freq_factor = 1.0;
  double rope_high_freq_factor = 4.0;
  int64_t rope_original_max_position_embeddings = 8192;

  // Throws a ValueError-mapped error naming the first inconsistent field and its value.
  void validate() const;
  // Width of one token's keys (or values) over all kv heads.
  int64_t kv_dim() const { return num_key_value_heads * head_dim; }
  // o_proj carries a bias: Llama's (and Qwen3's) attention_bias covers q/k/v/o, Qwen2's only q/k/v.
  bool o_proj_bias() const { return attention_bias && model_type != "qwen2"; }
  // Qwen3: per-head RMSNorm of q and k (weights [head_dim], eps rms_norm_eps) before RoPE.
  bool qk_norm() const { return model_type == "qwen3"; }
  at::ScalarType scalar_type() const;
};

// One value of a config field as its reader found it (JSON, a Python object): what parse_rope checks.
struct ConfigValue {
  enum class Kind { kNull, kBool, kInt, kFloat, kString, kOther };
  Kind kind = Kind::kNull;
  double number = 0;  // kBool, kInt, kFloat
  std::string text;   // kString: the string; otherwise the value as its source spells it (for messages)
};
using ConfigFields = std::map<std::string, ConfigValue>;

// The one parser of HF rope settings (AutoConfig, the LlamaConfig.rope_scaling setter and the C++
// checkpoint loader all call it): transformers 5's `rope_parameters` and transformers 4's `rope_scaling`
// (which wins where both give a key), and the top-level `rope_theta` (which wins over theirs; null: theirs,
// else the config's current rope_theta). Sets the rope_* fields of `c`; throws ValueError naming `src`,
// the field and its value for unsupported types and missing or bad values.
void parse_rope(LlamaConfig& c, const ConfigFields& rope_parameters, const ConfigFields& rope_scaling,
                const ConfigValue& rope_theta, const std::string& src);
// The rope checks of LlamaConfig::validate (fields set one by one bypass parse_rope).
void validate_rope(const LlamaConfig& c, const std::string& src);

// "float32"/"fp32"/"torch.float32"/"float" ... -> at::ScalarType; throws on anything else.
at::ScalarType parse_dtype(const std::string& name);
std::string dtype_name(at::ScalarType t);

}  // namespace infinilm::models::llama
