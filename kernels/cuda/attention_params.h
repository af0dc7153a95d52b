// Host-side view of the paged-attention kernels: parameter blocks, grid planning, and the launchers
// (defined in csrc/ops/attention_launch.cu), so that plain C++ glue can call them without device code.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

#include "kernels/kernel_limits.h"

namespace infinilm {
namespace cuda {
namespace attn {

enum class DType { kFloat32, kFloat16, kBFloat16 };

constexpr float kLog2e = 1.4426950408889634f;

// The head sizes the CUDA kernels are instantiated for (decode and prefill): limits::kCudaHeadSizes, the one
// list the glue checks and _infinilm.kernel_limits() reports.
constexpr bool head_dim_supported(int d) { return limits::is_cuda_head_size(d); }
// Power-of-two block sizes up to this are addressed by shifts (8..128 are tested).
constexpr int kMaxPow2BlockSize = static_cast<int>(limits::kMaxPagedBlockSize);

struct DecodeParams {
  const void* q;                // [rows, Hq, D], last dim dense, 16-byte aligned rows
  int64_t q_stride_row;         // elements
  int64_t q_stride_head;        // elements
  const void* k_cache;          // [num_blocks, Hk, block_size, D]
  const void* v_cache;          // [num_blocks, Hk, block_size, D]
  const void* block_tables;     // [num_reqs, max_blocks] int32/int64
  const void* seq_lens;         // [num_reqs] int32/int64
  const void* query_start_loc;  // [num_reqs + 1], or null: then row r is request r (decode)
  void* out;                    // [rows, Hq, D] contiguous
  float* part_o;                // [rows, Hq, splits, D], used when splits > 1
  float* part_ml;               // [rows, Hq, splits, 2] (running max in log2 units, sum of exponentials)
  // [rows * Hk * chunks] arrival counters, all zero between launches (the last CTA of a row's splits merges
  // them and resets its counter); null: a separate merge kernel runs instead (splits > 1 only).
  int* counters = nullptr;
  int64_t num_blocks;
  // Element strides of a block id and of a kv head inside a block (tokens are D apart); 0 = the dense
  // [num_blocks, Hk, block_size, D] layout. capacity: tokens a block-table row holds (0 = max_blocks << log_bs).
  int64_t block_stride, head_stride, capacity;
  int rows, num_reqs, hq, hk, log_bs, max_blocks, splits, part_size;
  // Warps per tensor-core decode CTA (decode_split_plan's choice); 0 = decode_tc_warps(head_dim).
  int warps = 0;
  bool bt64, sl64, qsl64;
  float scale_log2;  // scale * log2(e): scores live in base-2 units so exp2f does the exponentials
  // A query at position p sees keys [p - window_left, p] (FlashAttention's window_size[0]; HF's
  // sliding_window W is window_left = W - 1); -1: no window.
  int window_left = -1;
  // Logit soft-cap in base-2 units, softcap * log2(e) (0: off): s = cap * tanh(s / cap) before the softmax.
  float softcap_log2 = 0.f;
};

struct PrefillParams {
  const void* q;                // [T, Hq, D], last dim dense, 16-byte aligned rows
  int64_t q_stride_tok;         // elements
  int64_t q_stride_head;        // elements
  const void* k_cache;          // [num_blocks, Hk, block_size, D]
  const void* v_cache;          // [num_blocks, Hk, block_size, D]
  const void* block_tables;     // [num_reqs, max_blocks] int32/int64
  const void* seq_lens;         // [num_reqs]
  const void* query_start_loc;  // [num_reqs + 1]
  void* out;                    // [T, Hq, D] contiguous
  int64_t num_blocks;
  int64_t block_stride, head_stride, capacity;  // as in DecodeParams
  int num_reqs, hq, hk, log_bs, max_blocks, tiles_upper;
  bool bt64, sl64, qsl64;
  float scale_log2;
  int window_left = -1;       // as in DecodeParams
  float softcap_log2 = 0.f;  // as in DecodeParams
};

// Query rows per prefill CTA tile: a launch needs at most T / prefill_block_m + num_reqs tiles (tiles_upper).
// Head size 256 keeps one 16-row MMA tile per warp (its O accumulator alone is 128 registers a thread).
constexpr int prefill_block_m(int head_dim) { return head_dim > 128 ? 64 : 128; }
constexpr int kPrefillBlockM = 128;  // the largest of prefill_block_m()

// Warps of a tensor-core decode CTA: independent workers on interleaved 16-token tiles of the CTA's split,
// combined in shared memory at the end (each warp has its own cp.async ring; head size 256 takes 2 so
// that two CTAs fit an SM).
constexpr int decode_tc_warps(int head_dim) { return head_dim > 128 ? 2 : 4; }

// Query heads per CTA: the GQA group rounded up to a power of two, at most 8 (larger groups are chunked).
inline int decode_heads_per_cta(int group) { return group >= 8 ? 8 : group > 2 ? 4 : group; }

// fp16/bf16 decode runs on tensor cores (one warp per CTA, up to 16 query heads as MMA rows); fp32 on FMAs.
inline bool decode_uses_tensor_cores(DType dt) { return dt != DType::kFloat32; }

// CTAs per (row, KV head): query heads are grouped 16 per tensor-core CTA, 1..8 per SIMT CTA.
inline int decode_ctas_per_kv_head(int group, DType dt) {
  const int hpc = decode_uses_tensor_cores(dt) ? 16 : decode_heads_per_cta(group);
  return (group + hpc - 1) / hpc;
}

// Rows x CTAs per row at or below which tensor-core decode CTAs take twice decode_tc_warps(head_dim) warps
// (batch 1 with 8 KV heads, batch 2 with 8, ...): a warp walks its tiles one after another (~1 µs each on an
// H200), so a small grid gains from more warps per CTA instead of more CTAs and a larger split merge.
constexpr int64_t kDecodeWideMaxBase = 16;

// Splits per row. Tensor cores: about 8 warps per SM (2 CTAs of 4, or 1 of 8 for a small grid), rounded down to
// whole CTAs so the grid does not spill into a second, nearly empty wave; no warp walking fewer than 64 tokens
// of a default CTA (splits of at least 256 tokens for head_dim <= 128). FMAs (float32): about 4 one-split CTAs
// per SM, no split shorter than 64 tokens. At most 256 splits; part_size a multiple of the unit. *warps: the
// tensor-core CTA's warps (null: not wanted; the launch then uses decode_tc_warps). History: on an H100
// (benchmarks/decode_sweep.cu, bf16, Llama-3-8B shapes, one-warp CTAs) about 4 warps per SM was within 1-2% of
// the best split count at B=1/ctx 4k and 32k, B=8 and B=32 at ctx 4k; on an H200 (benchmarks/gemv_sweep.cu,
// d 64, B=1) 8-warp CTAs cut ctx 200 from 6.75 to 5.56 µs and ctx 512 from 11.6 to 9.2 µs.
inline void decode_split_plan(int64_t rows, int ctas_per_row, int64_t max_len, int num_sms, int* splits,
                              int* part_size, DType dt = DType::kBFloat16, int head_dim = 128, int* warps_out = nullptr) {
  const bool tc = decode_uses_tensor_cores(dt);
  const int64_t base = rows * ctas_per_row > 0 ? rows * ctas_per_row : 1;
  const int64_t dflt = tc ? decode_tc_warps(head_dim) : 1;
  const int64_t warps = tc && base <= kDecodeWideMaxBase ? 2 * dflt : dflt;
  const int64_t target = tc ? (8 * static_cast<int64_t>(num_sms)) / warps : 4 * static_cast<int64_t>(num_sms);
  const int64_t unit = 64 * dflt;
  int64_t s = target / base;
  const int64_t cap = (max_len + unit - 1) / unit;
  s = s > cap ? cap : s;
  s = s > 256 ? 256 : (s < 1 ? 1 : s);
  int64_t part = (max_len + s - 1) / s;
  part = part < unit ? unit : ((part + unit - 1) / unit) * unit;
  s = max_len > 0 ? (max_len + part - 1) / part : 1;
  *splits = static_cast<int>(s < 1 ? 1 : s);
  *part_size = static_cast<int>(part);
  if (warps_out != nullptr) *warps_out = tc ? static_cast<int>(warps) : 0;
}

// A block of any length (not a power of two) is addressed with this shift: one block per request, so the
// block index of every token is 0 and its offset the token itself.
constexpr int kWholeRowLogBs = 40;

// Launch on `stream`; head_dim one of limits::kCudaHeadSizes. Decode: any dtype; with splits > 1 the last CTA of each
// (row, KV head) merges the splits (counters set), or a merge kernel follows (counters null).
// Prefill: float16/bfloat16 only (float32 goes through the decode kernel in query_start_loc mode).
cudaError_t launch_paged_decode(const DecodeParams& p, DType dtype, int head_dim, cudaStream_t stream);
cudaError_t launch_paged_prefill(const PrefillParams& p, DType dtype, int head_dim, cudaStream_t stream);

}  // namespace attn
}  // namespace cuda
}  // namespace infinilm
