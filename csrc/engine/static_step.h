// StaticStep: one engine step's inputs at fixed shapes, in one packed int64 buffer, with the ForwardBatch and
// sampling views of it that a CUDA graph records. Steps smaller than the shape are padded to it.
#pragma once

#include <ATen/ATen.h>

#include <cstdint>
#include <optional>
#include <tuple>
#include <utility>

#include "csrc/cache/kv_cache.h"
#include "csrc/engine/batch.h"
#include "csrc/models/causal_lm.h"
#include "csrc/models/forward_batch.h"

namespace infinilm::engine {

// The shape a step is recorded at: n requests, `tokens` new tokens, attention length bound max_len (the batch's
// max_seq_len, which sizes the attention grids; block tables are max_len / block_size wide). decode: every
// request has one token (n == tokens) and attention runs the decode kernel; else the prefill kernel, with
// max_query_len = tokens.
struct StepShape {
  int64_t n = 0, tokens = 0, max_len = 0;
  bool decode = true;
  auto key() const { return std::make_tuple(decode, n, tokens, max_len); }
  bool operator<(const StepShape& o) const { return key() < o.key(); }
  bool operator==(const StepShape& o) const { return key() == o.key(); }
};

// Bounds of what a recorded step serves (larger steps run eagerly).
constexpr int64_t kMaxStepRequests = 64;
constexpr int64_t kMaxMixedTokens = 512;  // prefill and mixed steps; their token counts are bucketed

// The shape that serves `host` (a validated host batch) in `cache`, or nullopt. Paged caches whose block size is
// not a power of two get none (the CUDA kernels take those blocks only as one-column tables). Decode steps keep their request count (no padded rows) and take the length bucket: the smallest
// power of two >= max(max_seq_len, 512), capped at capacity. Other steps (mixed: prefills, chunks, decodes
// beside them) only when `mixed`: tokens rounded up to a power of two >= 16 (at most kMaxMixedTokens), requests
// to a power of two >= the step's plus one when tokens were added (a padding request owns them).
std::optional<StepShape> step_shape(const models::ForwardBatch& host, const cache::KVCache& cache, bool mixed);

// The packed inputs of one shape and their views. Padding (rows past the step's): tokens get id 0, position
// 0, slot -1 (no cache write) and no prev_output source; the first padded request owns the padded tokens
// (seq_len = their count, block table of block 0: it reads block 0 and writes nothing), the others own no
// token (seq_len 0, last token 0); padded requests sample greedily, their ids and logits are dropped.
// Block tables are copied for the blocks each row uses (the rest block 0, never read).
class StaticStep {
 public:
  StaticStep(const StepShape& shape, int64_t block_size, at::Device device);

  // int64 words of the packed inputs.
  int64_t words() const { return words_; }
  // Writes the step (n <= shape.n requests, T <= shape.tokens tokens; source: host int64 [T] prev_output rows or
  // undefined) padded to the shape into dst[0, words()).
  void pack(const models::ForwardBatch& host, const SamplingParams& sp, const at::Tensor& source, int64_t* dst) const;
  // Copies the step into the buffer: on the CPU in place, else through fresh pinned memory and one
  // asynchronous copy on the current stream (torch's host allocator hands that block out again only once the
  // copy ran). Then the tokens with a source take prev[source] (device ids of an earlier step).
  void upload(const models::ForwardBatch& host, const SamplingParams& sp, const at::Tensor& source,
              const at::Tensor& prev);
  // The model's forward and the sampler on the views: logits [shape.n, V] float32 and ids [shape.n] int64
  // (all padded rows included). min_p is always passed (zeros disable it row by row).
  std::pair<at::Tensor, at::Tensor> run(const models::CausalLM& model, cache::KVCache& cache) const;

  const StepShape& shape() const { return shape_; }
  const models::ForwardBatch& batch() const { return batch_; }

 private:
  StepShape shape_;
  int64_t block_size_ = 0, width_ = 0, words_ = 0;
  at::Tensor buf_;  // the packed inputs on the device
  models::ForwardBatch batch_;
  at::Tensor temperature_, top_k_, top_p_, seeds_, min_p_, src_;
};

}  // namespace infinilm::engine
