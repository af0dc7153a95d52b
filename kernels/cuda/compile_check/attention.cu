// Compile-only check of the torch-free paged-attention kernels: instantiates every launcher for sm_90.
#include "../attention_decode.cuh"
#include "../attention_prefill.cuh"

namespace ia = infinilm::cuda::attn;

template cudaError_t ia::launch_paged_decode<float>(const ia::DecodeParams&, int, cudaStream_t);
template cudaError_t ia::launch_paged_decode<__half>(const ia::DecodeParams&, int, cudaStream_t);
template cudaError_t ia::launch_paged_decode<__nv_bfloat16>(const ia::DecodeParams&, int, cudaStream_t);
template cudaError_t ia::launch_paged_prefill<__half>(const ia::PrefillParams&, int, cudaStream_t);
template cudaError_t ia::launch_paged_prefill<__nv_bfloat16>(const ia::PrefillParams&, int, cudaStream_t);
