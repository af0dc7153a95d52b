// LlamaConfig validation, dtype names and the one parser of HF rope settings.
#include "csrc/models/llama/config.h"

#include <c10/util/Exception.h>

#include <cmath>
#include <utility>

#include "csrc/models/registry.h"
#include "kernels/kernel_limits.h"

namespace infinilm::models::llama {

namespace {

using Kind = ConfigValue::Kind;

std::string rope_types_text() {  // 'default', 'linear', 'llama3'
  std::string s;
  for (std::string_view t : limits::kRopeTypes) s += (s.empty() ? "'" : ", '") + std::string(t) + "'";
  return s;
}

double positive_number(const ConfigValue& v, const std::string& src, const std::string& field) {
  const bool number = v.kind == Kind::kInt || v.kind == Kind::kFloat;
  TORCH_CHECK_VALUE(number && std::isfinite(v.number) && v.number > 0, src, ": '", field,
                    "' must be a finite positive number, got ", v.text);
  return v.number;
}

int64_t positive_int(const ConfigValue& v, const std::string& src, const std::string& field) {
  const bool integral = v.kind == Kind::kInt || (v.kind == Kind::kFloat && std::isfinite(v.number) &&
                                                 v.number == std::floor(v.number));
  TORCH_CHECK_VALUE(integral && v.number >= 1, src, ": '", field, "' must be an integer >= 1, got ", v.text);
  return static_cast<int64_t>(v.number);
}

}  // namespace

void parse_rope(LlamaConfig& c, const ConfigFields& rope_parameters, const ConfigFields& rope_scaling,
                const ConfigValue& rope_theta, const std::string& src) {
  // key -> (value, the field it came from, for messages); null values count as absent, as in transformers.
  std::map<std::string, std::pair<ConfigValue, std::string>> rope;
  for (const auto& [k, v] : rope_parameters) {
    if (v.kind != Kind::kNull) rope[k] = {v, "rope_parameters." + k};
  }
  for (const auto& [k, v] : rope_scaling) {
    if (v.kind != Kind::kNull) rope[k] = {v, "rope_scaling." + k};
  }
  auto find = [&](const char* k) { auto it = rope.find(k); return it == rope.end() ? nullptr : &it->second; };

  if (rope_theta.kind != Kind::kNull) {
    c.rope_theta = positive_number(rope_theta, src, "rope_theta");
  } else if (const auto* t = find("rope_theta")) {
    c.rope_theta = positive_number(t->first, src, t->second);
  }
  const auto* type = find("rope_type") ? find("rope_type") : find("type");
  c.rope_type = "default";
  if (type != nullptr) {
    TORCH_CHECK_VALUE(type->first.kind == Kind::kString, src, ": '", type->second, "' must be a string, got ",
                      type->first.text);
    c.rope_type = type->first.text;
    const char* why = c.rope_type == "dynamic"
                          ? " (dynamic NTK scaling changes the frequencies with the sequence length, which one "
                            "fixed cos/sin table cannot follow)"
                          : "";
    TORCH_CHECK_VALUE(limits::is_rope_type(c.rope_type), src, ": '", type->second, "' = '", c.rope_type,
                      "' is not supported", why, "; supported rope types: ", rope_types_text());
  }
  auto need = [&](const char* k) -> const std::pair<ConfigValue, std::string>& {
    const auto* v = find(k);
    TORCH_CHECK_VALUE(v != nullptr, src, ": rope_type '", c.rope_type, "' needs '", k,
                      "' in 'rope_scaling' or 'rope_parameters'");
    return *v;
  };
  const LlamaConfig defaults;
  c.rope_factor = defaults.rope_factor;
  c.rope_low_freq_factor = defaults.rope_low_freq_factor;
  c.rope_high_freq_factor = defaults.rope_high_freq_factor;
  c.rope_original_max_position_embeddings = defaults.rope_original_max_position_embeddings;
  if (c.rope_type != "default") {
    const auto& f = need("factor");
    c.rope_factor = positive_number(f.first, src, f.second);
  }
  if (c.rope_type == "llama3") {
    const auto& lo = need("low_freq_factor");
    const auto& hi = need("high_freq_factor");
    const auto& orig = need("original_max_position_embeddings");
    c.rope_low_freq_factor = positive_number(lo.first, src, lo.second);
    c.rope_high_freq_factor = positive_number(hi.first, src, hi.second);
    c.rope_original_max_position_embeddings = positive_int(orig.first, src, orig.second);
  }
  validate_rope(c, src);
}

void validate_rope(const LlamaConfig& c, const std::string& src) {
  TORCH_CHECK_VALUE(c.rope_theta > 0 && std::isfinite(c.rope_theta), src, ": 'rope_theta' must be a finite "
                    "positive number, got ", c.rope_theta);
  TORCH_CHECK_VALUE(limits::is_rope_type(c.rope_type), src, ": 'rope_type' must be one of ", rope_types_text(),
                    ", got '", c.rope_type, "'");
  if (c.rope_type != "default") {
    TORCH_CHECK_VALUE(c.rope_factor > 0, src, ": rope_scaling 'factor' must be > 0, got ", c.rope_factor);
  }
  if (c.rope_type == "llama3") {
    TORCH_CHECK_VALUE(c.rope_high_freq_factor > c.rope_low_freq_factor && c.rope_low_freq_factor > 0, src,
                      ": llama3 rope_scaling needs high_freq_factor > low_freq_factor > 0, got low=",
                      c.rope_low_freq_factor, " high=", c.rope_high_freq_factor);
    TORCH_CHECK_VALUE(c.rope_original_max_position_embeddings > 0, src,
                      ": 'rope_original_max_position_embeddings' must be > 0, got ",
                      c.rope_original_max_position_embeddings);
  }
}

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
  TORCH_CHECK_VALUE(hidden_act == "silu" || hidden_act == "swish", "LlamaConfig: 'hidden_act' must be 'silu', got '",
                    hidden_act, "'");
  if (!is_supported_model_type(model_type)) {
    std::string types;
    for (const auto& t : supported_model_types()) types += (types.empty() ? "'" : ", '") + t + "'";
    TORCH_CHECK_VALUE(false, "LlamaConfig: 'model_type' must be one of ", types, ", got '", model_type, "'");
  }
  parse_dtype(dtype);
  validate_rope(*this, "LlamaConfig");
}

}  // namespace infinilm::models::llama
