// KVCache allocation for the static and paged configurations.
#include "csrc/cache/kv_cache.h"

#include <c10/util/Exception.h>

#include <algorithm>

namespace infinilm::cache {

int64_t block_bytes(const CacheShape& shape, int64_t block_size) {
  const int64_t dtype_size = static_cast<int64_t>(c10::elementSize(shape.dtype));
  return 2 * shape.head_dim * shape.kv_heads * block_size * shape.num_layers * dtype_size;
}

int64_t paged_num_blocks(const CacheShape& shape, const PagedKVCacheConfig& config) {
  const int64_t dtype_size = static_cast<int64_t>(c10::elementSize(shape.dtype));
  const int64_t per_block = block_bytes(shape, config.block_size());
  const int64_t n = config.max_kv_memory_bytes() / per_block;
  TORCH_CHECK_VALUE(n > 0, "PagedKVCacheConfig: 'max_kv_memory_bytes' = ", config.max_kv_memory_bytes(),
                    " holds no block: one block of ", config.block_size(), " tokens needs ", per_block,
                    " bytes (2 x head_dim ", shape.head_dim, " x kv_heads ", shape.kv_heads, " x layers ",
                    shape.num_layers, " x ", dtype_size, " bytes)");
  return n;
}

KVCache::KVCache(const CacheShape& shape, const CacheConfig& config, at::Device device) {
  if (auto* p = dynamic_cast<const PagedKVCacheConfig*>(&config)) {
    paged_ = true;
    block_size_ = p->block_size();
    num_blocks_ = paged_num_blocks(shape, *p);
  } else if (auto* s = dynamic_cast<const StaticKVCacheConfig*>(&config)) {
    block_size_ = kStaticBlockSize;
    max_batch_size_ = s->max_batch_size();
    max_cache_len_ = std::min(s->max_cache_len(), shape.max_positions);
    blocks_per_row_ = (max_cache_len_ + block_size_ - 1) / block_size_;
    num_blocks_ = max_batch_size_ * blocks_per_row_;
  } else {
    TORCH_CHECK_TYPE(false, "cache_config must be a StaticKVCacheConfig or a PagedKVCacheConfig");
  }
  filled_.assign(paged_ ? num_blocks_ : max_batch_size_, 0);
  const auto opts = at::TensorOptions().dtype(shape.dtype).device(device);
  for (int64_t l = 0; l < shape.num_layers; ++l) {
    // Zeroed so that a kernel bug reading unwritten slots shows as a wrong value, never as NaN garbage.
    k_.push_back(at::zeros({num_blocks_, shape.kv_heads, block_size_, shape.head_dim}, opts));
    v_.push_back(at::zeros({num_blocks_, shape.kv_heads, block_size_, shape.head_dim}, opts));
  }
}

void KVCache::clear() {
  for (auto& t : k_) t.zero_();
  for (auto& t : v_) t.zero_();
  std::fill(filled_.begin(), filled_.end(), 0);
}

}  // namespace infinilm::cache
