// paged_self_attention: the attention half of a Llama-style decoder layer.
#include "csrc/models/layers/attention.h"

#include <cmath>
#include <optional>

#include "csrc/ops/ops.h"

namespace infinilm::models::layers {

at::Tensor paged_self_attention(const AttentionWeights& w, const AttentionShape& s, const at::Tensor& x,
                                const ForwardBatch& batch, at::Tensor& k_cache, at::Tensor& v_cache,
                                const at::Tensor& rope, const TensorParallel& tp, const Hooks& hook,
                                const std::function<void()>& after_qkv) {
  const int64_t T = x.size(0), D = s.head_dim;
  const int64_t q = s.q_heads * D, kv = s.kv_heads * D;
  const double scale = 1.0 / std::sqrt(static_cast<double>(D));
  const std::optional<int64_t> max_seq = batch.max_seq_len, max_q = batch.max_query_len;

  at::Tensor qkv = infinilm::linear(x, w.qkv_w, w.qkv_b);  // [T, q + 2 kv]
  if (after_qkv) after_qkv();
  at::Tensor qt = qkv.narrow(1, 0, q).view({T, s.q_heads, D});
  at::Tensor kt = qkv.narrow(1, q, kv).view({T, s.kv_heads, D});
  at::Tensor vt = qkv.narrow(1, q + kv, kv).view({T, s.kv_heads, D});
  hook("attention_q", qt);
  hook("attention_k", kt);
  hook("attention_v", vt);
  // One kernel: Qwen3's per-head q/k RMSNorm (when q_norm is defined), RoPE of q and k in place, k and v into
  // their cache slots.
  infinilm::rotary_embedding_and_cache(batch.positions, qt, kt, vt, k_cache, v_cache, batch.slot_mapping, rope,
                                       /*is_neox=*/true, w.q_norm, w.k_norm, s.norm_eps);
  hook("attention_q_rope", qt);
  hook("attention_k_rope", kt);
  at::Tensor attn =
      batch.is_decode
          ? infinilm::paged_attention_decode(qt, k_cache, v_cache, batch.block_tables, batch.seq_lens, scale, max_seq,
                                             s.window_left)
          : infinilm::paged_attention_prefill(qt, k_cache, v_cache, batch.block_tables, batch.query_start_loc,
                                              batch.seq_lens, scale, max_q, max_seq, s.window_left);
  attn = attn.reshape({T, q});
  hook("attention_output", attn);
  at::Tensor o = tp.row_linear(attn, w.o_w, w.o_b);  // [T, H]
  hook("attention", o);
  return o;
}

}  // namespace infinilm::models::layers
