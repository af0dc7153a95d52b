// InferEngine: construction of the ranks, parameter loading, forward (validate, run, sample) and cache reset.
#include "csrc/engine/infer_engine.h"

#include <ATen/Parallel.h>
#include <c10/core/impl/DeviceGuardImplInterface.h>
#include <c10/util/Exception.h>

#include <exception>
#include <future>

#include "csrc/engine/batch.h"
#include "csrc/ops/ops.h"

namespace infinilm::engine {

InferEngine::InferEngine(const models::llama::LlamaConfig& config, const distributed::DistConfig& distributed_config,
                         c10::DeviceType device_type, std::shared_ptr<const cache::CacheConfig> cache_config,
                         std::vector<std::shared_ptr<Communicator>> communicators)
    : config_(config), dist_(distributed_config), cache_config_(std::move(cache_config)) {
  config_.validate();
  dist_.validate();
  const int64_t tp = dist_.tp_size();
  TORCH_CHECK_VALUE(device_type == c10::DeviceType::CPU || device_type == c10::DeviceType::CUDA,
                    "InferEngine: 'device_type' must be CPU or CUDA, got ", device_type);
  if (device_type == c10::DeviceType::CUDA) {
    TORCH_CHECK_VALUE(at::hasCUDA(), "InferEngine: device_type CUDA requested but this torch has no usable CUDA");
    const int64_t count = c10::impl::getDeviceGuardImpl(c10::DeviceType::CUDA)->deviceCount();
    for (int64_t id : dist_.tp_device_ids) {
      TORCH_CHECK_VALUE(id < count, "DistConfig: device id ", id, " in 'tp_device_ids' but only ", count,
                        " CUDA devices are visible");
    }
  }
  TORCH_CHECK_VALUE(config_.num_key_value_heads % tp == 0, "InferEngine: 'num_key_value_heads' (",
                    config_.num_key_value_heads, ") must be divisible by tp_size (", tp, ")");
  TORCH_CHECK_VALUE(tp == 1 || static_cast<int64_t>(communicators.size()) == tp, "InferEngine: tp_size ", tp,
                    " needs one communicator per rank (tensor parallelism over torch.distributed), got ",
                    communicators.size());
  if (!cache_config_) {
    cache_config_ = std::make_shared<cache::StaticKVCacheConfig>(1, config_.max_position_embeddings);
  }
  const int threads = at::get_num_threads();
  ranks_.resize(tp);
  for (int64_t r = 0; r < tp; ++r) {
    const at::Device dev = device_type == c10::DeviceType::CPU
                               ? at::Device(c10::DeviceType::CPU)
                               : at::Device(device_type, static_cast<c10::DeviceIndex>(dist_.tp_device_ids[r]));
    // CPU ranks share the cores between them.
    const int rank_threads = device_type == c10::DeviceType::CPU ? std::max<int>(1, threads / tp) : 1;
    ranks_[r].worker = std::make_unique<RankWorker>(r, dev, rank_threads);
  }
  auto comms = std::move(communicators);
  run_on_all([&](Rank& rank) {
    const int64_t r = rank.worker->rank();
    auto comm = tp > 1 ? comms[r] : nullptr;
    rank.model = std::make_unique<models::llama::LlamaForCausalLM>(config_, r, tp, rank.worker->device(), comm);
    rank.cache = std::make_unique<cache::KVCache>(config_, rank.model->local_kv_heads(), *cache_config_,
                                                  rank.worker->device());
  });
}

InferEngine::~InferEngine() {
  for (auto& r : ranks_) r.worker.reset();  // join every thread before the models go
}

void InferEngine::run_on_all(const std::function<void(Rank&)>& command) {
  std::vector<std::future<void>> done;
  for (auto& rank : ranks_) {
    Rank* p = &rank;
    done.push_back(rank.worker->submit([p, &command] { command(*p); }));
  }
  std::exception_ptr first;
  for (auto& f : done) {
    try {
      f.get();
    } catch (...) {
      if (!first) first = std::current_exception();
    }
  }
  if (first) std::rethrow_exception(first);
}

void InferEngine::load_param(const std::string& name, const at::Tensor& param) {
  std::lock_guard<std::mutex> lock(call_mu_);
  run_on_all([&](Rank& rank) { rank.model->load_param(name, param); });
}

std::vector<InferEngine::StateDict> InferEngine::state_dict() const {
  std::lock_guard<std::mutex> lock(call_mu_);
  std::vector<StateDict> out;
  for (const auto& rank : ranks_) out.push_back(rank.model->state_dict());
  return out;
}

InferEngine::Output InferEngine::forward(const Input& input) {
  std::lock_guard<std::mutex> lock(call_mu_);
  // Every check happens here, on the host, before any rank writes its cache.
  const models::llama::ForwardBatch host = build_batch(input, config_, *ranks_[0].cache);
  const int64_t n = host.seq_lens.size(0);
  const SamplingParams sp = build_sampling(input, n, config_.vocab_size);
  Output out;
  run_on_all([&](Rank& rank) {
    const at::Device dev = rank.worker->device();
    const models::llama::ForwardBatch batch = to_device(host, dev);
    const bool first = rank.worker->rank() == 0;
    at::Tensor logits = rank.model->forward(batch, *rank.cache, first ? hooks_.get() : nullptr);
    if (!first) return;  // only rank 0 samples
    at::Tensor ids = infinilm::sample(logits, sp.temperature.to(dev), sp.top_k.to(dev), sp.top_p.to(dev),
                                      sp.seeds.to(dev));
    out.output_ids = ids.to(at::kCPU, at::kLong).view({n, 1});
    if (input.return_logits) out.logits = logits.to(at::kCPU);
  });
  return out;
}

void InferEngine::reset_cache(std::shared_ptr<const cache::CacheConfig> cache_config) {
  std::lock_guard<std::mutex> lock(call_mu_);
  if (!cache_config) {
    run_on_all([](Rank& rank) { rank.cache->clear(); });
    return;
  }
  // Check the new configuration before dropping the old cache, so a bad one leaves the engine usable.
  if (auto* paged = dynamic_cast<const cache::PagedKVCacheConfig*>(cache_config.get())) {
    cache::paged_num_blocks(config_, config_.num_key_value_heads / tp_size(), *paged);
  } else {
    TORCH_CHECK_TYPE(dynamic_cast<const cache::StaticKVCacheConfig*>(cache_config.get()) != nullptr,
                     "reset_cache: 'cache_config' must be a StaticKVCacheConfig or a PagedKVCacheConfig");
  }
  run_on_all([&](Rank& rank) {
    rank.cache.reset();  // free the old pool before allocating the new one
    rank.cache = std::make_unique<cache::KVCache>(config_, rank.model->local_kv_heads(), *cache_config,
                                                  rank.worker->device());
  });
  cache_config_ = std::move(cache_config);
}

void InferEngine::set_hook_registry(std::shared_ptr<models::debug_utils::HookRegistry> registry) {
  std::lock_guard<std::mutex> lock(call_mu_);
  hooks_.swap(registry);
}

}  // namespace infinilm::engine
