// Compile-only check of the Hopper wgmma prefill kernel (sm_90a: the real body; other targets: the stub its
// launcher never reaches) and of the wgmma helpers.
#define INFINILM_SM90A 1
#include "../attention_prefill_wgmma.cuh"

namespace ka = infinilm::cuda::attn;

template cudaError_t ka::launch_paged_prefill_wgmma_t<__nv_bfloat16>(const ka::PrefillParams&, int, cudaStream_t);
template cudaError_t ka::launch_paged_prefill_wgmma_t<__half>(const ka::PrefillParams&, int, cudaStream_t);
