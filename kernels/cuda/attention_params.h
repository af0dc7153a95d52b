// Host-side view of the paged-attention kernels: parameter blocks, grid planning, and the launchers
// (defined in csrc/ops/attention_launch.cu), so that plain C++ glue can call them without device code.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

namespace infinilm {
namespace cuda {
namespace attn {

enum class DType { kFloat32, kFloat16, kBFloat16 };

constexpr float kLog2e = 1.4426950408889634f;

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
  int64_t num_blocks;
  int rows, num_reqs, hq, hk, log_bs, max_blocks, splits, part_size;
  bool bt64, sl64, qsl64;
  float scale_log2;  // scale * log2(e): scores live in base-2 units so exp2f does the exponentials
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
  int num_reqs, hq, hk, log_bs, max_blocks, tiles_upper;
  bool bt64, sl64, qsl64;
  float scale_log2;
};

// Query rows per prefill CTA tile: a launch needs at most T / kPrefillBlockM + num_reqs tiles (tiles_upper).
constexpr int kPrefillBlockM = 128;

// Query heads per CTA: the GQA group rounded up to a power of two, at most 8 (larger groups are chunked).
inline int decode_heads_per_cta(int group) { return group >= 8 ? 8 : group > 2 ? 4 : group; }

// fp16/bf16 decode runs on tensor cores (one warp per CTA, up to 16 query heads as MMA rows); fp32 on FMAs.
inline bool decode_uses_tensor_cores(DType dt) { return dt != DType::kFloat32; }

// CTAs per (row, KV head), and about how many CTAs of that kernel one SM holds at once (shared memory
// bound: 34 KiB per tensor-core warp, 64 KiB per 128-thread SIMT CTA).
inline int decode_ctas_per_kv_head(int group, DType dt) {
  const int hpc = decode_uses_tensor_cores(dt) ? 16 : decode_heads_per_cta(group);
  return (group + hpc - 1) / hpc;
}
inline int decode_resident_per_sm(DType dt) { return decode_uses_tensor_cores(dt) ? 6 : 3; }

// Splits per row: enough CTAs to fill every SM (resident_per_sm each), in near-whole waves so that no
// last partial wave idles most of the chip; no split shorter than 64 tokens.
inline void decode_split_plan(int64_t rows, int ctas_per_row, int64_t max_len, int num_sms, int resident_per_sm,
                              int* splits, int* part_size) {
  const int64_t base = rows * ctas_per_row > 0 ? rows * ctas_per_row : 1;
  const int64_t slots = static_cast<int64_t>(resident_per_sm) * num_sms;
  int64_t cap = (max_len + 63) / 64;
  cap = cap > 256 ? 256 : (cap < 1 ? 1 : cap);
  int64_t best = 1;
  double best_eff = -1.0;
  for (int64_t s = 1; s <= cap; ++s) {
    const int64_t ctas = base * s;
    const int64_t waves = (ctas + slots - 1) / slots;
    // A part-filled single wave is as good as its fill; past one wave, the last wave's fill matters.
    const double eff = static_cast<double>(ctas) / static_cast<double>(waves * slots);
    if (ctas >= slots && eff >= 0.85) {
      best = s;
      break;
    }
    if (eff > best_eff + 1e-9) {
      best_eff = eff;
      best = s;
    }
  }
  int64_t part = (max_len + best - 1) / best;
  part = ((part + 63) / 64) * 64;
  if (part < 64) part = 64;
  const int64_t s = (max_len + part - 1) / part;
  *splits = static_cast<int>(s < 1 ? 1 : s);
  *part_size = static_cast<int>(part);
}

// Launch on `stream`; head_dim 64 or 128. Decode: any dtype; with splits > 1 it also runs the merge kernel.
// Prefill: float16/bfloat16 only (float32 goes through the decode kernel in query_start_loc mode).
cudaError_t launch_paged_decode(const DecodeParams& p, DType dtype, int head_dim, cudaStream_t stream);
cudaError_t launch_paged_prefill(const PrefillParams& p, DType dtype, int head_dim, cudaStream_t stream);

}  // namespace attn
}  // namespace cuda
}  // namespace infinilm
