// DecodeGraphs: capture of engine steps (forward + sample on a StaticStep) into at::cuda::CUDAGraph and their replay.
#include "csrc/engine/cuda_graphs.h"

#ifdef INFINILM_WITH_CUDA

#include <ATen/cuda/CUDAGraph.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <c10/util/Exception.h>

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <exception>
#include <optional>
#include <tuple>
#include <type_traits>

#include "csrc/ops/ops.h"

namespace infinilm::engine {

using models::ForwardBatch;

namespace {

// Makes `waiter` wait for the work queued on `from` so far.
void wait_for(const c10::cuda::CUDAStream& waiter, const c10::cuda::CUDAStream& from) {
  cudaEvent_t e;
  C10_CUDA_CHECK(cudaEventCreateWithFlags(&e, cudaEventDisableTiming));
  C10_CUDA_CHECK(cudaEventRecord(e, from.stream()));
  C10_CUDA_CHECK(cudaStreamWaitEvent(waiter.stream(), e, 0));
  C10_CUDA_CHECK(cudaEventDestroy(e));  // released once it completes; the queued wait stays
}

}  // namespace

struct DecodeGraphs::Graph {
  at::cuda::CUDAGraph graph;
  StaticStep step;
  at::Tensor ids, logits;  // outputs, owned by the graph's pool
  Graph(const StepShape& shape, int64_t block_size, at::Device device) : step(shape, block_size, device) {}
};

DecodeGraphs::DecodeGraphs() = default;
DecodeGraphs::~DecodeGraphs() = default;

int64_t DecodeGraphs::num_graphs() const { return static_cast<int64_t>(graphs_.size()); }

static_assert(std::is_same_v<at::cuda::MempoolId_t, std::pair<unsigned long long, unsigned long long>>,
              "DecodeGraphs::pool_ mirrors MempoolId_t");

void DecodeGraphs::clear() {
  graphs_.clear();
  // Destroying a pool's last graph releases the pool: the next capture must ask for a fresh one.
  pool_ = {0, 0};
}

std::unique_ptr<DecodeGraphs::Graph> DecodeGraphs::capture(const models::CausalLM& model,
                                                           cache::KVCache& cache, const ForwardBatch& host,
                                                           const SamplingParams& sp, const at::Tensor& source,
                                                           const at::Tensor& prev, const StepShape& shape,
                                                           at::Device device) {
  auto g = std::make_unique<Graph>(shape, cache.block_size(), device);
  g->step.upload(host, sp, source, prev);
  // Capture on a side stream (capture needs a non-default stream) after one eager warm-up there (cuBLAS
  // handle and workspace, lazy kernel loading). The warm-up runs this very step, so the K/V it writes are
  // the values the replay writes again.
  const c10::cuda::CUDAStream main = c10::cuda::getCurrentCUDAStream(device.index());
  const c10::cuda::CUDAStream side = c10::cuda::getStreamFromPool(false, device.index());
  wait_for(side, main);
  {
    const c10::cuda::CUDAStreamGuard on_side(side);
    g->step.run(model, cache);  // the warm-up's outputs go before capture, which allocates from the graphs' pool
    // One pool for all of this rank's graphs: they never replay concurrently, and each keeps its outputs.
    if (pool_.first == 0 && pool_.second == 0) pool_ = at::cuda::graph_pool_handle();
    // Thread-local mode: other threads of the process may use CUDA while this one captures.
    g->graph.capture_begin(pool_, cudaStreamCaptureModeThreadLocal);
    try {
      std::tie(g->logits, g->ids) = g->step.run(model, cache);
      // Test hook: a capture that fails midway, the only way to reach the eager fallback on a healthy GPU.
      const char* fail = std::getenv("INFINILM_TEST_FAIL_GRAPH_CAPTURE");
      TORCH_CHECK(fail == nullptr || std::strcmp(fail, "1") != 0,
                  "CUDA-graph capture failed on purpose (INFINILM_TEST_FAIL_GRAPH_CAPTURE=1)");
    } catch (...) {
      try {
        g->graph.capture_end();  // leaves capture mode on the side stream
      } catch (...) {
      }
      throw;
    }
    g->graph.capture_end();
  }
  wait_for(main, side);
  return g;
}

bool DecodeGraphs::run(const models::CausalLM& model, cache::KVCache& cache, const ForwardBatch& host,
                       const SamplingParams& sp, const at::Tensor& source, const at::Tensor& prev, bool mixed,
                       at::Tensor* ids, at::Tensor* logits) {
  const std::optional<StepShape> shape = step_shape(host, cache, mixed);
  if (!shape) return false;
  bool& failed = shape->decode ? failed_decode_ : failed_mixed_;
  if (failed) return false;
  auto it = graphs_.find(*shape);
  if (it == graphs_.end()) {
    const int64_t of_kind = std::count_if(graphs_.begin(), graphs_.end(),
                                          [&](const auto& kv) { return kv.first.decode == shape->decode; });
    if (of_kind >= (shape->decode ? kMaxGraphs : kMaxMixedGraphs)) return false;
    const at::Device device = cache.key(0).device();
    std::unique_ptr<Graph> g;
    try {
      g = capture(model, cache, host, sp, source, prev, *shape, device);
    } catch (const std::exception& e) {
      // The warm-up wrote only this step's own K/V, so the eager rerun is exact; later steps of this kind
      // (decode, or prefill / mixed) stay eager.
      failed = true;
      TORCH_WARN("InferEngine: CUDA-graph capture of a ", shape->decode ? "decode" : "prefill / mixed",
                 " step failed, such steps run eagerly from now on: ", e.what());
      return false;
    }
    it = graphs_.emplace(*shape, std::move(g)).first;
  } else {
    it->second->step.upload(host, sp, source, prev);
  }
  it->second->graph.replay();
  ++replays_;
  // Padded rows (mixed steps) are dropped: views of the graph's outputs.
  const int64_t n = host.seq_lens.size(0);
  *ids = it->second->ids.narrow(0, 0, n);
  *logits = it->second->logits.narrow(0, 0, n);
  return true;
}

}  // namespace infinilm::engine

#else  // CPU-only build: never captures, so the engine always runs eagerly.

namespace infinilm::engine {

struct DecodeGraphs::Graph {};
DecodeGraphs::DecodeGraphs() = default;
DecodeGraphs::~DecodeGraphs() = default;
int64_t DecodeGraphs::num_graphs() const { return 0; }
void DecodeGraphs::clear() {}
bool DecodeGraphs::run(const models::CausalLM&, cache::KVCache&, const models::ForwardBatch&,
                       const SamplingParams&, const at::Tensor&, const at::Tensor&, bool, at::Tensor*, at::Tensor*) {
  return false;
}

}  // namespace infinilm::engine

#endif
