// Host-side validation of an InferEngine.Input and its flattening into a ForwardBatch.
#pragma once

#include "csrc/cache/kv_cache.h"
#include "csrc/engine/io.h"
#include "csrc/models/forward_batch.h"

namespace infinilm::engine {

// Sampling parameters per request, on the CPU: temperature float32 [n], top_k int64 [n], top_p float32 [n],
// seeds int64 [n], in the form the sample op takes.
struct SamplingParams {
  at::Tensor temperature, top_k, top_p, seeds;
};

// Checks every argument against the config and the cache before anything runs; errors name the argument
// and the numbers. The returned batch lives on the CPU.
models::ForwardBatch build_batch(const Input& input, const models::BatchLimits& config, const cache::KVCache& cache);

SamplingParams build_sampling(const Input& input, int64_t n, int64_t vocab_size);

// Copies of the batch's tensors on `device` (no copy on the CPU).
models::ForwardBatch to_device(const models::ForwardBatch& batch, at::Device device);

}  // namespace infinilm::engine
