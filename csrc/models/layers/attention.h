// Self-attention over the paged KV cache: fused QKV projection, optional per-head q/k RMSNorm, RoPE, cache
// write, paged attention, row-parallel o_proj.
#pragma once

#include <ATen/ATen.h>

#include <cstdint>
#include <functional>

#include "csrc/models/forward_batch.h"
#include "csrc/models/layers/common.h"

namespace infinilm::models::layers {

// One rank's attention weights. q_norm/k_norm are undefined for families without per-head q/k norms.
struct AttentionWeights {
  at::Tensor qkv_w, qkv_b;  // [(q_heads + 2 kv_heads) * D, H], [(q_heads + 2 kv_heads) * D]
  at::Tensor o_w, o_b;      // [H, q_heads * D], [H] (bias added after the all-reduce)
  at::Tensor q_norm, k_norm;  // [D]
};

// This rank's heads.
struct AttentionShape {
  int64_t q_heads, kv_heads, head_dim;
  double norm_eps;  // of q_norm/k_norm
  int64_t window_left = -1;  // sliding window: a token sees keys [p - window_left, p]; -1 = all
};

// x: the normalised hidden states [T, H]; returns o_proj's output [T, H], summed over ranks. after_qkv (when
// set) is called once the QKV product is queued, before rope, the cache write and attention (the engine queues
// its L2 prefetches of the next weights there).
at::Tensor paged_self_attention(const AttentionWeights& w, const AttentionShape& s, const at::Tensor& x,
                                const ForwardBatch& batch, at::Tensor& k_cache, at::Tensor& v_cache,
                                const at::Tensor& rope, const TensorParallel& tp, const Hooks& hook,
                                const std::function<void()>& after_qkv = {});

}  // namespace infinilm::models::layers
