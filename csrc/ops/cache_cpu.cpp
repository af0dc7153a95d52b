// CPU glue for reshape_and_cache (the paged KV-cache write).
#include <torch/library.h>

#include "csrc/ops/dispatch_cpu.h"
#include "csrc/ops/ops.h"
#include "csrc/ops/validate.h"
#include "kernels/cpu/cache.h"

namespace infinilm {

void reshape_and_cache_cpu(const at::Tensor& key, const at::Tensor& value, at::Tensor& key_cache,
                           at::Tensor& value_cache, const at::Tensor& slot_mapping) {
  check_reshape_and_cache_args(key, value, key_cache, value_cache, slot_mapping);
  INFINILM_CHECK_CPU(key);
  const int64_t block_size = key_cache.size(2);
  check_slot_values(slot_mapping, key_cache.size(0) * block_size);
  const at::Tensor slots = slot_mapping.to(at::kLong).contiguous();
  INFINILM_DISPATCH_FLOAT_CPU(key.scalar_type(), "reshape_and_cache", [&] {
    cpu::reshape_and_cache<scalar_t>(ptr<scalar_t>(key), ptr<scalar_t>(value), ptr<scalar_t>(key_cache),
                                     ptr<scalar_t>(value_cache), slots.data_ptr<int64_t>(), key.size(0), key.size(1),
                                     key.size(2), block_size, key.stride(0), key.stride(1), value.stride(0),
                                     value.stride(1));
  });
}

}  // namespace infinilm

TORCH_LIBRARY_IMPL(infinilm, CPU, m) { m.impl("reshape_and_cache", &infinilm::reshape_and_cache_cpu); }
