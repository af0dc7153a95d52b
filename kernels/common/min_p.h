// min-p as a logit floor, shared by the CPU and CUDA samplers so both keep exactly the same tokens.
//
// vLLM's min-p keeps token i when p_i >= min_p * p_max, p = softmax(l / T); that is w_i = p_i / p_max =
// exp(z_i) >= min_p with z_i = (l_i - m) / T. Defined here without exp (whose rounding differs between
// devices): keep i when z_i >= zf in fp32, zf the smallest float >= ln(min_p) (fp64 log). The predicate is
// monotone in l_i (fp32 subtract and divide by T > 0 are), so the kept set is {l_i >= l*} for one value l*,
// found by bisection on the order-preserving 32-bit keys: an upper set, like the top-k set, so the two
// combine by taking the larger threshold.
#pragma once

#include <cmath>
#include <cstdint>
#include <cstring>

#include "kernels/common/counter_rng.h"  // INFINILM_HOST_DEVICE

namespace infinilm::minp {

INFINILM_HOST_DEVICE uint32_t order_key(float x) {
  x += 0.0f;  // -0.0 folds onto +0.0
  uint32_t u;
  memcpy(&u, &x, 4);
  return (u & 0x80000000u) ? ~u : (u | 0x80000000u);
}

INFINILM_HOST_DEVICE float key_to_float(uint32_t k) {
  const uint32_t u = (k & 0x80000000u) ? (k & 0x7fffffffu) : ~k;
  float f;
  memcpy(&f, &u, 4);
  return f;
}

// zf: the smallest float >= ln(min_p), for min_p in (0, 1].
INFINILM_HOST_DEVICE float log_bound(float min_p) {
  const double lg = log(static_cast<double>(min_p));
  float zf = static_cast<float>(lg);
  if (static_cast<double>(zf) < lg) zf = nextafterf(zf, INFINITY);
  return zf;
}

// The smallest key k with (key_to_float(k) - m) / T >= log_bound(min_p): the row keeps the tokens whose
// order_key(l) >= k. m finite (the row max), T > 0, min_p in (0, 1]. 32 bisection steps at most.
INFINILM_HOST_DEVICE uint32_t floor_key(float m, float T, float min_p) {
  const float zf = log_bound(min_p);
  uint32_t lo = order_key(-INFINITY), hi = order_key(m);  // predicate false at -inf, true at m (z = 0)
  while (hi - lo > 1) {
    const uint32_t mid = lo + (hi - lo) / 2;
    if ((key_to_float(mid) - m) / T >= zf) hi = mid;
    else lo = mid;
  }
  return hi;
}

}  // namespace infinilm::minp
