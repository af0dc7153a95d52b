// CPU glue for paged_attention_decode and paged_attention_prefill: checks, index conversion, dtype dispatch.
#include <torch/library.h>

#include "csrc/ops/attention_checks.h"
#include "csrc/ops/dispatch_cpu.h"
#include "csrc/ops/ops.h"
#include "csrc/ops/validate.h"
#include "kernels/cpu/attention.h"

namespace infinilm {

namespace {
cpu::PagedAttentionShape shape_of(const at::Tensor& query, const at::Tensor& key_cache, const at::Tensor& block_tables,
                                  double scale, int64_t window_left, double softcap) {
  return {query.size(1),       key_cache.size(1),    query.size(2),            key_cache.size(2),
          key_cache.stride(0), key_cache.stride(1),  block_tables.size(1),     static_cast<float>(scale),
          window_left,         static_cast<float>(softcap)};
}

// Index tensors reach the kernels as dense int64 (int32 is accepted; the copy is a few hundred bytes).
at::Tensor as_long(const at::Tensor& t) { return t.to(at::kLong).contiguous(); }
}  // namespace

at::Tensor paged_attention_decode_cpu(const at::Tensor& query, const at::Tensor& key_cache,
                                      const at::Tensor& value_cache, const at::Tensor& block_tables,
                                      const at::Tensor& seq_lens, double scale, std::optional<int64_t> max_seq_len,
                                      int64_t window_left, double softcap) {
  check_paged_attention_args(query, key_cache, value_cache, block_tables, seq_lens, scale);
  check_attention_options("paged_attention_decode", window_left, softcap);
  check_paged_attention_decode_args(query, seq_lens);
  INFINILM_CHECK_CPU(query);
  check_paged_attention_values(key_cache, block_tables, seq_lens, max_seq_len);
  at::Tensor out = at::empty(query.sizes(), query.options().memory_format(at::MemoryFormat::Contiguous));
  if (out.numel() == 0) return out;
  const at::Tensor bt = as_long(block_tables), sl = as_long(seq_lens);
  const auto s = shape_of(query, key_cache, block_tables, scale, window_left, softcap);
  INFINILM_DISPATCH_FLOAT_CPU(query.scalar_type(), "paged_attention_decode", [&] {
    cpu::paged_attention_decode<scalar_t>(ptr<scalar_t>(out), ptr<scalar_t>(query), ptr<scalar_t>(key_cache),
                                          ptr<scalar_t>(value_cache), bt.data_ptr<int64_t>(), sl.data_ptr<int64_t>(), s,
                                          query.size(0), query.stride(0), query.stride(1));
  });
  return out;
}

at::Tensor paged_attention_prefill_cpu(const at::Tensor& query, const at::Tensor& key_cache,
                                       const at::Tensor& value_cache, const at::Tensor& block_tables,
                                       const at::Tensor& query_start_loc, const at::Tensor& seq_lens, double scale,
                                       std::optional<int64_t> max_query_len, std::optional<int64_t> max_seq_len,
                                       int64_t window_left, double softcap) {
  check_paged_attention_args(query, key_cache, value_cache, block_tables, seq_lens, scale);
  check_attention_options("paged_attention_prefill", window_left, softcap);
  check_paged_attention_prefill_args(query, query_start_loc, seq_lens);
  INFINILM_CHECK_CPU(query);
  check_paged_attention_values(key_cache, block_tables, seq_lens, max_seq_len);
  check_paged_attention_prefill_values(query, query_start_loc, seq_lens, max_query_len);
  at::Tensor out = at::empty(query.sizes(), query.options().memory_format(at::MemoryFormat::Contiguous));
  if (out.numel() == 0) return out;
  const at::Tensor bt = as_long(block_tables), qsl = as_long(query_start_loc), sl = as_long(seq_lens);
  const auto s = shape_of(query, key_cache, block_tables, scale, window_left, softcap);
  INFINILM_DISPATCH_FLOAT_CPU(query.scalar_type(), "paged_attention_prefill", [&] {
    cpu::paged_attention_prefill<scalar_t>(ptr<scalar_t>(out), ptr<scalar_t>(query), ptr<scalar_t>(key_cache),
                                           ptr<scalar_t>(value_cache), bt.data_ptr<int64_t>(),
                                           qsl.data_ptr<int64_t>(), sl.data_ptr<int64_t>(), s, seq_lens.size(0),
                                           query.stride(0), query.stride(1));
  });
  return out;
}

}  // namespace infinilm

TORCH_LIBRARY_IMPL(infinilm, CPU, m) {
  m.impl("paged_attention_decode", &infinilm::paged_attention_decode_cpu);
  m.impl("paged_attention_prefill", &infinilm::paged_attention_prefill_cpu);
}
