// LlamaForCausalLM: weight layout (fused QKV and gate/up with HF-named views), loading, and forward.
#include "csrc/models/llama/model.h"

#include <c10/util/Exception.h>

#include <cmath>
#include <cstdlib>

#include "csrc/ops/ops.h"

namespace infinilm::models::llama {

namespace {
std::string layer_name(int64_t i, const char* suffix) { return "model.layers." + std::to_string(i) + "." + suffix; }

// Steps of at most this many tokens stream weights (decode steps, small mixed ones): their products are
// bound by the bytes of the weights, and rope, attention and the norms between them leave HBM idle.
constexpr int64_t kPrefetchMaxTokens = 64;

// Bytes of weights requested into L2 at each prefetch point: INFINILM_L2_PREFETCH_MB (default 24; the CUDA side
// also caps a request at half the L2).
int64_t prefetch_budget() {
  const char* v = std::getenv("INFINILM_L2_PREFETCH_MB");
  return (v != nullptr && v[0] != '\0' ? std::atoll(v) : 24) << 20;
}

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
    L.attn.qkv_w = weight({q + 2 * kv, H}, opts);
    if (c.attention_bias) L.attn.qkv_b = at::empty({q + 2 * kv}, opts);
    L.attn.o_w = weight({H, q}, opts);
    if (c.o_proj_bias()) L.attn.o_b = at::empty({H}, opts);
    L.mlp.gate_up_w = weight({2 * inter_, H}, opts);
    L.mlp.down_w = weight({H, inter_}, opts);
    if (c.mlp_bias) {
      L.mlp.gate_up_b = at::empty({2 * inter_}, opts);
      L.mlp.down_b = at::empty({H}, opts);
    }
    // HF names in HF's state_dict order; q/k/v and gate/up are views into the fused buffers.
    const int64_t qkv_off[3] = {0, q, q + kv}, qkv_len[3] = {q, kv, kv};
    const char* qkv_names[3] = {"q_proj", "k_proj", "v_proj"};
    for (int j = 0; j < 3; ++j) {
      const std::string base = std::string("self_attn.") + qkv_names[j];
      add_param(layer_name(i, (base + ".weight").c_str()), L.attn.qkv_w.narrow(0, qkv_off[j], qkv_len[j]), 0);
      if (L.attn.qkv_b.defined()) add_param(layer_name(i, (base + ".bias").c_str()), L.attn.qkv_b.narrow(0, qkv_off[j], qkv_len[j]), 0);
    }
    add_param(layer_name(i, "self_attn.o_proj.weight"), L.attn.o_w, 1);
    if (L.attn.o_b.defined()) add_param(layer_name(i, "self_attn.o_proj.bias"), L.attn.o_b, -1);
    if (c.qk_norm()) {  // per head, so every rank holds the whole [head_dim] weight
      L.attn.q_norm = at::empty({D}, opts);
      L.attn.k_norm = at::empty({D}, opts);
      add_param(layer_name(i, "self_attn.q_norm.weight"), L.attn.q_norm, -1);
      add_param(layer_name(i, "self_attn.k_norm.weight"), L.attn.k_norm, -1);
    }
    const char* mlp_names[2] = {"gate_proj", "up_proj"};
    for (int j = 0; j < 2; ++j) {
      const std::string base = std::string("mlp.") + mlp_names[j];
      add_param(layer_name(i, (base + ".weight").c_str()), L.mlp.gate_up_w.narrow(0, j * inter_, inter_), 0);
      if (L.mlp.gate_up_b.defined()) add_param(layer_name(i, (base + ".bias").c_str()), L.mlp.gate_up_b.narrow(0, j * inter_, inter_), 0);
    }
    add_param(layer_name(i, "mlp.down_proj.weight"), L.mlp.down_w, 1);
    if (L.mlp.down_b.defined()) add_param(layer_name(i, "mlp.down_proj.bias"), L.mlp.down_b, -1);
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

at::Tensor LlamaForCausalLM::forward(const ForwardBatch& batch, cache::KVCache& cache,
                                     const debug_utils::HookRegistry* hooks) const {
  const auto& c = config_;
  const layers::Hooks hook(hooks);
  const layers::TensorParallel tp{tp_rank_, tp_size_, comm_};
  const layers::AttentionShape shape{q_heads_, kv_heads_, c.head_dim, c.rms_norm_eps,
                                     c.sliding_window > 0 ? c.sliding_window - 1 : -1};

  at::Tensor h = at::embedding(embed_, batch.input_ids);  // [T, H]
  hook("embed_tokens", h);
  // L2 prefetch (ops.h, opt-in): once a layer's QKV product is queued, the bytes of the products after rope and
  // attention (o_proj, then gate/up, then down) up to the budget; in mode 2 also the next layer's QKV weights
  // once the down projection is queued. Each request runs on a side stream beside the queued kernels.
  const int prefetch_mode = h.is_cuda() && h.size(0) <= kPrefetchMaxTokens ? infinilm::l2_prefetch_mode() : 0;
  const int64_t budget = prefetch_mode > 0 ? prefetch_budget() : 0;
  at::Tensor residual;
  for (int64_t i = 0; i < c.num_hidden_layers; ++i) {
    const Layer& L = layers_[i];
    const layers::Hooks layer_hook = hook.at(i);
    at::Tensor x;
    if (i == 0) {
      residual = h;
      x = infinilm::rms_norm(h, L.input_norm, c.rms_norm_eps);
    } else {
      infinilm::fused_add_rms_norm(h, residual, L.input_norm, c.rms_norm_eps);  // residual += h; h = norm
      x = h;
    }
    std::function<void()> after_qkv;
    if (prefetch_mode > 0) {
      after_qkv = [&L, budget] {
        int64_t left = budget;
        for (const at::Tensor* w : {&L.attn.o_w, &L.mlp.gate_up_w, &L.mlp.down_w}) {
          if (left < 16) break;
          left -= infinilm::l2_prefetch(*w, left);
        }
      };
    }
    at::Tensor o = layers::paged_self_attention(L.attn, shape, x, batch, cache.key(i), cache.value(i), rope_, tp,
                                                layer_hook, after_qkv);
    infinilm::fused_add_rms_norm(o, residual, L.post_norm, c.rms_norm_eps);  // residual += o; o = norm
    h = layers::gated_mlp(L.mlp, o, tp, layer_hook);
    if (prefetch_mode >= 2 && i + 1 < c.num_hidden_layers) infinilm::l2_prefetch(layers_[i + 1].attn.qkv_w, budget);
    if (layer_hook.on()) layer_hook("output", residual + h);
  }
  // Only each request's last token needs the final norm and the lm_head.
  // In a decode step every token is a request's last: no gather (two launches) needed.
  at::Tensor last_h = batch.is_decode ? h : h.index_select(0, batch.last_token_idx);
  at::Tensor last_res = batch.is_decode ? residual : residual.index_select(0, batch.last_token_idx);
  infinilm::fused_add_rms_norm(last_h, last_res, norm_, c.rms_norm_eps);
  hook("final_norm", last_h);
  at::Tensor logits = infinilm::linear(last_h, lm_head()).to(at::kFloat);  // [n, V]
  if (prefetch_mode > 0) infinilm::l2_prefetch_join(logits);
  hook("logits", logits);
  return logits;
}

}  // namespace infinilm::models::llama
