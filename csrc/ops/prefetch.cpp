// infinilm::l2_prefetch / l2_prefetch_join: device-generic entry points (CUDA: csrc/ops/prefetch_cuda.cu; a no-op
// elsewhere, where there is no L2 to fill ahead of a kernel).
#include <cstdlib>

#include "csrc/ops/ops.h"

namespace infinilm {

int l2_prefetch_mode() {
  const char* v = std::getenv("INFINILM_L2_PREFETCH");
  if (v == nullptr || v[0] == '\0') return 0;
  return std::atoi(v);
}

int64_t l2_prefetch(const at::Tensor& w, int64_t max_bytes) {
#ifdef INFINILM_WITH_CUDA
  if (w.is_cuda()) return l2_prefetch_cuda(w, max_bytes);
#endif
  (void)w;
  (void)max_bytes;
  return 0;
}

void l2_prefetch_join(const at::Tensor& like) {
#ifdef INFINILM_WITH_CUDA
  if (like.is_cuda()) l2_prefetch_join_cuda(like);
#endif
  (void)like;
}

}  // namespace infinilm
