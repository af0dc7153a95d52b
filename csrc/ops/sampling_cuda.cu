// CUDA glue for sample (with optional min_p), apply_penalties and logprobs: checks, parameter conversion,
// device guard, workspace, launch on the current stream.
#include <torch/library.h>

#include <tuple>

#include "csrc/ops/dispatch_cuda.h"
#include "csrc/ops/ops.h"
#include "csrc/ops/sampling_checks.h"
#include "csrc/ops/validate.h"
#include "kernels/cuda/sampling.cuh"
#include "kernels/cuda/sampling_extras.cuh"

namespace infinilm {

// No host synchronisation: parameter and logit values on the device are not checked here (that would need
// a copy to the host); the kernels map invalid values to defined results (see kernels/cuda/sampling*.cuh).
at::Tensor sample_cuda(const at::Tensor& logits, const at::Tensor& temperature, const at::Tensor& top_k,
                       const at::Tensor& top_p, const at::Tensor& seeds, const std::optional<at::Tensor>& min_p) {
  check_sample_args(logits, temperature, top_k, top_p, seeds);
  INFINILM_CHECK_CUDA(logits);
  if (min_p) check_min_p(logits, *min_p);
  const c10::cuda::CUDAGuard guard(logits.device());
  const int64_t B = logits.size(0), V = logits.size(1);
  TORCH_CHECK_VALUE(V <= INT32_MAX - 4096, "infinilm: 'logits' vocab size ", V, " exceeds int32 range");
  TORCH_CHECK_VALUE(B <= 65535, "infinilm: 'logits' has ", B, " rows; the CUDA sampler takes at most 65535");
  // Conversions are no-ops (no launch) when the caller already passes float32 / int64.
  const at::Tensor t = temperature.to(at::kFloat).contiguous(), p = top_p.to(at::kFloat).contiguous();
  const at::Tensor k = top_k.to(at::kLong).contiguous(), s = seeds.to(at::kLong).contiguous();
  const at::Tensor q = min_p ? min_p->to(at::kFloat).contiguous() : at::Tensor();
  at::Tensor out = at::empty({B}, logits.options().dtype(at::kLong));
  if (B == 0) return out;
  // Workspace through the caching allocator: graph-safe, never a cudaMalloc inside the launch.
  const size_t ws_bytes = cuda::sample_workspace_bytes(B, V);
  at::Tensor ws = at::empty({static_cast<int64_t>(ws_bytes)}, logits.options().dtype(at::kByte));
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  INFINILM_DISPATCH_FLOAT_CUDA(logits.scalar_type(), "sample", [&] {
    cuda_check(cuda::sample<scalar_t>(out.data_ptr<int64_t>(), cuda_ptr<scalar_t>(logits), t.data_ptr<float>(),
                                      k.data_ptr<int64_t>(), p.data_ptr<float>(), s.data_ptr<int64_t>(),
                                      q.defined() ? q.data_ptr<float>() : nullptr, B, V, logits.stride(0),
                                      ws.data_ptr(), ws_bytes, stream),
               "sample");
  });
  return out;
}

void apply_penalties_cuda(at::Tensor& logits, const at::Tensor& prompt_token_ids, const at::Tensor& output_token_ids,
                          const at::Tensor& repetition_penalty, const at::Tensor& presence_penalty,
                          const at::Tensor& frequency_penalty) {
  check_penalty_args(logits, prompt_token_ids, output_token_ids, repetition_penalty, presence_penalty,
                     frequency_penalty);
  INFINILM_CHECK_CUDA(logits);
  const c10::cuda::CUDAGuard guard(logits.device());
  const int64_t B = logits.size(0), V = logits.size(1);
  if (B == 0) return;
  const at::Tensor pr = prompt_token_ids.to(at::kLong).contiguous(), out = output_token_ids.to(at::kLong).contiguous();
  const at::Tensor r = repetition_penalty.to(at::kFloat).contiguous();
  const at::Tensor pp = presence_penalty.to(at::kFloat).contiguous(), fp = frequency_penalty.to(at::kFloat).contiguous();
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  INFINILM_DISPATCH_FLOAT_CUDA(logits.scalar_type(), "apply_penalties", [&] {
    cuda_check(cuda::apply_penalties<scalar_t>(cuda_ptr<scalar_t>(logits), logits.stride(0), pr.data_ptr<int64_t>(),
                                               pr.size(1), out.data_ptr<int64_t>(), out.size(1), r.data_ptr<float>(),
                                               pp.data_ptr<float>(), fp.data_ptr<float>(), B, V, stream),
               "apply_penalties");
  });
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> logprobs_cuda(const at::Tensor& logits, const at::Tensor& token_ids,
                                                             int64_t k) {
  check_logprobs_args(logits, token_ids, k);
  INFINILM_CHECK_CUDA(logits);
  const c10::cuda::CUDAGuard guard(logits.device());
  const int64_t B = logits.size(0), V = logits.size(1);
  const at::Tensor ids = token_ids.to(at::kLong).contiguous();
  const auto f32 = logits.options().dtype(at::kFloat);
  at::Tensor sampled = at::empty({B}, f32), top = at::empty({B, k}, f32);
  at::Tensor top_ids = at::empty({B, k}, logits.options().dtype(at::kLong));
  if (B == 0) return {sampled, top, top_ids};
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  INFINILM_DISPATCH_FLOAT_CUDA(logits.scalar_type(), "logprobs", [&] {
    cuda_check(cuda::logprobs<scalar_t>(sampled.data_ptr<float>(), top.data_ptr<float>(), top_ids.data_ptr<int64_t>(),
                                        cuda_ptr<scalar_t>(logits), logits.stride(0), ids.data_ptr<int64_t>(), B, V,
                                        k, stream),
               "logprobs");
  });
  return {sampled, top, top_ids};
}

}  // namespace infinilm

TORCH_LIBRARY_IMPL(infinilm, CUDA, m) {
  m.impl("sample", &infinilm::sample_cuda);
  m.impl("apply_penalties", &infinilm::apply_penalties_cuda);
  m.impl("logprobs", &infinilm::logprobs_cuda);
}
