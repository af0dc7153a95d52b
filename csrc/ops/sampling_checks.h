// Argument checks of the sampling extras (min_p of sample, apply_penalties, logprobs), shared by the CPU and
// CUDA glue. Value checks read host data only: the CUDA glue never synchronises (the kernels map bad values
// to defined results, see kernels/cuda/sampling_extras.cuh); the engine checks values on the host first.
#pragma once

#include <ATen/ATen.h>

#include <cmath>
#include <string>
#include <utility>

#include "csrc/ops/checks.h"
#include "kernels/kernel_limits.h"

namespace infinilm {

using limits::kMaxLogprobs;

// A 1-D per-row tensor of B entries on `device`.
inline void check_row_param(const at::Tensor& t, const char* name, int64_t B, at::Device device) {
  TORCH_CHECK_VALUE(t.dim() == 1 && t.size(0) == B, "infinilm: '", name, "' must be 1-D with one entry per row of ",
                    "'logits', i.e. shape [", B, "], got shape ", t.sizes());
  TORCH_CHECK_VALUE(t.device() == device, "infinilm: '", name, "' is on ", t.device(), " but 'logits' is on ", device);
}

// Host values of a float [B] parameter: each finite and within [lo, hi] (open at lo when lo_open).
inline void check_float_range(const at::Tensor& t, const char* name, double lo, bool lo_open, double hi,
                              const char* what) {
  if (!t.device().is_cpu()) return;
  const at::Tensor f = t.to(at::kFloat).contiguous();
  const float* v = f.data_ptr<float>();
  for (int64_t b = 0; b < f.numel(); ++b) {
    const bool ok = std::isfinite(v[b]) && (lo_open ? v[b] > lo : v[b] >= lo) && v[b] <= hi;
    TORCH_CHECK_VALUE(ok, "infinilm: '", name, "'[", b, "] = ", v[b], " must be ", what);
  }
}

inline void check_min_p(const at::Tensor& logits, const at::Tensor& min_p) {
  INFINILM_CHECK_FLOAT(min_p);
  check_row_param(min_p, "min_p", logits.size(0), logits.device());
  check_float_range(min_p, "min_p", 0.0, false, 1.0, "in [0, 1] (0 disables it)");
}

// Host token ids of a [B, L] tensor in [-1, V).
inline void check_token_ids(const at::Tensor& ids, const char* name, int64_t lo, int64_t V) {
  if (!ids.device().is_cpu() || ids.numel() == 0) return;
  const at::Tensor h = ids.to(at::kLong).contiguous();
  const int64_t* p = h.data_ptr<int64_t>();
  const int64_t L = h.dim() == 2 ? h.size(1) : 1;
  for (int64_t i = 0; i < h.numel(); ++i) {
    if (p[i] >= lo && p[i] < V) continue;
    const std::string at = h.dim() == 2 ? std::to_string(i / L) + ", " + std::to_string(i % L) : std::to_string(i);
    TORCH_CHECK_INDEX(false, "infinilm: '", name, "'[", at, "] = ", p[i], " is outside [", lo, ", ", V, ")",
                      lo < 0 ? " (-1 pads)" : "");
  }
}

inline void check_penalty_args(const at::Tensor& logits, const at::Tensor& prompt_token_ids,
                               const at::Tensor& output_token_ids, const at::Tensor& repetition_penalty,
                               const at::Tensor& presence_penalty, const at::Tensor& frequency_penalty) {
  INFINILM_CHECK_FLOAT(logits);
  INFINILM_CHECK_DIM(logits, 2);
  INFINILM_CHECK_LAST_DIM_CONTIGUOUS(logits);
  const int64_t B = logits.size(0), V = logits.size(1);
  for (const auto& [t, name] : {std::pair<const at::Tensor*, const char*>{&prompt_token_ids, "prompt_token_ids"},
                                {&output_token_ids, "output_token_ids"}}) {
    TORCH_CHECK_TYPE(is_index_dtype(t->scalar_type()), "infinilm: '", name, "' must be int32 or int64, got ",
                     t->scalar_type());
    TORCH_CHECK_VALUE(t->dim() == 2 && t->size(0) == B, "infinilm: '", name, "' must have shape [", B,
                      ", L] (one row of token ids per row of 'logits', -1 pads), got ", t->sizes());
    TORCH_CHECK_VALUE(t->device() == logits.device(), "infinilm: '", name, "' is on ", t->device(),
                      " but 'logits' is on ", logits.device());
    check_token_ids(*t, name, -1, V);
  }
  INFINILM_CHECK_FLOAT(repetition_penalty);
  INFINILM_CHECK_FLOAT(presence_penalty);
  INFINILM_CHECK_FLOAT(frequency_penalty);
  check_row_param(repetition_penalty, "repetition_penalty", B, logits.device());
  check_row_param(presence_penalty, "presence_penalty", B, logits.device());
  check_row_param(frequency_penalty, "frequency_penalty", B, logits.device());
  check_float_range(repetition_penalty, "repetition_penalty", 0.0, true, INFINITY, "finite and > 0 (1 = off)");
  check_float_range(presence_penalty, "presence_penalty", -INFINITY, false, INFINITY, "finite (0 = off)");
  check_float_range(frequency_penalty, "frequency_penalty", -INFINITY, false, INFINITY, "finite (0 = off)");
}

inline void check_logprobs_args(const at::Tensor& logits, const at::Tensor& token_ids, int64_t k) {
  INFINILM_CHECK_FLOAT(logits);
  INFINILM_CHECK_DIM(logits, 2);
  INFINILM_CHECK_LAST_DIM_CONTIGUOUS(logits);
  const int64_t B = logits.size(0), V = logits.size(1);
  TORCH_CHECK_VALUE(V > 0, "infinilm: 'logits' must have a non-empty vocab dimension, got shape ", logits.sizes());
  TORCH_CHECK_VALUE(k >= 0 && k <= std::min(V, kMaxLogprobs), "infinilm: logprobs 'k' = ", k, " must lie in [0, ",
                    std::min(V, kMaxLogprobs), "] (the vocab size, at most ", kMaxLogprobs, ")");
  TORCH_CHECK_TYPE(is_index_dtype(token_ids.scalar_type()), "infinilm: 'token_ids' must be int32 or int64, got ",
                   token_ids.scalar_type());
  check_row_param(token_ids, "token_ids", B, logits.device());
  check_token_ids(token_ids, "token_ids", 0, V);
}

}  // namespace infinilm
