// Paged attention SIMD helpers: conversions, exp2, register-blocked QK/PV micro-kernels; attention.h
// includes this once per instruction set (no include guard), before attention_impl.h.

namespace infinilm::cpu::INFINILM_ATTN_ISA {

constexpr int64_t kKeyChunk = 32;
constexpr int64_t kPrefetchChunks = 4;

// Local helpers: attention.h compiles this region with different options (-fno-trapping-math, ISA), and
// GCC will not inline functions compiled with other options (std::max, from_float) into the hot loops.
inline float fmax_(float a, float b) { return a > b ? a : b; }

// One SIMD register of floats (4 lanes for the SSE2 baseline, 8 for AVX2); memcpy loads are vmovups.
constexpr int kLanes = INFINILM_ATTN_LANES;
typedef float vecf __attribute__((vector_size(kLanes * sizeof(float))));
inline vecf loadv(const float* p) {
  vecf v;
  std::memcpy(&v, p, sizeof(v));
  return v;
}
inline void storev(float* p, vecf v) { std::memcpy(p, &v, sizeof(v)); }
// Micro-kernel blocking: rows of a tile are split into groups of at most 8 registers, and KT keys (or DT
// dims) are done together so that about 8 independent accumulators hide the FMA latency.
template <int M> constexpr int kGroupVecs = M / kLanes < 8 ? M / kLanes : 8;
template <int M> constexpr int kMulti = 8 / kGroupVecs<M> > 1 ? 8 / kGroupVecs<M> : 1;

inline float ld(float x) { return x; }
inline float ld(bf16_t x) { return __builtin_bit_cast(float, static_cast<uint32_t>(x.bits) << 16); }
// Exact IEEE half -> float without branches (so `omp simd` loops vectorise it), after M. Dukhan's FP16.
inline float ld(fp16_t x) {
  const uint32_t two_w = static_cast<uint32_t>(x.bits) << 17;
  const uint32_t sign = (static_cast<uint32_t>(x.bits) << 16) & 0x80000000u;
  const float normal = __builtin_bit_cast(float, (two_w >> 4) + (0xE0u << 23)) * 0x1.0p-112f;
  const float denormal = __builtin_bit_cast(float, (two_w >> 17) | (126u << 23)) - 0.5f;
  const uint32_t mag = two_w < (1u << 27) ? __builtin_bit_cast(uint32_t, denormal) : __builtin_bit_cast(uint32_t, normal);
  return __builtin_bit_cast(float, sign | mag);
}

template <typename T> inline T store_as(float f);
template <> inline float store_as<float>(float f) { return f; }
template <> inline bf16_t store_as<bf16_t>(float f) {  // round to nearest even; NaN stays NaN
  const uint32_t u = __builtin_bit_cast(uint32_t, f);
  const uint32_t r = (u + 0x7fffu + ((u >> 16) & 1u)) >> 16;
  return bf16_t{static_cast<uint16_t>((u & 0x7fffffffu) > 0x7f800000u ? (u >> 16) | 0x40u : r)};
}
template <> inline fp16_t store_as<fp16_t>(float f) {  // exact rounding, overflow to inf, subnormals (M. Dukhan's FP16)
  const uint32_t w = __builtin_bit_cast(uint32_t, f), shl1_w = w + w, sign = w & 0x80000000u;
  float base = (__builtin_bit_cast(float, w & 0x7fffffffu) * 0x1.0p+112f) * 0x1.0p-110f;
  uint32_t bias = shl1_w & 0xFF000000u;
  bias = bias < 0x71000000u ? 0x71000000u : bias;
  base = __builtin_bit_cast(float, (bias >> 1) + 0x07800000u) + base;
  const uint32_t bits = __builtin_bit_cast(uint32_t, base);
  const uint32_t nonsign = ((bits >> 13) & 0x00007C00u) + (bits & 0x00000FFFu);
  return fp16_t{static_cast<uint16_t>((sign >> 16) | (shl1_w > 0xFF000000u ? 0x7E00u : nonsign))};
}

// 2^x for x <= 0 (all uses subtract a running max); exactly 0 below -126, so masked (-inf) scores vanish.
// Cephes exp2f polynomial on [-0.5, 0.5], relative error ~2e-7. NaN propagates through f.
inline float exp2_neg(float x) {
  const float xc = x < -126.f ? -126.f : (x > 0.f ? 0.f : x);
  const int32_t n = static_cast<int32_t>(xc + 126.5f) - 126;  // round(xc); the sum is > 0 so truncation floors
  const float f = xc - static_cast<float>(n);
  float p = 1.535336188319500e-4f;
  p = p * f + 1.339887440266574e-3f;
  p = p * f + 9.618437357674640e-3f;
  p = p * f + 5.550332471162809e-2f;
  p = p * f + 2.402264791363012e-1f;
  p = p * f + 6.931472028550421e-1f;
  p = p * f + 1.f;
  const float r = p * __builtin_bit_cast(float, static_cast<uint32_t>(n + 127) << 23);
  return x < -126.f ? 0.f : r;
}

// `count` cache elements as floats: the cache itself for float, else a converted copy in buf.
template <typename T>
inline const float* as_float_rows(const T* src, float* buf, int64_t count) {
  if constexpr (std::is_same_v<T, float>) {
    return src;
  } else {
#pragma omp simd
    for (int64_t i = 0; i < count; ++i) buf[i] = ld(src[i]);
    return buf;
  }
}

// Scores of KT consecutive keys k [KT][D] against the M rows of qT [D][M] -> out [KT][M].
template <int M, int KT>
inline void qk_keys(const float* k, const float* qT, int64_t D, float* out) {
  constexpr int VG = kGroupVecs<M>, W = VG * kLanes;
  for (int g = 0; g < M; g += W) {
    vecf s[KT][VG] = {};
    for (int64_t d = 0; d < D; ++d) {
      vecf q[VG];
      for (int j = 0; j < VG; ++j) q[j] = loadv(qT + d * M + g + j * kLanes);
      for (int kt = 0; kt < KT; ++kt) {
        const float kd = k[kt * D + d];
        for (int j = 0; j < VG; ++j) s[kt][j] += kd * q[j];
      }
    }
    for (int kt = 0; kt < KT; ++kt)
      for (int j = 0; j < VG; ++j) storev(out + kt * M + g + j * kLanes, s[kt][j]);
  }
}

// accT [DT][M] += sum over n keys of v[t][d] * p[t][M], for DT consecutive dims of v (row stride D).
template <int M, int DT>
inline void pv_dims(const float* v, const float* p, int64_t n, int64_t D, float* accT) {
  constexpr int VG = kGroupVecs<M>, W = VG * kLanes;
  for (int g = 0; g < M; g += W) {
    vecf a[DT][VG];
    for (int dt = 0; dt < DT; ++dt)
      for (int j = 0; j < VG; ++j) a[dt][j] = loadv(accT + dt * M + g + j * kLanes);
    for (int64_t t = 0; t < n; ++t) {
      vecf pv[VG];
      for (int j = 0; j < VG; ++j) pv[j] = loadv(p + t * M + g + j * kLanes);
      for (int dt = 0; dt < DT; ++dt) {
        const float vd = v[t * D + dt];
        for (int j = 0; j < VG; ++j) a[dt][j] += vd * pv[j];
      }
    }
    for (int dt = 0; dt < DT; ++dt)
      for (int j = 0; j < VG; ++j) storev(accT + dt * M + g + j * kLanes, a[dt][j]);
  }
}

}  // namespace infinilm::cpu::INFINILM_ATTN_ISA
