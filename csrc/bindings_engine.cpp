// pybind11 module _infinilm, part 2: InferEngine, its Input / Output, HookRegistry and the communicators.
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

namespace {

// c10d Backend objects built by the caller (one per local rank) -> communicators. Call with the GIL held.
std::vector<std::shared_ptr<infinilm::engine::Communicator>> as_communicators(py::handle backends, double timeout_s,
                                                                             bool owned) {
  TORCH_CHECK_VALUE(timeout_s > 0, "InferEngine: 'comm_timeout' must be > 0 seconds, got ", timeout_s);
  const auto timeout = std::chrono::milliseconds(static_cast<int64_t>(timeout_s * 1000.0));
  std::vector<std::shared_ptr<infinilm::engine::Communicator>> out;
  if (backends.is_none()) return out;
  for (py::handle obj : backends) {
    c10::intrusive_ptr<c10d::Backend> backend;
    try {
      backend = obj.cast<c10::intrusive_ptr<c10d::Backend>>();
    } catch (const py::cast_error&) {
      throw py::type_error("InferEngine: 'process_group' must be a torch.distributed ProcessGroup or Backend, got " +
                           std::string(py::str(py::type::of(obj))));
    }
    out.push_back(std::make_shared<infinilm::engine::C10dCommunicator>(std::move(backend), timeout, owned));
  }
  return out;
}

std::shared_ptr<const CacheConfig> as_cache_config(py::handle obj) {
  if (obj.is_none()) return nullptr;
  if (!py::isinstance<CacheConfig>(obj)) {
    throw py::type_error("'cache_config' must be a StaticKVCacheConfig, a PagedKVCacheConfig or None, got " +
                         std::string(py::str(py::type::of(obj))));
  }
  return obj.cast<std::shared_ptr<CacheConfig>>();
}

}  // namespace

void bind_engine(py::module_& m) {
  py::class_<HookRegistry, std::shared_ptr<HookRegistry>>(
      m, "HookRegistry",
      "Debug hooks: callback(hook_name, tensor, layer_idx) at named points of the forward pass. Names are exact "
      "or 'prefix*' patterns (exact wins, else the longest matching prefix). Attach with "
      "engine.set_hook_registry(registry). A callback that raises is reported on stderr and the pass goes on.")
      .def(py::init<>())
      .def("register_hook", [](HookRegistry& r, const std::string& name, py::function cb) {
             r.register_hook(name, wrap_callback(std::move(cb)));
           }, py::arg("name"), py::arg("callback"))
      .def("clear", &HookRegistry::clear)
      .def("has_hooks", &HookRegistry::has_hooks);

  py::class_<InferEngine, std::shared_ptr<InferEngine>> e(m, "InferEngine");
  using Input = InferEngine::Input;
  using Output = InferEngine::Output;
  py::class_<Input> in(e, "Input", "One forward step's inputs (DESIGN.md pins static and paged layouts).");
  in.def(py::init([](py::object input_ids, py::object position_ids, py::object cache_lengths, py::object input_lengths,
                     py::object block_tables, py::object slot_mapping, py::object temperature, py::object top_k,
                     py::object top_p, bool return_logits, std::optional<int64_t> seed, py::object temperatures,
                     py::object top_ks, py::object top_ps, py::object min_ps, py::object seeds,
                     py::object repetition_penalties, py::object presence_penalties,
                     py::object frequency_penalties, py::object prompt_token_ids, py::object output_token_ids,
                     int64_t return_logprobs, std::optional<Output> prev_output, py::object prev_token_index,
                     bool non_blocking) {
           Input x;
           x.prev_output = std::move(prev_output);
           x.prev_token_index = as_tensor(prev_token_index, "prev_token_index");
           x.non_blocking = non_blocking;
           x.temperatures = as_tensor(temperatures, "temperatures");
           x.top_ks = as_tensor(top_ks, "top_ks");
           x.top_ps = as_tensor(top_ps, "top_ps");
           x.min_ps = as_tensor(min_ps, "min_ps");
           x.seeds = as_tensor(seeds, "seeds");
           x.repetition_penalties = as_tensor(repetition_penalties, "repetition_penalties");
           x.presence_penalties = as_tensor(presence_penalties, "presence_penalties");
           x.frequency_penalties = as_tensor(frequency_penalties, "frequency_penalties");
           x.prompt_token_ids = as_tensor(prompt_token_ids, "prompt_token_ids");
           x.output_token_ids = as_tensor(output_token_ids, "output_token_ids");
           x.return_logprobs = return_logprobs;
           x.input_ids = as_tensor(input_ids, "input_ids");
           x.position_ids = as_tensor(position_ids, "position_ids");
           x.cache_lengths = as_tensor(cache_lengths, "cache_lengths");
           x.input_lengths = as_tensor(input_lengths, "input_lengths");
           x.block_tables = as_tensor(block_tables, "block_tables");
           x.slot_mapping = as_tensor(slot_mapping, "slot_mapping");
           if (!temperature.is_none()) x.temperature = temperature.cast<double>();
           if (!top_k.is_none()) x.top_k = top_k.cast<int64_t>();
           if (!top_p.is_none()) x.top_p = top_p.cast<double>();
           x.return_logits = return_logits;
           x.seed = seed;
           return x;
         }),
         py::arg("input_ids") = py::none(), py::arg("position_ids") = py::none(),
         py::arg("cache_lengths") = py::none(), py::arg("input_lengths") = py::none(),
         py::arg("block_tables") = py::none(), py::arg("slot_mapping") = py::none(), py::arg("temperature") = Input{}.temperature,
         py::arg("top_k") = Input{}.top_k, py::arg("top_p") = Input{}.top_p,
         py::arg("return_logits") = Input{}.return_logits,
         py::arg("seed") = py::none(), py::arg("temperatures") = py::none(), py::arg("top_ks") = py::none(),
         py::arg("top_ps") = py::none(), py::arg("min_ps") = py::none(), py::arg("seeds") = py::none(),
         py::arg("repetition_penalties") = py::none(), py::arg("presence_penalties") = py::none(),
         py::arg("frequency_penalties") = py::none(), py::arg("prompt_token_ids") = py::none(),
         py::arg("output_token_ids") = py::none(), py::arg("return_logprobs") = Input{}.return_logprobs,
         py::arg("prev_output") = py::none(), py::arg("prev_token_index") = py::none(),
         py::arg("non_blocking") = Input{}.non_blocking,
         "Per-request sampling tensors ([n], CPU or device) override the scalars; prev_output / "
         "prev_token_index feed an earlier step's sampled ids back on the device; non_blocking returns before "
         "the step has run (docs/engine_inputs.md, csrc/engine/io.h).");
#define TENSOR_FIELD(name)                                                                      \
  in.def_property(#name, [](const Input& x) { return x.name; },                                 \
                  [](Input& x, py::handle v) { x.name = as_tensor(v, #name); })
  TENSOR_FIELD(input_ids); TENSOR_FIELD(position_ids); TENSOR_FIELD(cache_lengths);
  TENSOR_FIELD(input_lengths); TENSOR_FIELD(block_tables); TENSOR_FIELD(slot_mapping);
  TENSOR_FIELD(temperatures); TENSOR_FIELD(top_ks); TENSOR_FIELD(top_ps); TENSOR_FIELD(min_ps); TENSOR_FIELD(seeds);
  TENSOR_FIELD(repetition_penalties); TENSOR_FIELD(presence_penalties); TENSOR_FIELD(frequency_penalties);
  TENSOR_FIELD(prompt_token_ids); TENSOR_FIELD(output_token_ids); TENSOR_FIELD(prev_token_index);
#undef TENSOR_FIELD
  in.def_readwrite("temperature", &Input::temperature)
      .def_readwrite("top_k", &Input::top_k)
      .def_readwrite("top_p", &Input::top_p)
      .def_readwrite("return_logits", &Input::return_logits)
      .def_readwrite("seed", &Input::seed)
      .def_readwrite("return_logprobs", &Input::return_logprobs)
      .def_readwrite("prev_output", &Input::prev_output)
      .def_readwrite("non_blocking", &Input::non_blocking);
  // The host fields of a non-blocking step fill in once its copies land: each property waits for them (with
  // the GIL released), so reading one never sees a half-copied buffer.
  py::class_<Output> o(e, "Output", "output_ids [n, 1] int64 (None in a process without group rank 0); "
                                    "logits [n, vocab] float32 when return_logits (rank 0 only); with "
                                    "return_logprobs = k >= 0: logprobs [n] float32, top_logprobs [n, k] float32, "
                                    "top_token_ids [n, k] int64 (raw logits' log_softmax). device_ids [n] int64 "
                                    "on the engine's device, for Input(prev_output=...). After a non_blocking "
                                    "step the host fields block until ready() (wait() blocks explicitly).");
#define WAITING_FIELD(name)                                    \
  o.def_property_readonly(#name, [](const Output& x) {         \
    {                                                          \
      py::gil_scoped_release nogil;                            \
      x.wait();                                                \
    }                                                          \
    return x.name;                                             \
  })
  WAITING_FIELD(output_ids); WAITING_FIELD(logits); WAITING_FIELD(logprobs); WAITING_FIELD(top_logprobs);
  WAITING_FIELD(top_token_ids);
#undef WAITING_FIELD
  o.def(py::init<>(), "An empty Output (no ids; ready).")
      .def_readonly("device_ids", &Output::device_ids)
      .def("ready", &Output::ready, "Whether the host fields hold this step's results (never blocks).")
      .def("wait", &Output::wait, py::call_guard<py::gil_scoped_release>(),
           "Blocks until the host fields hold this step's results (returns at once for a synchronous step).");

  // The raw constructor: the defaults and process groups that need Python (the adapter's current device,
  // Gloo/NCCL backends built by torch.distributed) are resolved by infinilm_torch/lib/_engine.py, which wraps this
  // as InferEngine(config, distributed_config, device_type, cache_config, process_group, comm_timeout).
  e.def(py::init([](const LlamaConfig& config, py::object distributed_config, py::object device_type,
                    py::object cache_config, py::object comm_backends, bool comm_owned, double comm_timeout) {
          DistConfig dist = distributed_config.is_none() ? DistConfig() : distributed_config.cast<DistConfig>();
          const c10::DeviceType dt = parse_device_type(device_type);
          auto cc = as_cache_config(cache_config);
          auto comms = as_communicators(comm_backends, comm_timeout, comm_owned);
          py::gil_scoped_release nogil;
          return std::make_shared<InferEngine>(config, dist, dt, std::move(cc), std::move(comms));
        }),
        py::arg("config"), py::arg("distributed_config") = py::none(), py::arg("device_type") = py::none(),
        py::arg("cache_config") = py::none(), py::arg("comm_backends") = py::none(), py::arg("comm_owned") = true,
        py::arg("comm_timeout") = 300.0);
  e.def_static("_check_args", [](const LlamaConfig& config, const DistConfig& dist, py::object device_type,
                                 int64_t world_size) {
        InferEngine::check_args(config, dist, parse_device_type(device_type), world_size);
      }, py::arg("config"), py::arg("distributed_config"), py::arg("device_type"), py::arg("world_size"),
      "The checks that need no communicator, so that callers raise before building process groups.");
  m.def("_device_type_name", [](py::object device_type) {
        return std::string(parse_device_type(device_type) == c10::DeviceType::CUDA ? "cuda" : "cpu");
      }, py::arg("device_type"), "'cpu' or 'cuda' for any device_type InferEngine accepts (ValueError otherwise).");
  e.def("load_param", [](InferEngine& self, const std::string& name, py::object param) {
         auto t = as_tensor(param, "param");
         if (!t) throw py::type_error("load_param: 'param' for '" + name + "' is None");
         py::gil_scoped_release nogil;
         self.load_param(name, *t);
       }, py::arg("name"), py::arg("param"),
       "Full (unsharded) HF-named tensor; converted to the model dtype and device.");
  e.def("state_dict", [](const InferEngine& self) {
         std::vector<InferEngine::StateDict> sds;
         {
           py::gil_scoped_release nogil;  // waits for a forward in another thread, whose hooks need the GIL
           sds = self.state_dict();
         }
         py::list ranks;
         for (const auto& sd : sds) {
           py::dict d;
           for (const auto& [name, t] : sd) d[py::str(name)] = t;
           ranks.append(d);
         }
         return ranks;
       }, "One dict per tensor-parallel rank: HF name -> this rank's tensor (a view of the live weights).");
  e.def("forward", &InferEngine::forward, py::arg("input"), py::call_guard<py::gil_scoped_release>());
  e.def("reset_cache", [](InferEngine& self, py::object cache_config) {
         auto cc = as_cache_config(cache_config);
         py::gil_scoped_release nogil;
         self.reset_cache(std::move(cc));
       }, py::arg("cache_config") = py::none(),
       "None clears the cache (same configuration); a config reallocates it.");
  e.def("set_hook_registry", &InferEngine::set_hook_registry, py::arg("registry"),
        py::call_guard<py::gil_scoped_release>(),
        "Attach a HookRegistry (None detaches); rank 0 calls its hooks during forward.");
  e.def("enable_cuda_graphs", &InferEngine::enable_cuda_graphs, py::arg("enable") = true,
        py::call_guard<py::gil_scoped_release>(),
        "CUDA-graph replay of decode steps (CUDA, tp_size 1, no hooks, no penalties; prefill and mixed steps of "
        "at most 512 tokens too, unless INFINILM_CUDA_GRAPHS_MIXED=0): on by default on CUDA unless "
        "INFINILM_CUDA_GRAPHS=0; False runs every step eagerly and frees the graphs. A no-op on CPU.");
  e.def_property_readonly("cuda_graphs", &InferEngine::cuda_graphs_enabled, "Whether decode steps may replay graphs.");
  e.def_property_readonly("_num_cuda_graphs", &InferEngine::num_cuda_graphs, "Graphs captured (rank 0).");
  e.def_property_readonly("_cuda_graph_replays", &InferEngine::cuda_graph_replays,
                          "Steps served by a graph so far (rank 0).");
  e.def_property_readonly("_eager_static_steps", &InferEngine::eager_static_steps,
                          "Steps run eagerly on a graph's padded inputs (INFINILM_EAGER_STATIC_STEPS=1).");
  e.def_property_readonly("config", &InferEngine::config);
  e.def_property_readonly("tp_size", &InferEngine::tp_size);
  e.def_property_readonly("local_ranks", &InferEngine::local_ranks, "Group ranks this process runs.");
  e.def("_comm_seconds", &InferEngine::comm_seconds, "Host seconds local rank 0 spent in all-reduces.");
  e.def("_inject_rank_failure", &InferEngine::inject_rank_failure, py::arg("rank"),
        "Test hook: the next forward raises on group rank `rank` before its model runs.");
  e.def_property_readonly("device", [](const InferEngine& self) { return self.device().str(); });
  e.def_property_readonly("is_paged", [](const InferEngine& self) { return self.kv_cache().paged(); });
  e.def_property_readonly("num_blocks", [](const InferEngine& self) { return self.kv_cache().num_blocks(); });
  e.def_property_readonly("block_size", [](const InferEngine& self) { return self.kv_cache().block_size(); });
  e.def_property_readonly("max_batch_size", [](const InferEngine& self) { return self.kv_cache().max_batch_size(); });
  e.def_property_readonly("max_cache_len", [](const InferEngine& self) { return self.kv_cache().max_cache_len(); });
}

}  // namespace infinilm::pybind
