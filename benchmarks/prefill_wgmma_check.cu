// The Hopper wgmma prefill kernel (kernels/cuda/attention_prefill_wgmma.cuh) against the mma.sync one
// (attention_prefill.cuh) on the same paged inputs: max |difference| relative to the output's max, and µs /
// TFLOP/s of both, CUDA events over repeated launches. Torch-free; run benchmarks/wgmma_probe.cu first.
//   nvcc -O3 -std=c++17 --expt-relaxed-constexpr -DINFINILM_SM90A -gencode=arch=compute_90a,code=sm_90a -I. \
//        benchmarks/prefill_wgmma_check.cu -o /tmp/prefill_wgmma_check && /tmp/prefill_wgmma_check
#include <cuda_bf16.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <numeric>
#include <random>
#include <vector>

#include "benchmarks/cuda_bench.cuh"
#include "kernels/cuda/attention_launch.cuh"
#include "kernels/cuda/attention_prefill_wgmma.cuh"

using bf16 = __nv_bfloat16;
namespace ka = infinilm::cuda::attn;

constexpr int HQ = 32, HK = 8, BS = 16;

struct Config {
  int S, prefix, reqs, d;
};

int main() {
  cudaDeviceProp prop;
  CHECK(cudaGetDeviceProperties(&prop, 0));
  std::printf("device: %s\n", prop.name);
  std::printf("%-34s %10s %10s %9s %9s %8s %12s %8s\n", "config", "mma us", "wgmma us", "mma TF/s", "wgmma TF", "x", "max|diff|/max", "differ");
  const Config configs[] = {{77, 0, 5, 64},     {300, 129, 3, 128}, {1024, 3072, 4, 128}, {2048, 0, 1, 64},
                            {2048, 0, 1, 128},  {8192, 0, 1, 64},   {8192, 0, 1, 128},    {512, 0, 16, 128}};
  std::mt19937 rng(0);
  for (const Config& c : configs) {
    const int L = c.S + c.prefix, nb = (L + BS - 1) / BS, n = c.reqs, D = c.d;
    const int64_t T = int64_t(c.S) * n, blocks = int64_t(nb) * n;
    std::vector<int> bt(blocks), qsl(n + 1), sl(n, L);
    std::iota(bt.begin(), bt.end(), 0);
    std::shuffle(bt.begin(), bt.end(), rng);
    for (int i = 0; i <= n; ++i) qsl[i] = i * c.S;
    bf16 *q, *kc, *vc, *o_ref, *o_wg;
    int *dbt, *dqsl, *dsl;
    CHECK(cudaMalloc(&q, T * HQ * D * 2));
    CHECK(cudaMalloc(&kc, blocks * HK * BS * D * 2));
    CHECK(cudaMalloc(&vc, blocks * HK * BS * D * 2));
    CHECK(cudaMalloc(&o_ref, T * HQ * D * 2));
    CHECK(cudaMalloc(&o_wg, T * HQ * D * 2));
    CHECK(cudaMalloc(&dbt, blocks * 4));
    CHECK(cudaMalloc(&dqsl, (n + 1) * 4));
    CHECK(cudaMalloc(&dsl, n * 4));
    fill_random<<<1024, 256>>>(q, T * HQ * D, 1, 1.f);
    fill_random<<<1024, 256>>>(kc, blocks * HK * BS * D, 2, 1.f);
    fill_random<<<1024, 256>>>(vc, blocks * HK * BS * D, 3, 1.f);
    CHECK(cudaMemset(o_wg, 0xff, T * HQ * D * 2));  // NaN: rows the kernel does not write show up
    CHECK(cudaMemcpy(dbt, bt.data(), blocks * 4, cudaMemcpyHostToDevice));
    CHECK(cudaMemcpy(dqsl, qsl.data(), (n + 1) * 4, cudaMemcpyHostToDevice));
    CHECK(cudaMemcpy(dsl, sl.data(), n * 4, cudaMemcpyHostToDevice));

    ka::PrefillParams p{};
    p.q = q;
    p.q_stride_tok = int64_t(HQ) * D;
    p.q_stride_head = D;
    p.k_cache = kc;
    p.v_cache = vc;
    p.block_tables = dbt;
    p.seq_lens = dsl;
    p.query_start_loc = dqsl;
    p.num_blocks = blocks;
    p.num_reqs = n;
    p.hq = HQ;
    p.hk = HK;
    p.log_bs = 4;
    p.max_blocks = nb;
    p.block_stride = int64_t(HK) * BS * D;
    p.head_stride = int64_t(BS) * D;
    p.capacity = int64_t(nb) * BS;
    p.scale_log2 = 1.f / std::sqrt(float(D)) * ka::kLog2e;
    const int64_t bm = ka::prefill_block_m(D);
    p.tiles_upper = int((T + bm - 1) / bm + n);
    ka::PrefillParams pr = p, pw = p;
    pr.out = o_ref;
    pw.out = o_wg;
    CHECK(ka::launch_paged_prefill_t<bf16>(pr, D, 0));  // the mma.sync kernel itself, whatever INFINILM_CUDA_PREFILL says
    CHECK(ka::launch_paged_prefill_wgmma_t<bf16>(pw, D, 0));
    CHECK(cudaDeviceSynchronize());
    std::vector<bf16> a(T * HQ * D), b(T * HQ * D);
    CHECK(cudaMemcpy(a.data(), o_ref, a.size() * 2, cudaMemcpyDeviceToHost));
    CHECK(cudaMemcpy(b.data(), o_wg, b.size() * 2, cudaMemcpyDeviceToHost));
    double diff = 0, mx = 0;
    int64_t bad = 0, differ = 0;
    for (size_t i = 0; i < a.size(); ++i) {
      const double x = __bfloat162float(a[i]), y = __bfloat162float(b[i]);
      if (!std::isfinite(y)) ++bad;
      else diff = std::fmax(diff, std::fabs(x - y));
      differ += x != y;
      mx = std::fmax(mx, std::fabs(x));
    }
    auto time = [&](auto fn) {
      cudaEvent_t e0, e1;
      CHECK(cudaEventCreate(&e0));
      CHECK(cudaEventCreate(&e1));
      for (int i = 0; i < 3; ++i) fn();
      const int reps = c.S >= 8192 ? 10 : 30;
      CHECK(cudaEventRecord(e0));
      for (int i = 0; i < reps; ++i) fn();
      CHECK(cudaEventRecord(e1));
      CHECK(cudaEventSynchronize(e1));
      float ms = 0;
      CHECK(cudaEventElapsedTime(&ms, e0, e1));
      return 1e3 * ms / reps;
    };
    const double us_ref = time([&] { ka::launch_paged_prefill_t<bf16>(pr, D, 0); });
    const double us_wg = time([&] { ka::launch_paged_prefill_wgmma_t<bf16>(pw, D, 0); });
    const double pairs = double(n) * (double(c.S) * c.prefix + double(c.S) * (c.S + 1) / 2);
    const double flops = 4 * pairs * D * HQ;
    char name[64];
    std::snprintf(name, sizeof name, "S=%d prefix=%d reqs=%d d=%d", c.S, c.prefix, n, D);
    // OK needs a non-zero reference (an all-zero output would match a zero one); differ counts elements that
    // are not bitwise equal (the two kernels agree bit for bit on the H200).
    std::printf("%-34s %10.1f %10.1f %9.1f %9.1f %8.2f %9.2e %8lld%s\n", name, us_ref, us_wg, flops / us_ref / 1e6,
                flops / us_wg / 1e6, us_ref / us_wg, diff / std::fmax(mx, 1e-30), static_cast<long long>(differ),
                bad ? " NON-FINITE/UNWRITTEN" : (mx > 0 && diff <= 2e-2 * mx ? " OK" : " WRONG"));
    for (void* ptr : {(void*)q, (void*)kc, (void*)vc, (void*)o_ref, (void*)o_wg, (void*)dbt, (void*)dqsl, (void*)dsl})
      cudaFree(ptr);
  }
  return 0;
}
