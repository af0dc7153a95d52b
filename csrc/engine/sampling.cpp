// Host-side validation of the sampling fields of an InferEngine.Input (scalars and per-request tensors) into
// SamplingParams, and the step's sampler: penalties, then the per-row draw.
#include <c10/util/Exception.h>

#include <algorithm>
#include <cmath>
#include <limits>

#include "csrc/engine/batch.h"
#include "csrc/ops/ops.h"

namespace infinilm::engine {

namespace {

// int32/int64 tensor anywhere -> contiguous int64 on the CPU.
at::Tensor host_index(const at::Tensor& t, const char* name) {
  TORCH_CHECK_TYPE(t.scalar_type() == at::kLong || t.scalar_type() == at::kInt, "InferEngine.forward: '", name,
                   "' must be int64 or int32, got ", t.scalar_type());
  return t.to(at::kCPU, at::kLong).contiguous();
}

// An int [n] tensor -> contiguous int64 on the CPU.
at::Tensor host_vector(const at::Tensor& t, const char* name, int64_t n) {
  at::Tensor h = host_index(t, name);
  TORCH_CHECK_VALUE(h.dim() == 1 && h.size(0) == n, "InferEngine.forward: '", name, "' must have shape [", n,
                    "] (one per request), got ", h.sizes());
  return h;
}

// A float per-request tensor [n] -> a contiguous float32 copy on the CPU (build_sampling rewrites greedy rows in
// place: never in the caller's tensor).
at::Tensor host_float(const at::Tensor& t, const char* name, int64_t n) {
  TORCH_CHECK_TYPE(at::isFloatingType(t.scalar_type()), "InferEngine.forward: '", name,
                   "' must be a float tensor, got ", t.scalar_type());
  TORCH_CHECK_VALUE(t.dim() == 1 && t.size(0) == n, "InferEngine.forward: '", name, "' must have shape [", n,
                    "] (one per request), got ", t.sizes());
  return t.to(at::kCPU, at::kFloat, /*non_blocking=*/false, /*copy=*/true).contiguous();
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
  s.top_k = in.top_ks ? host_vector(*in.top_ks, "top_ks", n).clone()
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
    s.seeds = host_vector(*in.seeds, "seeds", n);
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
    infinilm::apply_penalties(logits, upload(sp.prompt_ids, dev), upload(sp.output_ids, dev),
                              upload(sp.repetition, dev), upload(sp.presence, dev), upload(sp.frequency, dev));
  }
  const bool any_min_p = sp.min_p.gt(0).any().item<bool>();  // host data: no device sync
  return infinilm::sample(logits, upload(sp.temperature, dev), upload(sp.top_k, dev), upload(sp.top_p, dev),
                          upload(sp.seeds, dev), any_min_p ? std::optional<at::Tensor>(upload(sp.min_p, dev))
                                                           : std::nullopt);
}

}  // namespace infinilm::engine
