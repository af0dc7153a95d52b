// vLLM's penalty of one logit, shared by the CPU and CUDA kernels (apply_penalties) so both compute alike.
#pragma once

#include <cstdint>

#include "kernels/common/counter_rng.h"  // INFINILM_HOST_DEVICE

namespace infinilm::penalty {

// Per-token state word of a row: output count in the low 30 bits, then "in the prompt", then "done".
constexpr uint32_t kPromptBit = 1u << 30;
constexpr uint32_t kDoneBit = 1u << 31;
constexpr uint32_t kCountMask = kPromptBit - 1;

// fp32. Repetition (token in the prompt or the output): a positive logit is divided by rep, the others
// multiplied (the token always becomes less likely); then frequency (per output occurrence) and presence
// (once if the token occurs in the output) are subtracted, as two steps, in vLLM's order.
INFINILM_HOST_DEVICE float apply(float x, uint32_t state, float rep, float pres, float freq) {
  const uint32_t count = state & kCountMask;
  if (count > 0 || (state & kPromptBit)) x = x > 0.f ? x / rep : x * rep;
  x = x - freq * static_cast<float>(count);
  x = x - pres * static_cast<float>(count > 0);
  return x;
}

}  // namespace infinilm::penalty
