// LlamaForCausalLM: weight layout (fused QKV and gate/up with HF-named views), loading, and forward.
#include "csrc/models/llama/model.h"

#include <c10/util/Exception.h>

#include <cmath>

#include "csrc/ops/ops.h"

namespace infinilm::models::llama {

namespace {
std::string layer_name(int64_t i, const char* suffix) { return "model.layers." + std::to_string(i) + "." + suffix; }

// A linear weight [out, in]: row-major, the checkpoint's own layout. (Storing it transposed made MKL's
// batch-1 sgemv about 20% faster on the 2-core CI machine but batch-8 sgemm about 40% slower, so the plain
// layout stays.)
at::Tensor weight(std::initializer_list<int64_t> shape, const at::TensorOptions& opts) {
  return at::empty(std::vector<int64_t>(shape), opts);
}
}  // namespace

LlamaForCausalLM::LlamaForCausalLM(const LlamaConfig& config, int64_t tp_rank, int64_t tp_size, at::Device device,
                                   std::shared_ptr<dist::Communicator> comm)
    : config_(config), tp_rank_(tp_rank), tp_size_(tp_size), device_(device), comm_(std::move(comm)) {
  config_.validate();
  const auto& c = config_;
  TORCH_CHECK_VALUE(c.num_key_value_heads % tp_size == 0, "tensor parallelism: 'num_key_value_heads' (",
                    c.num_key_value_heads, ") must be divisible by tp_size (", tp_size, ")");
  TORCH_CHECK_VALUE(c.intermediate_size % tp_size == 0, "tensor parallelism: 'intermediate_size' (",
                    c.intermediate_size, ") must be divisible by tp_size (", tp_size, ")");
  TORCH_CHECK_VALUE(tp_size == 1 || comm_ != nullptr, "tensor parallelism with tp_size ", tp_size,
                    " needs a communicator for rank ", tp_rank);
  q_heads_ = c.num_attention_heads / tp_size;
  kv_heads_ = c.num_key_value_heads / tp_size;
  inter_ = c.intermediate_size / tp_size;
  const int64_t H = c.hidden_size, D = c.head_dim, V = c.vocab_size;
  const auto opts = at::TensorOptions().dtype(c.scalar_type()).device(device);

  embed_ = at::empty({V, H}, opts);
  add_param("model.embed_tokens.weight", embed_, -1);
  const int64_t q = q_heads_ * D, kv = kv_heads_ * D;
  for (int64_t i = 0; i < c.num_hidden_layers; ++i) {
    Layer L;
    L.input_norm = at::empty({H}, opts);
    L.post_norm = at::empty({H}, opts);
    L.qkv_w = weight({q + 2 * kv, H}, opts);
    if (c.attention_bias) L.qkv_b = at::empty({q + 2 * kv}, opts);
    L.o_w = weight({H, q}, opts);
    if (c.o_proj_bias()) L.o_b = at::empty({H}, opts);
    L.gate_up_w = weight({2 * inter_, H}, opts);
    L.down_w = weight({H, inter_}, opts);
    if (c.mlp_bias) {
      L.gate_up_b = at::empty({2 * inter_}, opts);
      L.down_b = at::empty({H}, opts);
    }
    // HF names in HF's state_dict order; q/k/v and gate/up are views into the fused buffers.
    const int64_t qkv_off[3] = {0, q, q + kv}, qkv_len[3] = {q, kv, kv};
    const char* qkv_names[3] = {"q_proj", "k_proj", "v_proj"};
    for (int j = 0; j < 3; ++j) {
      const std::string base = std::string("self_attn.") + qkv_names[j];
      add_param(layer_name(i, (base + ".weight").c_str()), L.qkv_w.narrow(0, qkv_off[j], qkv_len[j]), 0);
      if (L.qkv_b.defined()) add_param(layer_name(i, (base + ".bias").c_str()), L.qkv_b.narrow(0, qkv_off[j], qkv_len[j]), 0);
    }
    add_param(layer_name(i, "self_attn.o_proj.weight"), L.o_w, 1);
    if (L.o_b.defined()) add_param(layer_name(i, "self_attn.o_proj.bias"), L.o_b, -1);
    if (c.qk_norm()) {  // per head, so every rank holds the whole [head_dim] weight
      L.q_norm = at::empty({D}, opts);
      L.k_norm = at::empty({D}, opts);
      add_param(layer_name(i, "self_attn.q_norm.weight"), L.q_norm, -1);
      add_param(layer_name(i, "self_attn.k_norm.weight"), L.k_norm, -1);
    }
    const char* mlp_names[2] = {"gate_proj", "up_proj"};
    for (int j = 0; j < 2; ++j) {
      const std::string base = std::string("mlp.") + mlp_names[j];
      add_param(layer_name(i, (base + ".weight").c_str()), L.gate_up_w.narrow(0, j * inter_, inter_), 0);
      if (L.gate_up_b.defined()) add_param(layer_name(i, (base + ".bias").c_str()), L.gate_up_b.narrow(0, j * inter_, inter_), 0);
    }
    add_param(layer_name(i, "mlp.down_proj.weight"), L.down_w, 1);
    if (L.down_b.defined()) add_param(layer_name(i, "mlp.down_proj.bias"), L.down_b, -1);
    add_param(layer_name(i, "input_layernorm.weight"), L.input_norm, -1);
    add_param(layer_name(i, "post_attention_layernorm.weight"), L.post_norm, -1);
    layers_.push_back(std::move(L));
  }
  norm_ = at::empty({H}, opts);
  add_param("model.norm.weight", norm_, -1);
  if (!c.tie_word_embeddings) {
    lm_head_ = weight({V, H}, opts);
    add_param("lm_head.weight", lm_head_, -1);
  }
  rope_ = infinilm::rope_cos_sin_cache(c.max_position_embeddings, D, c.rope_theta, c.rope_type, c.rope_factor,
                                       c.rope_low_freq_factor, c.rope_high_freq_factor,
                                       c.rope_original_max_position_embeddings)
              .to(device);
}

void LlamaForCausalLM::add_param(const std::string& name, at::Tensor dst, int shard_dim) {
  params_.emplace(name, Param{std::move(dst), shard_dim});
  order_.push_back(name);
  ++num_missing_;
}

std::vector<std::string> LlamaForCausalLM::missing_params() const {
  std::vector<std::string> out;
  for (const auto& name : order_) {
    if (!params_.at(name).loaded) out.push_back(name);
  }
  return out;
}

void LlamaForCausalLM::load_param(const std::string& name, const at::Tensor& full) {
  TORCH_CHECK_VALUE(full.defined(), "load_param: tensor for '", name, "' is undefined");
  TORCH_CHECK_TYPE(at::isFloatingType(full.scalar_type()), "load_param: '", name,
                   "' must be a floating-point tensor, got ", full.scalar_type());
  auto it = params_.find(name);
  if (it == params_.end() && name == "lm_head.weight" && config_.tie_word_embeddings) {
    // Tied checkpoints may still carry lm_head.weight (HF's model.state_dict() does): it is the embedding.
    it = params_.find("model.embed_tokens.weight");
  }
  TORCH_CHECK_VALUE(it != params_.end(), "load_param: unknown parameter name '", name, "' for this ",
                    config_.model_type, " config (", config_.num_hidden_layers, " layers, attention_bias=",
                    config_.attention_bias, ", tie_word_embeddings=", config_.tie_word_embeddings, ")");
  Param& p = it->second;
  std::vector<int64_t> expect = p.dst.sizes().vec();
  if (p.shard_dim >= 0) expect[p.shard_dim] *= tp_size_;
  TORCH_CHECK_VALUE(full.sizes().vec() == expect, "load_param: '", name, "' has shape ", full.sizes(),
                    " but the model expects ", at::IntArrayRef(expect));
  at::Tensor src = full;
  if (p.shard_dim >= 0 && tp_size_ > 1) {
    const int64_t n = p.dst.size(p.shard_dim);
    src = full.narrow(p.shard_dim, tp_rank_ * n, n);
  }
  p.dst.copy_(src);
  if (!p.loaded) --num_missing_;
  p.loaded = true;
}

StateDict LlamaForCausalLM::state_dict() const {
  StateDict out;
  for (const auto& name : order_) out.emplace_back(name, params_.at(name).dst);
  return out;
}

std::vector<ParamSpec> LlamaForCausalLM::param_specs() const {
  std::vector<ParamSpec> out;
  for (const auto& name : order_) {
    const Param& p = params_.at(name);
    std::vector<int64_t> shape = p.dst.sizes().vec();
    if (p.shard_dim >= 0) shape[p.shard_dim] *= tp_size_;
    out.push_back({name, std::move(shape), p.shard_dim});
  }
  return out;
}

cache::CacheShape LlamaForCausalLM::cache_shape() const {
  return {config_.num_hidden_layers, kv_heads_, config_.head_dim, config_.scalar_type(),
          config_.max_position_embeddings};
}

at::Tensor LlamaForCausalLM::row_parallel_linear(const at::Tensor& x, const at::Tensor& w,
                                                 const at::Tensor& b) const {
  if (tp_size_ == 1) return infinilm::linear(x, w, b);
  // Each rank holds a slice of the input features: partial sums, reduced, then the (replicated) bias once.
  at::Tensor y = infinilm::linear(x, w);
  comm_->all_reduce_sum(y);
  if (b.defined()) y.add_(b);
  return y;
}

at::Tensor LlamaForCausalLM::forward(const ForwardBatch& batch, cache::KVCache& cache,
                                     const debug_utils::HookRegistry* hooks) const {
  const auto& c = config_;
  const bool hooked = hooks != nullptr && hooks->has_hooks();
  // Names are built only when a registry is attached: "layer{i}_<suffix>" inside layers, "<suffix>" outside.
  auto hook = [&](const char* suffix, const at::Tensor& t, int64_t layer) {
    if (!hooked) return;
    hooks->call(layer < 0 ? std::string(suffix) : "layer" + std::to_string(layer) + "_" + suffix, t, layer);
  };
  const int64_t T = batch.input_ids.size(0), D = c.head_dim;
  const int64_t q = q_heads_ * D, kv = kv_heads_ * D;
  const double scale = 1.0 / std::sqrt(static_cast<double>(D));
  const std::optional<int64_t> max_seq = batch.max_seq_len, max_q = batch.max_query_len;

  at::Tensor h = at::embedding(embed_, batch.input_ids);  // [T, H]
  hook("embed_tokens", h, -1);
  at::Tensor residual;
  for (int64_t i = 0; i < c.num_hidden_layers; ++i) {
    const Layer& L = layers_[i];
    at::Tensor x;
    if (i == 0) {
      residual = h;
      x = infinilm::rms_norm(h, L.input_norm, c.rms_norm_eps);
    } else {
      infinilm::fused_add_rms_norm(h, residual, L.input_norm, c.rms_norm_eps);  // residual += h; h = norm
      x = h;
    }
    at::Tensor qkv = infinilm::linear(x, L.qkv_w, L.qkv_b);  // [T, q + 2 kv]
    at::Tensor qt = qkv.narrow(1, 0, q).view({T, q_heads_, D});
    at::Tensor kt = qkv.narrow(1, q, kv).view({T, kv_heads_, D});
    at::Tensor vt = qkv.narrow(1, q + kv, kv).view({T, kv_heads_, D});
    hook("attention_q", qt, i);
    hook("attention_k", kt, i);
    hook("attention_v", vt, i);
    if (L.q_norm.defined()) {  // Qwen3: RMSNorm over each head's head_dim features, before RoPE
      qt = infinilm::rms_norm(qt, L.q_norm, c.rms_norm_eps);
      kt = infinilm::rms_norm(kt, L.k_norm, c.rms_norm_eps);
    }
    infinilm::rotary_embedding(batch.positions, qt, kt, rope_, /*is_neox=*/true);
    hook("attention_q_rope", qt, i);
    hook("attention_k_rope", kt, i);
    infinilm::reshape_and_cache(kt, vt, cache.key(i), cache.value(i), batch.slot_mapping);
    at::Tensor attn =
        batch.is_decode
            ? infinilm::paged_attention_decode(qt, cache.key(i), cache.value(i), batch.block_tables, batch.seq_lens,
                                               scale, max_seq)
            : infinilm::paged_attention_prefill(qt, cache.key(i), cache.value(i), batch.block_tables,
                                                batch.query_start_loc, batch.seq_lens, scale, max_q, max_seq);
    attn = attn.reshape({T, q});
    hook("attention_output", attn, i);
    at::Tensor o = row_parallel_linear(attn, L.o_w, L.o_b);  // [T, H]
    hook("attention", o, i);
    infinilm::fused_add_rms_norm(o, residual, L.post_norm, c.rms_norm_eps);  // residual += o; o = norm
    at::Tensor gate_up = infinilm::linear(o, L.gate_up_w, L.gate_up_b);            // [T, 2 I]
    hook("mlp_gate_up", gate_up, i);
    at::Tensor act = infinilm::silu_and_mul(gate_up);  // [T, I]
    hook("mlp_intermediate", act, i);
    h = row_parallel_linear(act, L.down_w, L.down_b);  // [T, H]
    hook("mlp", h, i);
    if (hooked) hook("output", residual + h, i);
  }
  // Only each request's last token needs the final norm and the lm_head.
  at::Tensor last_h = h.index_select(0, batch.last_token_idx);
  at::Tensor last_res = residual.index_select(0, batch.last_token_idx);
  infinilm::fused_add_rms_norm(last_h, last_res, norm_, c.rms_norm_eps);
  hook("final_norm", last_h, -1);
  at::Tensor logits = infinilm::linear(last_h, lm_head()).to(at::kFloat);  // [n, V]
  hook("logits", logits, -1);
  return logits;
}

}  // namespace infinilm::models::llama
