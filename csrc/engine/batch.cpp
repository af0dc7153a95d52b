// Host-side validation of InferEngine inputs (static and paged) and the flattened ForwardBatch they become.
#include "csrc/engine/batch.h"

#include <c10/util/Exception.h>

#include <algorithm>
#include <limits>
#include <unordered_map>
#include <vector>

namespace infinilm::engine {

using models::ForwardBatch;

namespace {

// int32/int64 tensor anywhere -> contiguous int64 on the CPU.
at::Tensor host_index(const at::Tensor& t, const char* name) {
  TORCH_CHECK_VALUE(t.defined(), "InferEngine.forward: '", name, "' is undefined");
  TORCH_CHECK_TYPE(t.scalar_type() == at::kLong || t.scalar_type() == at::kInt, "InferEngine.forward: '", name,
                   "' must be int64 or int32, got ", t.scalar_type());
  return t.to(at::kCPU, at::kLong).contiguous();
}

// A [n] tensor. Per-token vectors (flat_ok) also take [1, n], the form of paged 'input_ids'; per-request
// lengths must be 1-D, since a 2-D one has no single reading (rows of a batch, or one request's tokens?).
at::Tensor host_vector(const at::Tensor& t, const char* name, int64_t n, const char* what, bool flat_ok = false) {
  at::Tensor h = host_index(t, name);
  if (flat_ok && h.dim() == 2 && h.size(0) == 1) h = h.view({-1});
  TORCH_CHECK_VALUE(h.dim() == 1 && h.size(0) == n, "InferEngine.forward: '", name, "' must have shape [", n, "] (",
                    what, "), got ", h.sizes());
  return h;
}

// Fills the tensors derived from per-request lengths and checks the rope positions and token ids.
ForwardBatch finish(std::vector<int64_t>& ids, std::vector<int64_t>& pos, std::vector<int64_t>& slots,
                    const std::vector<int64_t>& cl, const std::vector<int64_t>& il, at::Tensor block_tables,
                    const models::BatchLimits& cfg) {
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

// Paged steps, after the per-token slot checks. A block written in this step (slot_mapping) is used by no
// other request of the step: prefix sharing lets requests read the same full blocks, never one being written.
// A row lists each block once. Every cached token a request reads was written by an earlier step, which also
// means a write never leaves a hole before it in its block.
void check_paged_blocks(const int64_t* btp, int64_t mb, const std::vector<int64_t>& cl, const std::vector<int64_t>& il,
                        const cache::KVCache& cache, CacheWrites* writes) {
  const int64_t n = static_cast<int64_t>(cl.size()), bs = cache.block_size();
  std::unordered_map<int64_t, int64_t> writer;  // block -> request writing it
  for (int64_t r = 0; r < n; ++r) {
    for (int64_t k = cl[r] / bs; k <= (cl[r] + il[r] - 1) / bs; ++k) {
      const int64_t id = btp[r * mb + k];
      auto [it, fresh] = writer.emplace(id, r);
      TORCH_CHECK_VALUE(fresh || it->second == r, "InferEngine.forward: requests ", it->second, " and ", r,
                        " both write block ", id, " in one step ('block_tables'[", r, ", ", k, "], 'slot_mapping')");
    }
  }
  for (int64_t r = 0; r < n; ++r) {
    std::unordered_map<int64_t, int64_t> seen;  // block -> its first index in this row
    for (int64_t k = 0; k < (cl[r] + il[r] + bs - 1) / bs; ++k) {
      const int64_t id = btp[r * mb + k];
      auto [first, fresh] = seen.emplace(id, k);
      TORCH_CHECK_VALUE(fresh, "InferEngine.forward: 'block_tables'[", r, "] lists block ", id, " twice (at ",
                        first->second, " and ", k, ")");
      auto w = writer.find(id);
      TORCH_CHECK_VALUE(w == writer.end() || w->second == r, "InferEngine.forward: request ", r,
                        " reads block ", id, " ('block_tables'[", r, ", ", k, "]) that request ", w->second,
                        " writes in the same step ('slot_mapping'); only full, read-only blocks may be shared");
      const int64_t cached = std::min(bs, cl[r] - k * bs);  // tokens of this block the request reads as cached
      TORCH_CHECK_VALUE(cached <= cache.filled(id), "InferEngine.forward: 'cache_lengths'[", r, "] = ", cl[r],
                        " needs ", cached, " cached tokens in block ", id, " ('block_tables'[", r, ", ", k,
                        "]) but earlier steps wrote ", cache.filled(id), " there: attention would read tokens ",
                        "that were never written");
    }
  }
  if (!writes) return;
  for (int64_t r = 0; r < n; ++r) {
    for (int64_t k = cl[r] / bs; k <= (cl[r] + il[r] - 1) / bs; ++k) {
      writes->push_back({btp[r * mb + k], std::max<int64_t>(cl[r] - k * bs, 0), std::min(cl[r] + il[r] - k * bs, bs)});
    }
  }
}

// input_ids, with 0 (a valid id) where a token takes an earlier step's sampled id, and (prev_output given)
// the prev_output row of every token, -1 where it takes its own input_ids value; both of input_ids' shape.
struct Tokens {
  at::Tensor ids, src;
};

Tokens resolve_tokens(const Input& in, bool paged, int64_t prev_rows) {
  Tokens t;
  if (prev_rows < 0) {
    TORCH_CHECK_VALUE(!in.prev_token_index, "InferEngine.forward: 'prev_token_index' was given without 'prev_output'");
    TORCH_CHECK_VALUE(in.input_ids.has_value(), "InferEngine.forward: 'input_ids' is required");
    t.ids = host_index(*in.input_ids, "input_ids");
    return t;
  }
  if (!in.prev_token_index) {
    TORCH_CHECK_VALUE(!in.input_ids, "InferEngine.forward: 'input_ids' and 'prev_output' were given without ",
                      "'prev_token_index': give it to mix them (without it every token is prev_output's id of ",
                      "its row)");
    t.src = at::arange(prev_rows, at::kLong);
    if (!paged) t.src = t.src.view({prev_rows, 1});
    t.ids = at::zeros_like(t.src);
    return t;
  }
  // Paged per-token vectors take [T] or [1, T].
  auto flat = [paged](at::Tensor x) { return paged && x.dim() == 2 && x.size(0) == 1 ? x.view({-1}) : x; };
  t.src = flat(host_index(*in.prev_token_index, "prev_token_index"));
  if (in.input_ids) {
    t.ids = flat(host_index(*in.input_ids, "input_ids")).clone();
    TORCH_CHECK_VALUE(t.ids.sizes() == t.src.sizes(), "InferEngine.forward: 'prev_token_index' must have the ",
                      "shape of 'input_ids' ", t.ids.sizes(), ", got ", t.src.sizes());
  } else {
    t.ids = at::zeros_like(t.src);
  }
  const int64_t* sp = t.src.data_ptr<int64_t>();
  int64_t* ip = t.ids.data_ptr<int64_t>();
  for (int64_t i = 0; i < t.src.numel(); ++i) {
    TORCH_CHECK_INDEX(sp[i] >= -1 && sp[i] < prev_rows, "InferEngine.forward: 'prev_token_index' value ", sp[i],
                      " (element ", i, ") must be -1 (the token's own 'input_ids') or a row of 'prev_output' [0, ",
                      prev_rows, ")");
    TORCH_CHECK_VALUE(sp[i] >= 0 || in.input_ids, "InferEngine.forward: 'prev_token_index' element ", i,
                      " is -1 (the token's own id) but 'input_ids' was not given");
    if (sp[i] >= 0) ip[i] = 0;
  }
  return t;
}

ForwardBatch build_static(const Input& in, Tokens tok, const models::BatchLimits& cfg, const cache::KVCache& cache,
                          CacheWrites* writes, std::vector<int64_t>* fsrc) {
  TORCH_CHECK_VALUE(!in.block_tables && !in.slot_mapping, "InferEngine.forward: 'block_tables'/'slot_mapping' ",
                    "were given but the engine has a static cache; create it with a PagedKVCacheConfig");
  at::Tensor ids = tok.ids;
  if (ids.dim() == 1) ids = ids.unsqueeze(0);
  if (tok.src.defined()) tok.src = tok.src.view(ids.sizes());
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
  const int64_t* srcp = tok.src.defined() ? tok.src.data_ptr<int64_t>() : nullptr;
  const int64_t* pp = pos.data_ptr<int64_t>();
  const int64_t* clp = cl.data_ptr<int64_t>();
  const int64_t* ilp = il.data_ptr<int64_t>();
  const int64_t row_slots = cache.blocks_per_row() * cache.block_size();
  std::vector<int64_t> fids, fpos, slots, cls(B), ils(B);
  for (int64_t b = 0; b < B; ++b) {
    check_lengths(b, clp[b], ilp[b], S, cache.max_cache_len(), "the static cache's max_cache_len");
    TORCH_CHECK_VALUE(clp[b] <= cache.filled(b), "InferEngine.forward: 'cache_lengths'[", b, "] = ", clp[b],
                      " but row ", b, " of the static cache holds ", cache.filled(b), " tokens written by earlier ",
                      "steps: attention would read tokens that were never written");
    if (writes) writes->push_back({b, clp[b], clp[b] + ilp[b]});
    cls[b] = clp[b];
    ils[b] = ilp[b];
    for (int64_t j = 0; j < ilp[b]; ++j) {  // padding beyond input_lengths[b] is dropped
      fids.push_back(idp[b * S + j]);
      if (srcp) fsrc->push_back(srcp[b * S + j]);
      fpos.push_back(pp[b * S + j]);
      slots.push_back(b * row_slots + clp[b] + j);
    }
  }
  at::Tensor bt = at::arange(B * cache.blocks_per_row(), at::kLong).view({B, cache.blocks_per_row()});
  return finish(fids, fpos, slots, cls, ils, bt, cfg);
}

ForwardBatch build_paged(const Input& in, Tokens tok, const models::BatchLimits& cfg, const cache::KVCache& cache,
                         CacheWrites* writes, std::vector<int64_t>* fsrc) {
  TORCH_CHECK_VALUE(in.block_tables && in.slot_mapping, "InferEngine.forward: the engine has a paged cache: ",
                    "'block_tables' and 'slot_mapping' are required");
  at::Tensor ids = tok.ids;
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
  at::Tensor slot = host_vector(*in.slot_mapping, "slot_mapping", T, "one per new token", true);
  at::Tensor pos;
  if (in.position_ids) pos = host_vector(*in.position_ids, "position_ids", T, "one per new token", true);
  const int64_t* idp = ids.data_ptr<int64_t>();
  const int64_t* btp = bt.data_ptr<int64_t>();
  const int64_t* clp = cl.data_ptr<int64_t>();
  const int64_t* ilp = il.data_ptr<int64_t>();
  const int64_t* sp = slot.data_ptr<int64_t>();
  std::vector<int64_t> fids(idp, idp + T), fpos(T), slots(sp, sp + T), cls(n), ils(n);
  if (tok.src.defined()) fsrc->assign(tok.src.data_ptr<int64_t>(), tok.src.data_ptr<int64_t>() + T);
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
  check_paged_blocks(btp, mb, cls, ils, cache, writes);
  return finish(fids, fpos, slots, cls, ils, bt, cfg);
}

}  // namespace

ForwardBatch build_batch(const Input& in, const models::BatchLimits& cfg, const cache::KVCache& cache,
                         CacheWrites* writes, int64_t prev_rows, at::Tensor* source) {
  Tokens tok = resolve_tokens(in, cache.paged(), prev_rows);
  std::vector<int64_t> fsrc;
  ForwardBatch b = cache.paged() ? build_paged(in, tok, cfg, cache, writes, &fsrc)
                                 : build_static(in, tok, cfg, cache, writes, &fsrc);
  const bool any = std::any_of(fsrc.begin(), fsrc.end(), [](int64_t v) { return v >= 0; });
  if (source) *source = any ? at::tensor(fsrc, at::kLong) : at::Tensor();
  return b;
}

at::Tensor take_tokens(const at::Tensor& ids, const at::Tensor& host_source, const at::Tensor& source,
                       const at::Tensor& prev) {
  // The common decode step (every token takes the id of its own row) is prev itself: no gather kernels.
  const int64_t* s = host_source.data_ptr<int64_t>();
  bool identity = host_source.size(0) == prev.size(0);
  for (int64_t t = 0; identity && t < host_source.size(0); ++t) identity = s[t] == t;
  if (identity) return prev;
  return at::where(source.ge(0), prev.index_select(0, source.clamp_min(0)), ids);
}

at::Tensor upload(const at::Tensor& t, at::Device device) {
  if (device.is_cpu()) return t;
  // Pinned, so the copy is asynchronous; the host allocator keeps the block until the copy has run.
  return t.pin_memory().to(device, /*non_blocking=*/true);
}

void begin_writes(const CacheWrites& writes, cache::KVCache& cache) {
  for (const auto& w : writes) cache.set_filled(w.index, std::min(cache.filled(w.index), w.begin));
}

void commit_writes(const CacheWrites& writes, cache::KVCache& cache) {
  for (const auto& w : writes) cache.set_filled(w.index, w.end);
}

ForwardBatch to_device(const ForwardBatch& b, at::Device device) {
  if (device.is_cpu()) return b;
  ForwardBatch d = b;
  for (at::Tensor* t : {&d.input_ids, &d.positions, &d.slot_mapping, &d.block_tables, &d.seq_lens,
                        &d.query_start_loc, &d.last_token_idx}) {
    *t = upload(*t, device);
  }
  return d;
}

}  // namespace infinilm::engine
