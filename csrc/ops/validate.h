// Argument validation shared by the CPU and CUDA glue of every op: shapes, dtypes, devices, and
// (for host-resident data) index ranges and values. Every message names the argument and the values.
#pragma once

#include <algorithm>
#include <cmath>
#include <optional>
#include <utility>

#include "csrc/ops/checks.h"

namespace infinilm {

inline void check_rms_norm_args(const at::Tensor& input, const at::Tensor& weight, double eps) {
  INFINILM_CHECK_FLOAT(input);
  INFINILM_CHECK_FLOAT(weight);
  INFINILM_CHECK_SAME_DEVICE(input, weight);
  TORCH_CHECK_VALUE(input.dim() >= 1, "infinilm: 'input' must have at least 1 dimension, got shape ", input.sizes());
  INFINILM_CHECK_DIM(weight, 1);
  TORCH_CHECK_VALUE(weight.size(0) == input.size(-1), "infinilm: 'weight' has ", weight.size(0),
                    " elements but 'input' has hidden size ", input.size(-1), " (shape ", input.sizes(), ")");
  TORCH_CHECK_VALUE(eps >= 0.0, "infinilm: 'eps' must be >= 0, got ", eps);
}

// Row stride of a [..., H] tensor whose last dimension is dense and whose leading dimensions collapse into one
// strided row dimension (any 2-D row-strided view qualifies); -1 when they do not.
inline int64_t collapsed_row_stride(const at::Tensor& t) {
  if (t.stride(-1) != 1 && t.size(-1) != 1) return -1;
  if (t.dim() == 1) return t.size(0);
  for (int64_t d = t.dim() - 3; d >= 0; --d) {
    if (t.size(d) != 1 && t.stride(d) != t.stride(d + 1) * t.size(d + 1)) return -1;
  }
  return t.stride(-2);
}

// The same for tensors that are written in place, where a copy is not an option: a clear error instead.
inline int64_t row_stride_of(const at::Tensor& t, const char* name) {
  const int64_t s = collapsed_row_stride(t);
  TORCH_CHECK_VALUE(s >= 0, "infinilm: '", name, "' must be viewable as [rows, hidden] with a dense last dimension ",
                    "and one row stride, got shape ", t.sizes(), " strides ", t.strides());
  return s;
}

// An input read row by row: itself when its rows have one stride, else a contiguous copy; with that stride.
inline std::pair<at::Tensor, int64_t> readable_rows(const at::Tensor& t) {
  const int64_t s = collapsed_row_stride(t);
  if (s >= 0) return {t, s};
  return {t.contiguous(), t.size(-1)};
}

// The norm weight in the input's dtype (the kernels read both with one element type).
inline at::Tensor weight_as(const at::Tensor& weight, const at::Tensor& like) {
  return weight.scalar_type() == like.scalar_type() ? weight.contiguous() : weight.to(like.scalar_type()).contiguous();
}

inline void check_fused_add_rms_norm_args(const at::Tensor& input, const at::Tensor& residual,
                                          const at::Tensor& weight, double eps) {
  check_rms_norm_args(input, weight, eps);
  INFINILM_CHECK_SAME_DTYPE(input, residual);
  INFINILM_CHECK_SAME_DEVICE(input, residual);
  TORCH_CHECK_VALUE(input.sizes() == residual.sizes(), "infinilm: 'input' ", input.sizes(), " and 'residual' ",
                    residual.sizes(), " must have the same shape");
}

inline void check_rotary_embedding_args(const at::Tensor& positions, const at::Tensor& query,
                                        const at::Tensor& key, const at::Tensor& cos_sin_cache) {
  INFINILM_CHECK_INDEX(positions);
  INFINILM_CHECK_FLOAT(query);
  INFINILM_CHECK_SAME_DTYPE(query, key);
  INFINILM_CHECK_FLOAT(cos_sin_cache);
  INFINILM_CHECK_SAME_DEVICE(query, key);
  INFINILM_CHECK_SAME_DEVICE(query, positions);
  INFINILM_CHECK_SAME_DEVICE(query, cos_sin_cache);
  INFINILM_CHECK_DIM(query, 3);
  INFINILM_CHECK_DIM(key, 3);
  INFINILM_CHECK_DIM(cos_sin_cache, 2);
  INFINILM_CHECK_LAST_DIM_CONTIGUOUS(query);
  INFINILM_CHECK_LAST_DIM_CONTIGUOUS(key);
  INFINILM_CHECK_CONTIGUOUS(cos_sin_cache);
  const int64_t T = query.size(0);
  TORCH_CHECK_VALUE(positions.numel() == T, "infinilm: 'positions' has ", positions.numel(),
                    " elements but 'query' has ", T, " tokens (shape ", query.sizes(), ")");
  TORCH_CHECK_VALUE(key.size(0) == T, "infinilm: 'key' has ", key.size(0), " tokens but 'query' has ", T);
  TORCH_CHECK_VALUE(key.size(2) == query.size(2), "infinilm: head_dim mismatch: 'query' ", query.sizes(),
                    " vs 'key' ", key.sizes());
  const int64_t rot = cos_sin_cache.size(1);
  TORCH_CHECK_VALUE(rot > 0 && rot % 2 == 0 && rot <= query.size(2), "infinilm: 'cos_sin_cache' rotary dim ",
                    rot, " must be even and at most head_dim ", query.size(2));
}

// positions must index rows of the cos/sin cache (host data only).
inline void check_positions_values(const at::Tensor& positions, int64_t max_position) {
  if (!positions.device().is_cpu() || positions.numel() == 0) return;
  auto p = positions.to(at::kLong);
  const int64_t lo = p.min().item<int64_t>(), hi = p.max().item<int64_t>();
  TORCH_CHECK_INDEX(lo >= 0 && hi < max_position, "infinilm: 'positions' must lie in [0, ", max_position,
                    ") (rows of 'cos_sin_cache'), got values in [", lo, ", ", hi, "]");
}

inline void check_silu_and_mul_args(const at::Tensor& input) {
  INFINILM_CHECK_FLOAT(input);
  TORCH_CHECK_VALUE(input.dim() >= 1 && input.size(-1) % 2 == 0, "infinilm: 'input' last dimension must be even (",
                    "[..., 2*d]), got shape ", input.sizes());
}

inline void check_reshape_and_cache_args(const at::Tensor& key, const at::Tensor& value, const at::Tensor& key_cache,
                                         const at::Tensor& value_cache, const at::Tensor& slot_mapping) {
  INFINILM_CHECK_FLOAT(key);
  INFINILM_CHECK_SAME_DTYPE(key, value);
  INFINILM_CHECK_SAME_DTYPE(key, key_cache);
  INFINILM_CHECK_SAME_DTYPE(key, value_cache);
  INFINILM_CHECK_INDEX(slot_mapping);
  INFINILM_CHECK_SAME_DEVICE(key, value);
  INFINILM_CHECK_SAME_DEVICE(key, key_cache);
  INFINILM_CHECK_SAME_DEVICE(key, value_cache);
  INFINILM_CHECK_SAME_DEVICE(key, slot_mapping);
  INFINILM_CHECK_DIM(key, 3);
  INFINILM_CHECK_DIM(value, 3);
  INFINILM_CHECK_DIM(key_cache, 4);
  INFINILM_CHECK_DIM(slot_mapping, 1);
  INFINILM_CHECK_LAST_DIM_CONTIGUOUS(key);
  INFINILM_CHECK_LAST_DIM_CONTIGUOUS(value);
  INFINILM_CHECK_CONTIGUOUS(key_cache);
  INFINILM_CHECK_CONTIGUOUS(value_cache);
  TORCH_CHECK_VALUE(key.sizes() == value.sizes(), "infinilm: 'key' ", key.sizes(), " and 'value' ", value.sizes(),
                    " must have the same shape");
  TORCH_CHECK_VALUE(key_cache.sizes() == value_cache.sizes(), "infinilm: 'key_cache' ", key_cache.sizes(),
                    " and 'value_cache' ", value_cache.sizes(), " must have the same shape");
  TORCH_CHECK_VALUE(key.size(1) == key_cache.size(1) && key.size(2) == key_cache.size(3),
                    "infinilm: 'key' [tokens, kv_heads, head_dim] = ", key.sizes(),
                    " does not match 'key_cache' [num_blocks, kv_heads, block_size, head_dim] = ", key_cache.sizes());
  TORCH_CHECK_VALUE(slot_mapping.size(0) == key.size(0), "infinilm: 'slot_mapping' has ", slot_mapping.size(0),
                    " entries but 'key' has ", key.size(0), " tokens");
}

// Every slot is -1 (skip) or a valid cache slot; host data only.
inline void check_slot_values(const at::Tensor& slot_mapping, int64_t num_slots) {
  if (!slot_mapping.device().is_cpu() || slot_mapping.numel() == 0) return;
  auto s = slot_mapping.to(at::kLong);
  const int64_t lo = s.min().item<int64_t>(), hi = s.max().item<int64_t>();
  TORCH_CHECK_INDEX(lo >= -1 && hi < num_slots, "infinilm: 'slot_mapping' values must be -1 or in [0, ", num_slots,
                    ") (num_blocks * block_size), got values in [", lo, ", ", hi, "]");
}

// Shared by decode and prefill: query [*, Hq, D], caches [num_blocks, Hk, block_size, D], block_tables [n, max_blocks].
inline void check_paged_attention_args(const at::Tensor& query, const at::Tensor& key_cache,
                                       const at::Tensor& value_cache, const at::Tensor& block_tables,
                                       const at::Tensor& seq_lens, double scale) {
  INFINILM_CHECK_FLOAT(query);
  INFINILM_CHECK_SAME_DTYPE(query, key_cache);
  INFINILM_CHECK_SAME_DTYPE(query, value_cache);
  INFINILM_CHECK_INDEX(block_tables);
  INFINILM_CHECK_INDEX(seq_lens);
  INFINILM_CHECK_SAME_DEVICE(query, key_cache);
  INFINILM_CHECK_SAME_DEVICE(query, value_cache);
  INFINILM_CHECK_SAME_DEVICE(query, block_tables);
  INFINILM_CHECK_SAME_DEVICE(query, seq_lens);
  INFINILM_CHECK_DIM(query, 3);
  INFINILM_CHECK_DIM(key_cache, 4);
  INFINILM_CHECK_DIM(block_tables, 2);
  INFINILM_CHECK_DIM(seq_lens, 1);
  INFINILM_CHECK_LAST_DIM_CONTIGUOUS(query);
  INFINILM_CHECK_CONTIGUOUS(key_cache);
  INFINILM_CHECK_CONTIGUOUS(value_cache);
  INFINILM_CHECK_CONTIGUOUS(block_tables);
  TORCH_CHECK_VALUE(key_cache.sizes() == value_cache.sizes(), "infinilm: 'key_cache' ", key_cache.sizes(),
                    " and 'value_cache' ", value_cache.sizes(), " must have the same shape");
  TORCH_CHECK_VALUE(query.size(2) == key_cache.size(3), "infinilm: head_dim mismatch: 'query' ", query.sizes(),
                    " has head_dim ", query.size(2), " but 'key_cache' ", key_cache.sizes(), " has ",
                    key_cache.size(3));
  const int64_t hq = query.size(1), hk = key_cache.size(1);
  TORCH_CHECK_VALUE(hk > 0 && hq % hk == 0, "infinilm: query heads (", hq, ") must be a multiple of kv heads (", hk,
                    ") ('query' ", query.sizes(), ", 'key_cache' ", key_cache.sizes(), ")");
  TORCH_CHECK_VALUE(block_tables.size(0) == seq_lens.size(0), "infinilm: 'block_tables' has ", block_tables.size(0),
                    " rows but 'seq_lens' has ", seq_lens.size(0), " entries");
  TORCH_CHECK_VALUE(scale > 0.0, "infinilm: 'scale' must be > 0, got ", scale);
}

// seq_lens within what each block table row can hold; block ids within the cache (host data only).
inline void check_paged_attention_values(const at::Tensor& key_cache, const at::Tensor& block_tables,
                                         const at::Tensor& seq_lens, std::optional<int64_t> max_seq_len) {
  if (!seq_lens.device().is_cpu() || seq_lens.numel() == 0) return;
  const int64_t block_size = key_cache.size(2), num_blocks = key_cache.size(0);
  const int64_t capacity = block_tables.size(1) * block_size;
  // .to() of an int64 view is the view itself: the raw pointer would walk memory, not the logical values.
  auto sl = seq_lens.to(at::kLong).contiguous();
  auto bt = block_tables.to(at::kLong).contiguous();
  const int64_t* s = sl.data_ptr<int64_t>();
  const int64_t* b = bt.data_ptr<int64_t>();
  for (int64_t r = 0; r < sl.numel(); ++r) {
    TORCH_CHECK_VALUE(s[r] >= 0 && s[r] <= capacity, "infinilm: 'seq_lens'[", r, "] = ", s[r],
                      " exceeds what 'block_tables' rows hold (", block_tables.size(1), " blocks x ", block_size,
                      " = ", capacity, " tokens)");
    if (max_seq_len.has_value()) {
      TORCH_CHECK_VALUE(s[r] <= *max_seq_len, "infinilm: 'seq_lens'[", r, "] = ", s[r], " exceeds 'max_seq_len' = ",
                        *max_seq_len);
    }
    const int64_t used = (s[r] + block_size - 1) / block_size;
    for (int64_t j = 0; j < used; ++j) {
      const int64_t id = b[r * block_tables.size(1) + j];
      TORCH_CHECK_INDEX(id >= 0 && id < num_blocks, "infinilm: 'block_tables'[", r, ", ", j, "] = ", id,
                        " is out of range [0, ", num_blocks, ")");
    }
  }
}

// Decode: one query token per request.
inline void check_paged_attention_decode_args(const at::Tensor& query, const at::Tensor& seq_lens) {
  TORCH_CHECK_VALUE(query.size(0) == seq_lens.size(0), "infinilm: 'query' has ", query.size(0),
                    " tokens but 'seq_lens' has ", seq_lens.size(0), " requests (decode takes one token each)");
}

// Prefill: query_start_loc [n+1] (int) beside seq_lens [n].
inline void check_paged_attention_prefill_args(const at::Tensor& query, const at::Tensor& query_start_loc,
                                               const at::Tensor& seq_lens) {
  INFINILM_CHECK_INDEX(query_start_loc);
  INFINILM_CHECK_SAME_DEVICE(query, query_start_loc);
  INFINILM_CHECK_DIM(query_start_loc, 1);
  TORCH_CHECK_VALUE(query_start_loc.size(0) == seq_lens.size(0) + 1, "infinilm: 'query_start_loc' must have ",
                    seq_lens.size(0) + 1, " entries (one more than 'seq_lens'), got shape ", query_start_loc.sizes());
}

// query_start_loc runs from 0 to T without decreasing; each q_len fits in seq_lens[r] and in max_query_len
// (host data only). Returns the largest q_len.
inline int64_t check_paged_attention_prefill_values(const at::Tensor& query, const at::Tensor& query_start_loc,
                                                    const at::Tensor& seq_lens, std::optional<int64_t> max_query_len) {
  if (!query_start_loc.device().is_cpu()) return max_query_len.value_or(query.size(0));
  auto qsl = query_start_loc.to(at::kLong).contiguous();
  auto sl = seq_lens.to(at::kLong).contiguous();
  const int64_t* q = qsl.data_ptr<int64_t>();
  const int64_t* s = sl.data_ptr<int64_t>();
  const int64_t n = sl.numel(), T = query.size(0);
  TORCH_CHECK_VALUE(q[0] == 0, "infinilm: 'query_start_loc'[0] must be 0, got ", q[0]);
  TORCH_CHECK_VALUE(q[n] == T, "infinilm: 'query_start_loc'[", n, "] = ", q[n], " must equal the number of query ",
                    "tokens ", T, " ('query' shape ", query.sizes(), ")");
  int64_t longest = 0;
  for (int64_t r = 0; r < n; ++r) {
    const int64_t q_len = q[r + 1] - q[r];
    TORCH_CHECK_VALUE(q_len >= 0, "infinilm: 'query_start_loc' must not decrease, got [", r, "] = ", q[r], " > [",
                      r + 1, "] = ", q[r + 1]);
    TORCH_CHECK_VALUE(q_len <= s[r], "infinilm: request ", r, " has ", q_len, " query tokens ('query_start_loc'[",
                      r + 1, "] - [", r, "]) but 'seq_lens'[", r, "] = ", s[r],
                      ": the new tokens must already be in the cache");
    if (max_query_len.has_value()) {
      TORCH_CHECK_VALUE(q_len <= *max_query_len, "infinilm: request ", r, " has ", q_len,
                        " query tokens, more than 'max_query_len' = ", *max_query_len);
    }
    longest = std::max(longest, q_len);
  }
  return longest;
}

inline void check_sample_args(const at::Tensor& logits, const at::Tensor& temperature, const at::Tensor& top_k,
                              const at::Tensor& top_p, const at::Tensor& seeds) {
  INFINILM_CHECK_FLOAT(logits);
  INFINILM_CHECK_DIM(logits, 2);
  INFINILM_CHECK_LAST_DIM_CONTIGUOUS(logits);
  TORCH_CHECK_VALUE(logits.size(1) > 0, "infinilm: 'logits' must have a non-empty vocab dimension, got shape ",
                    logits.sizes());
  INFINILM_CHECK_FLOAT(temperature);
  INFINILM_CHECK_INDEX(top_k);
  INFINILM_CHECK_FLOAT(top_p);
  INFINILM_CHECK_INDEX(seeds);
  const int64_t B = logits.size(0);
  const std::pair<const at::Tensor*, const char*> params[] = {
      {&temperature, "temperature"}, {&top_k, "top_k"}, {&top_p, "top_p"}, {&seeds, "seeds"}};
  for (const auto& [t, name] : params) {
    TORCH_CHECK_VALUE(t->dim() == 1 && t->size(0) == B, "infinilm: '", name, "' must be 1-D with one entry per ",
                      "row of 'logits' ", logits.sizes(), ", i.e. shape [", B, "], got shape ", t->sizes());
    TORCH_CHECK_VALUE(t->device() == logits.device(), "infinilm: '", name, "' is on ", t->device(),
                      " but 'logits' is on ", logits.device());
  }
}

// Per-row parameters (host data only): temperature finite and >= 0, top_k >= 0, top_p in (0, 1]. Each
// message names the first offending row. Logits (NaN / +inf / a row of all -inf) are checked by
// check_sample_logits, or by the kernel itself in the same pass that reads them (CPU).
inline void check_sample_values(const at::Tensor& temperature, const at::Tensor& top_k, const at::Tensor& top_p) {
  if (!temperature.device().is_cpu()) return;
  const at::Tensor t = temperature.to(at::kFloat).contiguous(), p = top_p.to(at::kFloat).contiguous();
  const at::Tensor k = top_k.to(at::kLong).contiguous();
  const float* tv = t.data_ptr<float>();
  const float* pv = p.data_ptr<float>();
  const int64_t* kv = k.data_ptr<int64_t>();
  for (int64_t b = 0; b < t.numel(); ++b) {
    TORCH_CHECK_VALUE(tv[b] >= 0.f && std::isfinite(tv[b]), "infinilm: 'temperature'[", b, "] = ", tv[b],
                      " must be finite and >= 0 (0 = greedy)");
    TORCH_CHECK_VALUE(kv[b] >= 0, "infinilm: 'top_k'[", b, "] = ", kv[b], " must be >= 0 (0 disables it)");
    TORCH_CHECK_VALUE(pv[b] > 0.f && pv[b] <= 1.f, "infinilm: 'top_p'[", b, "] = ", pv[b],
                      " must lie in (0, 1] (1 disables it)");
  }
}

// Logits free of NaN and +inf, and no row of all -inf (host data only; costs a few passes over [B, V]).
inline void check_sample_logits(const at::Tensor& logits) {
  if (!logits.device().is_cpu() || logits.size(0) == 0) return;
  auto bad = at::isnan(logits).logical_or_(at::isposinf(logits));
  if (bad.any().item<bool>()) {
    auto idx = bad.nonzero()[0];
    TORCH_CHECK_VALUE(false, "infinilm: 'logits' contain NaN or +inf, first at [", idx[0].item<int64_t>(), ", ",
                      idx[1].item<int64_t>(), "]");
  }
  auto row_dead = at::isneginf(logits).all(1);
  if (row_dead.any().item<bool>()) {
    TORCH_CHECK_VALUE(false, "infinilm: 'logits' row ", row_dead.nonzero()[0][0].item<int64_t>(),
                      " is -inf everywhere: no token can be drawn");
  }
}

// The original all-in-one check: parameters, then logits.
inline void check_sample_values(const at::Tensor& logits, const at::Tensor& temperature, const at::Tensor& top_k,
                                const at::Tensor& top_p) {
  check_sample_values(temperature, top_k, top_p);
  check_sample_logits(logits);
}

}  // namespace infinilm
