// KV-cache configurations of the spec: CacheConfig (base), StaticKVCacheConfig, PagedKVCacheConfig.
#pragma once

#include <c10/util/Exception.h>

#include <cstdint>
#include <limits>
#include <memory>

namespace infinilm::cache {

struct CacheConfig {
  virtual ~CacheConfig() = default;
};

// One row of max_cache_len tokens per batch slot (capped at max_position_embeddings by the engine).
class StaticKVCacheConfig : public CacheConfig {
 public:
  explicit StaticKVCacheConfig(int64_t max_batch_size = 1,
                               int64_t max_cache_len = std::numeric_limits<int64_t>::max())
      : max_batch_size_(max_batch_size), max_cache_len_(max_cache_len) {
    TORCH_CHECK_VALUE(max_batch_size > 0, "StaticKVCacheConfig: 'max_batch_size' must be > 0, got ", max_batch_size);
    TORCH_CHECK_VALUE(max_cache_len > 0, "StaticKVCacheConfig: 'max_cache_len' must be > 0, got ", max_cache_len);
  }
  int64_t max_batch_size() const { return max_batch_size_; }
  int64_t max_cache_len() const { return max_cache_len_; }

 private:
  int64_t max_batch_size_;
  int64_t max_cache_len_;
};

// A pool of blocks of block_size tokens, as many as max_kv_memory_bytes (per device) holds.
class PagedKVCacheConfig : public CacheConfig {
 public:
  explicit PagedKVCacheConfig(int64_t max_kv_memory_bytes, int64_t block_size = 16)
      : max_kv_memory_bytes_(max_kv_memory_bytes), block_size_(block_size) {
    TORCH_CHECK_VALUE(max_kv_memory_bytes > 0, "PagedKVCacheConfig: 'max_kv_memory_bytes' must be > 0, got ",
                      max_kv_memory_bytes);
    TORCH_CHECK_VALUE(block_size > 0, "PagedKVCacheConfig: 'block_size' must be > 0, got ", block_size);
  }
  int64_t max_kv_memory_bytes() const { return max_kv_memory_bytes_; }
  int64_t block_size() const { return block_size_; }

 private:
  int64_t max_kv_memory_bytes_;
  int64_t block_size_;
};

}  // namespace infinilm::cache
