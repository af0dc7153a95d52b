// CPU glue for rotary_embedding, and the backend-independent cos/sin table builder.
#include <torch/library.h>

#include <cmath>
#include <vector>

#include "csrc/ops/dispatch_cpu.h"
#include "csrc/ops/ops.h"
#include "csrc/ops/validate.h"
#include "kernels/cpu/rotary.h"
#include "kernels/kernel_limits.h"

namespace infinilm {

at::Tensor rope_cos_sin_cache(int64_t max_position, int64_t rotary_dim, double base, std::string rope_type,
                              double factor, double low_freq_factor, double high_freq_factor,
                              int64_t original_max_position) {
  TORCH_CHECK_VALUE(max_position > 0, "infinilm: 'max_position' must be > 0, got ", max_position);
  TORCH_CHECK_VALUE(rotary_dim > 0 && rotary_dim % 2 == 0, "infinilm: 'rotary_dim' must be even and > 0, got ",
                    rotary_dim);
  TORCH_CHECK_VALUE(base > 0, "infinilm: 'base' (rope_theta) must be > 0, got ", base);
  const int64_t half = rotary_dim / 2;
  // inv_freq in float32 as transformers computes it, so tables agree to the last bit where possible.
  std::vector<float> inv(half);
  for (int64_t i = 0; i < half; ++i) {
    const float expo = static_cast<float>(2 * i) / static_cast<float>(rotary_dim);
    inv[i] = 1.0f / std::pow(static_cast<float>(base), expo);
  }
  if (rope_type == "linear") {
    TORCH_CHECK_VALUE(factor > 0, "infinilm: rope_scaling 'factor' must be > 0, got ", factor);
    for (auto& f : inv) f = f / static_cast<float>(factor);
  } else if (rope_type == "llama3") {
    TORCH_CHECK_VALUE(factor > 0 && high_freq_factor > low_freq_factor && low_freq_factor > 0,
                      "infinilm: llama3 rope_scaling needs factor > 0 and high_freq_factor > low_freq_factor > 0, "
                      "got factor=", factor, " low_freq_factor=", low_freq_factor,
                      " high_freq_factor=", high_freq_factor);
    const float old_len = static_cast<float>(original_max_position);
    const float low_wav = old_len / static_cast<float>(low_freq_factor);
    const float high_wav = old_len / static_cast<float>(high_freq_factor);
    const float fac = static_cast<float>(factor);
    for (auto& f : inv) {
      const float wav = 2.0f * static_cast<float>(M_PI) / f;
      float g = wav > low_wav ? f / fac : f;
      if (!(wav < high_wav) && !(wav > low_wav)) {
        const float s = (old_len / wav - static_cast<float>(low_freq_factor)) /
                        static_cast<float>(high_freq_factor - low_freq_factor);
        g = (1.0f - s) * g / fac + s * g;
      }
      f = g;
    }
  } else {
    static_assert(limits::kRopeTypes.size() == 3, "a rope type in kernels/kernel_limits.h without a branch here");
    TORCH_CHECK_VALUE(rope_type == "default", "infinilm: 'rope_type' must be 'default', 'linear' or 'llama3', got '",
                      rope_type, "'");
  }
  at::Tensor cache = at::empty({max_position, rotary_dim}, at::kFloat);
  float* c = cache.data_ptr<float>();
  for (int64_t p = 0; p < max_position; ++p) {
    for (int64_t i = 0; i < half; ++i) {
      const float ang = static_cast<float>(p) * inv[i];
      c[p * rotary_dim + i] = std::cos(ang);
      c[p * rotary_dim + half + i] = std::sin(ang);
    }
  }
  return cache;
}

void rotary_embedding_cpu(const at::Tensor& positions, at::Tensor& query, at::Tensor& key,
                          const at::Tensor& cos_sin_cache, bool is_neox) {
  check_rotary_embedding_args(positions, query, key, cos_sin_cache);
  INFINILM_CHECK_CPU(query);
  check_positions_values(positions, cos_sin_cache.size(0));
  const at::Tensor pos = positions.reshape({-1}).to(at::kLong).contiguous();
  const at::Tensor cs = cos_sin_cache.to(at::kFloat).contiguous();
  INFINILM_DISPATCH_FLOAT_CPU(query.scalar_type(), "rotary_embedding", [&] {
    cpu::rotary_embedding<scalar_t>(pos.data_ptr<int64_t>(), ptr<scalar_t>(query), ptr<scalar_t>(key),
                                    cs.data_ptr<float>(), query.size(0), query.size(1), key.size(1), cs.size(1),
                                    query.stride(0), query.stride(1), key.stride(0), key.stride(1), is_neox);
  });
}

}  // namespace infinilm

TORCH_LIBRARY_IMPL(infinilm, CPU, m) { m.impl("rotary_embedding", &infinilm::rotary_embedding_cpu); }
