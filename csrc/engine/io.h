// InferEngine.Input / InferEngine.Output as DESIGN.md pins them.
#pragma once

#include <ATen/ATen.h>

#include <optional>

namespace infinilm::engine {

// Integer tensors may be int32 or int64, on the CPU or the engine's device.
// Static cache: input_ids [B, S] right-padded, position_ids [B, S] (default cache_lengths[b] + arange(S)),
//   cache_lengths [B] (default 0), input_lengths [B] (default S).
// Paged cache: input_ids [1, T] or [T], position_ids [T] (default cache_lengths[r] + arange(input_lengths[r])),
//   cache_lengths [n] (default 0), input_lengths [n] (sum T; may be omitted when n == 1),
//   block_tables [n, max_blocks], slot_mapping [T] = block_id * block_size + offset.
// What a step may read and write (written lengths, shared blocks, 1-D lengths): docs/engine_inputs.md.
struct Input {
  std::optional<at::Tensor> input_ids;
  std::optional<at::Tensor> position_ids;
  std::optional<at::Tensor> cache_lengths;
  std::optional<at::Tensor> input_lengths;
  std::optional<at::Tensor> block_tables;
  std::optional<at::Tensor> slot_mapping;
  double temperature = 1.0;  // 0 = greedy
  int64_t top_k = 50;        // 0 or -1 = off; 1 = greedy
  double top_p = 1.0;        // 1 = off; 0 = greedy
  bool return_logits = false;
  std::optional<int64_t> seed;  // request r draws with seed + r; unset: seeds from torch's default generator
};

struct Output {
  at::Tensor output_ids;            // [n, 1] int64 on the CPU
  std::optional<at::Tensor> logits;  // [n, vocab] float32 on the CPU, when Input.return_logits
};

}  // namespace infinilm::engine
