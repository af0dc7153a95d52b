// InferEngine.Input / InferEngine.Output as DESIGN.md pins them.
#pragma once

#include <ATen/ATen.h>
#include <c10/core/Event.h>

#include <cstdint>
#include <memory>
#include <optional>

namespace infinilm::engine {

// One step's results. The default (synchronous) step returns them filled in. A step run with
// Input.non_blocking on CUDA returns as soon as its work is queued: the host tensors below are pinned buffers
// the GPU copies into, valid once ready() (wait() blocks until then; the Python properties wait by
// themselves). On the CPU, or with tensor parallelism, every step is synchronous and ready() is true.
struct Output {
  at::Tensor output_ids;            // [n, 1] int64 on the CPU
  std::optional<at::Tensor> logits;  // [n, vocab] float32 on the CPU, when Input.return_logits
  // When Input.return_logprobs = k >= 0, on the CPU: [n] float32, [n, k] float32, [n, k] int64.
  std::optional<at::Tensor> logprobs, top_logprobs, top_token_ids;
  // The sampled ids [n] int64 on the engine's device (rank 0's; undefined where output_ids is), usable at once:
  // a later step reads them in stream order (Input.prev_output), with no copy to the host.
  at::Tensor device_ids;
  std::shared_ptr<c10::Event> copied;  // recorded after the copies to the host; null: nothing pending
  uint64_t engine_id = 0;              // the engine that produced it (Input.prev_output must name the same)

  bool ready() const { return !copied || copied->query(); }
  void wait() const {
    if (copied) copied->synchronize();
  }
};

// Integer tensors may be int32 or int64, on the CPU or the engine's device.
// Static cache: input_ids [B, S] right-padded, position_ids [B, S] (default cache_lengths[b] + arange(S)),
//   cache_lengths [B] (default 0), input_lengths [B] (default S).
// Paged cache: input_ids [1, T] or [T], position_ids [T] (default cache_lengths[r] + arange(input_lengths[r])),
//   cache_lengths [n] (default 0), input_lengths [n] (sum T; may be omitted when n == 1),
//   block_tables [n, max_blocks], slot_mapping [T] = block_id * block_size + offset.
// What a step may read and write (written lengths, shared blocks, 1-D lengths): docs/engine_inputs.md.
//
// Sampling. The scalars apply to every request: temperature (0 = greedy), top_k (0 or -1 = off, 1 =
// greedy), top_p (1 = off, 0 = greedy), seed (request r draws with seed + r; unset: fresh random seeds).
// The optional per-request tensors, each [n] (one entry per request of the step, on the CPU or the device),
// override the scalar of the same meaning when given:
//   temperatures float >= 0; top_ks int >= -1 (0 / -1 off); top_ps float in (0, 1]; min_ps float in [0, 1]
//   (0 off; vLLM's min-p: keep p >= min_p * p_max after temperature, before top-k / top-p);
//   seeds int64: request r's draw uses seeds[r] alone (no "+ r"), so a caller that gives each request its own
//   seed per step gets the same draw whatever the batch.
// Penalties (vLLM semantics), applied to the logits before temperature and the filters, when any of
//   repetition_penalties float > 0 (1 off), presence_penalties, frequency_penalties float (0 off) is given;
//   the others default to off. They need prompt_token_ids [n, Lp] and output_token_ids [n, Lo] int (-1
//   pads; [n, 0] for none): repetition divides positive logits and multiplies the others of every token in
//   prompt or output; frequency subtracts penalty x the token's output count, presence penalty once.
// return_logprobs = k >= 0: Output.logprobs [n] float32 = log_softmax of the raw logits (before penalties
//   and temperature, vLLM's raw logprobs) at the sampled token, and top_logprobs / top_token_ids [n, k]
//   (decreasing, ties by lower id; k = 0 gives [n, 0]). k <= min(vocab, 1024). -1 = off.
//
// Feeding sampled ids back without a host round trip: prev_output = an earlier step's Output of this engine;
// prev_token_index (shape of input_ids: [B, S] static, [T] or [1, T] paged; int, CPU) gives each token the
// prev_output row whose sampled id it takes (-1: the token's own input_ids value). Without prev_token_index,
// input_ids is omitted and every token takes the row of its own index: static [n_prev, 1], paged [n_prev].
// Those ids were drawn by the engine, so they need no value check (nor a copy to the host).
// non_blocking: return once the step is queued (CUDA, one rank); see Output. docs/engine_inputs.md.
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
  std::optional<at::Tensor> temperatures, top_ks, top_ps, min_ps, seeds;
  std::optional<at::Tensor> repetition_penalties, presence_penalties, frequency_penalties;
  std::optional<at::Tensor> prompt_token_ids, output_token_ids;
  int64_t return_logprobs = -1;
  std::optional<Output> prev_output;
  std::optional<at::Tensor> prev_token_index;
  bool non_blocking = false;
};

}  // namespace infinilm::engine
