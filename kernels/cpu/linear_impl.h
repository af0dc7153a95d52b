// Skinny linear bodies, compiled once per ISA by kernels/cpu/linear.h (no include guard on purpose).
namespace infinilm::cpu::INFINILM_ISA {
namespace linear_detail {

// 8 floats: two SSE registers on the baseline build, one AVX register on the AVX2 build; memcpy loads are
// unaligned vector loads, and with FMA enabled `a * b + c` contracts to vfmadd.
typedef float v8f __attribute__((vector_size(32)));
typedef uint16_t v8u16 __attribute__((vector_size(16)));
typedef uint32_t v8u32 __attribute__((vector_size(32)));

inline v8f load8(const float* p) {
  v8f v;
  std::memcpy(&v, p, sizeof(v));
  return v;
}
inline v8f load8(const bf16_t* p) {  // bf16 -> float is a 16-bit shift
  v8u16 h;
  std::memcpy(&h, p, sizeof(h));
  const v8u32 u = __builtin_convertvector(h, v8u32) << 16;
  v8f v;
  std::memcpy(&v, &u, sizeof(v));
  return v;
}

// Rows n0..n1 of w against M rows of xf: M x U accumulators hide the FMA latency (about 8 in flight).
template <int M, int U, typename T>
void rows(T* y,              // [M, N], row stride ldy
          const float* xf,   // [M, K] dense
          const T* w,        // [N, K] dense
          const T* bias,     // [N] or null
          int64_t n0, int64_t n1, int64_t K, int64_t ldy) {
  for (int64_t n = n0; n < n1; ++n) {
    const T* wr = w + n * K;
    v8f acc[M][U];
    for (int m = 0; m < M; ++m)
      for (int u = 0; u < U; ++u) acc[m][u] = v8f{};
    int64_t k = 0;
    for (; k + 8 * U <= K; k += 8 * U) {
      for (int u = 0; u < U; ++u) {
        const v8f wv = load8(wr + k + 8 * u);
        for (int m = 0; m < M; ++m) acc[m][u] = wv * load8(xf + m * K + k + 8 * u) + acc[m][u];
      }
    }
    const float b = bias != nullptr ? to_float(bias[n]) : 0.f;
    for (int m = 0; m < M; ++m) {
      v8f a = acc[m][0];
      for (int u = 1; u < U; ++u) a += acc[m][u];
      float s = ((a[0] + a[4]) + (a[1] + a[5])) + ((a[2] + a[6]) + (a[3] + a[7]));
      for (int64_t kk = k; kk < K; ++kk) s += to_float(wr[kk]) * xf[m * K + kk];
      y[m * ldy + n] = from_float<T>(s + b);
    }
  }
}

template <typename T>
void rows_dispatch(int m_count, T* y, const float* xf, const T* w, const T* bias, int64_t n0, int64_t n1, int64_t K,
                   int64_t ldy) {
  switch (m_count) {
    case 1: return rows<1, 4>(y, xf, w, bias, n0, n1, K, ldy);
    case 2: return rows<2, 2>(y, xf, w, bias, n0, n1, K, ldy);
    case 3: return rows<3, 2>(y, xf, w, bias, n0, n1, K, ldy);
    default: return rows<4, 2>(y, xf, w, bias, n0, n1, K, ldy);
  }
}

}  // namespace linear_detail

template <typename T>
void skinny_linear(T* y,             // [M, N], row stride ldy
                   const T* x,       // [M, K], row stride ldx
                   const T* w,       // [N, K] dense
                   const T* bias,    // [N] or null
                   float* scratch,   // [M, K]; unused when x is float with dense rows
                   int64_t M, int64_t N, int64_t K, int64_t ldx, int64_t ldy) {
  const float* xf;
  if constexpr (std::is_same_v<T, float>) {
    xf = ldx == K ? x : nullptr;
  } else {
    xf = nullptr;
  }
  if (xf == nullptr) {
    for (int64_t m = 0; m < M; ++m)
      for (int64_t k = 0; k < K; ++k) scratch[m * K + k] = to_float(x[m * ldx + k]);
    xf = scratch;
  }
  constexpr int64_t kBlock = 64;
  const int64_t blocks = (N + kBlock - 1) / kBlock;
  parallel_for(blocks, kBlock * K, [&](int64_t blk) {
    const int64_t n0 = blk * kBlock, n1 = n0 + kBlock < N ? n0 + kBlock : N;
    for (int64_t m0 = 0; m0 < M; m0 += 4) {
      const int m_count = static_cast<int>(M - m0 < 4 ? M - m0 : 4);
      linear_detail::rows_dispatch(m_count, y + m0 * ldy, xf + m0 * K, w, bias, n0, n1, K, ldy);
    }
  });
}

}  // namespace infinilm::cpu::INFINILM_ISA
