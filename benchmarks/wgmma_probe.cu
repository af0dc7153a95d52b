// Checks, on a Hopper GPU, the conventions kernels/cuda/wgmma.cuh relies on before a kernel is built on them:
// the m64n64k16 accumulator layout, 128B-swizzled K-major operands (one and two 64-element column blocks), A in
// registers, and the MN-major (transposed) B operand, for which it tries both readings of the descriptor's
// leading / stride byte offsets. Prints one line per case: max |error| / max |reference| and OK / WRONG.
//   nvcc -O2 -std=c++17 -gencode=arch=compute_90a,code=sm_90a -I. benchmarks/wgmma_probe.cu -o /tmp/wgmma_probe
//   /tmp/wgmma_probe
#include <cuda_bf16.h>

#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <random>
#include <vector>

#include "benchmarks/cuda_bench.cuh"
#include "kernels/cuda/wgmma.cuh"

using bf16 = __nv_bfloat16;
namespace wg = infinilm::cuda::wg;

constexpr int kMaxK = 128;

__device__ __forceinline__ uint32_t pack_bf16(bf16 lo, bf16 hi) {
  return static_cast<uint32_t>(__bfloat16_as_ushort(lo)) | (static_cast<uint32_t>(__bfloat16_as_ushort(hi)) << 16);
}

// A: [64][K] row-major. B: TRANS_B ? [K][64] (n contiguous, MN-major) : [64][K] (k contiguous, K-major).
// raw: [128 threads][32] accumulators as held; out: [64][64] through the assumed accumulator layout.
template <int K, int TRANS_B, bool A_REGS>
__global__ void probe_kernel(const bf16* A, const bf16* B, float* raw, float* out, uint32_t lbo, uint32_t sbo) {
#if defined(INFINILM_HAS_WGMMA)
  __shared__ __align__(1024) unsigned char sa[64 * kMaxK * 2];
  __shared__ __align__(1024) unsigned char sb[64 * kMaxK * 2];
  const int tid = threadIdx.x, warp = tid / 32, lane = tid % 32;
  for (int i = tid; i < 64 * K; i += 128) {
    const int r = i / K, c = i % K;
    *reinterpret_cast<bf16*>(sa + wg::sw128_offset(r, c, 64)) = A[i];
    if (TRANS_B) {
      const int k = i / 64, n = i % 64;
      *reinterpret_cast<bf16*>(sb + wg::sw128_offset(k, n, K)) = B[i];
    } else {
      *reinterpret_cast<bf16*>(sb + wg::sw128_offset(r, c, 64)) = B[i];
    }
  }
  wg::fence_proxy_async();
  __syncthreads();
  float d[32];
#pragma unroll
  for (int i = 0; i < 32; ++i) d[i] = 0.f;
  uint32_t af[K / 16][4];  // register A fragments, built before the fence that precedes the first wgmma
#pragma unroll
  for (int s = 0; s < K / 16; ++s) {
    const int row = 16 * warp + lane / 4, k = s * 16 + 2 * (lane % 4);
    af[s][0] = pack_bf16(A[row * K + k], A[row * K + k + 1]);
    af[s][1] = pack_bf16(A[(row + 8) * K + k], A[(row + 8) * K + k + 1]);
    af[s][2] = pack_bf16(A[row * K + k + 8], A[row * K + k + 9]);
    af[s][3] = pack_bf16(A[(row + 8) * K + k + 8], A[(row + 8) * K + k + 9]);
  }
  wg::fence_operands(d);
  wg::fence();
#pragma unroll
  for (int s = 0; s < K / 16; ++s) {
    const uint32_t koff = (s * 16 / 64) * 64 * 128 + ((s * 16) % 64) * 2;
    const uint64_t da = wg::make_desc(wg::smem_addr(sa) + koff, 16, 1024);
    const uint64_t db = TRANS_B ? wg::make_desc(wg::smem_addr(sb) + s * 16 * 128, lbo, sbo)
                                : wg::make_desc(wg::smem_addr(sb) + koff, 16, 1024);
    if (A_REGS) {
      wg::mma_rs<true, TRANS_B>(d, af[s], db, 1);
    } else {
      wg::mma_ss<true, TRANS_B>(d, da, db, 1);
    }
  }
  wg::commit();
  wg::wait<0>();
  wg::fence_operands(d);
#pragma unroll
  for (int i = 0; i < 32; ++i) {
    raw[tid * 32 + i] = d[i];
    const int j = i / 4, h = (i / 2) % 2, e = i % 2;
    out[(16 * warp + lane / 4 + 8 * h) * 64 + 8 * j + 2 * (lane % 4) + e] = d[i];
  }
#endif
}

struct Case {
  const char* name;
  int k, trans, regs;
  uint32_t lbo, sbo;
};

template <int K, int T, bool R>
void launch(const bf16* A, const bf16* B, float* raw, float* out, uint32_t lbo, uint32_t sbo) {
  probe_kernel<K, T, R><<<1, 128>>>(A, B, raw, out, lbo, sbo);
}

void run(const Case& c, const std::vector<float>& a, const std::vector<float>& b, bool quiet, std::vector<float>* raw_out) {
  std::vector<bf16> ha(a.size()), hb(b.size());
  for (size_t i = 0; i < a.size(); ++i) ha[i] = __float2bfloat16(a[i]);
  for (size_t i = 0; i < b.size(); ++i) hb[i] = __float2bfloat16(b[i]);
  bf16 *da, *db;
  float *draw, *dout;
  CHECK(cudaMalloc(&da, ha.size() * 2));
  CHECK(cudaMalloc(&db, hb.size() * 2));
  CHECK(cudaMalloc(&draw, 128 * 32 * 4));
  CHECK(cudaMalloc(&dout, 64 * 64 * 4));
  CHECK(cudaMemcpy(da, ha.data(), ha.size() * 2, cudaMemcpyHostToDevice));
  CHECK(cudaMemcpy(db, hb.data(), hb.size() * 2, cudaMemcpyHostToDevice));
  CHECK(cudaMemset(dout, 0, 64 * 64 * 4));
  if (c.k == 64 && !c.trans && !c.regs) launch<64, 0, false>(da, db, draw, dout, c.lbo, c.sbo);
  if (c.k == 128 && !c.trans && !c.regs) launch<128, 0, false>(da, db, draw, dout, c.lbo, c.sbo);
  if (c.k == 64 && !c.trans && c.regs) launch<64, 0, true>(da, db, draw, dout, c.lbo, c.sbo);
  if (c.k == 64 && c.trans && !c.regs) launch<64, 1, false>(da, db, draw, dout, c.lbo, c.sbo);
  if (c.k == 64 && c.trans && c.regs) launch<64, 1, true>(da, db, draw, dout, c.lbo, c.sbo);
  CHECK(cudaGetLastError());
  CHECK(cudaDeviceSynchronize());
  std::vector<float> out(64 * 64), raw(128 * 32);
  CHECK(cudaMemcpy(out.data(), dout, out.size() * 4, cudaMemcpyDeviceToHost));
  CHECK(cudaMemcpy(raw.data(), draw, raw.size() * 4, cudaMemcpyDeviceToHost));
  if (raw_out) *raw_out = raw;
  double err = 0, mx = 0;
  for (int r = 0; r < 64; ++r) {
    for (int n = 0; n < 64; ++n) {
      double ref = 0;
      for (int k = 0; k < c.k; ++k) {
        const float bk = c.trans ? __bfloat162float(hb[k * 64 + n]) : __bfloat162float(hb[n * c.k + k]);
        ref += double(__bfloat162float(ha[r * c.k + k])) * bk;
      }
      err = std::fmax(err, std::fabs(ref - out[r * 64 + n]));
      mx = std::fmax(mx, std::fabs(ref));
    }
  }
  if (!quiet) {
    std::printf("%-44s K=%-3d lbo=%-5u sbo=%-5u  max|err|/max|ref| = %.2e  %s\n", c.name, c.k, c.lbo, c.sbo,
                err / std::fmax(mx, 1e-30), err <= 1e-3 * mx ? "OK" : "WRONG");
  }
  cudaFree(da);
  cudaFree(db);
  cudaFree(draw);
  cudaFree(dout);
}

int main() {
  cudaDeviceProp prop;
  CHECK(cudaGetDeviceProperties(&prop, 0));
  std::printf("device: %s (sm_%d%d)\n", prop.name, prop.major, prop.minor);
  std::mt19937 rng(0);
  std::uniform_real_distribution<float> u(-1.f, 1.f);
  auto rand = [&](size_t n) {
    std::vector<float> v(n);
    for (auto& x : v) x = u(rng);
    return v;
  };

  // 1. The accumulator layout: A = I (64x64), B K-major with B[n][k] = k, then = n: D[r][n] = B[n][r], so the
  // two runs name the (row, col) of every register.
  {
    std::vector<float> eye(64 * 64, 0.f), bk(64 * 64), bn(64 * 64);
    for (int i = 0; i < 64; ++i) eye[i * 64 + i] = 1.f;
    for (int n = 0; n < 64; ++n) {
      for (int k = 0; k < 64; ++k) {
        bk[n * 64 + k] = float(k);
        bn[n * 64 + k] = float(n);
      }
    }
    std::vector<float> rows, cols;
    const Case c{"layout", 64, 0, 0, 16, 1024};
    run(c, eye, bk, true, &rows);
    run(c, eye, bn, true, &cols);
    int bad = 0;
    for (int t = 0; t < 128; ++t) {
      for (int i = 0; i < 32; ++i) {
        const int warp = t / 32, lane = t % 32, j = i / 4, h = (i / 2) % 2, e = i % 2;
        const int er = 16 * warp + lane / 4 + 8 * h, ec = 8 * j + 2 * (lane % 4) + e;
        if (int(rows[t * 32 + i]) != er || int(cols[t * 32 + i]) != ec) {
          if (bad < 8)
            std::printf("  thread %d reg %d holds (%d, %d), assumed (%d, %d)\n", t, i, int(rows[t * 32 + i]),
                        int(cols[t * 32 + i]), er, ec);
          ++bad;
        }
      }
    }
    std::printf("%-44s %s (%d of 4096 registers elsewhere)\n", "accumulator layout (m16n8 tiles along N)",
                bad == 0 ? "OK" : "WRONG", bad);
  }

  // 2. Products on random data.
  const Case cases[] = {
      {"smem A, smem B, both K-major", 64, 0, 0, 16, 1024},
      {"smem A, smem B, K-major, two column blocks", 128, 0, 0, 16, 1024},
      {"register A, smem B K-major", 64, 0, 1, 16, 1024},
      {"smem A, smem B MN-major (trans-b), SBO=groups", 64, 1, 0, 16, 1024},
      {"smem A, smem B MN-major (trans-b), LBO=groups", 64, 1, 0, 1024, 16},
      {"smem A, smem B MN-major (trans-b), both", 64, 1, 0, 1024, 1024},
      {"register A, smem B MN-major, SBO=groups", 64, 1, 1, 16, 1024},
      {"register A, smem B MN-major, LBO=groups", 64, 1, 1, 1024, 16},
      {"register A, smem B MN-major, both", 64, 1, 1, 1024, 1024},
  };
  for (const Case& c : cases) run(c, rand(64 * c.k), rand(64 * c.k), false, nullptr);
  return 0;
}
