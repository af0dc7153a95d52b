// Host-side validation of an InferEngine.Input and its flattening into a ForwardBatch.
#pragma once

#include "csrc/cache/kv_cache.h"
#include "csrc/engine/io.h"
#include "csrc/models/llama/model.h"

#include <vector>

namespace infinilm::engine {

// Sampling parameters per request, on the CPU: temperature float32 [n], top_k int64 [n], top_p float32 [n],
// seeds int64 [n], in the form the sample op takes.
struct SamplingParams {
  at::Tensor temperature, top_k, top_p, seeds;
};

// One row (static) or block (paged) the step writes: tokens [begin, end) of it.
struct CacheWrite {
  int64_t index, begin, end;
};
using CacheWrites = std::vector<CacheWrite>;

// Checks every argument against the config and the cache (including what earlier steps wrote into it)
// before anything runs; errors name the argument and the numbers. The returned batch lives on the CPU;
// `writes` (if given) receives what the step will write, for begin_writes / commit_writes.
models::llama::ForwardBatch build_batch(const Input& input, const models::llama::LlamaConfig& config,
                                        const cache::KVCache& cache, CacheWrites* writes = nullptr);

// Before the step runs: the written ranges count as unwritten (a step failing halfway leaves them unknown).
void begin_writes(const CacheWrites& writes, cache::KVCache& cache);
// After the step succeeded: the rows / blocks hold what it wrote, and nothing past it.
void commit_writes(const CacheWrites& writes, cache::KVCache& cache);

SamplingParams build_sampling(const Input& input, int64_t n, int64_t vocab_size);

// Copies of the batch's tensors on `device` (no copy on the CPU).
models::llama::ForwardBatch to_device(const models::llama::ForwardBatch& batch, at::Device device);

}  // namespace infinilm::engine
