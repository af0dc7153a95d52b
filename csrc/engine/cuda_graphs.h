// DecodeGraphs: CUDA-graph capture and replay of one rank's decode steps, and (opt-in) of small prefill and
// mixed steps (a no-op stub in CPU builds).
#pragma once

#include <ATen/ATen.h>

#include <cstdint>
#include <map>
#include <memory>
#include <utility>

#include "csrc/cache/kv_cache.h"
#include "csrc/engine/batch.h"
#include "csrc/engine/static_step.h"
#include "csrc/models/causal_lm.h"

namespace infinilm::engine {

// One graph per StepShape (static_step.h): the step's inputs live in one static device buffer refilled by a
// single H2D copy, the model forward and the sampler are replayed from the graph.
// Decode steps: one graph per (request count n, length bucket L), no padded rows. The attention grid is sized
// from L (the capture's max_seq_len), so a graph serves every step whose longest sequence fits L; L is a power
// of two >= 512 capped at the block-table capacity, which keeps short contexts on short grids.
// Prefill and mixed steps (when run() is asked to): tokens and requests padded to powers of two (up to
// kMaxMixedTokens tokens, kMaxStepRequests requests); padded tokens write no cache slot, padded rows' ids and
// logits are dropped.
// All calls must come from the rank's worker thread (the one that runs its model).
class DecodeGraphs {
 public:
  static constexpr int64_t kMaxBatch = kMaxStepRequests;  // larger batches run eagerly
  static constexpr int64_t kMaxGraphs = 32;       // beyond this many decode captures, new shapes run eagerly
  static constexpr int64_t kMaxMixedGraphs = 16;  // the same for prefill / mixed captures

  DecodeGraphs();
  ~DecodeGraphs();
  DecodeGraphs(const DecodeGraphs&) = delete;
  DecodeGraphs& operator=(const DecodeGraphs&) = delete;

  // Runs the validated host batch through a graph (capturing it on first use) and sets *ids ([n] int64) and
  // *logits ([n, vocab] float32), both on the device and overwritten by the next replay. source (host int64
  // [T], or undefined) and prev (device ids): the tokens whose source >= 0 take prev[source] as their id
  // (build_batch, take_tokens). mixed: prefill and mixed steps may be graphed too. Queues work only: no host
  // synchronisation with the device. Returns false, having run nothing, when no graph may serve the step (the
  // caller runs it eagerly).
  bool run(const models::CausalLM& model, cache::KVCache& cache, const models::ForwardBatch& host,
           const SamplingParams& sp, const at::Tensor& source, const at::Tensor& prev, bool mixed, at::Tensor* ids,
           at::Tensor* logits);

  // Drops every graph (they hold the cache's and the weights' addresses).
  void clear();

  int64_t num_graphs() const;
  int64_t replays() const { return replays_; }

 private:
  struct Graph;
  std::unique_ptr<Graph> capture(const models::CausalLM& model, cache::KVCache& cache,
                                 const models::ForwardBatch& host, const SamplingParams& sp,
                                 const at::Tensor& source, const at::Tensor& prev, const StepShape& shape,
                                 at::Device device);

  std::map<StepShape, std::unique_ptr<Graph>> graphs_;
  int64_t replays_ = 0;
  bool failed_decode_ = false, failed_mixed_ = false;         // a capture of that kind failed: stay eager
  std::pair<unsigned long long, unsigned long long> pool_{0, 0};  // at::cuda::MempoolId_t, shared by the graphs
};

}  // namespace infinilm::engine
