// StaticStep: the packed, padded inputs of a recorded engine step and their views.
#include "csrc/engine/static_step.h"

#include <c10/util/Exception.h>

#include <algorithm>
#include <cstring>

#include "csrc/ops/ops.h"

namespace infinilm::engine {

namespace {

// Offsets (in int64 words) of the inputs in the packed buffer of a shape with n requests, T tokens and block
// tables w wide. The three float32 vectors (temperature, top_p, min_p) take ceil(n / 2) words each: every
// per-row sampling parameter is part of the one buffer, so requests of one step may differ.
// src: the prev_output row each token's id comes from (-1: ids holds it).
struct Layout {
  int64_t ids, pos, slots, src, seq, last, qsl, top_k, seeds, tables, temp, top_p, min_p, size, half;
  Layout(int64_t n, int64_t T, int64_t w) {
    half = (n + 1) / 2;
    ids = 0, pos = T, slots = 2 * T, src = 3 * T;
    seq = 4 * T, last = seq + n, qsl = last + n;  // qsl holds n + 1
    top_k = qsl + n + 1, seeds = top_k + n, tables = seeds + n;
    temp = tables + n * w, top_p = temp + half, min_p = top_p + half, size = min_p + half;
  }
};

int64_t pow2_at_least(int64_t x, int64_t lo) {
  int64_t v = lo;
  while (v < x) v *= 2;
  return v;
}

}  // namespace

std::optional<StepShape> step_shape(const models::ForwardBatch& host, const cache::KVCache& cache, bool mixed) {
  const int64_t n = host.seq_lens.size(0), T = host.input_ids.size(0);
  const int64_t bs = cache.block_size(), capacity = cache.capacity();
  if (n == 0 || n > kMaxStepRequests || (bs & (bs - 1)) != 0) return std::nullopt;
  StepShape s;
  s.decode = host.is_decode;
  if (s.decode) {
    if (T != n) return std::nullopt;
    s.n = s.tokens = n;
    s.max_len = std::min(pow2_at_least(host.max_seq_len, 512), capacity);
    return s;
  }
  if (!mixed || T > kMaxMixedTokens) return std::nullopt;
  s.tokens = pow2_at_least(T, 16);
  const int64_t pad = s.tokens - T;
  s.n = pow2_at_least(n + (pad > 0 ? 1 : 0), 1);
  if (s.n > kMaxStepRequests) return std::nullopt;
  s.max_len = std::min(pow2_at_least(std::max(host.max_seq_len, pad), 512), capacity);
  if (pad > s.max_len) return std::nullopt;  // the padding request would not fit a sequence
  return s;
}

StaticStep::StaticStep(const StepShape& shape, int64_t block_size, at::Device device)
    : shape_(shape), block_size_(block_size) {
  TORCH_CHECK(block_size > 0 && shape.n > 0 && shape.max_len > 0 && (!shape.decode || shape.tokens == shape.n),
              "StaticStep: bad shape (", shape.n, " requests, ", shape.tokens, " tokens, length ", shape.max_len, ")");
  const int64_t n = shape.n, T = shape.tokens;
  width_ = (shape.max_len + block_size - 1) / block_size;
  const Layout l(n, T, width_);
  words_ = l.size;
  buf_ = at::zeros({l.size}, at::TensorOptions().dtype(at::kLong).device(device));
  auto slice = [&](int64_t off, int64_t len) { return buf_.narrow(0, off, len); };
  batch_.input_ids = slice(l.ids, T);
  batch_.positions = slice(l.pos, T);
  batch_.slot_mapping = slice(l.slots, T);
  batch_.seq_lens = slice(l.seq, n);
  batch_.last_token_idx = slice(l.last, n);
  batch_.query_start_loc = slice(l.qsl, n + 1);
  batch_.block_tables = slice(l.tables, n * width_).view({n, width_});
  batch_.is_decode = shape.decode;
  batch_.max_query_len = shape.decode ? 1 : T;
  batch_.max_seq_len = shape.max_len;  // sizes the attention grids; valid for every step whose lengths fit
  top_k_ = slice(l.top_k, n);
  seeds_ = slice(l.seeds, n);
  src_ = slice(l.src, T);
  temperature_ = slice(l.temp, l.half).view(at::kFloat).narrow(0, 0, n);
  top_p_ = slice(l.top_p, l.half).view(at::kFloat).narrow(0, 0, n);
  min_p_ = slice(l.min_p, l.half).view(at::kFloat).narrow(0, 0, n);
}

void StaticStep::pack(const models::ForwardBatch& h, const SamplingParams& sp, const at::Tensor& source,
                      int64_t* p) const {
  const int64_t N = shape_.n, TT = shape_.tokens;
  const int64_t n = h.seq_lens.size(0), T = h.input_ids.size(0);
  TORCH_CHECK(n <= N && T <= TT && (T == TT || n < N) && (h.is_decode == shape_.decode) &&
                  h.max_seq_len <= shape_.max_len,
              "StaticStep: a step of ", n, " requests and ", T, " tokens does not fit the shape (", N, ", ", TT, ")");
  const Layout l(N, TT, width_);
  auto put = [&](int64_t off, const at::Tensor& t, int64_t len) {
    std::memcpy(p + off, t.data_ptr<int64_t>(), len * sizeof(int64_t));
  };
  auto fill = [&](int64_t off, int64_t from, int64_t to, int64_t v) { std::fill(p + off + from, p + off + to, v); };
  // Tokens: the step's, then padding (id 0, position 0, no cache write, no source).
  put(l.ids, h.input_ids, T);
  put(l.pos, h.positions, T);
  put(l.slots, h.slot_mapping, T);
  if (source.defined()) {
    put(l.src, source, T);
  } else {
    fill(l.src, 0, T, -1);
  }
  fill(l.ids, T, TT, 0);
  fill(l.pos, T, TT, 0);
  fill(l.slots, T, TT, -1);
  fill(l.src, T, TT, -1);
  // Requests: the step's, then the padding request owning the padded tokens, then empty ones.
  put(l.seq, h.seq_lens, n);
  put(l.last, h.last_token_idx, n);
  put(l.qsl, h.query_start_loc, n + 1);
  if (n < N) {
    p[l.seq + n] = TT - T;
    p[l.last + n] = TT > T ? TT - 1 : 0;
    fill(l.seq, n + 1, N, 0);
    fill(l.last, n + 1, N, 0);
    fill(l.qsl, n + 1, N + 1, TT);
  }
  // Only the blocks a row uses are copied (the caller may pad the rest with anything); the others get
  // block 0, a valid id the kernels never read past the row's length.
  const int64_t mb = h.block_tables.size(1);
  const int64_t* bt = h.block_tables.data_ptr<int64_t>();
  const int64_t* seq = h.seq_lens.data_ptr<int64_t>();
  for (int64_t r = 0; r < n; ++r) {
    const int64_t used = std::min({(seq[r] + block_size_ - 1) / block_size_, mb, width_});
    int64_t* row = p + l.tables + r * width_;
    std::memcpy(row, bt + r * mb, used * sizeof(int64_t));
    std::fill(row + used, row + width_, int64_t{0});
  }
  std::fill(p + l.tables + n * width_, p + l.tables + N * width_, int64_t{0});
  // Sampling: the step's rows, then greedy rows (top-k, top-p and min-p off, seed 0).
  put(l.top_k, sp.top_k, n);
  put(l.seeds, sp.seeds, n);
  fill(l.top_k, n, N, 0);
  fill(l.seeds, n, N, 0);
  auto put_f = [&](int64_t off, const at::Tensor& t, float pad) {
    float* f = reinterpret_cast<float*>(p + off);
    std::memcpy(f, t.data_ptr<float>(), n * sizeof(float));
    std::fill(f + n, f + 2 * l.half, pad);
  };
  put_f(l.temp, sp.temperature, 0.f);
  put_f(l.top_p, sp.top_p, 1.f);
  put_f(l.min_p, sp.min_p, 0.f);
}

void StaticStep::upload(const models::ForwardBatch& host, const SamplingParams& sp, const at::Tensor& source,
                        const at::Tensor& prev) {
  const Layout l(shape_.n, shape_.tokens, width_);
  at::Tensor packed;
  if (buf_.device().is_cpu()) {
    pack(host, sp, source, buf_.data_ptr<int64_t>());
    packed = buf_;
  } else {
    packed = at::empty({words_}, at::TensorOptions().dtype(at::kLong).pinned_memory(true));
    pack(host, sp, source, packed.data_ptr<int64_t>());
    buf_.copy_(packed, /*non_blocking=*/true);
  }
  if (source.defined()) {
    batch_.input_ids.copy_(take_tokens(batch_.input_ids, packed.narrow(0, l.src, shape_.tokens), src_, prev));
  }
}

std::pair<at::Tensor, at::Tensor> StaticStep::run(const models::CausalLM& model, cache::KVCache& cache) const {
  at::Tensor logits = model.forward(batch_, cache, nullptr);
  at::Tensor ids = infinilm::sample(logits, temperature_, top_k_, top_p_, seeds_, min_p_);
  return {logits, ids};
}

}  // namespace infinilm::engine
