// Torch-free timing of rms_norm_kernel block shapes (ITEMS packs per thread) at large T, bf16, rotating
// over 8 input sets so L2 holds none of them. Build: nvcc -O3 -std=c++17 -arch=sm_90 -I. this.cu
#include <cstdio>
#include <vector>

#include "kernels/cuda/norm.cuh"

using namespace infinilm::cuda;
using T = __nv_bfloat16;

template <int ITEMS, bool FUSED>
float time_variant(int64_t rows, int H, std::vector<T*>& x, std::vector<T*>& y, T* w) {
  const int npack = H / 8;
  const int threads = ((npack + ITEMS - 1) / ITEMS + 31) / 32 * 32;
  if (threads > 1024) return -1.f;
  cudaEvent_t a, b;
  cudaEventCreate(&a), cudaEventCreate(&b);
  const int reps = 40;
  for (int i = 0; i < 8; ++i)
    rms_norm_kernel<T, 8, ITEMS, FUSED><<<rows, threads>>>(FUSED ? x[i] : y[i], x[i], FUSED ? y[i] : nullptr, w, H, H,
                                                           H, H, 1e-5f);
  cudaEventRecord(a);
  for (int i = 0; i < reps; ++i)
    rms_norm_kernel<T, 8, ITEMS, FUSED><<<rows, threads>>>(FUSED ? x[i % 8] : y[i % 8], x[i % 8],
                                                           FUSED ? y[i % 8] : nullptr, w, H, H, H, H, 1e-5f);
  cudaEventRecord(b);
  cudaEventSynchronize(b);
  float ms = 0;
  cudaEventElapsedTime(&ms, a, b);
  const cudaError_t e = cudaGetLastError();
  if (e != cudaSuccess) printf("error %s\n", cudaGetErrorString(e));
  return 1e3f * ms / reps;
}

int main() {
  const int64_t Ts[] = {4096, 16384};
  const int Hs[] = {4096, 8192};
  for (int64_t rows : Ts)
    for (int H : Hs) {
      std::vector<T*> x(8), y(8);
      for (int i = 0; i < 8; ++i) cudaMalloc(&x[i], rows * H * 2), cudaMalloc(&y[i], rows * H * 2);
      for (int i = 0; i < 8; ++i) cudaMemset(x[i], 0x3c, rows * H * 2), cudaMemset(y[i], 0x3c, rows * H * 2);
      T* w;
      cudaMalloc(&w, H * 2);
      cudaMemset(w, 0x3c, H * 2);
      const double mb = rows * H * 2.0 / 1e6;
      printf("T=%5ld H=%d  rms_norm (GB/s at 2x%.0f MB):", rows, H, mb);
      float t;
      t = time_variant<1, false>(rows, H, x, y, w); printf("  i1 %.1fus %.0f", t, 2e3 * mb / t);
      t = time_variant<2, false>(rows, H, x, y, w); printf("  i2 %.1fus %.0f", t, 2e3 * mb / t);
      t = time_variant<4, false>(rows, H, x, y, w); printf("  i4 %.1fus %.0f", t, 2e3 * mb / t);
      t = time_variant<8, false>(rows, H, x, y, w); printf("  i8 %.1fus %.0f\n", t, 2e3 * mb / t);
      printf("T=%5ld H=%d  fused    (GB/s at 4x%.0f MB):", rows, H, mb);
      t = time_variant<1, true>(rows, H, x, y, w); printf("  i1 %.1fus %.0f", t, 4e3 * mb / t);
      t = time_variant<2, true>(rows, H, x, y, w); printf("  i2 %.1fus %.0f", t, 4e3 * mb / t);
      t = time_variant<4, true>(rows, H, x, y, w); printf("  i4 %.1fus %.0f", t, 4e3 * mb / t);
      t = time_variant<8, true>(rows, H, x, y, w); printf("  i8 %.1fus %.0f\n", t, 4e3 * mb / t);
      for (int i = 0; i < 8; ++i) cudaFree(x[i]), cudaFree(y[i]);
      cudaFree(w);
    }
  return 0;
}
