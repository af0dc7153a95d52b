// LlamaConfig validation and dtype names.
#include "csrc/models/llama/config.h"

#include <c10/util/Exception.h>

#include "csrc/models/registry.h"

namespace infinilm::models::llama {

at::ScalarType parse_dtype(const std::string& name) {
  std::string s = name;
  if (s.rfind("torch.", 0) == 0) s = s.substr(6);
  if (s == "float32" || s == "float" || s == "fp32") return at::kFloat;
  if (s == "float16" || s == "half" || s == "fp16") return at::kHalf;
  if (s == "bfloat16" || s == "bf16") return at::kBFloat16;
  TORCH_CHECK_VALUE(false, "LlamaConfig: 'dtype' must be float32, float16 or bfloat16, got '", name, "'");
}

std::string dtype_name(at::ScalarType t) {
  switch (t) {
    case at::kFloat: return "float32";
    case at::kHalf: return "float16";
    case at::kBFloat16: return "bfloat16";
    default: TORCH_CHECK_VALUE(false, "LlamaConfig: unsupported dtype ", t);
  }
}

at::ScalarType LlamaConfig::scalar_type() const { return parse_dtype(dtype); }

void LlamaConfig::validate() const {
  auto positive = [](const char* name, int64_t v) {
    TORCH_CHECK_VALUE(v > 0, "LlamaConfig: '", name, "' must be > 0, got ", v);
  };
  positive("vocab_size", vocab_size);
  positive("hidden_size", hidden_size);
  positive("intermediate_size", intermediate_size);
  positive("num_hidden_layers", num_hidden_layers);
  positive("num_attention_heads", num_attention_heads);
  positive("num_key_value_heads", num_key_value_heads);
  positive("head_dim", head_dim);
  positive("max_position_embeddings", max_position_embeddings);
  TORCH_CHECK_VALUE(sliding_window >= 0, "LlamaConfig: 'sliding_window' must be >= 0 (0 = no window), got ",
                    sliding_window);
  TORCH_CHECK_VALUE(num_attention_heads % num_key_value_heads == 0, "LlamaConfig: 'num_attention_heads' (",
                    num_attention_heads, ") must be a multiple of 'num_key_value_heads' (", num_key_value_heads,
                    ")");
  TORCH_CHECK_VALUE(head_dim % 2 == 0, "LlamaConfig: 'head_dim' must be even for rotary embedding, got ", head_dim);
  TORCH_CHECK_VALUE(rms_norm_eps >= 0, "LlamaConfig: 'rms_norm_eps' must be >= 0, got ", rms_norm_eps);
  TORCH_CHECK_VALUE(rope_theta > 0, "LlamaConfig: 'rope_theta' must be > 0, got ", rope_theta);
  TORCH_CHECK_VALUE(hidden_act == "silu" || hidden_act == "swish", "LlamaConfig: 'hidden_act' must be 'silu', got '",
                    hidden_act, "'");
  if (!is_supported_model_type(model_type)) {
    std::string types;
    for (const auto& t : supported_model_types()) types += (types.empty() ? "'" : ", '") + t + "'";
    TORCH_CHECK_VALUE(false, "LlamaConfig: 'model_type' must be one of ", types, ", got '", model_type, "'");
  }
  parse_dtype(dtype);
  if (rope_type == "linear" || rope_type == "llama3") {
    TORCH_CHECK_VALUE(rope_factor > 0, "LlamaConfig: rope_scaling 'factor' must be > 0, got ", rope_factor);
  } else {
    TORCH_CHECK_VALUE(rope_type == "default", "LlamaConfig: 'rope_type' must be 'default', 'linear' or 'llama3', got '",
                      rope_type, "'");
  }
  if (rope_type == "llama3") {
    TORCH_CHECK_VALUE(rope_high_freq_factor > rope_low_freq_factor && rope_low_freq_factor > 0,
                      "LlamaConfig: llama3 rope_scaling needs high_freq_factor > low_freq_factor > 0, got low=",
                      rope_low_freq_factor, " high=", rope_high_freq_factor);
    positive("rope_original_max_position_embeddings", rope_original_max_position_embeddings);
  }
}

}  // namespace infinilm::models::llama
