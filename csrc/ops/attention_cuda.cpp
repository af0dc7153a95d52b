// CUDA glue for paged attention (host C++; the kernels sit in attention_launch.cu): decode (flash-decoding
// with split-K) and prefill (tensor cores; fp32 takes the decode kernel once per query token).
// No host synchronisation: grids are sized from shapes and the optional max_* hints.
#ifdef INFINILM_WITH_CUDA

#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <algorithm>
#include <string>
#include <cstdlib>
#include <map>
#include <mutex>
#include <utility>
#include <vector>

#include "csrc/ops/attention_checks.h"
#include "csrc/ops/ops.h"
#include "csrc/ops/validate.h"
#include "kernels/cuda/attention_params.h"
#include "kernels/kernel_limits.h"

namespace infinilm {
namespace {

namespace ka = ::infinilm::cuda::attn;

std::vector<int64_t> ka_head_dims() { return {limits::kCudaHeadSizes.begin(), limits::kCudaHeadSizes.end()}; }

ka::DType kernel_dtype(at::ScalarType st) {
  switch (st) {
    case at::kFloat: return ka::DType::kFloat32;
    case at::kHalf: return ka::DType::kFloat16;
    case at::kBFloat16: return ka::DType::kBFloat16;
    default: break;
  }
  TORCH_CHECK_TYPE(false, "infinilm: paged attention does not support dtype ", st);
  return ka::DType::kFloat32;
}

// The kernels read 16-byte vectors of each query row: rows must start 16-byte aligned, else copy.
at::Tensor aligned_rows(const at::Tensor& q) {
  const int64_t vec = 16 / q.element_size();
  const bool ok = reinterpret_cast<uintptr_t>(q.data_ptr()) % 16 == 0 && q.stride(0) % vec == 0 &&
                  q.stride(1) % vec == 0 && q.stride(2) == 1;
  return ok ? q : q.contiguous();
}

// Power-of-two blocks are addressed by shifts. A block of any other length is allowed when every request
// owns one block (block_tables [n, 1]), e.g. an HF cache [B, Hk, max_len, D] shown as B blocks of max_len.
int checked_log2_block_size(const at::Tensor& key_cache, const at::Tensor& block_tables) {
  const int64_t bs = key_cache.size(2);
  const bool pow2 = bs >= 1 && bs <= limits::kMaxPagedBlockSize && (bs & (bs - 1)) == 0;
  TORCH_CHECK_VALUE(pow2 || (bs >= 1 && block_tables.size(1) == 1),
                    "infinilm: CUDA paged attention needs a power-of-two block_size <= ", limits::kMaxPagedBlockSize,
                    ", or one block per request ('block_tables' with 1 column), got block_size ", bs,
                    " ('key_cache' shape ", key_cache.sizes(), ", 'block_tables' shape ", block_tables.sizes(), ")");
  if (!pow2) return ka::kWholeRowLogBs;
  int lg = 0;
  while ((int64_t{1} << lg) < bs) ++lg;
  return lg;
}

// Both caches are addressed with the key cache's strides: they must match (token rows D apart, 16-byte aligned).
void check_cache_strides(const at::Tensor& key_cache, const at::Tensor& value_cache) {
  TORCH_CHECK_VALUE(key_cache.strides() == value_cache.strides() && key_cache.stride(3) == 1 &&
                        (key_cache.size(2) == 1 || key_cache.stride(2) == key_cache.size(3)),
                    "infinilm: CUDA paged attention needs 'key_cache' and 'value_cache' with equal strides and dense "
                    "token rows, got strides ", key_cache.strides(), " and ", value_cache.strides());
  const int64_t vec = 16 / key_cache.element_size();
  TORCH_CHECK_VALUE(key_cache.stride(0) % vec == 0 && key_cache.stride(1) % vec == 0 &&
                        reinterpret_cast<uintptr_t>(key_cache.data_ptr()) % 16 == 0 &&
                        reinterpret_cast<uintptr_t>(value_cache.data_ptr()) % 16 == 0,
                    "infinilm: CUDA paged attention needs 16-byte aligned cache blocks, got strides ",
                    key_cache.strides());
}

void check_cuda_head_dim(const at::Tensor& query) {
  TORCH_CHECK_VALUE(ka::head_dim_supported(static_cast<int>(query.size(2))),
                    "infinilm: CUDA paged attention supports head_dim ", c10::IntArrayRef(ka_head_dims()), ", got ",
                    query.size(2), " ('query' shape ", query.sizes(), ")");
}

// Arrival counters of the fused split merge, one buffer per device: zeroed once, left zeroed by every
// launch. Decodes on one device must not run concurrently on two streams (each launch's counters would
// mix). A buffer is never freed (a captured CUDA graph may still point at it); growing one needs a zero
// fill, which cannot happen inside a stream capture: then null, and the separate merge kernel runs.
int* decode_counters(int64_t need, const at::Device& device, cudaStream_t stream) {
  static std::mutex mu;
  static auto* bufs = new std::map<int, std::pair<int*, int64_t>>();
  static auto* keep = new std::vector<at::Tensor>();
  const std::lock_guard<std::mutex> lock(mu);
  auto& e = (*bufs)[device.index()];
  if (e.first != nullptr && e.second >= need) return e.first;
  cudaStreamCaptureStatus status = cudaStreamCaptureStatusNone;
  C10_CUDA_CHECK(cudaStreamIsCapturing(stream, &status));
  if (status != cudaStreamCaptureStatusNone) return nullptr;
  int64_t n = 1 << 16;
  while (n < need) n *= 2;
  keep->push_back(at::zeros({n}, at::TensorOptions().dtype(at::kInt).device(device)));
  e = {keep->back().data_ptr<int>(), n};
  return e.first;
}

// INFINILM_DECODE_SPLITS=N forces N splits (tests and sweeps); -N forces N splits merged by the separate kernel.
int forced_decode_splits() {
  const char* v = std::getenv("INFINILM_DECODE_SPLITS");
  return v == nullptr ? 0 : std::atoi(v);
}

int multiprocessors(int device) {
  int n = 0;
  C10_CUDA_CHECK(cudaDeviceGetAttribute(&n, cudaDevAttrMultiProcessorCount, device));
  return n;
}

void check_launch(cudaError_t err, const char* op) {
  TORCH_CHECK(err == cudaSuccess, "infinilm: ", op, " kernel launch failed: ", cudaGetErrorString(err));
}

void fill_common(ka::DecodeParams& p, const at::Tensor& q, const at::Tensor& key_cache, const at::Tensor& value_cache,
                 const at::Tensor& block_tables, const at::Tensor& seq_lens, double scale, int log_bs,
                 int64_t window_left, double softcap) {
  p.window_left = clamp_window(window_left);
  p.softcap_log2 = static_cast<float>(softcap) * ka::kLog2e;
  p.q = q.data_ptr();
  p.q_stride_row = q.stride(0);
  p.q_stride_head = q.stride(1);
  p.k_cache = key_cache.data_ptr();
  p.v_cache = value_cache.data_ptr();
  p.block_tables = block_tables.data_ptr();
  p.seq_lens = seq_lens.data_ptr();
  p.num_blocks = key_cache.size(0);
  p.num_reqs = static_cast<int>(seq_lens.size(0));
  p.hq = static_cast<int>(q.size(1));
  p.hk = static_cast<int>(key_cache.size(1));
  p.log_bs = log_bs;
  p.max_blocks = static_cast<int>(block_tables.size(1));
  p.block_stride = key_cache.stride(0);
  p.head_stride = key_cache.stride(1);
  p.capacity = block_tables.size(1) * key_cache.size(2);
  p.bt64 = block_tables.scalar_type() == at::kLong;
  p.sl64 = seq_lens.scalar_type() == at::kLong;
  p.scale_log2 = static_cast<float>(scale) * ka::kLog2e;
}

}  // namespace

at::Tensor paged_attention_decode_cuda(const at::Tensor& query, const at::Tensor& key_cache,
                                       const at::Tensor& value_cache, const at::Tensor& block_tables,
                                       const at::Tensor& seq_lens, double scale, std::optional<int64_t> max_seq_len,
                                       int64_t window_left, double softcap) {
  check_paged_attention_args(query, key_cache, value_cache, block_tables, seq_lens, scale);
  check_attention_options("paged_attention_decode", window_left, softcap);
  INFINILM_CHECK_CUDA(query);
  check_cuda_head_dim(query);
  const int log_bs = checked_log2_block_size(key_cache, block_tables);
  check_cache_strides(key_cache, value_cache);
  check_paged_attention_decode_args(query, seq_lens);
  check_paged_attention_values(key_cache, block_tables, seq_lens, max_seq_len);  // host data only
  TORCH_CHECK_VALUE(!max_seq_len.has_value() || *max_seq_len >= 0, "infinilm: 'max_seq_len' must be >= 0, got ",
                    max_seq_len.value_or(0));
  const c10::cuda::CUDAGuard guard(query.device());
  const at::Tensor q = aligned_rows(query);
  const at::Tensor sl = seq_lens.contiguous();
  const int64_t rows = q.size(0), hq = q.size(1), hk = key_cache.size(1), d = q.size(2);
  at::Tensor out = at::empty({rows, hq, d}, q.options());
  if (rows == 0 || hq == 0) return out;

  // Without the hint the grid is sized for a full block-table row; CTAs past a row's length exit at once.
  // A window bounds the keys any row reads: window_left + 1.
  const int64_t capacity = block_tables.size(1) * key_cache.size(2);
  int64_t bound = max_seq_len.has_value() ? std::min(*max_seq_len, capacity) : capacity;
  if (window_left >= 0) bound = std::min(bound, window_left + 1);
  const ka::DType dt = kernel_dtype(q.scalar_type());
  const int ctas_per_row = static_cast<int>(hk) * ka::decode_ctas_per_kv_head(static_cast<int>(hq / hk), dt);
  const int num_sms = multiprocessors(query.device().index());
  ka::DecodeParams p{};
  fill_common(p, q, key_cache, value_cache, block_tables, sl, scale, log_bs, window_left, softcap);
  p.rows = static_cast<int>(rows);
  ka::decode_split_plan(rows, ctas_per_row, bound, num_sms, &p.splits, &p.part_size, dt, static_cast<int>(d),
                        &p.warps);
  const int forced = forced_decode_splits();
  if (forced != 0) {
    p.splits = std::abs(forced);
    p.part_size = static_cast<int>(std::max<int64_t>(1, (std::max<int64_t>(bound, 1) + p.splits - 1) / p.splits));
  }
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  at::Tensor part_o, part_ml;
  if (p.splits > 1) {  // workspace from the caching allocator: graph-safe, no cudaMalloc in capture
    part_o = at::empty({rows, hq, p.splits, d}, q.options().dtype(at::kFloat));
    part_ml = at::empty({rows, hq, p.splits, 2}, q.options().dtype(at::kFloat));
    p.part_o = part_o.data_ptr<float>();
    p.part_ml = part_ml.data_ptr<float>();
    if (forced >= 0) p.counters = decode_counters(rows * ctas_per_row, query.device(), stream);
  }
  p.out = out.data_ptr();
  check_launch(ka::launch_paged_decode(p, dt, static_cast<int>(d), stream), "paged_attention_decode");
  return out;
}

at::Tensor paged_attention_prefill_cuda(const at::Tensor& query, const at::Tensor& key_cache,
                                        const at::Tensor& value_cache, const at::Tensor& block_tables,
                                        const at::Tensor& query_start_loc, const at::Tensor& seq_lens, double scale,
                                        std::optional<int64_t> max_query_len, std::optional<int64_t> max_seq_len,
                                        int64_t window_left, double softcap) {
  check_paged_attention_args(query, key_cache, value_cache, block_tables, seq_lens, scale);
  check_attention_options("paged_attention_prefill", window_left, softcap);
  check_paged_attention_prefill_args(query, query_start_loc, seq_lens);
  check_paged_attention_values(key_cache, block_tables, seq_lens, max_seq_len);  // host data only
  check_paged_attention_prefill_values(query, query_start_loc, seq_lens, max_query_len);
  INFINILM_CHECK_CUDA(query);
  check_cuda_head_dim(query);
  const int log_bs = checked_log2_block_size(key_cache, block_tables);
  check_cache_strides(key_cache, value_cache);
  TORCH_CHECK_VALUE(!max_query_len.has_value() || *max_query_len >= 0,
                    "infinilm: 'max_query_len' must be >= 0, got ", max_query_len.value_or(0));
  const c10::cuda::CUDAGuard guard(query.device());
  const at::Tensor q = aligned_rows(query);
  const at::Tensor sl = seq_lens.contiguous();
  const at::Tensor qsl = query_start_loc.contiguous();
  const int64_t T = q.size(0), hq = q.size(1), d = q.size(2), n = sl.size(0);
  // Rows outside every request (query_start_loc[n] < T) have nothing to attend to: zeros.
  at::Tensor out = n == 0 ? at::zeros({T, hq, d}, q.options()) : at::empty({T, hq, d}, q.options());
  if (T == 0 || n == 0 || hq == 0) return out;
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();

  if (q.scalar_type() == at::kFloat) {  // simple exact path: one decode row per query token, no splits
    ka::DecodeParams p{};
    fill_common(p, q, key_cache, value_cache, block_tables, sl, scale, log_bs, window_left, softcap);
    p.query_start_loc = qsl.data_ptr();
    p.qsl64 = qsl.scalar_type() == at::kLong;
    p.rows = static_cast<int>(T);
    p.splits = 1;
    p.part_size = static_cast<int>(std::min<int64_t>(p.capacity, INT32_MAX));
    p.out = out.data_ptr();
    check_launch(ka::launch_paged_decode(p, ka::DType::kFloat32, static_cast<int>(d), stream),
                 "paged_attention_prefill");
    return out;
  }

  ka::PrefillParams p{};
  p.q = q.data_ptr();
  p.q_stride_tok = q.stride(0);
  p.q_stride_head = q.stride(1);
  p.k_cache = key_cache.data_ptr();
  p.v_cache = value_cache.data_ptr();
  p.block_tables = block_tables.data_ptr();
  p.seq_lens = sl.data_ptr();
  p.query_start_loc = qsl.data_ptr();
  p.out = out.data_ptr();
  p.num_blocks = key_cache.size(0);
  p.num_reqs = static_cast<int>(n);
  p.hq = static_cast<int>(hq);
  p.hk = static_cast<int>(key_cache.size(1));
  p.log_bs = log_bs;
  p.max_blocks = static_cast<int>(block_tables.size(1));
  p.block_stride = key_cache.stride(0);
  p.head_stride = key_cache.stride(1);
  p.capacity = block_tables.size(1) * key_cache.size(2);
  p.bt64 = block_tables.scalar_type() == at::kLong;
  p.sl64 = sl.scalar_type() == at::kLong;
  p.qsl64 = qsl.scalar_type() == at::kLong;
  p.scale_log2 = static_cast<float>(scale) * ka::kLog2e;
  p.window_left = clamp_window(window_left);
  p.softcap_log2 = static_cast<float>(softcap) * ka::kLog2e;
  const int64_t bm = ka::prefill_block_m(static_cast<int>(d));
  int64_t tiles = (T + bm - 1) / bm + n;  // sum over requests of ceil(q_len / BM) never exceeds this
  if (max_query_len.has_value()) tiles = std::min(tiles, (*max_query_len + bm - 1) / bm * n);
  TORCH_CHECK_VALUE(tiles <= 65535, "infinilm: paged_attention_prefill: too many query tiles (", tiles,
                    ") for one launch; split the batch");
  p.tiles_upper = static_cast<int>(tiles);
  check_launch(ka::launch_paged_prefill(p, kernel_dtype(q.scalar_type()), static_cast<int>(d), stream),
               "paged_attention_prefill");
  return out;
}

}  // namespace infinilm

TORCH_LIBRARY_IMPL(infinilm, CUDA, m) {
  m.impl("paged_attention_decode", &infinilm::paged_attention_decode_cuda);
  m.impl("paged_attention_prefill", &infinilm::paged_attention_prefill_cuda);
}

#endif  // INFINILM_WITH_CUDA
