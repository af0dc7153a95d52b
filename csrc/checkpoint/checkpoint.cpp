// C++ checkpoint loading: config.json -> LlamaConfig (nlohmann/json), safetensors -> InferEngine::load_param.
// The config rules mirror infinilm_torch/auto_config.py (tests/test_cpp_library.py compares the two).
#include "infinilm/checkpoint.h"

#include <c10/util/Exception.h>
#include <nlohmann/json.hpp>

#include <algorithm>
#include <cstdint>
#include <filesystem>
#include <fstream>
#include <map>
#include <set>
#include <sstream>

#include "csrc/models/registry.h"

namespace infinilm {

namespace fs = std::filesystem;
using json = nlohmann::json;

namespace {

std::string read_text(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  TORCH_CHECK_VALUE(f, "cannot open '", path, "'");
  std::ostringstream ss;
  ss << f.rdbuf();
  return ss.str();
}

int64_t get_int(const json& d, const char* key, const std::string& src) {
  const json& v = d.at(key);
  TORCH_CHECK_VALUE(v.is_number_integer() || (v.is_number_float() && v.get<double>() == std::floor(v.get<double>())),
                    src, ": '", key, "' must be an integer, got ", v.dump());
  return v.is_number_integer() ? v.get<int64_t>() : static_cast<int64_t>(v.get<double>());
}

bool has(const json& d, const char* key) { return d.contains(key) && !d.at(key).is_null(); }

models::llama::ConfigValue config_value(const json& v) {
  using Kind = models::llama::ConfigValue::Kind;
  models::llama::ConfigValue out;
  out.text = v.dump();
  if (v.is_null()) return out;
  if (v.is_boolean()) {
    out.kind = Kind::kBool;
    out.number = v.get<bool>();
  } else if (v.is_number_integer()) {
    out.kind = Kind::kInt;
    out.number = v.get<double>();
  } else if (v.is_number_float()) {
    out.kind = Kind::kFloat;
    out.number = v.get<double>();
  } else if (v.is_string()) {
    out.kind = Kind::kString;
    out.text = v.get<std::string>();
  } else {
    out.kind = Kind::kOther;
  }
  return out;
}

std::vector<int64_t> id_list(const json& d, const char* key, const std::string& src) {
  if (!has(d, key)) return {};
  const json& v = d.at(key);
  if (v.is_number_integer()) return {v.get<int64_t>()};
  TORCH_CHECK_VALUE(v.is_array(), src, ": '", key, "' must be an int or a list of ints, got ", v.dump());
  std::vector<int64_t> out;
  for (const json& x : v) {
    TORCH_CHECK_VALUE(x.is_number_integer(), src, ": '", key, "' must be an int or a list of ints, got ", v.dump());
    out.push_back(x.get<int64_t>());
  }
  return out;
}

at::ScalarType safetensors_dtype(const std::string& s, const std::string& path, const std::string& name) {
  static const std::map<std::string, at::ScalarType> kTypes = {
      {"F64", at::kDouble}, {"F32", at::kFloat}, {"F16", at::kHalf}, {"BF16", at::kBFloat16}, {"I64", at::kLong},
      {"I32", at::kInt},    {"I16", at::kShort}, {"I8", at::kChar},  {"U8", at::kByte},       {"BOOL", at::kBool}};
  auto it = kTypes.find(s);
  TORCH_CHECK_VALUE(it != kTypes.end(), path, ": tensor '", name, "' has unsupported dtype '", s, "'");
  return it->second;
}

std::vector<std::string> weight_files(const std::string& model_dir) {
  TORCH_CHECK_VALUE(fs::is_directory(model_dir), "model directory '", model_dir, "' does not exist");
  const fs::path index = fs::path(model_dir) / "model.safetensors.index.json";
  std::set<std::string> files;
  if (fs::is_regular_file(index)) {
    json d = json::parse(read_text(index.string()), nullptr, /*allow_exceptions=*/false);
    TORCH_CHECK_VALUE(d.is_object() && d.contains("weight_map") && d["weight_map"].is_object() &&
                          !d["weight_map"].empty(), index.string(), ": no 'weight_map'");
    for (const auto& [name, file] : d["weight_map"].items()) files.insert((fs::path(model_dir) / file.get<std::string>()).string());
  } else {
    for (const auto& e : fs::directory_iterator(model_dir)) {
      if (e.is_regular_file() && e.path().extension() == ".safetensors") files.insert(e.path().string());
    }
  }
  TORCH_CHECK_VALUE(!files.empty(), "no weights in '", model_dir, "': expected *.safetensors (optionally with "
                    "model.safetensors.index.json)");
  for (const auto& f : files) TORCH_CHECK_VALUE(fs::is_regular_file(f), "checkpoint shard '", f, "' does not exist");
  return {files.begin(), files.end()};
}

// The header of a safetensors file: (header bytes, parsed JSON).
std::pair<uint64_t, json> safetensors_header(std::ifstream& f, const std::string& path) {
  uint64_t n = 0;
  f.read(reinterpret_cast<char*>(&n), 8);
  TORCH_CHECK_VALUE(f && n > 0 && n < (uint64_t{1} << 30), path, ": not a safetensors file (header size ", n, ")");
  std::string text(n, '\0');
  f.read(text.data(), static_cast<std::streamsize>(n));
  TORCH_CHECK_VALUE(f, path, ": truncated safetensors header");
  json h = json::parse(text, nullptr, /*allow_exceptions=*/false);
  TORCH_CHECK_VALUE(h.is_object(), path, ": safetensors header is not a JSON object");
  return {n, std::move(h)};
}

std::vector<std::string> tensor_names(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  TORCH_CHECK_VALUE(f, "cannot open '", path, "'");
  auto [n, h] = safetensors_header(f, path);
  std::vector<std::string> names;
  for (const auto& [name, _] : h.items()) if (name != "__metadata__") names.push_back(name);
  return names;
}

bool ignored(const std::string& name) {
  const std::string suffix = ".rotary_emb.inv_freq";
  return name.size() >= suffix.size() && name.compare(name.size() - suffix.size(), suffix.size(), suffix) == 0;
}

}  // namespace

LlamaConfig config_from_json(const std::string& json_text, const std::string& src) {
  json d = json::parse(json_text, nullptr, /*allow_exceptions=*/false);
  TORCH_CHECK_VALUE(d.is_object(), src, ": not a JSON object");
  LlamaConfig c;
  const std::string model_type = has(d, "model_type") && d["model_type"].is_string() ? d["model_type"].get<std::string>() : "";
  if (!models::is_supported_model_type(model_type)) {
    std::string types;
    for (const auto& t : models::supported_model_types()) types += (types.empty() ? "" : ", ") + t;
    TORCH_CHECK_VALUE(false, src, ": unsupported model_type '", model_type, "'; supported: ", types);
  }
  c.model_type = model_type;
  for (const char* key : {"vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads"}) {
    TORCH_CHECK_VALUE(has(d, key), src, ": missing required field '", key, "' for model_type '", model_type, "'");
  }
  c.vocab_size = get_int(d, "vocab_size", src);
  c.hidden_size = get_int(d, "hidden_size", src);
  c.intermediate_size = get_int(d, "intermediate_size", src);
  c.num_hidden_layers = get_int(d, "num_hidden_layers", src);
  c.num_attention_heads = get_int(d, "num_attention_heads", src);
  c.num_key_value_heads = has(d, "num_key_value_heads") ? get_int(d, "num_key_value_heads", src) : c.num_attention_heads;
  if (has(d, "head_dim")) {
    c.head_dim = get_int(d, "head_dim", src);
  } else {
    TORCH_CHECK_VALUE(c.num_attention_heads > 0 && c.hidden_size % c.num_attention_heads == 0, src,
                      ": no 'head_dim' and hidden_size ", c.hidden_size, " is not divisible by num_attention_heads ",
                      c.num_attention_heads);
    c.head_dim = c.hidden_size / c.num_attention_heads;
  }
  const std::map<std::string, int64_t> default_max_pos = {{"llama", 2048}, {"mistral", 4096 * 32}, {"qwen2", 32768}, {"qwen3", 32768}};
  c.max_position_embeddings = has(d, "max_position_embeddings") ? get_int(d, "max_position_embeddings", src)
                                                                : default_max_pos.at(model_type);
  // Mistral's window applies to every layer and goes to the attention ops. Qwen2/Qwen3 window only some
  // layers (max_window_layers): a window shorter than the context is refused there (as in Python).
  const bool qwen_window = has(d, "use_sliding_window") && d["use_sliding_window"].is_boolean() &&
                           d["use_sliding_window"].get<bool>();
  if ((model_type == "mistral" || qwen_window) && has(d, "sliding_window") && !d["sliding_window"].is_null()) {
    const int64_t window = get_int(d, "sliding_window", src);
    TORCH_CHECK_VALUE(window > 0, src, ": sliding_window must be positive, got ", window);
    TORCH_CHECK_VALUE(model_type == "mistral" || window >= c.max_position_embeddings, src, ": sliding_window ",
                      window, " is shorter than max_position_embeddings ", c.max_position_embeddings,
                      "; per-layer sliding windows (", model_type, ", use_sliding_window) are not implemented");
    if (window < c.max_position_embeddings) c.sliding_window = window;
  }
  c.rms_norm_eps = has(d, "rms_norm_eps") ? d["rms_norm_eps"].get<double>() : 1e-6;
  c.hidden_act = has(d, "hidden_act") ? d["hidden_act"].get<std::string>() : "silu";
  TORCH_CHECK_VALUE(c.hidden_act == "silu", src, ": hidden_act '", c.hidden_act, "' is not supported (only 'silu')");
  // Qwen2 always has q/k/v biases (its config has no switch); Mistral has none; Llama and Qwen3 follow
  // attention_bias.
  c.attention_bias = model_type == "qwen2" ? true
                     : model_type == "mistral" ? false
                     : has(d, "attention_bias") && d["attention_bias"].get<bool>();
  c.mlp_bias = model_type == "llama" && has(d, "mlp_bias") && d["mlp_bias"].get<bool>();
  c.tie_word_embeddings = has(d, "tie_word_embeddings") && d["tie_word_embeddings"].get<bool>();
  c.use_cache = !has(d, "use_cache") || d["use_cache"].get<bool>();
  c.eos_token_id = id_list(d, "eos_token_id", src);
  c.bos_token_id = id_list(d, "bos_token_id", src);
  const char* dtype_key = has(d, "dtype") ? "dtype" : "torch_dtype";
  c.dtype = has(d, dtype_key) ? models::llama::dtype_name(models::llama::parse_dtype(d[dtype_key].get<std::string>()))
                              : "float32";
  // rope: the one parser (csrc/models/llama/config.h), as AutoConfig uses it.
  models::llama::ConfigFields rope[2];
  const char* rope_keys[2] = {"rope_parameters", "rope_scaling"};
  for (int i = 0; i < 2; ++i) {
    if (!has(d, rope_keys[i])) continue;
    TORCH_CHECK_VALUE(d[rope_keys[i]].is_object(), src, ": '", rope_keys[i],
                      "' must be an object (a dict) or null, got ", d[rope_keys[i]].dump());
    for (const auto& [k, v] : d[rope_keys[i]].items()) rope[i][k] = config_value(v);
  }
  models::llama::parse_rope(c, rope[0], rope[1], d.contains("rope_theta") ? config_value(d["rope_theta"])
                                                                           : models::llama::ConfigValue{}, src);
  c.validate();
  return c;
}

LlamaConfig load_config(const std::string& model_dir) {
  const fs::path p = fs::is_directory(model_dir) ? fs::path(model_dir) / "config.json" : fs::path(model_dir);
  TORCH_CHECK_VALUE(fs::is_regular_file(p), "no config.json at '", model_dir, "'");
  try {
    return config_from_json(read_text(p.string()), p.string());
  } catch (const json::exception& e) {
    TORCH_CHECK_VALUE(false, p.string(), ": ", e.what());
  }
}

std::vector<std::pair<std::string, at::Tensor>> read_safetensors(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  TORCH_CHECK_VALUE(f, "cannot open '", path, "'");
  auto [n, h] = safetensors_header(f, path);
  const uint64_t base = 8 + n;
  const auto file_size = static_cast<uint64_t>(fs::file_size(path));
  std::vector<std::pair<uint64_t, std::string>> order;  // by data offset: file order
  for (const auto& [name, meta] : h.items()) {
    if (name == "__metadata__") continue;
    order.emplace_back(meta.at("data_offsets").at(0).get<uint64_t>(), name);
  }
  std::sort(order.begin(), order.end());
  std::vector<std::pair<std::string, at::Tensor>> out;
  for (const auto& [begin, name] : order) {
    const json& meta = h[name];
    const at::ScalarType dt = safetensors_dtype(meta.at("dtype").get<std::string>(), path, name);
    std::vector<int64_t> shape = meta.at("shape").get<std::vector<int64_t>>();
    const uint64_t end = meta.at("data_offsets").at(1).get<uint64_t>();
    at::Tensor t = at::empty(shape, at::TensorOptions().dtype(dt));
    const uint64_t bytes = static_cast<uint64_t>(t.nbytes());
    TORCH_CHECK_VALUE(end >= begin && end - begin == bytes && base + end <= file_size, path, ": tensor '", name,
                      "' has data_offsets [", begin, ", ", end, ") for ", bytes, " bytes of shape ", t.sizes(),
                      " (file of ", file_size, " bytes)");
    f.seekg(static_cast<std::streamoff>(base + begin));
    f.read(static_cast<char*>(t.data_ptr()), static_cast<std::streamsize>(bytes));
    TORCH_CHECK_VALUE(f, path, ": truncated data of tensor '", name, "'");
    out.emplace_back(name, std::move(t));
  }
  return out;
}

int64_t load_checkpoint(InferEngine& engine, const std::string& model_dir,
                        const std::function<void(int64_t, int64_t)>& progress) {
  const std::vector<std::string> files = weight_files(model_dir);
  std::set<std::string> expected;
  const std::vector<InferEngine::StateDict> ranks = engine.state_dict();  // named, not a temporary: the loop keeps it
  for (const auto& [name, _] : ranks.at(0)) expected.insert(name);
  // Names first: a wrong checkpoint fails before any tensor is read.
  std::set<std::string> found;
  for (const auto& file : files) {
    for (auto& name : tensor_names(file)) {
      if (ignored(name)) continue;
      TORCH_CHECK_VALUE(found.insert(name).second, model_dir, ": tensor '", name, "' appears in two shards");
    }
  }
  if (engine.config().tie_word_embeddings && !expected.count("lm_head.weight")) found.erase("lm_head.weight");
  std::vector<std::string> missing, unexpected;
  for (const auto& n : expected) if (!found.count(n)) missing.push_back(n);
  for (const auto& n : found) if (!expected.count(n)) unexpected.push_back(n);
  auto join = [](const std::vector<std::string>& v) {
    std::string s;
    for (size_t i = 0; i < v.size() && i < 5; ++i) s += (i ? ", " : "") + v[i];
    return s + (v.size() > 5 ? ", ... (" + std::to_string(v.size()) + " in all)" : "");
  };
  TORCH_CHECK_VALUE(missing.empty(), model_dir, ": checkpoint lacks parameter(s) ", join(missing));
  TORCH_CHECK_VALUE(unexpected.empty(), model_dir, ": checkpoint has unexpected tensor(s) ", join(unexpected));
  int64_t loaded = 0;
  const auto total = static_cast<int64_t>(found.size());
  for (const auto& file : files) {
    for (auto& [name, t] : read_safetensors(file)) {
      if (!found.count(name)) continue;
      engine.load_param(name, t);
      ++loaded;
      if (progress) progress(loaded, total);
    }
  }
  return loaded;
}

}  // namespace infinilm
