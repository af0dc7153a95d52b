// Standalone (torch-free) sweep of the paged decode kernels' split count at Llama-3-8B shapes, bf16:
// kernel time per (batch, context, splits), to tune decode_split_plan. Build and run on a GPU machine:
//   nvcc -O3 -std=c++17 --expt-relaxed-constexpr -gencode=arch=compute_90,code=sm_90 -I. \
//        benchmarks/decode_sweep.cu -o /tmp/decode_sweep && /tmp/decode_sweep
#include <algorithm>
#include <cstdio>
#include <numeric>
#include <random>
#include <vector>

#include "benchmarks/cuda_bench.cuh"
#include "kernels/cuda/attention_launch.cuh"

using namespace infinilm::cuda::attn;

int main() {
  const int HQ = 32, HK = 8, D = 128, BS = 16, LOG_BS = 4;
  int sms = 0;
  CHECK(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, 0));
  const int shapes[][2] = {{1, 4096}, {1, 32768}, {8, 4096}, {32, 4096}};
  std::printf("%4s %6s %7s %6s %9s %8s %s\n", "B", "ctx", "splits", "part", "us", "GB/s", "");
  for (const auto& sh : shapes) {
    const int B = sh[0], L = sh[1], nb = B * L / BS;
    const int64_t cache_elems = int64_t(nb) * HK * BS * D;
    __nv_bfloat16 *kc, *vc, *q, *out;
    float *po, *pml;
    int *bt, *sl;
    CHECK(cudaMalloc(&kc, cache_elems * 2));
    CHECK(cudaMalloc(&vc, cache_elems * 2));
    CHECK(cudaMalloc(&q, int64_t(B) * HQ * D * 2));
    CHECK(cudaMalloc(&out, int64_t(B) * HQ * D * 2));
    CHECK(cudaMalloc(&po, int64_t(B) * HQ * 256 * D * 4));
    CHECK(cudaMalloc(&pml, int64_t(B) * HQ * 256 * 2 * 4));
    CHECK(cudaMalloc(&bt, int64_t(nb) * 4));
    CHECK(cudaMalloc(&sl, B * 4));
    fill_random<<<1024, 256>>>(kc, cache_elems, 1, 1.f);
    fill_random<<<1024, 256>>>(vc, cache_elems, 2, 1.f);
    fill_random<<<64, 256>>>(q, int64_t(B) * HQ * D, 3, 1.f);
    std::vector<int> ids(nb), lens(B, L);
    std::iota(ids.begin(), ids.end(), 0);
    std::shuffle(ids.begin(), ids.end(), std::mt19937(7));
    CHECK(cudaMemcpy(bt, ids.data(), nb * 4, cudaMemcpyHostToDevice));
    CHECK(cudaMemcpy(sl, lens.data(), B * 4, cudaMemcpyHostToDevice));

    DecodeParams p{};
    p.q = q;
    p.q_stride_row = HQ * D;
    p.q_stride_head = D;
    p.k_cache = kc;
    p.v_cache = vc;
    p.block_tables = bt;
    p.seq_lens = sl;
    p.out = out;
    p.part_o = po;
    p.part_ml = pml;
    p.num_blocks = nb;
    p.rows = B;
    p.num_reqs = B;
    p.hq = HQ;
    p.hk = HK;
    p.log_bs = LOG_BS;
    p.max_blocks = L / BS;
    p.scale_log2 = 0.0883883f * kLog2e;
    int plan_s = 0, plan_part = 0;
    // The plan's CTA shape too (8 warps for small grids): its split count is sized for it.
    decode_split_plan(B, HK * decode_ctas_per_kv_head(HQ / HK, DType::kBFloat16), L, sms, &plan_s, &plan_part,
                      DType::kBFloat16, D, &p.warps);
    std::vector<int> parts;
    for (int want : {1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64, 96, 128, 192, 256}) {
      int part = (L + want - 1) / want;
      part = std::max(64, (part + 63) / 64 * 64);
      if ((L + part - 1) / part <= 256) parts.push_back(part);
    }
    parts.push_back(plan_part);
    std::sort(parts.begin(), parts.end());
    parts.erase(std::unique(parts.begin(), parts.end()), parts.end());
    cudaEvent_t a, b;
    CHECK(cudaEventCreate(&a));
    CHECK(cudaEventCreate(&b));
    for (int part : parts) {
      p.part_size = part;
      p.splits = (L + part - 1) / part;
      for (int i = 0; i < 3; ++i) CHECK(launch_paged_decode(p, DType::kBFloat16, D, 0));
      const int reps = 20;
      CHECK(cudaEventRecord(a));
      for (int i = 0; i < reps; ++i) CHECK(launch_paged_decode(p, DType::kBFloat16, D, 0));
      CHECK(cudaEventRecord(b));
      CHECK(cudaEventSynchronize(b));
      float ms = 0.f;
      CHECK(cudaEventElapsedTime(&ms, a, b));
      const double us = ms * 1e3 / reps, bytes = 2.0 * B * L * HK * D * 2;
      std::printf("%4d %6d %7d %6d %9.1f %8.0f %s\n", B, L, p.splits, part, us, bytes / us / 1e3,
                  part == plan_part ? "<- plan" : "");
    }
    cudaFree(kc); cudaFree(vc); cudaFree(q); cudaFree(out); cudaFree(po); cudaFree(pml); cudaFree(bt); cudaFree(sl);
  }
  return 0;
}
