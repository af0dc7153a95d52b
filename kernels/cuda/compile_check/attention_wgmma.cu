// Compile-only check of the launchers as a build with sm_90a device code has them (INFINILM_SM90A: the wgmma
// prefill behind INFINILM_CUDA_PREFILL=wgmma; on sm_80 / sm_90 targets its kernel is the stub the launcher never
// reaches), and of the wgmma helpers.
#define INFINILM_SM90A 1
#include "../attention_launch.cuh"
