// The kernels' limits, one constant each: the ops' argument checks use them and _infinilm.kernel_limits()
// reports them to Python (torch-free, so every layer can include it).
#pragma once

#include <array>
#include <cstdint>
#include <string_view>

namespace infinilm::limits {

// The largest power-of-two block_size of CUDA paged attention (a block of any other length is taken only
// when each request owns one whole block). The CPU kernels take any block_size.
inline constexpr int64_t kMaxPagedBlockSize = 1024;

// Head sizes the CUDA attention kernels are instantiated for (the `switch (head_dim)` of each launcher).
inline constexpr std::array<int64_t, 5> kCudaHeadSizes = {64, 80, 96, 128, 256};

// The largest top-k of logprobs: the CUDA kernel compacts its candidates into shared memory of this size.
inline constexpr int64_t kMaxLogprobs = 1024;

// rope_cos_sin_cache's scaling types (HF rope_type). Dynamic NTK cannot be one: its frequencies change with
// the running sequence length, which one fixed table cannot follow. YaRN is not implemented.
inline constexpr std::array<std::string_view, 3> kRopeTypes = {"default", "linear", "llama3"};

constexpr bool is_cuda_head_size(int64_t d) {
  for (int64_t s : kCudaHeadSizes) {
    if (s == d) return true;
  }
  return false;
}

constexpr bool is_rope_type(std::string_view t) {
  for (std::string_view s : kRopeTypes) {
    if (s == t) return true;
  }
  return false;
}

}  // namespace infinilm::limits
