// CUDA glue for sample: checks, parameter conversion, device guard, workspace, launch on the current stream.
#include <torch/library.h>

#include "csrc/ops/dispatch_cuda.h"
#include "csrc/ops/ops.h"
#include "csrc/ops/validate.h"
#include "kernels/cuda/sampling.cuh"

namespace infinilm {

// No host synchronisation: parameter and logit values on the device are not checked here (that would need
// a copy to the host); the kernel maps invalid values to defined draws (see kernels/cuda/sampling.cuh).
at::Tensor sample_cuda(const at::Tensor& logits, const at::Tensor& temperature, const at::Tensor& top_k,
                       const at::Tensor& top_p, const at::Tensor& seeds) {
  check_sample_args(logits, temperature, top_k, top_p, seeds);
  INFINILM_CHECK_CUDA(logits);
  const c10::cuda::CUDAGuard guard(logits.device());
  const int64_t B = logits.size(0), V = logits.size(1);
  TORCH_CHECK_VALUE(V <= INT32_MAX - 4096, "infinilm: 'logits' vocab size ", V, " exceeds int32 range");
  TORCH_CHECK_VALUE(B <= 65535, "infinilm: 'logits' has ", B, " rows; the CUDA sampler takes at most 65535");
  // Conversions are no-ops (no launch) when the caller already passes float32 / int64.
  const at::Tensor t = temperature.to(at::kFloat).contiguous(), p = top_p.to(at::kFloat).contiguous();
  const at::Tensor k = top_k.to(at::kLong).contiguous(), s = seeds.to(at::kLong).contiguous();
  at::Tensor out = at::empty({B}, logits.options().dtype(at::kLong));
  if (B == 0) return out;
  // Workspace through the caching allocator: graph-safe, never a cudaMalloc inside the launch.
  const size_t ws_bytes = cuda::sample_workspace_bytes(B, V);
  at::Tensor ws = at::empty({static_cast<int64_t>(ws_bytes)}, logits.options().dtype(at::kByte));
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  INFINILM_DISPATCH_FLOAT_CUDA(logits.scalar_type(), "sample", [&] {
    cuda_check(cuda::sample<scalar_t>(out.data_ptr<int64_t>(), cuda_ptr<scalar_t>(logits), t.data_ptr<float>(),
                                      k.data_ptr<int64_t>(), p.data_ptr<float>(), s.data_ptr<int64_t>(), B, V,
                                      logits.stride(0), ws.data_ptr(), ws_bytes, stream),
               "sample");
  });
  return out;
}

}  // namespace infinilm

TORCH_LIBRARY_IMPL(infinilm, CUDA, m) { m.impl("sample", &infinilm::sample_cuda); }
