// Argument checks of the paged-attention options shared by the CPU and CUDA glue (sliding window, soft-cap).
#pragma once

#include <c10/util/Exception.h>

#include <cmath>
#include <cstdint>

namespace infinilm {

// window_left: -1 (off) or >= 0 keys before the query's own; softcap: 0 (off) or a finite positive cap.
inline void check_attention_options(const char* op, int64_t window_left, double softcap) {
  TORCH_CHECK_VALUE(window_left >= -1, "infinilm: ", op, ": 'window_left' must be -1 (no window) or >= 0, got ",
                    window_left);
  TORCH_CHECK_VALUE(std::isfinite(softcap) && softcap >= 0.0, "infinilm: ", op,
                    ": 'softcap' must be 0 (off) or a finite positive cap, got ", softcap);
}

// The kernels keep the window in 32 bits: a window at least as long as any context is no window.
inline int clamp_window(int64_t window_left) {
  return window_left > (int64_t{1} << 30) ? -1 : static_cast<int>(window_left);
}

}  // namespace infinilm
