// CPU glue for sample (with optional min_p), apply_penalties and logprobs: checks, parameter conversion,
// dtype dispatch, and errors the sampler found in the logits.
#include <torch/library.h>

#include <tuple>
#include <vector>

#include "csrc/ops/dispatch_cpu.h"
#include "csrc/ops/ops.h"
#include "csrc/ops/sampling_checks.h"
#include "csrc/ops/validate.h"
#include "kernels/cpu/sampling.h"
#include "kernels/cpu/sampling_extras.h"

namespace infinilm {

at::Tensor sample_cpu(const at::Tensor& logits, const at::Tensor& temperature, const at::Tensor& top_k,
                      const at::Tensor& top_p, const at::Tensor& seeds, const std::optional<at::Tensor>& min_p) {
  check_sample_args(logits, temperature, top_k, top_p, seeds);
  INFINILM_CHECK_CPU(logits);
  check_sample_values(temperature, top_k, top_p);
  if (min_p) check_min_p(logits, *min_p);
  const int64_t B = logits.size(0), V = logits.size(1);
  TORCH_CHECK_VALUE(V <= INT32_MAX, "infinilm: 'logits' vocab size ", V, " exceeds int32 range");
  const at::Tensor t = temperature.to(at::kFloat).contiguous(), p = top_p.to(at::kFloat).contiguous();
  const at::Tensor k = top_k.to(at::kLong).contiguous(), s = seeds.to(at::kLong).contiguous();
  const at::Tensor q = min_p ? min_p->to(at::kFloat).contiguous() : at::Tensor();
  at::Tensor out = at::empty({B}, logits.options().dtype(at::kLong));
  // NaN / +inf / all -inf rows are detected in the kernel's first pass over each row (a separate ATen check
  // would read [B, V] several more times); nothing but `out` is written, and it is not returned on error.
  std::vector<int64_t> err(B, 0);
  INFINILM_DISPATCH_FLOAT_CPU(logits.scalar_type(), "sample", [&] {
    cpu::sample<scalar_t>(out.data_ptr<int64_t>(), err.data(), ptr<scalar_t>(logits), t.data_ptr<float>(),
                          k.data_ptr<int64_t>(), p.data_ptr<float>(), s.data_ptr<int64_t>(),
                          q.defined() ? q.data_ptr<float>() : nullptr, B, V, logits.stride(0));
  });
  for (int64_t b = 0; b < B; ++b) {
    TORCH_CHECK_VALUE(err[b] <= 0, "infinilm: 'logits' contain NaN or +inf, first at [", b, ", ", err[b] - 1, "] = ",
                      logits[b][err[b] - 1].item<double>());
    TORCH_CHECK_VALUE(err[b] == 0, "infinilm: 'logits' row ", b, " is -inf everywhere: no token can be drawn");
  }
  return out;
}

void apply_penalties_cpu(at::Tensor& logits, const at::Tensor& prompt_token_ids, const at::Tensor& output_token_ids,
                         const at::Tensor& repetition_penalty, const at::Tensor& presence_penalty,
                         const at::Tensor& frequency_penalty) {
  check_penalty_args(logits, prompt_token_ids, output_token_ids, repetition_penalty, presence_penalty,
                     frequency_penalty);
  INFINILM_CHECK_CPU(logits);
  const int64_t B = logits.size(0), V = logits.size(1);
  if (B == 0) return;
  const at::Tensor pr = prompt_token_ids.to(at::kLong).contiguous(), out = output_token_ids.to(at::kLong).contiguous();
  const at::Tensor r = repetition_penalty.to(at::kFloat).contiguous();
  const at::Tensor pp = presence_penalty.to(at::kFloat).contiguous(), fp = frequency_penalty.to(at::kFloat).contiguous();
  INFINILM_DISPATCH_FLOAT_CPU(logits.scalar_type(), "apply_penalties", [&] {
    cpu::apply_penalties<scalar_t>(ptr<scalar_t>(logits), logits.stride(0), pr.data_ptr<int64_t>(), pr.size(1),
                                   out.data_ptr<int64_t>(), out.size(1), r.data_ptr<float>(), pp.data_ptr<float>(),
                                   fp.data_ptr<float>(), B, V);
  });
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> logprobs_cpu(const at::Tensor& logits, const at::Tensor& token_ids,
                                                            int64_t k) {
  check_logprobs_args(logits, token_ids, k);
  INFINILM_CHECK_CPU(logits);
  const int64_t B = logits.size(0), V = logits.size(1);
  const at::Tensor ids = token_ids.to(at::kLong).contiguous();
  const auto f32 = logits.options().dtype(at::kFloat);
  at::Tensor sampled = at::empty({B}, f32), top = at::empty({B, k}, f32);
  at::Tensor top_ids = at::empty({B, k}, logits.options().dtype(at::kLong));
  INFINILM_DISPATCH_FLOAT_CPU(logits.scalar_type(), "logprobs", [&] {
    cpu::logprobs<scalar_t>(sampled.data_ptr<float>(), top.data_ptr<float>(), top_ids.data_ptr<int64_t>(),
                            ptr<scalar_t>(logits), logits.stride(0), ids.data_ptr<int64_t>(), B, V, k);
  });
  return {sampled, top, top_ids};
}

}  // namespace infinilm

TORCH_LIBRARY_IMPL(infinilm, CPU, m) {
  m.impl("sample", &infinilm::sample_cpu);
  m.impl("apply_penalties", &infinilm::apply_penalties_cpu);
  m.impl("logprobs", &infinilm::logprobs_cpu);
}
