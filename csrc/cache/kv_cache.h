// KVCache: per-layer K/V block pools [num_blocks, kv_heads, block_size, head_dim] serving both cache kinds.
#pragma once

#include <ATen/ATen.h>

#include <memory>
#include <vector>

#include "csrc/cache/cache_config.h"

namespace infinilm::cache {

// The geometry of one rank's cache, as the model reports it (CausalLM::cache_shape).
struct CacheShape {
  int64_t num_layers = 0;
  int64_t kv_heads = 0;  // this rank's
  int64_t head_dim = 0;
  at::ScalarType dtype = at::kFloat;
  int64_t max_positions = 0;  // a static row holds at most this many tokens
};

// The static cache is the paged layout with a fixed block table: row b owns blocks
// [b * blocks_per_row, (b + 1) * blocks_per_row), so one attention kernel family serves both.
class KVCache {
 public:
  static constexpr int64_t kStaticBlockSize = 32;

  // config: a StaticKVCacheConfig or PagedKVCacheConfig.
  KVCache(const CacheShape& shape, const CacheConfig& config, at::Device device);

  bool paged() const { return paged_; }
  int64_t num_layers() const { return static_cast<int64_t>(k_.size()); }
  int64_t num_blocks() const { return num_blocks_; }
  int64_t block_size() const { return block_size_; }
  // Static cache only: rows and tokens per row (max_cache_len capped at max_position_embeddings).
  int64_t max_batch_size() const { return max_batch_size_; }
  int64_t max_cache_len() const { return max_cache_len_; }
  int64_t blocks_per_row() const { return blocks_per_row_; }
  // Tokens one sequence can hold: a paged request may own every block, a static row its blocks_per_row.
  int64_t capacity() const { return (paged_ ? num_blocks_ : blocks_per_row_) * block_size_; }

  at::Tensor& key(int64_t layer) { return k_[layer]; }
  at::Tensor& value(int64_t layer) { return v_[layer]; }

  // Tokens written so far, counted from the start: per row of the static cache, per block of the paged one.
  // The engine refuses steps that would read past it and updates it from each step's writes; a write that
  // starts at token t makes everything after t stale, so a later overwrite shortens it (a rewind).
  int64_t filled(int64_t i) const { return filled_[i]; }
  void set_filled(int64_t i, int64_t n) { filled_[i] = n; }

  // Zero every block (a reset with the same configuration); nothing counts as written afterwards.
  void clear();

 private:
  bool paged_ = false;
  int64_t num_blocks_ = 0, block_size_ = 0;
  int64_t max_batch_size_ = 0, max_cache_len_ = 0, blocks_per_row_ = 0;
  std::vector<at::Tensor> k_, v_;  // per layer [num_blocks, kv_heads, block_size, head_dim]
  std::vector<int64_t> filled_;    // static: [max_batch_size]; paged: [num_blocks]
};

// Bytes of one block over every layer: 2 (K and V) * head_dim * kv_heads * block_size * layers * dtype_size.
int64_t block_bytes(const CacheShape& shape, int64_t block_size);

// Blocks a paged budget buys (UPSTREAM.md): bytes / (2 * head_dim * kv_heads * block_size * layers * dtype_size).
int64_t paged_num_blocks(const CacheShape& shape, const PagedKVCacheConfig& config);

}  // namespace infinilm::cache
