// Standalone (torch-free) sweep of the decode GEMV kernels against cuBLAS, and of short-context paged decode
// attention, as a decode step sees them: each product in a CUDA graph of L launches over L distinct weight
// copies (more bytes than L2 holds), replayed; µs per product and weight GB/s. Build and run on a GPU machine:
//   nvcc -O3 -std=c++17 --expt-relaxed-constexpr -gencode=arch=compute_90,code=sm_90 -I. \
//        benchmarks/gemv_sweep.cu -lcublas -o /tmp/gemv_sweep && /tmp/gemv_sweep
#include <cublas_v2.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <functional>
#include <numeric>
#include <random>
#include <vector>

#include "benchmarks/cuda_bench.cuh"
#include "kernels/cuda/activation.cuh"
#include "kernels/cuda/attention_launch.cuh"
#include "kernels/cuda/gemv.cuh"
#include "kernels/cuda/gemv_rows.cuh"

using bf16 = __nv_bfloat16;
using namespace infinilm::cuda;

static cudaStream_t g_stream;

// Median µs per launch of fn(i) for i < L, all L captured in one graph.
static double time_graph(int L, const std::function<void(int)>& fn, int reps = 15) {
  for (int i = 0; i < L; ++i) fn(i);  // warm-up outside capture (lazy loading, cuBLAS heuristics)
  CHECK(cudaStreamSynchronize(g_stream));
  cudaGraph_t graph;
  cudaGraphExec_t exec;
  CHECK(cudaStreamBeginCapture(g_stream, cudaStreamCaptureModeThreadLocal));
  for (int i = 0; i < L; ++i) fn(i);
  CHECK(cudaStreamEndCapture(g_stream, &graph));
  CHECK(cudaGraphInstantiate(&exec, graph, 0));
  cudaEvent_t a, b;
  CHECK(cudaEventCreate(&a));
  CHECK(cudaEventCreate(&b));
  std::vector<double> t;
  for (int r = 0; r < reps + 2; ++r) {
    CHECK(cudaEventRecord(a, g_stream));
    CHECK(cudaGraphLaunch(exec, g_stream));
    CHECK(cudaEventRecord(b, g_stream));
    CHECK(cudaEventSynchronize(b));
    float ms = 0.f;
    CHECK(cudaEventElapsedTime(&ms, a, b));
    if (r >= 2) t.push_back(ms * 1e3 / L);
  }
  std::sort(t.begin(), t.end());
  cudaGraphExecDestroy(exec);
  cudaGraphDestroy(graph);
  return t[t.size() / 2];
}

static float max_rel_diff(const bf16* a, const bf16* b, int64_t n) {
  std::vector<bf16> ha(n), hb(n);
  CHECK(cudaMemcpy(ha.data(), a, n * 2, cudaMemcpyDeviceToHost));
  CHECK(cudaMemcpy(hb.data(), b, n * 2, cudaMemcpyDeviceToHost));
  float md = 0.f, mx = 1e-6f;
  for (int64_t i = 0; i < n; ++i) {
    md = std::max(md, std::fabs(__bfloat162float(ha[i]) - __bfloat162float(hb[i])));
    mx = std::max(mx, std::fabs(__bfloat162float(hb[i])));
  }
  return md / mx;
}

static void gemv_shapes(cublasHandle_t h, int sms) {
  struct Shape { const char* name; int64_t N, K; bool silu; };
  const Shape shapes[] = {{"1b qkv", 3072, 2048, false},   {"1b o", 2048, 2048, false},
                          {"1b gate_up", 16384, 2048, false}, {"1b down", 2048, 8192, true},
                          {"1b lm_head", 128256, 2048, false}, {"8b qkv", 6144, 4096, false},
                          {"8b o", 4096, 4096, false},    {"8b gate_up", 28672, 4096, false},
                          {"8b down", 4096, 14336, true}, {"8b lm_head", 128256, 4096, false}};
  std::printf("\n%-12s %2s %14s | %9s %9s %9s %9s %9s | %7s %7s  (µs per product; GB/s of weights for best)\n",
              "shape", "M", "N x K", "cublas", "mma", "rows", "mma+f", "rows+f", "best/cb", "rel err");
  for (const Shape& s : shapes) {
    const int64_t wbytes = s.N * s.K * 2;
    const int L = static_cast<int>(std::max<int64_t>(1, std::min<int64_t>(16, (160ll << 20) / wbytes + 1)));
    std::vector<bf16*> w(L);
    for (int i = 0; i < L; ++i) {
      CHECK(cudaMalloc(&w[i], wbytes));
      fill_random<<<2048, 256, 0, g_stream>>>(w[i], s.N * s.K, 11 + i, 1.f / std::sqrt(float(s.K)));
    }
    bf16 *x, *xa, *y, *yref;
    const int64_t xk = s.silu ? 2 * s.K : s.K;
    CHECK(cudaMalloc(&x, 8 * xk * 2));
    CHECK(cudaMalloc(&xa, 8 * s.K * 2));
    CHECK(cudaMalloc(&y, 8 * s.N * 2));
    CHECK(cudaMalloc(&yref, 8 * s.N * 2));
    fill_random<<<64, 256, 0, g_stream>>>(x, 8 * xk, 5, 2.f);
    for (int M : {1, 2, 4, 8}) {
      const float one = 1.f, zero = 0.f;
      auto cublas = [&](const bf16* in, const bf16* wi, bf16* out) {
        cublasGemmEx(h, CUBLAS_OP_T, CUBLAS_OP_N, s.N, M, s.K, &one, wi, CUDA_R_16BF, s.K, in, CUDA_R_16BF, s.K, &zero,
                     out, CUDA_R_16BF, s.N, CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT);
      };
      // Unfused baseline for the down projection: the activation kernel, then the product.
      auto act = [&] { CHECK(silu_and_mul<bf16>(xa, x, M, s.K, 2 * s.K, g_stream)); };
      const bf16* xin = s.silu ? xa : x;
      double t[5];
      t[0] = time_graph(L, [&](int i) { if (s.silu) act(); cublas(xin, w[i], y); });
      act();
      cublas(xin, w[L - 1], yref);  // each variant's y holds the graph's last product, on w[L - 1]
      t[1] = time_graph(L, [&](int i) {
        if (s.silu) act();
        CHECK(gemv<bf16>(y, xin, w[i], nullptr, M, s.N, s.K, s.K, s.N, sms, g_stream));
      });
      const float e1 = max_rel_diff(y, yref, M * s.N);
      const bool rows_ok = gemv_rows_fits(M, s.K, 2);
      t[2] = rows_ok ? time_graph(L, [&](int i) {
        if (s.silu) act();
        CHECK(gemv_rows<bf16>(y, xin, w[i], nullptr, M, s.N, s.K, s.K, s.N, sms, g_stream));
      }) : NAN;
      const float e2 = rows_ok ? max_rel_diff(y, yref, M * s.N) : 0.f;
      t[3] = s.silu ? time_graph(L, [&](int i) {
        CHECK(gemv_silu_and_mul<bf16>(y, x, w[i], nullptr, M, s.N, s.K, 2 * s.K, s.N, sms, g_stream));
      }) : NAN;
      const float e3 = s.silu ? max_rel_diff(y, yref, M * s.N) : 0.f;
      t[4] = s.silu && rows_ok ? time_graph(L, [&](int i) {
        CHECK(gemv_rows_silu_and_mul<bf16>(y, x, w[i], nullptr, M, s.N, s.K, 2 * s.K, s.N, sms, g_stream));
      }) : NAN;
      const float e4 = s.silu && rows_ok ? max_rel_diff(y, yref, M * s.N) : 0.f;
      double best = t[0];
      for (int i = 1; i < 5; ++i)
        if (!std::isnan(t[i])) best = std::min(best, t[i]);
      std::printf("%-12s %2d %6lld x %5lld | %9.2f %9.2f %9.2f %9.2f %9.2f | %6.2fx %7.4f  %6.0f GB/s\n", s.name, M,
                  (long long)s.N, (long long)s.K, t[0], t[1], t[2], t[3], t[4], t[0] / best,
                  std::max(std::max(e1, e2), std::max(e3, e4)), wbytes / best / 1e3);
    }
    for (auto p : w) cudaFree(p);
    cudaFree(x); cudaFree(xa); cudaFree(y); cudaFree(yref);
  }
}

// Paged decode at Llama-3.2-1B shapes (32/8 heads, d 64), batch 1, block 16, with the fused merge counters:
// per context, splits forced 1..8 (parts of the bound) and the grid of a graph bucketed to 512 tokens.
static void decode_short(int sms) {
  using namespace infinilm::cuda::attn;
  const int HQ = 32, HK = 8, D = 64, BS = 16, LOG_BS = 4, CAP = 4096;
  const int nb = CAP / BS, L = 16;  // 16 layers' caches
  const int64_t elems = int64_t(nb) * HK * BS * D;
  std::vector<bf16*> kc(L), vc(L);
  for (int i = 0; i < L; ++i) {
    CHECK(cudaMalloc(&kc[i], elems * 2));
    CHECK(cudaMalloc(&vc[i], elems * 2));
    fill_random<<<512, 256, 0, g_stream>>>(kc[i], elems, 1 + i, 1.f);
    fill_random<<<512, 256, 0, g_stream>>>(vc[i], elems, 100 + i, 1.f);
  }
  bf16 *q, *out;
  float *po, *pml;
  int *bt, *sl, *cnt;
  CHECK(cudaMalloc(&q, HQ * D * 2));
  CHECK(cudaMalloc(&out, HQ * D * 2));
  CHECK(cudaMalloc(&po, HQ * 256 * D * 4));
  CHECK(cudaMalloc(&pml, HQ * 256 * 2 * 4));
  CHECK(cudaMalloc(&bt, nb * 4));
  CHECK(cudaMalloc(&sl, 4));
  CHECK(cudaMalloc(&cnt, 1024 * 4));
  CHECK(cudaMemset(cnt, 0, 1024 * 4));
  fill_random<<<8, 256, 0, g_stream>>>(q, HQ * D, 3, 1.f);
  std::vector<int> ids(nb);
  std::iota(ids.begin(), ids.end(), 0);
  std::shuffle(ids.begin(), ids.end(), std::mt19937(7));
  CHECK(cudaMemcpy(bt, ids.data(), nb * 4, cudaMemcpyHostToDevice));
  std::printf("\npaged decode, B=1, 32/8 heads, d=64, block 16, graph of 16 layers: µs per call\n");
  std::printf("%6s %8s | %8s %8s %8s %8s %8s | %8s\n", "ctx", "bound", "s=1", "s=2", "s=4", "s=8", "s=16", "plan");
  for (int len : {64, 128, 200, 256, 512, 1024, 2048, 4096}) {
    CHECK(cudaMemcpy(sl, &len, 4, cudaMemcpyHostToDevice));
    for (int bound : {std::max(512, len), len}) {
      if (bound == len && bound >= 512 && len != 512) continue;
      DecodeParams p{};
      p.q = q; p.q_stride_row = HQ * D; p.q_stride_head = D; p.block_tables = bt; p.seq_lens = sl; p.out = out;
      p.part_o = po; p.part_ml = pml; p.counters = cnt; p.num_blocks = nb; p.rows = 1; p.num_reqs = 1; p.hq = HQ;
      p.hk = HK; p.log_bs = LOG_BS; p.max_blocks = nb; p.scale_log2 = 0.125f * kLog2e;
      p.block_stride = int64_t(HK) * BS * D; p.head_stride = int64_t(BS) * D; p.capacity = CAP;
      double t[6];
      int k = 0;
      for (int s : {1, 2, 4, 8, 16}) {
        p.splits = s;
        p.part_size = (bound + s - 1) / s;
        t[k++] = time_graph(L, [&](int i) {
          DecodeParams pi = p;
          pi.k_cache = kc[i];
          pi.v_cache = vc[i];
          CHECK(launch_paged_decode(pi, DType::kBFloat16, D, g_stream));
        });
      }
      decode_split_plan(1, HK * decode_ctas_per_kv_head(HQ / HK, DType::kBFloat16), bound, sms, &p.splits,
                        &p.part_size, DType::kBFloat16, D, &p.warps);
      t[5] = time_graph(L, [&](int i) {
        DecodeParams pi = p;
        pi.k_cache = kc[i];
        pi.v_cache = vc[i];
        CHECK(launch_paged_decode(pi, DType::kBFloat16, D, g_stream));
      });
      std::printf("%6d %8d | %8.2f %8.2f %8.2f %8.2f %8.2f | %8.2f (splits %d, %d warps)\n", len, bound, t[0], t[1],
                  t[2], t[3], t[4], t[5], p.splits, p.warps);
    }
  }
}

int main() {
  int sms = 0;
  CHECK(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, 0));
  CHECK(cudaStreamCreateWithFlags(&g_stream, cudaStreamNonBlocking));
  cublasHandle_t h;
  cublasCreate(&h);
  cublasSetStream(h, g_stream);
  void* ws;
  CHECK(cudaMalloc(&ws, 32 << 20));
  cublasSetWorkspace(h, ws, 32 << 20);
  // Copy ceiling: a 1 GiB device-to-device copy.
  {
    void *a, *b;
    const size_t n = 1ull << 30;
    CHECK(cudaMalloc(&a, n));
    CHECK(cudaMalloc(&b, n));
    double best = 1e30;
    for (int r = 0; r < 5; ++r) {
      cudaEvent_t e0, e1;
      cudaEventCreate(&e0);
      cudaEventCreate(&e1);
      cudaEventRecord(e0, g_stream);
      cudaMemcpyAsync(b, a, n, cudaMemcpyDeviceToDevice, g_stream);
      cudaEventRecord(e1, g_stream);
      cudaEventSynchronize(e1);
      float ms;
      cudaEventElapsedTime(&ms, e0, e1);
      best = std::min(best, double(ms));
    }
    std::printf("copy ceiling: %.0f GB/s (read + write of 1 GiB), %d SMs\n", 2.0 * n / best / 1e6, sms);
    cudaFree(a);
    cudaFree(b);
  }
  decode_short(sms);
  gemv_shapes(h, sms);
  return 0;
}
