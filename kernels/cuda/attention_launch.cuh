// Definitions of the dtype-dispatching paged-attention launchers declared in attention_params.h.
// Include in exactly one translation unit (csrc/ops/attention_launch.cu; the compile-only check).
#pragma once

#include "attention_decode.cuh"
#include "attention_decode_tc.cuh"
#include "attention_params.h"
#include "attention_prefill.cuh"
#include "attention_prefill_wgmma.cuh"

#include <atomic>
#include <cstdlib>
#include <cstring>

namespace infinilm {
namespace cuda {
namespace attn {

// Zero strides/capacity mean the dense [num_blocks, Hk, 2^log_bs, D] cache (callers that predate them).
template <typename P>
P with_layout_defaults(const P& in, int head_dim) {
  P p = in;
  const int64_t bs = int64_t{1} << (p.log_bs < kWholeRowLogBs ? p.log_bs : 0);
  if (p.head_stride == 0) p.head_stride = bs * head_dim;
  if (p.block_stride == 0) p.block_stride = p.hk * p.head_stride;
  if (p.capacity == 0) p.capacity = static_cast<int64_t>(p.max_blocks) * bs;
  return p;
}

cudaError_t launch_paged_decode(const DecodeParams& in, DType dtype, int head_dim, cudaStream_t stream) {
  const DecodeParams p = with_layout_defaults(in, head_dim);
  switch (dtype) {
    case DType::kFloat32: return launch_paged_decode_t<float>(p, head_dim, stream);
    case DType::kFloat16: return launch_paged_decode_tc_t<__half>(p, head_dim, stream);
    case DType::kBFloat16: return launch_paged_decode_tc_t<__nv_bfloat16>(p, head_dim, stream);
  }
  return cudaErrorInvalidValue;
}

// INFINILM_CUDA_PREFILL=wgmma: the Hopper wgmma prefill (attention_prefill_wgmma.cuh) where this build has sm_90a
// code and the device is sm_90, for the cases it implements; the mma.sync kernel otherwise. Opt-in until measured.
inline bool prefill_wgmma_requested() {
#if defined(__HIP_PLATFORM_AMD__) || !defined(INFINILM_SM90A)
  return false;
#else
  static const bool env = [] {
    const char* v = std::getenv("INFINILM_CUDA_PREFILL");
    return v != nullptr && std::strcmp(v, "wgmma") == 0;
  }();
  if (!env) return false;
  // Per device, asked once: 0 unknown, 1 sm_90, 2 other.
  static std::atomic<signed char> is_sm90[64] = {};
  int dev = 0;
  if (cudaGetDevice(&dev) != cudaSuccess || dev < 0 || dev >= 64) return false;
  if (is_sm90[dev].load(std::memory_order_relaxed) == 0) {
    int major = 0, minor = 0;
    if (cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, dev) != cudaSuccess ||
        cudaDeviceGetAttribute(&minor, cudaDevAttrComputeCapabilityMinor, dev) != cudaSuccess)
      return false;
    is_sm90[dev].store(major == 9 && minor == 0 ? 1 : 2, std::memory_order_relaxed);
  }
  return is_sm90[dev].load(std::memory_order_relaxed) == 1;
#endif
}

cudaError_t launch_paged_prefill(const PrefillParams& in, DType dtype, int head_dim, cudaStream_t stream) {
  const PrefillParams p = with_layout_defaults(in, head_dim);
  if (prefill_wgmma_requested() && (dtype == DType::kFloat16 || dtype == DType::kBFloat16)) {
    const cudaError_t e = dtype == DType::kBFloat16 ? launch_paged_prefill_wgmma_t<__nv_bfloat16>(p, head_dim, stream)
                                                    : launch_paged_prefill_wgmma_t<__half>(p, head_dim, stream);
    if (e != cudaErrorNotSupported) return e;
  }
  switch (dtype) {
    case DType::kFloat16: return launch_paged_prefill_t<__half>(p, head_dim, stream);
    case DType::kBFloat16: return launch_paged_prefill_t<__nv_bfloat16>(p, head_dim, stream);
    default: return cudaErrorInvalidValue;
  }
}

}  // namespace attn
}  // namespace cuda
}  // namespace infinilm
