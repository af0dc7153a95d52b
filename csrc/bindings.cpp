// pybind11 module _infinilm: engine classes only (operators live in torch.ops.infinilm).
#include <pybind11/functional.h>
#include <pybind11/stl.h>
#include <torch/extension.h>

#include <torch/csrc/distributed/c10d/Backend.hpp>

#include <algorithm>
#include <cctype>
#include <chrono>
#include <limits>
#include <sstream>

#include "csrc/bindings.h"
#include "csrc/engine/c10d_communicator.h"
#include "csrc/engine/infer_engine.h"
#include "csrc/models/registry.h"
#include "csrc/ops/ops.h"
#include "kernels/kernel_limits.h"

namespace py = pybind11;
using infinilm::cache::CacheConfig;
using infinilm::cache::PagedKVCacheConfig;
using infinilm::cache::StaticKVCacheConfig;
using infinilm::engine::InferEngine;
using infinilm::engine::distributed::DistConfig;
using infinilm::models::debug_utils::HookRegistry;
using infinilm::models::llama::ConfigFields;
using infinilm::models::llama::ConfigValue;
using infinilm::models::llama::LlamaConfig;

namespace infinilm::pybind {

// torch.Tensor, an adapter tensor carrying one in `._underlying`, a list of ints, or None.
std::optional<at::Tensor> as_tensor(py::handle obj, const char* name) {
  if (obj.is_none()) return std::nullopt;
  if (THPVariable_Check(obj.ptr())) return THPVariable_Unpack(obj.ptr());
  if (py::hasattr(obj, "_underlying")) return as_tensor(obj.attr("_underlying"), name);
  if (py::isinstance<py::list>(obj) || py::isinstance<py::tuple>(obj)) {
    return THPVariable_Unpack(py::module_::import("torch").attr("tensor")(obj).ptr());
  }
  throw py::type_error(std::string("'") + name + "' must be a torch.Tensor (or an infinicore.Tensor), got " +
                       std::string(py::str(py::type::of(obj))));
}

// "cpu", "cuda", "nvidia", torch.device, an adapter Device/Device.Type (anything with .name). The spec's default
// (None: the adapter's current device) is resolved by the Python side before it calls in (infinilm_torch/lib/_engine.py).
c10::DeviceType parse_device_type(py::handle obj) {
  if (obj.is_none()) return c10::DeviceType::CPU;
  std::string s;
  if (py::isinstance<py::str>(obj)) {
    s = obj.cast<std::string>();
  } else if (py::hasattr(obj, "_underlying")) {
    return parse_device_type(obj.attr("_underlying"));
  } else if (py::hasattr(obj, "type") && py::isinstance<py::str>(obj.attr("type"))) {
    s = obj.attr("type").cast<std::string>();  // torch.device
  } else if (py::hasattr(obj, "name")) {
    s = py::str(obj.attr("name"));  // enum member
  } else {
    s = py::str(obj);
  }
  std::string key = s.substr(s.find_last_of('.') == std::string::npos ? 0 : s.find_last_of('.') + 1);
  key = key.substr(0, key.find(':'));
  std::transform(key.begin(), key.end(), key.begin(), [](unsigned char ch) { return std::tolower(ch); });
  if (key == "cpu") return c10::DeviceType::CPU;
  if (key == "cuda" || key == "nvidia" || key == "gpu") return c10::DeviceType::CUDA;
  throw py::value_error("InferEngine: unsupported 'device_type' '" + s + "': this build runs on cpu and cuda (nvidia)");
}

// Python callables kept alive by C++ std::function: released and called under the GIL.
infinilm::models::debug_utils::HookCallback wrap_callback(py::function fn) {
  std::shared_ptr<py::object> holder(new py::object(std::move(fn)), [](py::object* p) {
    if (!Py_IsInitialized()) return;  // interpreter gone: leak rather than crash
    py::gil_scoped_acquire gil;
    delete p;
  });
  return [holder](const std::string& name, const at::Tensor& t, int64_t layer) {
    py::gil_scoped_acquire gil;
    try {
      (*holder)(name, t, layer);
    } catch (py::error_already_set& e) {
      throw std::runtime_error(e.what());
    }
  };
}

}  // namespace infinilm::pybind

namespace {

using namespace infinilm::pybind;


std::vector<int64_t> as_id_list(py::handle v) {
  if (v.is_none()) return {};
  if (py::isinstance<py::int_>(v)) return {v.cast<int64_t>()};
  return v.cast<std::vector<int64_t>>();
}

// A Python value as parse_rope reads it (bool before int: True is an int to Python).
ConfigValue config_value(py::handle v) {
  ConfigValue out;
  out.text = py::str(py::repr(v));
  if (v.is_none()) return out;
  if (py::isinstance<py::bool_>(v)) {
    out.kind = ConfigValue::Kind::kBool;
    out.number = v.cast<bool>();
  } else if (py::isinstance<py::int_>(v)) {
    out.kind = ConfigValue::Kind::kInt;
    out.number = v.cast<double>();
  } else if (py::isinstance<py::float_>(v)) {
    out.kind = ConfigValue::Kind::kFloat;
    out.number = v.cast<double>();
  } else if (py::isinstance<py::str>(v)) {
    out.kind = ConfigValue::Kind::kString;
    out.text = v.cast<std::string>();
  } else {
    out.kind = ConfigValue::Kind::kOther;
  }
  return out;
}

// A dict (or None) of rope settings; anything else is a config error naming the field.
ConfigFields config_fields(py::handle v, const char* field, const std::string& src) {
  ConfigFields out;
  if (v.is_none()) return out;
  if (!py::isinstance<py::dict>(v)) {
    throw py::value_error(src + ": '" + field + "' must be an object (a dict) or null, got " +
                          std::string(py::str(py::repr(v))));
  }
  for (auto item : py::reinterpret_borrow<py::dict>(v)) {
    out[py::str(item.first)] = config_value(item.second);
  }
  return out;
}

py::dict rope_fields(const LlamaConfig& c) {
  py::dict d;
  d["rope_theta"] = c.rope_theta;
  d["rope_type"] = c.rope_type;
  d["rope_factor"] = c.rope_factor;
  d["rope_low_freq_factor"] = c.rope_low_freq_factor;
  d["rope_high_freq_factor"] = c.rope_high_freq_factor;
  d["rope_original_max_position_embeddings"] = c.rope_original_max_position_embeddings;
  return d;
}

// LlamaConfig.rope_scaling / .rope_parameters = dict: the whole rope setting (rope_theta kept unless given).
void set_rope(LlamaConfig& c, py::handle v, bool scaling) {
  const char* field = scaling ? "rope_scaling" : "rope_parameters";
  const std::string src = std::string("LlamaConfig.") + field;
  const ConfigFields fields = config_fields(v, field, src);
  infinilm::models::llama::parse_rope(c, scaling ? ConfigFields{} : fields, scaling ? fields : ConfigFields{},
                                      ConfigValue{}, src);
}

py::object get_rope_scaling(const LlamaConfig& c) {
  if (c.rope_type == "default") return py::none();
  py::dict d;
  d["rope_type"] = c.rope_type;
  d["factor"] = c.rope_factor;
  if (c.rope_type == "llama3") {
    d["low_freq_factor"] = c.rope_low_freq_factor;
    d["high_freq_factor"] = c.rope_high_freq_factor;
    d["original_max_position_embeddings"] = c.rope_original_max_position_embeddings;
  }
  return std::move(d);
}

void bind_config(py::module_& m) {
  py::class_<LlamaConfig> c(m, "LlamaConfig", "Llama-family model configuration (fields as in HF config.json).");
  c.def(py::init([](py::kwargs kw) {
          auto cfg = std::make_unique<LlamaConfig>();
          py::object self = py::cast(cfg.get(), py::return_value_policy::reference);
          for (auto item : kw) py::setattr(self, item.first, item.second);
          return cfg;
        }),
        "LlamaConfig(**fields): defaults are HF LlamaConfig's; any field may be given by keyword.");
#define FIELD(name) c.def_readwrite(#name, &LlamaConfig::name)
  FIELD(vocab_size); FIELD(hidden_size); FIELD(intermediate_size); FIELD(num_hidden_layers);
  FIELD(num_attention_heads); FIELD(num_key_value_heads); FIELD(head_dim); FIELD(max_position_embeddings);
  FIELD(rms_norm_eps); FIELD(hidden_act); FIELD(rope_theta); FIELD(attention_bias); FIELD(mlp_bias);
  FIELD(tie_word_embeddings); FIELD(use_cache); FIELD(model_type); FIELD(rope_type); FIELD(rope_factor);
  FIELD(rope_low_freq_factor); FIELD(rope_high_freq_factor); FIELD(rope_original_max_position_embeddings);
  FIELD(sliding_window);
#undef FIELD
  c.def_property("eos_token_id", [](const LlamaConfig& s) { return s.eos_token_id; },
                 [](LlamaConfig& s, py::handle v) { s.eos_token_id = as_id_list(v); });
  c.def_property("bos_token_id", [](const LlamaConfig& s) { return s.bos_token_id; },
                 [](LlamaConfig& s, py::handle v) { s.bos_token_id = as_id_list(v); });
  auto dtype_get = [](const LlamaConfig& s) { return s.dtype; };
  auto dtype_set = [](LlamaConfig& s, py::handle v) {  // "bfloat16" or torch.bfloat16
    s.dtype = infinilm::models::llama::dtype_name(infinilm::models::llama::parse_dtype(py::str(v)));
  };
  c.def_property("dtype", dtype_get, dtype_set);
  c.def_property("torch_dtype", dtype_get, dtype_set);
  c.def_property("rope_scaling", &get_rope_scaling, [](LlamaConfig& c, py::handle v) { set_rope(c, v, true); },
                 "HF-style dict {rope_type, factor, low_freq_factor, high_freq_factor, "
                 "original_max_position_embeddings} or None");
  c.def_property("rope_parameters", &get_rope_scaling, [](LlamaConfig& c, py::handle v) { set_rope(c, v, false); });
  c.def("validate", &LlamaConfig::validate, "Raises ValueError naming the first inconsistent field.");
  c.def("kv_dim", &LlamaConfig::kv_dim, "num_key_value_heads * head_dim");
  c.def("__repr__", [](const LlamaConfig& s) {
    std::ostringstream os;
    os << "LlamaConfig(model_type=" << s.model_type << ", vocab_size=" << s.vocab_size << ", hidden_size="
       << s.hidden_size << ", intermediate_size=" << s.intermediate_size << ", num_hidden_layers="
       << s.num_hidden_layers << ", num_attention_heads=" << s.num_attention_heads << ", num_key_value_heads="
       << s.num_key_value_heads << ", head_dim=" << s.head_dim << ", dtype=" << s.dtype << ")";
    return os.str();
  });
}

// What the Python side needs to know about the model families, read from the registry (one source of truth).
void bind_models(py::module_& m) {
  m.def("supported_model_types", &infinilm::models::supported_model_types,
        "The model_type values this build serves (the registry's list), sorted.");
  m.def("parse_rope", [](py::object rope_parameters, py::object rope_scaling, py::object rope_theta,
                         const std::string& src) {
        LlamaConfig c;
        infinilm::models::llama::parse_rope(c, config_fields(rope_parameters, "rope_parameters", src),
                                            config_fields(rope_scaling, "rope_scaling", src),
                                            config_value(rope_theta), src);
        return rope_fields(c);
      }, py::arg("rope_parameters") = py::none(), py::arg("rope_scaling") = py::none(),
      py::arg("rope_theta") = py::none(), py::arg("src") = "config",
      "The LlamaConfig rope fields {rope_theta, rope_type, rope_factor, rope_low_freq_factor, "
      "rope_high_freq_factor, rope_original_max_position_embeddings} of a HF config's rope_parameters, "
      "rope_scaling and rope_theta (the parser the C++ checkpoint loader uses); ValueError names src, the "
      "field and its value.");
  m.def("kernel_limits", [] {
        namespace lim = infinilm::limits;
        py::dict d;
        d["max_paged_block_size"] = lim::kMaxPagedBlockSize;
        d["cuda_head_sizes"] = py::tuple(py::cast(std::vector<int64_t>(lim::kCudaHeadSizes.begin(),
                                                                       lim::kCudaHeadSizes.end())));
        d["max_logprobs"] = lim::kMaxLogprobs;
        py::list types;
        for (std::string_view t : lim::kRopeTypes) types.append(std::string(t));
        d["rope_types"] = py::tuple(types);
        return d;
      },
      "The kernels' limits (kernels/kernel_limits.h, the constants their checks use): max_paged_block_size (CUDA "
      "paged attention, power-of-two blocks), cuda_head_sizes, max_logprobs, rope_types.");
  m.def("param_specs", [](const LlamaConfig& config) {
        py::list out;
        for (const auto& p : infinilm::models::param_specs(config)) {
          out.append(py::make_tuple(p.name, py::tuple(py::cast(p.shape)), p.shard_dim));
        }
        return out;
      }, py::arg("config"),
      "[(HF name, full shape, shard_dim)] of every parameter a model of this config loads, in checkpoint order; "
      "shard_dim -1 replicated, 0 rows, 1 columns.");
  m.def("kv_block_bytes", [](int64_t num_layers, int64_t kv_heads, int64_t head_dim, py::handle dtype,
                             int64_t block_size) {
        TORCH_CHECK_VALUE(num_layers > 0 && kv_heads > 0 && head_dim > 0 && block_size > 0,
                          "kv_block_bytes: num_layers, kv_heads, head_dim and block_size must be > 0, got ",
                          num_layers, ", ", kv_heads, ", ", head_dim, ", ", block_size);
        infinilm::cache::CacheShape shape{num_layers, kv_heads, head_dim,
                                          infinilm::models::llama::parse_dtype(py::str(dtype)), 0};
        return infinilm::cache::block_bytes(shape, block_size);
      }, py::arg("num_layers"), py::arg("kv_heads"), py::arg("head_dim"), py::arg("dtype"), py::arg("block_size"),
      "Bytes of one paged-cache block over every layer (kv_heads: one rank's): the engine's block-count divisor.");
}

void bind_caches(py::module_& m) {
  py::class_<DistConfig>(m, "DistConfig", "Tensor-parallel ranks: one per device id.")
      .def(py::init<>())
      .def(py::init<int64_t>(), py::arg("tp_size"))
      .def(py::init<std::vector<int64_t>>(), py::arg("tp_device_ids"))
      .def_readwrite("tp_device_ids", &DistConfig::tp_device_ids)
      .def_property_readonly("tp_size", &DistConfig::tp_size)
      .def("__repr__", [](const DistConfig& d) { return "DistConfig(tp_device_ids=" + std::string(py::str(py::cast(d.tp_device_ids))) + ")"; });
  py::class_<CacheConfig, std::shared_ptr<CacheConfig>>(m, "CacheConfig", "Base of the KV-cache configurations.");
  py::class_<StaticKVCacheConfig, CacheConfig, std::shared_ptr<StaticKVCacheConfig>>(m, "StaticKVCacheConfig")
      .def(py::init<int64_t, int64_t>(), py::arg("max_batch_size") = 1,
           py::arg("max_cache_len") = std::numeric_limits<int64_t>::max())
      .def("max_batch_size", &StaticKVCacheConfig::max_batch_size)
      .def("max_cache_len", &StaticKVCacheConfig::max_cache_len)
      .def("__repr__", [](const StaticKVCacheConfig& s) {
        return "StaticKVCacheConfig(max_batch_size=" + std::to_string(s.max_batch_size()) +
               ", max_cache_len=" + std::to_string(s.max_cache_len()) + ")";
      });
  py::class_<PagedKVCacheConfig, CacheConfig, std::shared_ptr<PagedKVCacheConfig>>(m, "PagedKVCacheConfig")
      .def(py::init<int64_t, int64_t>(), py::arg("max_kv_memory_bytes"), py::arg("block_size") = 16)
      .def("max_kv_memory_bytes", &PagedKVCacheConfig::max_kv_memory_bytes)
      .def("block_size", &PagedKVCacheConfig::block_size)
      .def("__repr__", [](const PagedKVCacheConfig& s) {
        return "PagedKVCacheConfig(max_kv_memory_bytes=" + std::to_string(s.max_kv_memory_bytes()) +
               ", block_size=" + std::to_string(s.block_size()) + ")";
      });
}

}  // namespace

PYBIND11_MODULE(_infinilm, m) {
  m.doc() = "infinilm_torch C++ engine (operators are registered as torch.ops.infinilm.*)";
  bind_config(m);
  bind_models(m);
  bind_caches(m);
  infinilm::pybind::bind_engine(m);
  // The engine's dense layer, exposed for tests and benchmarks (not a torch op: no autograd, no fake).
  m.def(
      "_linear",
      [](const at::Tensor& x, const at::Tensor& w, const std::optional<at::Tensor>& b) {
        return infinilm::linear(x, w, b.value_or(at::Tensor()));
      },
      py::arg("x"), py::arg("weight"), py::arg("bias") = py::none(), py::call_guard<py::gil_scoped_release>());
}
