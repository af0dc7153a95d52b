// Programmatic dependent launch (Hopper+): a decode product's weight loads overlap the kernel before it.
//
// A kernel launched with pdl_launch may start while the previous kernel on its stream still runs, once every
// CTA of that kernel has called pdl_trigger (or exited). Until it calls pdl_wait it may only read memory no
// earlier kernel writes (weights); pdl_wait returns when the previous kernel has finished and its writes are
// visible. It must not write anything before pdl_wait: the caching allocator may have handed it a buffer an
// earlier kernel still reads. On where the device is sm_90 or newer unless INFINILM_CUDA_PDL=0 (read once);
// elsewhere, and in a hipified build, pdl_launch is a plain launch and pdl_wait / pdl_trigger do nothing.
#pragma once

#include <cuda_runtime.h>

#include <cstdlib>

namespace infinilm::cuda {

__device__ __forceinline__ void pdl_wait() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900 && !defined(__HIP_PLATFORM_AMD__)
  asm volatile("griddepcontrol.wait;\n" ::: "memory");
#endif
}

__device__ __forceinline__ void pdl_trigger() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900 && !defined(__HIP_PLATFORM_AMD__)
  asm volatile("griddepcontrol.launch_dependents;\n" ::);
#endif
}

// Whether launches on the current device use the attribute (env read once; device capability per call).
inline bool pdl_enabled() {
#if defined(__HIP_PLATFORM_AMD__)
  return false;
#else
  static const bool env = [] {
    const char* v = std::getenv("INFINILM_CUDA_PDL");
    return v == nullptr || v[0] != '0';
  }();
  if (!env) return false;
  int dev = 0, major = 0;
  if (cudaGetDevice(&dev) != cudaSuccess) return false;
  if (cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, dev) != cudaSuccess) return false;
  return major >= 9;
#endif
}

template <typename... KArgs, typename... Args>
cudaError_t pdl_launch(void (*kernel)(KArgs...), dim3 grid, dim3 block, size_t smem, cudaStream_t stream,
                       Args... args) {
#if !defined(__HIP_PLATFORM_AMD__)
  if (pdl_enabled()) {
    cudaLaunchConfig_t cfg = {};
    cfg.gridDim = grid;
    cfg.blockDim = block;
    cfg.dynamicSmemBytes = smem;
    cfg.stream = stream;
    cudaLaunchAttribute attr[1];
    attr[0].id = cudaLaunchAttributeProgrammaticStreamSerialization;
    attr[0].val.programmaticStreamSerializationAllowed = 1;
    cfg.attrs = attr;
    cfg.numAttrs = 1;
    return cudaLaunchKernelEx(&cfg, kernel, static_cast<KArgs>(args)...);
  }
#endif
  kernel<<<grid, block, smem, stream>>>(static_cast<KArgs>(args)...);
  return cudaGetLastError();
}

}  // namespace infinilm::cuda
