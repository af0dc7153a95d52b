// DecodeGraphs: capture of decode steps (forward + sample) into at::cuda::CUDAGraph and their replay.
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
#include <type_traits>

#include "csrc/ops/ops.h"

namespace infinilm::engine {

using models::ForwardBatch;

namespace {

// Offsets (in int64 words) of the static inputs in the packed buffer of a graph for n requests and
// block-table width w. The three float32 vectors (temperature, top_p, min_p) take ceil(n / 2) words each:
// every per-row sampling parameter is part of the one static input, so requests of one graph may differ.
// src: the prev_output row each token's id comes from (-1: ids holds it), read outside the graph.
struct Layout {
  int64_t ids, pos, slots, seq, last, qsl, top_k, seeds, src, tables, temp, top_p, min_p, size, half;
  Layout(int64_t n, int64_t w) {
    half = (n + 1) / 2;
    ids = 0, pos = n, slots = 2 * n, seq = 3 * n, last = 4 * n, qsl = 5 * n;  // qsl holds n + 1
    top_k = 6 * n + 1, seeds = 7 * n + 1, src = 8 * n + 1, tables = 9 * n + 1;
    temp = tables + n * w, top_p = temp + half, min_p = top_p + half, size = min_p + half;
  }
};

// Smallest power of two >= max(max_seq_len, 512), capped at what the cache lets one sequence hold.
int64_t length_bucket(int64_t max_seq_len, int64_t capacity) {
  int64_t len = 512;
  while (len < max_seq_len) len *= 2;
  return std::min(len, capacity);
}

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
  int64_t n = 0, width = 0;
  int64_t size = 0;  // int64 words of the packed inputs
  at::Tensor dev;     // their device copy
  ForwardBatch batch;  // views of dev
  at::Tensor temperature, top_k, top_p, seeds, min_p, src;
  at::Tensor ids, logits;  // outputs, owned by the graph's pool

  Graph(int64_t n_, int64_t width_, int64_t max_len, at::Device device) : n(n_), width(width_) {
    const Layout l(n, width);
    size = l.size;
    dev = at::zeros({l.size}, at::TensorOptions().dtype(at::kLong).device(device));
    auto slice = [&](int64_t off, int64_t len) { return dev.narrow(0, off, len); };
    batch.input_ids = slice(l.ids, n);
    batch.positions = slice(l.pos, n);
    batch.slot_mapping = slice(l.slots, n);
    batch.seq_lens = slice(l.seq, n);
    batch.last_token_idx = slice(l.last, n);
    batch.query_start_loc = slice(l.qsl, n + 1);
    batch.block_tables = slice(l.tables, n * width).view({n, width});
    batch.is_decode = true;
    batch.max_query_len = 1;
    batch.max_seq_len = max_len;  // sizes the attention grid; valid for every step whose lengths fit
    top_k = slice(l.top_k, n);
    seeds = slice(l.seeds, n);
    src = slice(l.src, n);
    temperature = slice(l.temp, l.half).view(at::kFloat).narrow(0, 0, n);
    top_p = slice(l.top_p, l.half).view(at::kFloat).narrow(0, 0, n);
    min_p = slice(l.min_p, l.half).view(at::kFloat).narrow(0, 0, n);
  }

  // Packs this step's inputs into a staging buffer and queues one H2D copy on the current stream, then (source
  // defined) replaces the ids of the tokens that take an earlier step's sampled ids by those, on the device.
  // The staging buffer is fresh pinned memory from torch's host allocator, which hands a block out again only
  // once the copy that read it has run: non-blocking steps may queue several uploads ahead, none waits.
  void upload(const ForwardBatch& h, const SamplingParams& sp, int64_t block_size, const at::Tensor& source,
              const at::Tensor& prev) {
    const Layout l(n, width);
    at::Tensor host = at::empty({size}, at::TensorOptions().dtype(at::kLong).pinned_memory(true));
    int64_t* p = host.data_ptr<int64_t>();
    auto put = [&](int64_t off, const at::Tensor& t, int64_t len) {
      std::memcpy(p + off, t.data_ptr<int64_t>(), len * sizeof(int64_t));
    };
    put(l.ids, h.input_ids, n);
    put(l.pos, h.positions, n);
    put(l.slots, h.slot_mapping, n);
    put(l.seq, h.seq_lens, n);
    put(l.last, h.last_token_idx, n);
    put(l.qsl, h.query_start_loc, n + 1);
    put(l.top_k, sp.top_k, n);
    put(l.seeds, sp.seeds, n);
    if (source.defined()) {
      put(l.src, source, n);
    } else {
      std::fill(p + l.src, p + l.src + n, int64_t{-1});
    }
    // Only the blocks a row uses are copied (the caller may pad the rest with anything); the others get
    // block 0, a valid id the kernel never reads.
    const int64_t mb = h.block_tables.size(1);
    const int64_t* bt = h.block_tables.data_ptr<int64_t>();
    const int64_t* seq = h.seq_lens.data_ptr<int64_t>();
    for (int64_t r = 0; r < n; ++r) {
      const int64_t used = std::min((seq[r] + block_size - 1) / block_size, mb);
      int64_t* row = p + l.tables + r * width;
      std::memcpy(row, bt + r * mb, used * sizeof(int64_t));
      std::fill(row + used, row + width, int64_t{0});
    }
    float* temp = reinterpret_cast<float*>(p + l.temp);
    float* top_p_h = reinterpret_cast<float*>(p + l.top_p);
    std::memcpy(temp, sp.temperature.data_ptr<float>(), n * sizeof(float));
    std::memcpy(top_p_h, sp.top_p.data_ptr<float>(), n * sizeof(float));
    std::memcpy(reinterpret_cast<float*>(p + l.min_p), sp.min_p.data_ptr<float>(), n * sizeof(float));
    dev.copy_(host, /*non_blocking=*/true);
    if (source.defined()) batch.input_ids.copy_(take_tokens(batch.input_ids, source, src, prev));
  }

  // The step the graph records: the model's forward and the sampler on the static inputs (min_p always
  // passed: zeros disable it row by row, so one graph serves steps with and without min-p).
  void step(const models::CausalLM& model, cache::KVCache& cache) {
    logits = model.forward(batch, cache, nullptr);
    ids = infinilm::sample(logits, temperature, top_k, top_p, seeds, min_p);
  }
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
                                                           const at::Tensor& prev, int64_t n, int64_t max_len,
                                                           at::Device device) {
  const int64_t bs = cache.block_size();
  auto g = std::make_unique<Graph>(n, (max_len + bs - 1) / bs, max_len, device);
  g->upload(host, sp, bs, source, prev);
  // Capture on a side stream (capture needs a non-default stream) after one eager warm-up there (cuBLAS
  // handle and workspace, lazy kernel loading). The warm-up runs this very step, so the K/V it writes are
  // the values the replay writes again.
  const c10::cuda::CUDAStream main = c10::cuda::getCurrentCUDAStream(device.index());
  const c10::cuda::CUDAStream side = c10::cuda::getStreamFromPool(false, device.index());
  wait_for(side, main);
  {
    const c10::cuda::CUDAStreamGuard on_side(side);
    g->step(model, cache);
    g->ids.reset();  // the warm-up's outputs go before capture, which allocates from the graphs' pool
    g->logits.reset();
    // One pool for all of this rank's graphs: they never replay concurrently, and each keeps its outputs.
    if (pool_.first == 0 && pool_.second == 0) pool_ = at::cuda::graph_pool_handle();
    // Thread-local mode: other threads of the process may use CUDA while this one captures.
    g->graph.capture_begin(pool_, cudaStreamCaptureModeThreadLocal);
    try {
      g->step(model, cache);
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
                       const SamplingParams& sp, const at::Tensor& source, const at::Tensor& prev, at::Tensor* ids,
                       at::Tensor* logits) {
  const int64_t n = host.seq_lens.size(0);
  if (failed_ || !host.is_decode || n > kMaxBatch || host.input_ids.size(0) != n) return false;
  const int64_t bs = cache.block_size();
  // A paged request may own every block; a static row owns blocks_per_row.
  const int64_t capacity = (cache.paged() ? cache.num_blocks() : cache.blocks_per_row()) * bs;
  const int64_t max_len = length_bucket(host.max_seq_len, capacity);
  const std::pair<int64_t, int64_t> key{n, max_len};
  auto it = graphs_.find(key);
  if (it == graphs_.end()) {
    if (num_graphs() >= kMaxGraphs) return false;
    const at::Device device = cache.key(0).device();
    std::unique_ptr<Graph> g;
    try {
      g = capture(model, cache, host, sp, source, prev, n, max_len, device);
    } catch (const std::exception& e) {
      // The warm-up wrote only this step's own K/V, so the eager rerun is exact; later steps stay eager.
      failed_ = true;
      TORCH_WARN("InferEngine: CUDA-graph capture failed, decode steps run eagerly from now on: ", e.what());
      return false;
    }
    it = graphs_.emplace(key, std::move(g)).first;
  } else {
    it->second->upload(host, sp, bs, source, prev);
  }
  it->second->graph.replay();
  ++replays_;
  *ids = it->second->ids;
  *logits = it->second->logits;
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
                       const SamplingParams&, const at::Tensor&, const at::Tensor&, at::Tensor*, at::Tensor*) {
  return false;
}

}  // namespace infinilm::engine

#endif
