// Definitions of the dtype-dispatching paged-attention launchers declared in attention_params.h.
// Include in exactly one translation unit (csrc/ops/attention_launch.cu; the compile-only check).
#pragma once

#include "attention_decode.cuh"
#include "attention_decode_tc.cuh"
#include "attention_params.h"
#include "attention_prefill.cuh"

namespace infinilm {
namespace cuda {
namespace attn {

cudaError_t launch_paged_decode(const DecodeParams& p, DType dtype, int head_dim, cudaStream_t stream) {
  switch (dtype) {
    case DType::kFloat32: return launch_paged_decode_t<float>(p, head_dim, stream);
    case DType::kFloat16: return launch_paged_decode_tc_t<__half>(p, head_dim, stream);
    case DType::kBFloat16: return launch_paged_decode_tc_t<__nv_bfloat16>(p, head_dim, stream);
  }
  return cudaErrorInvalidValue;
}

cudaError_t launch_paged_prefill(const PrefillParams& p, DType dtype, int head_dim, cudaStream_t stream) {
  switch (dtype) {
    case DType::kFloat16: return launch_paged_prefill_t<__half>(p, head_dim, stream);
    case DType::kBFloat16: return launch_paged_prefill_t<__nv_bfloat16>(p, head_dim, stream);
    default: return cudaErrorInvalidValue;
  }
}

}  // namespace attn
}  // namespace cuda
}  // namespace infinilm
