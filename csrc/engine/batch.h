// Host-side validation of an InferEngine.Input and its flattening into a ForwardBatch.
#pragma once

#include "csrc/cache/kv_cache.h"
#include "csrc/engine/io.h"
#include "csrc/models/forward_batch.h"

#include <vector>

namespace infinilm::engine {

// Sampling parameters per request, on the CPU: temperature float32 [n], top_k int64 [n], top_p float32 [n],
// seeds int64 [n], min_p float32 [n] (zeros: off), in the form the sample op takes. When `penalties`, the
// apply_penalties arguments: token ids int64 [n, Lp] / [n, Lo], penalties float32 [n]. logprobs_k: -1 off.
struct SamplingParams {
  at::Tensor temperature, top_k, top_p, seeds, min_p;
  bool penalties = false;
  at::Tensor prompt_ids, output_ids, repetition, presence, frequency;
  int64_t logprobs_k = -1;
};

// One row (static) or block (paged) the step writes: tokens [begin, end) of it.
struct CacheWrite {
  int64_t index, begin, end;
};
using CacheWrites = std::vector<CacheWrite>;

// Checks every argument against the config and the cache (including what earlier steps wrote into it)
// before anything runs; errors name the argument and the numbers. The returned batch lives on the CPU;
// `writes` (if given) receives what the step will write, for begin_writes / commit_writes.
// prev_rows: rows of input.prev_output (-1: none). `source` (if given) receives the prev_output row of every
// flattened token, int64 [T] on the CPU, -1 where the batch's input_ids hold the id; undefined when no token
// comes from prev_output (the batch's input_ids then hold every id).
models::ForwardBatch build_batch(const Input& input, const models::BatchLimits& config, const cache::KVCache& cache,
                                 CacheWrites* writes = nullptr, int64_t prev_rows = -1, at::Tensor* source = nullptr);

// ids [T] with the tokens whose source >= 0 replaced by prev[source] (ids, source, prev on one device; no host
// sync); host_source: source on the CPU (when it maps token t to row t of all of prev, the result is prev).
at::Tensor take_tokens(const at::Tensor& ids, const at::Tensor& host_source, const at::Tensor& source,
                       const at::Tensor& prev);

// A host tensor on `device` through pinned memory, queued on the current stream (itself on the CPU).
at::Tensor upload(const at::Tensor& t, at::Device device);

// Before the step runs: the written ranges count as unwritten (a step failing halfway leaves them unknown).
void begin_writes(const CacheWrites& writes, cache::KVCache& cache);
// After the step succeeded: the rows / blocks hold what it wrote, and nothing past it.
void commit_writes(const CacheWrites& writes, cache::KVCache& cache);

// Checks every sampling field (shapes [n], dtypes, ranges; errors name the field) before anything runs.
SamplingParams build_sampling(const Input& input, int64_t n, int64_t vocab_size);

// Penalties (when sp.penalties, in place on `logits`) then the draw: int64 [n] on logits' device.
at::Tensor run_sampler(at::Tensor& logits, const SamplingParams& sp);

// Copies of the batch's tensors on `device` (no copy on the CPU).
models::ForwardBatch to_device(const models::ForwardBatch& batch, at::Device device);

}  // namespace infinilm::engine
