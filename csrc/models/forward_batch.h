// ForwardBatch: one step's flattened batch as every model's forward takes it.
#pragma once

#include <ATen/ATen.h>

#include <cstdint>

namespace infinilm::models {

// Validated by the engine and already on the model's device.
struct ForwardBatch {
  at::Tensor input_ids;        // [T] int64, all requests' new tokens concatenated
  at::Tensor positions;        // [T] int64, rope positions
  at::Tensor slot_mapping;     // [T] int64, cache slot of each new token
  at::Tensor block_tables;     // [n, max_blocks] int64
  at::Tensor seq_lens;         // [n] int64, cached + new tokens per request
  at::Tensor query_start_loc;  // [n + 1] int64, request r owns tokens [qsl[r], qsl[r+1])
  at::Tensor last_token_idx;   // [n] int64, qsl[r+1] - 1
  bool is_decode = false;      // every request has exactly one new token
  int64_t max_query_len = 0;
  int64_t max_seq_len = 0;
};

// What the engine checks a step's tokens and positions against.
struct BatchLimits {
  int64_t vocab_size = 0;
  int64_t max_position_embeddings = 0;
};

}  // namespace infinilm::models
