// InferEngine: construction of the ranks, parameter loading, forward (validate, run, sample) and cache reset.
#include "csrc/engine/infer_engine.h"

#include <ATen/Parallel.h>
#include <c10/core/impl/DeviceGuardImplInterface.h>
#include <c10/util/Exception.h>

#include <cstdlib>
#include <cstring>
#include <exception>
#include <future>
#include <optional>
#include <thread>
#include <tuple>

#include "csrc/engine/batch.h"
#include "csrc/engine/static_step.h"
#include "csrc/models/registry.h"
#include "csrc/ops/ops.h"

namespace infinilm::engine {

namespace {
std::atomic<uint64_t> g_next_engine_id{1};  // Output.engine_id: which engine's sampled ids an Output holds

bool env_is(const char* name, const char* value) {
  const char* v = std::getenv(name);
  return v != nullptr && std::strcmp(v, value) == 0;
}
}  // namespace

void InferEngine::check_args(const models::llama::LlamaConfig& config, const distributed::DistConfig& dist,
                             c10::DeviceType device_type, int64_t world_size) {
  config.validate();
  dist.validate();
  TORCH_CHECK_VALUE(device_type == c10::DeviceType::CPU || device_type == c10::DeviceType::CUDA,
                    "InferEngine: 'device_type' must be CPU or CUDA, got ", device_type);
  if (device_type == c10::DeviceType::CUDA) {
    TORCH_CHECK_VALUE(at::hasCUDA(), "InferEngine: device_type CUDA requested but this torch has no usable CUDA");
    const int64_t count = c10::impl::getDeviceGuardImpl(c10::DeviceType::CUDA)->deviceCount();
    for (int64_t id : dist.tp_device_ids) {
      TORCH_CHECK_VALUE(id < count, "DistConfig: device id ", id, " in 'tp_device_ids' but only ", count,
                        " CUDA devices are visible");
    }
  }
  TORCH_CHECK_VALUE(config.num_attention_heads % world_size == 0, "InferEngine: 'num_attention_heads' (",
                    config.num_attention_heads, ") must be divisible by tp_size (", world_size, ")");
  TORCH_CHECK_VALUE(config.num_key_value_heads % world_size == 0, "InferEngine: 'num_key_value_heads' (",
                    config.num_key_value_heads, ") must be divisible by tp_size (", world_size, ")");
  TORCH_CHECK_VALUE(config.intermediate_size % world_size == 0, "InferEngine: 'intermediate_size' (",
                    config.intermediate_size, ") must be divisible by tp_size (", world_size, ")");
}

InferEngine::InferEngine(const models::llama::LlamaConfig& config, const distributed::DistConfig& distributed_config,
                         c10::DeviceType device_type, std::shared_ptr<const cache::CacheConfig> cache_config,
                         std::vector<std::shared_ptr<Communicator>> communicators)
    : id_(g_next_engine_id++), config_(config), dist_(distributed_config), cache_config_(std::move(cache_config)) {
  const int64_t local = dist_.tp_size();
  world_ = communicators.empty() ? local : communicators[0]->size();
  check_args(config_, dist_, device_type, world_);
  TORCH_CHECK_VALUE(world_ == 1 || static_cast<int64_t>(communicators.size()) == local, "InferEngine: tp_size ",
                    world_, " needs one communicator per rank (tensor parallelism over torch.distributed), got ",
                    communicators.size());
  for (size_t i = 0; i < communicators.size(); ++i) {
    const auto& c = communicators[i];
    TORCH_CHECK_VALUE(c && c->size() == world_, "InferEngine: communicator ", i, " has group size ",
                      c ? c->size() : -1, " but communicator 0 has ", world_);
    TORCH_CHECK_VALUE(local == 1 || c->rank() == static_cast<int64_t>(i), "InferEngine: in-process rank ", i,
                      " got a communicator of rank ", c->rank());
  }
  if (!cache_config_) {
    cache_config_ = std::make_shared<cache::StaticKVCacheConfig>(1, config_.max_position_embeddings);
  }
  const int threads = at::get_num_threads();
  ranks_.resize(local);
  for (int64_t i = 0; i < local; ++i) {
    const at::Device dev = device_type == c10::DeviceType::CPU
                               ? at::Device(c10::DeviceType::CPU)
                               : at::Device(device_type, static_cast<c10::DeviceIndex>(dist_.tp_device_ids[i]));
    // CPU ranks in one process share the cores between them.
    const int rank_threads = device_type == c10::DeviceType::CPU ? std::max<int>(1, threads / local) : 1;
    const int64_t rank = communicators.empty() ? i : communicators[i]->rank();
    if (world_ > 1) ranks_[i].comm = communicators[i];
    ranks_[i].worker = std::make_unique<RankWorker>(rank, dev, rank_threads);
    if (!dev.is_cpu()) ranks_[i].graphs = std::make_unique<DecodeGraphs>();
  }
  const char* env = std::getenv("INFINILM_CUDA_GRAPHS");
  graphs_enabled_ = device_type == c10::DeviceType::CUDA && !(env && std::strcmp(env, "0") == 0);
  run_on_all([&](Rank& rank) {
    rank.model = models::create_model(config_, rank.worker->rank(), world_, rank.worker->device(), rank.comm);
    rank.cache = std::make_unique<cache::KVCache>(rank.model->cache_shape(), *cache_config_, rank.worker->device());
  });
}

InferEngine::~InferEngine() {
  try {
    clear_graphs();
  } catch (...) {  // a destructor must not throw; the graphs then go with the ranks below
  }
  for (auto& r : ranks_) r.worker.reset();  // join every thread before the models go
  // Models and caches go on this thread: their tensors may have Python owners (state_dict views), whose
  // release needs the GIL this thread may hold.
  for (auto& r : ranks_) {
    r.graphs.reset();
    r.model.reset();
    r.cache.reset();
  }
  if (ranks_.size() < 2) return;
  // The communicators go together: after a failed step a rank's Gloo backend may still wait on a peer, and
  // only that peer's teardown (closing its connections) ends the wait, so releasing them in turn can block.
  std::vector<std::thread> release;
  for (auto& r : ranks_) {
    Rank* p = &r;
    release.emplace_back([p] { p->comm.reset(); });
  }
  for (auto& t : release) t.join();
}

void InferEngine::run_on_all(const std::function<void(Rank&)>& command, bool collective) {
  const bool abort_on_failure = collective && world_ > 1;
  // The first rank to fail holds the cause; ranks it aborted fail later with "aborted" and are not reported.
  std::mutex root_mu;
  std::exception_ptr root;
  std::vector<std::future<void>> done;
  for (auto& rank : ranks_) {
    Rank* p = &rank;
    done.push_back(rank.worker->submit([this, p, &command, abort_on_failure, &root_mu, &root] {
      try {
        command(*p);
      } catch (...) {
        {
          std::lock_guard<std::mutex> lock(root_mu);
          if (!root) root = std::current_exception();
        }
        if (abort_on_failure) {  // from this thread, at once: the other ranks may be waiting for this one
          broken_ = true;
          for (auto& r : ranks_) r.comm->abort();
        }
        throw;
      }
    }));
  }
  for (auto& f : done) {
    try {
      f.get();
    } catch (...) {
    }
  }
  if (root) std::rethrow_exception(root);
}

void InferEngine::check_usable() const {
  TORCH_CHECK(!broken_.load(), "InferEngine: a tensor-parallel rank failed during an earlier forward and the "
              "ranks' collectives no longer pair up; create a new engine");
}

void InferEngine::check_loaded() const {
  for (const auto& r : ranks_) {  // every local rank loads its own shard
    if (r.model->all_loaded()) continue;
    const std::vector<std::string> missing = r.model->missing_params();
    const size_t total = r.model->state_dict().size();
    std::string names;
    for (size_t i = 0; i < missing.size() && i < 8; ++i) names += (i ? ", " : "") + missing[i];
    if (missing.size() > 8) names += ", ...";
    TORCH_CHECK(false, "InferEngine.forward: ", missing.size(), " of ", total, " parameters were never loaded ",
                "(rank ", r.worker->rank(), "): ", names, "; give every checkpoint tensor to load_param first");
  }
}

std::vector<int64_t> InferEngine::local_ranks() const {
  std::vector<int64_t> out;
  for (const auto& r : ranks_) out.push_back(r.worker->rank());
  return out;
}

double InferEngine::comm_seconds() const {
  return ranks_.at(0).comm ? ranks_.at(0).comm->busy_seconds() : 0.0;
}

void InferEngine::load_param(const std::string& name, const at::Tensor& param) {
  std::lock_guard<std::mutex> lock(call_mu_);
  check_usable();
  run_on_all([&](Rank& rank) {
    // Weights are copied in place, so graphs would stay valid; they go anyway so no replay can ever see a
    // half-loaded model.
    if (rank.graphs) rank.graphs->clear();
    rank.model->load_param(name, param);
  });
}

std::vector<InferEngine::StateDict> InferEngine::state_dict() const {
  std::lock_guard<std::mutex> lock(call_mu_);
  std::vector<StateDict> out;
  for (const auto& rank : ranks_) out.push_back(rank.model->state_dict());
  return out;
}

namespace {

// A pinned host copy of t, queued on the current stream (read it after the step's event).
at::Tensor to_pinned(const at::Tensor& t) {
  at::Tensor h = at::empty(t.sizes(), t.options().device(at::kCPU).pinned_memory(true));
  h.copy_(t, /*non_blocking=*/true);
  return h;
}

}  // namespace

int64_t InferEngine::prev_rows(const Input& input) const {
  if (!input.prev_output) return -1;
  const Output& p = *input.prev_output;
  TORCH_CHECK_VALUE(p.engine_id == id_, "InferEngine.forward: 'prev_output' is an Output of ",
                    p.engine_id ? "another engine" : "no engine", "; only this engine's sampled ids can feed it");
  TORCH_CHECK_VALUE(p.device_ids.defined() && p.output_ids.defined(), "InferEngine.forward: 'prev_output' holds no ",
                    "sampled ids (a process without group rank 0 gets none); give 'input_ids' instead");
  return p.device_ids.size(0);
}

InferEngine::Output InferEngine::forward(const Input& input) {
  std::lock_guard<std::mutex> lock(call_mu_);
  check_usable();
  check_loaded();
  // Every check happens here, on the host, before any rank writes its cache; none reads device memory.
  CacheWrites writes;
  at::Tensor source;  // per token: the prev_output row its id comes from
  models::ForwardBatch host = build_batch(input, ranks_[0].model->batch_limits(), *ranks_[0].cache, &writes,
                                          prev_rows(input), &source);
  const int64_t n = host.seq_lens.size(0);
  const SamplingParams sp = build_sampling(input, n, config_.vocab_size);
  at::Tensor prev;  // prev_output's sampled ids on rank 0's device
  if (source.defined() && world_ > 1) {
    // Every rank embeds the ids but only rank 0 holds the sampled ones: they come through the host.
    input.prev_output->wait();
    host.input_ids = take_tokens(host.input_ids, source, source, input.prev_output->output_ids.view({-1}));
    source = at::Tensor();
  } else if (source.defined()) {
    prev = input.prev_output->device_ids;
  }
  // A step returns before its work has run only on a single CUDA rank; elsewhere it is synchronous anyway.
  const bool async = input.non_blocking && world_ == 1 && !ranks_[0].worker->device().is_cpu();
  Output out;  // output_ids stays undefined (None) in a process without group rank 0
  out.engine_id = id_;
  const int64_t failing = inject_failure_rank_.exchange(-1);
  // Graphs replay pure-decode steps of a single rank with no hooks to call; all else runs eagerly. Steps
  // with penalties run eagerly too: their token lists change width every step (a graph per width would
  // multiply the captures) and the op is cheap next to the forward. Logprobs run after the replay.
  // Prefill and mixed steps of at most kMaxMixedTokens tokens replay (padded) graphs too, unless
  // INFINILM_CUDA_GRAPHS_MIXED=0 (read per step) keeps them eager.
  const bool graphed = graphs_enabled_ && world_ == 1 && !(hooks_ && hooks_->has_hooks()) && !sp.penalties;
  const bool mixed = !env_is("INFINILM_CUDA_GRAPHS_MIXED", "0");
  // Test hook: steps a graph could serve run eagerly on the padded static inputs a graph would record (any
  // device), so the padding is checked where no graph runs.
  const bool static_eager = env_is("INFINILM_EAGER_STATIC_STEPS", "1") && world_ == 1 && !sp.penalties &&
                            !(hooks_ && hooks_->has_hooks());
  for (auto& r : ranks_) begin_writes(writes, *r.cache);
  run_on_all([&](Rank& rank) {
    TORCH_CHECK(rank.worker->rank() != failing, "InferEngine: injected failure on rank ", failing);
    const at::Device dev = rank.worker->device();
    const bool first = rank.worker->rank() == 0;
    at::Tensor logits, ids;
    const bool replayed = graphed && rank.graphs &&
                          rank.graphs->run(*rank.model, *rank.cache, host, sp, source, prev, mixed, &ids, &logits);
    std::optional<StepShape> shape;
    if (!replayed && static_eager) shape = step_shape(host, *rank.cache, /*mixed=*/true);
    if (shape) {
      StaticStep step(*shape, rank.cache->block_size(), dev);
      step.upload(host, sp, source, prev);
      std::tie(logits, ids) = step.run(*rank.model, *rank.cache);
      logits = logits.narrow(0, 0, n);
      ids = ids.narrow(0, 0, n);
      ++eager_static_steps_;
    } else if (!replayed) {
      models::ForwardBatch batch = to_device(host, dev);
      if (source.defined()) batch.input_ids = take_tokens(batch.input_ids, source, upload(source, dev), prev);
      logits = rank.model->forward(batch, *rank.cache, first ? hooks_.get() : nullptr);
      if (!first) return;  // only rank 0 samples
      // Penalties work in place: on a copy when the raw logits are still needed (returned, or logprobs).
      at::Tensor work = sp.penalties && (input.return_logits || sp.logprobs_k >= 0) ? logits.clone() : logits;
      ids = run_sampler(work, sp);
    }
    // A replay's outputs live in the graph and the next replay overwrites them.
    out.device_ids = replayed ? ids.clone() : ids;
    std::optional<std::tuple<at::Tensor, at::Tensor, at::Tensor>> lp;
    if (sp.logprobs_k >= 0) lp = infinilm::logprobs(logits, ids, sp.logprobs_k);
    if (async) {  // copies into pinned memory, an event after them; nothing here waits for the device
      out.output_ids = to_pinned(ids).view({n, 1});
      if (input.return_logits) out.logits = to_pinned(logits);
      if (lp) {
        out.logprobs = to_pinned(std::get<0>(*lp));
        out.top_logprobs = to_pinned(std::get<1>(*lp));
        out.top_token_ids = to_pinned(std::get<2>(*lp));
      }
      out.copied = std::make_shared<c10::Event>(dev.type());
      out.copied->record(c10::impl::getDeviceGuardImpl(dev.type())->getStream(dev));
      return;
    }
    out.output_ids = ids.to(at::kCPU, at::kLong).view({n, 1});
    if (input.return_logits) out.logits = logits.to(at::kCPU);
    if (lp) {
      out.logprobs = std::get<0>(*lp).to(at::kCPU);
      out.top_logprobs = std::get<1>(*lp).to(at::kCPU);
      out.top_token_ids = std::get<2>(*lp).to(at::kCPU);
    }
  }, /*collective=*/true);
  for (auto& r : ranks_) commit_writes(writes, *r.cache);
  return out;
}

void InferEngine::reset_cache(std::shared_ptr<const cache::CacheConfig> cache_config) {
  std::lock_guard<std::mutex> lock(call_mu_);
  check_usable();
  if (!cache_config) {  // zeroed in place: the graphs' addresses stay valid
    run_on_all([](Rank& rank) { rank.cache->clear(); });
    return;
  }
  // Check the new configuration before dropping the old cache, so a bad one leaves the engine usable.
  if (auto* paged = dynamic_cast<const cache::PagedKVCacheConfig*>(cache_config.get())) {
    cache::paged_num_blocks(ranks_.at(0).model->cache_shape(), *paged);
  } else {
    TORCH_CHECK_TYPE(dynamic_cast<const cache::StaticKVCacheConfig*>(cache_config.get()) != nullptr,
                     "reset_cache: 'cache_config' must be a StaticKVCacheConfig or a PagedKVCacheConfig");
  }
  run_on_all([&](Rank& rank) {
    if (rank.graphs) rank.graphs->clear();  // they hold the old pool's addresses
    rank.cache.reset();  // free the old pool before allocating the new one
    rank.cache = std::make_unique<cache::KVCache>(rank.model->cache_shape(), *cache_config, rank.worker->device());
  });
  cache_config_ = std::move(cache_config);
}

void InferEngine::set_hook_registry(std::shared_ptr<models::debug_utils::HookRegistry> registry) {
  std::lock_guard<std::mutex> lock(call_mu_);
  hooks_.swap(registry);
}

void InferEngine::clear_graphs() {
  run_on_all([](Rank& rank) {
    if (rank.graphs) rank.graphs->clear();
  });
}

void InferEngine::enable_cuda_graphs(bool enable) {
  std::lock_guard<std::mutex> lock(call_mu_);
  if (!enable) clear_graphs();  // frees their memory
  graphs_enabled_ = enable && ranks_.at(0).graphs != nullptr;
}

int64_t InferEngine::num_cuda_graphs() const {
  std::lock_guard<std::mutex> lock(call_mu_);
  return ranks_.at(0).graphs ? ranks_.at(0).graphs->num_graphs() : 0;
}

int64_t InferEngine::cuda_graph_replays() const {
  std::lock_guard<std::mutex> lock(call_mu_);
  return ranks_.at(0).graphs ? ranks_.at(0).graphs->replays() : 0;
}

}  // namespace infinilm::engine
