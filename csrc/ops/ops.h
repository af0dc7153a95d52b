// C++ entry points of every infinilm op: per-backend kernels and device-generic wrappers the engine calls.
#pragma once

#include <ATen/ATen.h>

#include <optional>
#include <string>
#include <tuple>

namespace infinilm {

// ---- CPU kernels (csrc/ops/*_cpu.cpp) -------------------------------------------------------------
at::Tensor rms_norm_cpu(const at::Tensor& input, const at::Tensor& weight, double eps);
void fused_add_rms_norm_cpu(at::Tensor& input, at::Tensor& residual, const at::Tensor& weight, double eps);
void rotary_embedding_cpu(const at::Tensor& positions, at::Tensor& query, at::Tensor& key,
                          const at::Tensor& cos_sin_cache, bool is_neox);
at::Tensor silu_and_mul_cpu(const at::Tensor& input);
void reshape_and_cache_cpu(const at::Tensor& key, const at::Tensor& value, at::Tensor& key_cache,
                           at::Tensor& value_cache, const at::Tensor& slot_mapping);
void rotary_embedding_and_cache_cpu(const at::Tensor& positions, at::Tensor& query, at::Tensor& key,
                                    const at::Tensor& value, at::Tensor& key_cache, at::Tensor& value_cache,
                                    const at::Tensor& slot_mapping, const at::Tensor& cos_sin_cache, bool is_neox,
                                    const std::optional<at::Tensor>& q_norm_weight,
                                    const std::optional<at::Tensor>& k_norm_weight, double norm_eps);
at::Tensor paged_attention_decode_cpu(const at::Tensor& query, const at::Tensor& key_cache,
                                      const at::Tensor& value_cache, const at::Tensor& block_tables,
                                      const at::Tensor& seq_lens, double scale,
                                      std::optional<int64_t> max_seq_len, int64_t window_left, double softcap);
at::Tensor paged_attention_prefill_cpu(const at::Tensor& query, const at::Tensor& key_cache,
                                       const at::Tensor& value_cache, const at::Tensor& block_tables,
                                       const at::Tensor& query_start_loc, const at::Tensor& seq_lens,
                                       double scale, std::optional<int64_t> max_query_len,
                                       std::optional<int64_t> max_seq_len, int64_t window_left, double softcap);
at::Tensor sample_cpu(const at::Tensor& logits, const at::Tensor& temperature, const at::Tensor& top_k,
                      const at::Tensor& top_p, const at::Tensor& seeds, const std::optional<at::Tensor>& min_p);
void apply_penalties_cpu(at::Tensor& logits, const at::Tensor& prompt_token_ids, const at::Tensor& output_token_ids,
                         const at::Tensor& repetition_penalty, const at::Tensor& presence_penalty,
                         const at::Tensor& frequency_penalty);
std::tuple<at::Tensor, at::Tensor, at::Tensor> logprobs_cpu(const at::Tensor& logits, const at::Tensor& token_ids,
                                                            int64_t k);

// ---- CUDA kernels (csrc/ops/*_cuda.cu), present when built with INFINILM_WITH_CUDA -----------------
#ifdef INFINILM_WITH_CUDA
// y = x w^T (+ b) for 2-D x: <= 8 fp16/bf16 rows on the skinny GEMM kernel, else at::linear (cuBLAS).
at::Tensor linear_cuda(const at::Tensor& x, const at::Tensor& w, const at::Tensor& b);
// linear(silu_and_mul(x), w, b) with the activation folded into the skinny GEMM's input loads (<= 8 rows).
at::Tensor silu_and_mul_linear_cuda(const at::Tensor& x, const at::Tensor& w, const at::Tensor& b);
int64_t l2_prefetch_cuda(const at::Tensor& w, int64_t max_bytes);
void l2_prefetch_join_cuda(const at::Tensor& like);
at::Tensor rms_norm_cuda(const at::Tensor& input, const at::Tensor& weight, double eps);
void fused_add_rms_norm_cuda(at::Tensor& input, at::Tensor& residual, const at::Tensor& weight, double eps);
void rotary_embedding_cuda(const at::Tensor& positions, at::Tensor& query, at::Tensor& key,
                           const at::Tensor& cos_sin_cache, bool is_neox);
at::Tensor silu_and_mul_cuda(const at::Tensor& input);
void reshape_and_cache_cuda(const at::Tensor& key, const at::Tensor& value, at::Tensor& key_cache,
                            at::Tensor& value_cache, const at::Tensor& slot_mapping);
void rotary_embedding_and_cache_cuda(const at::Tensor& positions, at::Tensor& query, at::Tensor& key,
                                     const at::Tensor& value, at::Tensor& key_cache, at::Tensor& value_cache,
                                     const at::Tensor& slot_mapping, const at::Tensor& cos_sin_cache, bool is_neox,
                                     const std::optional<at::Tensor>& q_norm_weight,
                                     const std::optional<at::Tensor>& k_norm_weight, double norm_eps);
at::Tensor paged_attention_decode_cuda(const at::Tensor& query, const at::Tensor& key_cache,
                                       const at::Tensor& value_cache, const at::Tensor& block_tables,
                                       const at::Tensor& seq_lens, double scale,
                                       std::optional<int64_t> max_seq_len, int64_t window_left, double softcap);
at::Tensor paged_attention_prefill_cuda(const at::Tensor& query, const at::Tensor& key_cache,
                                        const at::Tensor& value_cache, const at::Tensor& block_tables,
                                        const at::Tensor& query_start_loc, const at::Tensor& seq_lens,
                                        double scale, std::optional<int64_t> max_query_len,
                                        std::optional<int64_t> max_seq_len, int64_t window_left, double softcap);
at::Tensor sample_cuda(const at::Tensor& logits, const at::Tensor& temperature, const at::Tensor& top_k,
                       const at::Tensor& top_p, const at::Tensor& seeds, const std::optional<at::Tensor>& min_p);
void apply_penalties_cuda(at::Tensor& logits, const at::Tensor& prompt_token_ids, const at::Tensor& output_token_ids,
                          const at::Tensor& repetition_penalty, const at::Tensor& presence_penalty,
                          const at::Tensor& frequency_penalty);
std::tuple<at::Tensor, at::Tensor, at::Tensor> logprobs_cuda(const at::Tensor& logits, const at::Tensor& token_ids,
                                                             int64_t k);
#define INFINILM_DISPATCH_DEVICE(t, name, ...) \
  ((t).is_cuda() ? name##_cuda(__VA_ARGS__) : name##_cpu(__VA_ARGS__))
#else
#define INFINILM_DISPATCH_DEVICE(t, name, ...)                                                       \
  ([&] {                                                                                              \
    TORCH_CHECK((t).is_cpu(), "infinilm: " #name " on ", (t).device(),                                \
                " needs a CUDA build of infinilm_torch (INFINILM_CUDA=1)");                            \
    return name##_cpu(__VA_ARGS__);                                                                   \
  }())
#endif

// ---- backend-independent ----------------------------------------------------------------------------
// float32 [max_position, rotary_dim]: columns [0, rotary_dim/2) cos, [rotary_dim/2, rotary_dim) sin.
at::Tensor rope_cos_sin_cache(int64_t max_position, int64_t rotary_dim, double base, std::string rope_type,
                              double factor, double low_freq_factor, double high_freq_factor,
                              int64_t original_max_position);

// y = x @ w^T (+ b), like at::linear; CPU products of few rows (decode steps: float32 up to 16, bfloat16 up to 4)
// run on a bandwidth-bound kernel (kernels/cpu/linear.h), everything else on at::linear (csrc/ops/linear_cpu.cpp).
at::Tensor linear(const at::Tensor& x, const at::Tensor& w, const at::Tensor& b = {});

// linear(silu_and_mul(x), w, b) for x [T, 2K] (gate | up): the MLP's down projection; on CUDA, up to 8 rows in
// one kernel (the activation computed as the product loads its input).
at::Tensor silu_and_mul_linear(const at::Tensor& x, const at::Tensor& w, const at::Tensor& b = {});

// Asks the GPU to bring the first min(max_bytes, w's bytes, half the L2) bytes of the contiguous tensor w into
// L2 from a side stream forked off the current stream here; returns the bytes requested (0: nothing queued; always
// 0 on the CPU). Decode steps call it for the weights of the products after the latency-bound kernels just
// queued. Results never depend on it. l2_prefetch_join makes the current stream wait for the side stream (a
// graph capture needs every fork joined before it ends); a no-op when nothing was queued since the last join.
int64_t l2_prefetch(const at::Tensor& w, int64_t max_bytes);
void l2_prefetch_join(const at::Tensor& like);
// INFINILM_L2_PREFETCH (read per call; off by default: on the H200 it made no step faster, kernels/cuda/NOTES.md):
// 0 off; 1 the attention output and MLP weights requested after each decode layer's QKV product; 2 also the next
// layer's QKV weights after the down projection.
int l2_prefetch_mode();

// ---- device-generic wrappers: the engine calls these, never the dispatcher ---------------------------
inline at::Tensor rms_norm(const at::Tensor& input, const at::Tensor& weight, double eps) {
  return INFINILM_DISPATCH_DEVICE(input, rms_norm, input, weight, eps);
}
inline void fused_add_rms_norm(at::Tensor& input, at::Tensor& residual, const at::Tensor& weight, double eps) {
  INFINILM_DISPATCH_DEVICE(input, fused_add_rms_norm, input, residual, weight, eps);
}
inline void rotary_embedding(const at::Tensor& positions, at::Tensor& query, at::Tensor& key,
                             const at::Tensor& cos_sin_cache, bool is_neox) {
  INFINILM_DISPATCH_DEVICE(query, rotary_embedding, positions, query, key, cos_sin_cache, is_neox);
}
inline at::Tensor silu_and_mul(const at::Tensor& input) {
  return INFINILM_DISPATCH_DEVICE(input, silu_and_mul, input);
}
inline void reshape_and_cache(const at::Tensor& key, const at::Tensor& value, at::Tensor& key_cache,
                              at::Tensor& value_cache, const at::Tensor& slot_mapping) {
  INFINILM_DISPATCH_DEVICE(key, reshape_and_cache, key, value, key_cache, value_cache, slot_mapping);
}
// Optional per-head q/k RMSNorm, rope of query and key in place, rotated key and value into the cache slots.
inline void rotary_embedding_and_cache(const at::Tensor& positions, at::Tensor& query, at::Tensor& key,
                                       const at::Tensor& value, at::Tensor& key_cache, at::Tensor& value_cache,
                                       const at::Tensor& slot_mapping, const at::Tensor& cos_sin_cache, bool is_neox,
                                       const at::Tensor& q_norm_weight = {}, const at::Tensor& k_norm_weight = {},
                                       double norm_eps = 1e-6) {
  const auto opt = [](const at::Tensor& t) { return t.defined() ? std::optional<at::Tensor>(t) : std::nullopt; };
  INFINILM_DISPATCH_DEVICE(query, rotary_embedding_and_cache, positions, query, key, value, key_cache, value_cache,
                           slot_mapping, cos_sin_cache, is_neox, opt(q_norm_weight), opt(k_norm_weight), norm_eps);
}
inline at::Tensor paged_attention_decode(const at::Tensor& query, const at::Tensor& key_cache,
                                         const at::Tensor& value_cache, const at::Tensor& block_tables,
                                         const at::Tensor& seq_lens, double scale,
                                         std::optional<int64_t> max_seq_len = std::nullopt, int64_t window_left = -1,
                                         double softcap = 0.0) {
  return INFINILM_DISPATCH_DEVICE(query, paged_attention_decode, query, key_cache, value_cache, block_tables,
                                  seq_lens, scale, max_seq_len, window_left, softcap);
}
inline at::Tensor paged_attention_prefill(const at::Tensor& query, const at::Tensor& key_cache,
                                          const at::Tensor& value_cache, const at::Tensor& block_tables,
                                          const at::Tensor& query_start_loc, const at::Tensor& seq_lens,
                                          double scale, std::optional<int64_t> max_query_len = std::nullopt,
                                          std::optional<int64_t> max_seq_len = std::nullopt,
                                          int64_t window_left = -1, double softcap = 0.0) {
  return INFINILM_DISPATCH_DEVICE(query, paged_attention_prefill, query, key_cache, value_cache, block_tables,
                                  query_start_loc, seq_lens, scale, max_query_len, max_seq_len, window_left, softcap);
}
inline at::Tensor sample(const at::Tensor& logits, const at::Tensor& temperature, const at::Tensor& top_k,
                         const at::Tensor& top_p, const at::Tensor& seeds,
                         const std::optional<at::Tensor>& min_p = std::nullopt) {
  return INFINILM_DISPATCH_DEVICE(logits, sample, logits, temperature, top_k, top_p, seeds, min_p);
}
inline void apply_penalties(at::Tensor& logits, const at::Tensor& prompt_token_ids,
                            const at::Tensor& output_token_ids, const at::Tensor& repetition_penalty,
                            const at::Tensor& presence_penalty, const at::Tensor& frequency_penalty) {
  INFINILM_DISPATCH_DEVICE(logits, apply_penalties, logits, prompt_token_ids, output_token_ids, repetition_penalty,
                           presence_penalty, frequency_penalty);
}
inline std::tuple<at::Tensor, at::Tensor, at::Tensor> logprobs(const at::Tensor& logits, const at::Tensor& token_ids,
                                                               int64_t k) {
  return INFINILM_DISPATCH_DEVICE(logits, logprobs, logits, token_ids, k);
}

}  // namespace infinilm
