// Every infinilm operator schema, in one TORCH_LIBRARY block. Backend kernels register themselves
// at the end of their glue files (TORCH_LIBRARY_IMPL(infinilm, CPU|CUDA, m)).
#include <torch/library.h>

#include "csrc/ops/ops.h"

TORCH_LIBRARY(infinilm, m) {
  // y = x / sqrt(mean(x^2, -1) + eps) * weight; input [..., H] (last dim dense), weight [H].
  m.def("rms_norm(Tensor input, Tensor weight, float eps) -> Tensor");

  // In place: residual += input; input = rms_norm(residual, weight, eps). Both [..., H].
  m.def("fused_add_rms_norm(Tensor(a!) input, Tensor(b!) residual, Tensor weight, float eps) -> ()");

  // In place rotary embedding of query [T, Hq, D] and key [T, Hk, D] at positions [T] from
  // cos_sin_cache [max_pos, rot_dim] (cos | sin halves); NeoX (half-split) or GPT-J (interleaved).
  m.def(
      "rotary_embedding(Tensor positions, Tensor(a!) query, Tensor(b!) key, Tensor cos_sin_cache, "
      "bool is_neox) -> ()");

  // float32 [max_position, rotary_dim] cos|sin table for rope_theta `base` and rope_type
  // "default", "linear" (positions / factor) or "llama3" (frequency-band scaling).
  m.def(
      "rope_cos_sin_cache(int max_position, int rotary_dim, float base, str rope_type=\"default\", "
      "float factor=1.0, float low_freq_factor=1.0, float high_freq_factor=4.0, "
      "int original_max_position=8192) -> Tensor",
      &infinilm::rope_cos_sin_cache);

  // y = input @ weight^T + bias: input [..., K], weight [N, K], bias [N] -> [..., N]. On CUDA, up to 8 fp16/bf16
  // rows run on the skinny GEMM (decode) kernel, more on cuBLAS; on the CPU, the engine's linear.
  m.def("linear(Tensor input, Tensor weight, Tensor? bias=None) -> Tensor");

  // linear(silu_and_mul(input), weight, bias): input [..., 2K] (gate | up), weight [N, K] -> [..., N]; on CUDA
  // up to 8 fp16/bf16 rows in one kernel that applies the activation as it loads its input.
  m.def("silu_and_mul_linear(Tensor input, Tensor weight, Tensor? bias=None) -> Tensor");

  // [..., 2d] -> [..., d]: silu(x[..., :d]) * x[..., d:].
  m.def("silu_and_mul(Tensor input) -> Tensor");

  // Write key/value [T, Hk, D] into key_cache/value_cache [num_blocks, Hk, block_size, D] at
  // slot_mapping [T] (= block * block_size + offset); slot -1 is skipped.
  m.def(
      "reshape_and_cache(Tensor key, Tensor value, Tensor(a!) key_cache, Tensor(b!) value_cache, "
      "Tensor slot_mapping) -> ()");

  // rotary_embedding then reshape_and_cache in one kernel: optionally q/k = rms_norm per head with
  // q_norm_weight/k_norm_weight [D] (Qwen3), query and key rotated in place, the rotated key and value written
  // to the cache at slot_mapping (slot -1 skipped). Both caches (static = fixed block tables) use it.
  m.def(
      "rotary_embedding_and_cache(Tensor positions, Tensor(a!) query, Tensor(b!) key, Tensor value, "
      "Tensor(c!) key_cache, Tensor(d!) value_cache, Tensor slot_mapping, Tensor cos_sin_cache, bool is_neox, "
      "Tensor? q_norm_weight=None, Tensor? k_norm_weight=None, float norm_eps=1e-6) -> ()");

  // One query token per request: query [B, Hq, D] over the paged cache through block_tables
  // [B, max_blocks] and seq_lens [B] (tokens in the cache, the current one included) -> [B, Hq, D].
  // Both attention ops: a query at position p sees keys [p - window_left, p] (-1: all; HF's sliding_window
  // W is window_left = W - 1); softcap > 0 turns scores s = scale q.k into softcap * tanh(s / softcap).
  m.def(
      "paged_attention_decode(Tensor query, Tensor key_cache, Tensor value_cache, Tensor block_tables, "
      "Tensor seq_lens, float scale, int? max_seq_len=None, int window_left=-1, float softcap=0.0) -> Tensor");

  // Variable-length causal prefill: query [T, Hq, D], request r owns rows
  // query_start_loc[r]:query_start_loc[r+1] and attends to its seq_lens[r] cached tokens (a cached
  // prefix of seq_lens[r] - q_len tokens, then its own new tokens, already written) -> [T, Hq, D].
  m.def(
      "paged_attention_prefill(Tensor query, Tensor key_cache, Tensor value_cache, Tensor block_tables, "
      "Tensor query_start_loc, Tensor seq_lens, float scale, int? max_query_len=None, "
      "int? max_seq_len=None, int window_left=-1, float softcap=0.0) -> Tensor");

  // One token per row of logits [B, V]: temperature [B], top_k [B] (0 = off), top_p [B] (1 = off),
  // seeds [B], min_p [B] (0 = off; keeps p >= min_p * p_max after temperature); greedy where
  // temperature == 0 or top_k == 1. Returns int64 [B].
  m.def(
      "sample(Tensor logits, Tensor temperature, Tensor top_k, Tensor top_p, Tensor seeds, "
      "Tensor? min_p=None) -> Tensor");

  // In place, vLLM's penalties on logits [B, V]: repetition over the tokens of prompt_token_ids [B, Lp] and
  // output_token_ids [B, Lo] (-1 pads; positive logits divided, others multiplied), then frequency
  // (times the output count) and presence (once per output token) subtracted. Penalties float [B].
  m.def(
      "apply_penalties(Tensor(a!) logits, Tensor prompt_token_ids, Tensor output_token_ids, "
      "Tensor repetition_penalty, Tensor presence_penalty, Tensor frequency_penalty) -> ()");

  // log_softmax(logits [B, V]) in one pass per row, never materialised: float32 [B] at token_ids [B],
  // the k largest float32 [B, k] (decreasing, ties by lower id) and their token ids int64 [B, k].
  m.def("logprobs(Tensor logits, Tensor token_ids, int k) -> (Tensor, Tensor, Tensor)");
}
