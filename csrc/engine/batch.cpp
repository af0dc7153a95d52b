// Host-side validation of InferEngine inputs (static and paged) and the flattened ForwardBatch they become.
#include "csrc/engine/batch.h"

#include <c10/util/Exception.h>

#include "csrc/ops/ops.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <unordered_map>
#include <vector>

namespace infinilm::engine {

using models::llama::ForwardBatch;

namespace {

// int32/int64 tensor anywhere -> contiguous int64 on the CPU.
at::Tensor host_index(const at::Tensor& t, const char* name) {
  TORCH_CHECK_VALUE(t.defined(), "InferEngine.forward: '", name, "' is undefined");
  TORCH_CHECK_TYPE(t.scalar_type() == at::kLong || t.scalar_type() == at::kInt, "InferEngine.forward: '", name,
                   "' must be int64 or int32, got ", t.scalar_type());
  return t.to(at::kCPU, at::kLong).contiguous();
}

// A [n] tensor; [1, n] is accepted as well.
at::Tensor host_vector(const at::Tensor& t, const char* name, int64_t n, const char* what) {
  at::Tensor h = host_index(t, name);
  if (h.dim() == 2 && h.size(0) == 1) h = h.view({-1});
  TORCH_CHECK_VALUE(h.dim() == 1 && h.size(0) == n, "InferEngine.forward: '", name, "' must have shape [", n, "] (",
                    what, "), got ", h.sizes());
  return h;
}

// Fills the tensors derived from per-request lengths and checks the rope positions and token ids.
ForwardBatch finish(std::vector<int64_t>& ids, std::vector<int64_t>& pos, std::vector<int64_t>& slots,
                    const std::vector<int64_t>& cl, const std::vector<int64_t>& il, at::Tensor block_tables,
                    const models::llama::LlamaConfig& cfg) {
  const int64_t n = static_cast<int64_t>(il.size()), T = static_cast<int64_t>(ids.size());
  for (int64_t t = 0; t < T; ++t) {
    TORCH_CHECK_INDEX(ids[t] >= 0 && ids[t] < cfg.vocab_size, "InferEngine.forward: 'input_ids' value ", ids[t],
                      " (token ", t, " of the flattened batch) is outside the vocabulary [0, ", cfg.vocab_size, ")");
    TORCH_CHECK_INDEX(pos[t] >= 0 && pos[t] < cfg.max_position_embeddings, "InferEngine.forward: 'position_ids' value ",
                      pos[t], " (token ", t, ") is outside [0, max_position_embeddings = ",
                      cfg.max_position_embeddings, ")");
  }
  ForwardBatch b;
  auto vec = [](std::vector<int64_t>& v) { return at::tensor(v, at::kLong); };
  b.input_ids = vec(ids);
  b.positions = vec(pos);
  b.slot_mapping = vec(slots);
  b.block_tables = std::move(block_tables);
  std::vector<int64_t> seq(n), qsl(n + 1, 0), last(n);
  for (int64_t r = 0; r < n; ++r) {
    seq[r] = cl[r] + il[r];
    qsl[r + 1] = qsl[r] + il[r];
    last[r] = qsl[r + 1] - 1;
    b.max_query_len = std::max(b.max_query_len, il[r]);
    b.max_seq_len = std::max(b.max_seq_len, seq[r]);
  }
  b.is_decode = b.max_query_len == 1;
  b.seq_lens = vec(seq);
  b.query_start_loc = vec(qsl);
  b.last_token_idx = vec(last);
  return b;
}

void check_lengths(int64_t r, int64_t cl, int64_t il, int64_t max_new, int64_t capacity, const char* capacity_what) {
  TORCH_CHECK_VALUE(il >= 1 && il <= max_new, "InferEngine.forward: 'input_lengths'[", r, "] = ", il,
                    " must lie in [1, ", max_new, "]");
  TORCH_CHECK_VALUE(cl >= 0, "InferEngine.forward: 'cache_lengths'[", r, "] = ", cl, " must be >= 0");
  TORCH_CHECK_VALUE(cl + il <= capacity, "InferEngine.forward: request ", r, " needs ", cl + il,
                    " cache tokens ('cache_lengths' ", cl, " + 'input_lengths' ", il, ") but ", capacity_what, " is ",
                    capacity);
}

ForwardBatch build_static(const Input& in, const models::llama::LlamaConfig& cfg, const cache::KVCache& cache) {
  TORCH_CHECK_VALUE(!in.block_tables && !in.slot_mapping, "InferEngine.forward: 'block_tables'/'slot_mapping' ",
                    "were given but the engine has a static cache; create it with a PagedKVCacheConfig");
  at::Tensor ids = host_index(*in.input_ids, "input_ids");
  if (ids.dim() == 1) ids = ids.unsqueeze(0);
  TORCH_CHECK_VALUE(ids.dim() == 2 && ids.size(0) > 0 && ids.size(1) > 0,
                    "InferEngine.forward: static-cache 'input_ids' must have shape [batch, seq_len], got ", ids.sizes());
  const int64_t B = ids.size(0), S = ids.size(1);
  TORCH_CHECK_VALUE(B <= cache.max_batch_size(), "InferEngine.forward: 'input_ids' has batch ", B,
                    " but the static cache holds max_batch_size = ", cache.max_batch_size());
  at::Tensor cl = in.cache_lengths ? host_vector(*in.cache_lengths, "cache_lengths", B, "one per row")
                                   : at::zeros({B}, at::kLong);
  at::Tensor il = in.input_lengths ? host_vector(*in.input_lengths, "input_lengths", B, "one per row")
                                   : at::full({B}, S, at::kLong);
  at::Tensor pos;
  if (in.position_ids) {
    pos = host_index(*in.position_ids, "position_ids");
    if (pos.dim() == 1 && B == 1) pos = pos.unsqueeze(0);
    TORCH_CHECK_VALUE(pos.sizes() == ids.sizes(), "InferEngine.forward: 'position_ids' must have the shape of ",
                      "'input_ids' ", ids.sizes(), ", got ", pos.sizes());
  } else {
    pos = cl.unsqueeze(1) + at::arange(S, at::kLong).unsqueeze(0);
  }
  const int64_t* idp = ids.data_ptr<int64_t>();
  const int64_t* pp = pos.data_ptr<int64_t>();
  const int64_t* clp = cl.data_ptr<int64_t>();
  const int64_t* ilp = il.data_ptr<int64_t>();
  const int64_t row_slots = cache.blocks_per_row() * cache.block_size();
  std::vector<int64_t> fids, fpos, slots, cls(B), ils(B);
  for (int64_t b = 0; b < B; ++b) {
    check_lengths(b, clp[b], ilp[b], S, cache.max_cache_len(), "the static cache's max_cache_len");
    cls[b] = clp[b];
    ils[b] = ilp[b];
    for (int64_t j = 0; j < ilp[b]; ++j) {  // padding beyond input_lengths[b] is dropped
      fids.push_back(idp[b * S + j]);
      fpos.push_back(pp[b * S + j]);
      slots.push_back(b * row_slots + clp[b] + j);
    }
  }
  at::Tensor bt = at::arange(B * cache.blocks_per_row(), at::kLong).view({B, cache.blocks_per_row()});
  return finish(fids, fpos, slots, cls, ils, bt, cfg);
}

ForwardBatch build_paged(const Input& in, const models::llama::LlamaConfig& cfg, const cache::KVCache& cache) {
  TORCH_CHECK_VALUE(in.block_tables && in.slot_mapping, "InferEngine.forward: the engine has a paged cache: ",
                    "'block_tables' and 'slot_mapping' are required");
  at::Tensor ids = host_index(*in.input_ids, "input_ids");
  if (ids.dim() == 2 && ids.size(0) == 1) ids = ids.view({-1});
  TORCH_CHECK_VALUE(ids.dim() == 1 && ids.size(0) > 0, "InferEngine.forward: paged 'input_ids' must have shape ",
                    "[1, T] or [T] (all requests' new tokens), got ", ids.sizes());
  const int64_t T = ids.size(0);
  at::Tensor bt = host_index(*in.block_tables, "block_tables");
  TORCH_CHECK_VALUE(bt.dim() == 2 && bt.size(0) > 0, "InferEngine.forward: 'block_tables' must have shape ",
                    "[n_requests, max_blocks], got ", bt.sizes());
  const int64_t n = bt.size(0), mb = bt.size(1), bs = cache.block_size();
  TORCH_CHECK_VALUE(in.input_lengths || n == 1, "InferEngine.forward: 'input_lengths' is required with ", n,
                    " requests");
  at::Tensor il = in.input_lengths ? host_vector(*in.input_lengths, "input_lengths", n, "one per block_tables row")
                                   : at::full({1}, T, at::kLong);
  at::Tensor cl = in.cache_lengths ? host_vector(*in.cache_lengths, "cache_lengths", n, "one per block_tables row")
                                   : at::zeros({n}, at::kLong);
  const int64_t total = il.sum().item<int64_t>();
  TORCH_CHECK_VALUE(total == T, "InferEngine.forward: 'input_lengths' sum to ", total, " but 'input_ids' has ", T,
                    " tokens");
  at::Tensor slot = host_vector(*in.slot_mapping, "slot_mapping", T, "one per new token");
  at::Tensor pos;
  if (in.position_ids) pos = host_vector(*in.position_ids, "position_ids", T, "one per new token");
  const int64_t* idp = ids.data_ptr<int64_t>();
  const int64_t* btp = bt.data_ptr<int64_t>();
  const int64_t* clp = cl.data_ptr<int64_t>();
  const int64_t* ilp = il.data_ptr<int64_t>();
  const int64_t* sp = slot.data_ptr<int64_t>();
  std::vector<int64_t> fids(idp, idp + T), fpos(T), slots(sp, sp + T), cls(n), ils(n);
  std::unordered_map<int64_t, int64_t> writer;  // slot -> token writing it
  int64_t t = 0;
  for (int64_t r = 0; r < n; ++r) {
    check_lengths(r, clp[r], ilp[r], T, mb * bs, "a 'block_tables' row holds (max_blocks x block_size)");
    cls[r] = clp[r];
    ils[r] = ilp[r];
    const int64_t used = (clp[r] + ilp[r] + bs - 1) / bs;
    for (int64_t k = 0; k < used; ++k) {
      const int64_t id = btp[r * mb + k];
      TORCH_CHECK_INDEX(id >= 0 && id < cache.num_blocks(), "InferEngine.forward: 'block_tables'[", r, ", ", k,
                        "] = ", id, " is outside the cache's blocks [0, ", cache.num_blocks(), ")");
    }
    for (int64_t j = 0; j < ilp[r]; ++j, ++t) {
      const int64_t p = clp[r] + j;
      const int64_t want = btp[r * mb + p / bs] * bs + p % bs;
      TORCH_CHECK_INDEX(sp[t] == want, "InferEngine.forward: 'slot_mapping'[", t, "] = ", sp[t], " but request ", r,
                        "'s block table puts its cache token ", p, " at slot ", want, " (block_size ", bs, ")");
      auto [it, fresh] = writer.emplace(sp[t], t);
      TORCH_CHECK_INDEX(fresh, "InferEngine.forward: 'slot_mapping' writes slot ", sp[t], " twice (tokens ", it->second,
                        " and ", t, ")");
      fpos[t] = in.position_ids ? pos.data_ptr<int64_t>()[t] : p;
    }
  }
  return finish(fids, fpos, slots, cls, ils, bt, cfg);
}

}  // namespace

ForwardBatch build_batch(const Input& in, const models::llama::LlamaConfig& cfg, const cache::KVCache& cache) {
  TORCH_CHECK_VALUE(in.input_ids.has_value(), "InferEngine.forward: 'input_ids' is required");
  return cache.paged() ? build_paged(in, cfg, cache) : build_static(in, cfg, cache);
}

namespace {

// A float per-request tensor [n] -> contiguous float32 on the CPU.
at::Tensor host_float(const at::Tensor& t, const char* name, int64_t n) {
  TORCH_CHECK_TYPE(at::isFloatingType(t.scalar_type()), "InferEngine.forward: '", name,
                   "' must be a float tensor, got ", t.scalar_type());
  TORCH_CHECK_VALUE(t.dim() == 1 && t.size(0) == n, "InferEngine.forward: '", name, "' must have shape [", n,
                    "] (one per request), got ", t.sizes());
  return t.to(at::kCPU, at::kFloat).contiguous();
}

// Each value of a float [n] vector passes ok(v), else an error naming field, row and value.
template <typename Ok>
void check_each(const at::Tensor& h, const char* name, const char* what, Ok ok) {
  const float* v = h.data_ptr<float>();
  for (int64_t r = 0; r < h.numel(); ++r) {
    TORCH_CHECK_VALUE(ok(v[r]), "InferEngine.forward: '", name, "'[", r, "] = ", v[r], " must be ", what);
  }
}

// Token ids [n, L] (int32/int64, -1 pads) -> contiguous int64 on the CPU, values in [-1, vocab_size).
at::Tensor host_token_ids(const std::optional<at::Tensor>& t, const char* name, int64_t n, int64_t vocab_size) {
  TORCH_CHECK_VALUE(t.has_value(), "InferEngine.forward: penalties need '", name, "' [", n,
                    ", L] (token ids, -1 pads; [", n, ", 0] for none)");
  at::Tensor h = host_index(*t, name);
  TORCH_CHECK_VALUE(h.dim() == 2 && h.size(0) == n, "InferEngine.forward: '", name, "' must have shape [", n,
                    ", L] (one row per request, -1 pads), got ", h.sizes());
  const int64_t* p = h.data_ptr<int64_t>();
  for (int64_t i = 0; i < h.numel(); ++i) {
    TORCH_CHECK_INDEX(p[i] >= -1 && p[i] < vocab_size, "InferEngine.forward: '", name, "'[", i / h.size(1), ", ",
                      i % h.size(1), "] = ", p[i], " is outside [-1, vocab_size = ", vocab_size, ")");
  }
  return h;
}

}  // namespace

SamplingParams build_sampling(const Input& in, int64_t n, int64_t vocab_size) {
  TORCH_CHECK_VALUE(in.temperature >= 0, "InferEngine.forward: 'temperature' must be >= 0, got ", in.temperature);
  TORCH_CHECK_VALUE(in.top_p >= 0 && in.top_p <= 1, "InferEngine.forward: 'top_p' must lie in [0, 1], got ", in.top_p);
  TORCH_CHECK_VALUE(in.top_k >= -1, "InferEngine.forward: 'top_k' must be >= 1, or 0 / -1 for no limit, got ",
                    in.top_k);
  const int64_t max_k = std::min<int64_t>(vocab_size, 1024);
  TORCH_CHECK_VALUE(in.return_logprobs >= -1 && in.return_logprobs <= max_k, "InferEngine.forward: ",
                    "'return_logprobs' must be -1 (off) or a top-k count in [0, ", max_k, "], got ",
                    in.return_logprobs);
  SamplingParams s;
  s.temperature = in.temperatures ? host_float(*in.temperatures, "temperatures", n)
                                  : at::full({n}, in.temperature, at::kFloat);
  s.top_p = in.top_ps ? host_float(*in.top_ps, "top_ps", n) : at::full({n}, in.top_p, at::kFloat);
  s.top_k = in.top_ks ? host_vector(*in.top_ks, "top_ks", n, "one per request").clone()
                      : at::full({n}, in.top_k, at::kLong);
  s.min_p = in.min_ps ? host_float(*in.min_ps, "min_ps", n) : at::zeros({n}, at::kFloat);
  if (in.temperatures) {
    check_each(s.temperature, "temperatures", "finite and >= 0 (0 = greedy)",
               [](float v) { return std::isfinite(v) && v >= 0.f; });
  }
  if (in.top_ps) check_each(s.top_p, "top_ps", "in (0, 1] (1 = off)", [](float v) { return v > 0.f && v <= 1.f; });
  if (in.min_ps) check_each(s.min_p, "min_ps", "in [0, 1] (0 = off)", [](float v) { return v >= 0.f && v <= 1.f; });
  float* t = s.temperature.data_ptr<float>();
  float* p = s.top_p.data_ptr<float>();
  int64_t* k = s.top_k.data_ptr<int64_t>();
  for (int64_t r = 0; r < n; ++r) {
    TORCH_CHECK_VALUE(k[r] >= -1, "InferEngine.forward: 'top_ks'[", r, "] = ", k[r],
                      " must be >= 1, or 0 / -1 for no limit");
    if (k[r] <= 0 || k[r] >= vocab_size) k[r] = 0;
    if (t[r] == 0 || k[r] == 1 || p[r] == 0) t[r] = 0, k[r] = 0, p[r] = 1;  // greedy (top_p 0: the scalar only)
  }
  if (in.seeds) {
    s.seeds = host_vector(*in.seeds, "seeds", n, "one per request");
  } else {
    s.seeds = in.seed ? at::arange(n, at::kLong).add_(*in.seed)
                      : at::randint(std::numeric_limits<int64_t>::max(), {n}, at::kLong);
  }
  if (in.repetition_penalties || in.presence_penalties || in.frequency_penalties) {
    s.repetition = in.repetition_penalties ? host_float(*in.repetition_penalties, "repetition_penalties", n)
                                           : at::ones({n}, at::kFloat);
    s.presence = in.presence_penalties ? host_float(*in.presence_penalties, "presence_penalties", n)
                                       : at::zeros({n}, at::kFloat);
    s.frequency = in.frequency_penalties ? host_float(*in.frequency_penalties, "frequency_penalties", n)
                                         : at::zeros({n}, at::kFloat);
    check_each(s.repetition, "repetition_penalties", "finite and > 0 (1 = off)",
               [](float v) { return std::isfinite(v) && v > 0.f; });
    check_each(s.presence, "presence_penalties", "finite (0 = off)", [](float v) { return std::isfinite(v); });
    check_each(s.frequency, "frequency_penalties", "finite (0 = off)", [](float v) { return std::isfinite(v); });
    s.prompt_ids = host_token_ids(in.prompt_token_ids, "prompt_token_ids", n, vocab_size);
    s.output_ids = host_token_ids(in.output_token_ids, "output_token_ids", n, vocab_size);
    // All neutral: skip the op (and keep the step eligible for a CUDA graph).
    s.penalties = !(s.repetition.eq(1).all().item<bool>() && s.presence.eq(0).all().item<bool>() &&
                    s.frequency.eq(0).all().item<bool>());
  }
  s.logprobs_k = in.return_logprobs;
  return s;
}

at::Tensor run_sampler(at::Tensor& logits, const SamplingParams& sp) {
  const at::Device dev = logits.device();
  if (sp.penalties) {
    infinilm::apply_penalties(logits, sp.prompt_ids.to(dev), sp.output_ids.to(dev), sp.repetition.to(dev),
                              sp.presence.to(dev), sp.frequency.to(dev));
  }
  const bool any_min_p = sp.min_p.gt(0).any().item<bool>();
  return infinilm::sample(logits, sp.temperature.to(dev), sp.top_k.to(dev), sp.top_p.to(dev), sp.seeds.to(dev),
                          any_min_p ? std::optional<at::Tensor>(sp.min_p.to(dev)) : std::nullopt);
}

ForwardBatch to_device(const ForwardBatch& b, at::Device device) {
  if (device.is_cpu()) return b;
  ForwardBatch d = b;
  for (at::Tensor* t : {&d.input_ids, &d.positions, &d.slot_mapping, &d.block_tables, &d.seq_lens,
                        &d.query_start_loc, &d.last_token_idx}) {
    *t = t->to(device, /*non_blocking=*/false);
  }
  return d;
}

}  // namespace infinilm::engine
