// CUDA side of infinilm::l2_prefetch: weights requested into L2 from a side stream that forks off the current
// stream at the call (so the requests start when the kernels queued before the call have started, and run
// beside the kernels queued after it), joined back by l2_prefetch_join. Inside a CUDA-graph capture the fork
// and the join are graph edges: the prefetch kernels become a branch beside the layer's kernels.
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAStream.h>

#include <algorithm>
#include <map>

#include "csrc/ops/dispatch_cuda.h"
#include "csrc/ops/ops.h"
#include "kernels/cuda/prefetch.cuh"

namespace infinilm {

namespace {

// One side stream and a fork / join event pair per (thread, device): each engine rank runs on its own thread,
// and a graph capture stays on the thread that began it.
struct Side {
  c10::cuda::CUDAStream stream;
  cudaEvent_t fork = nullptr, join = nullptr;
  int64_t l2_bytes = 0;
  bool open = false;  // prefetches queued since the last join
};

Side& side_for(c10::DeviceIndex dev) {
  thread_local std::map<c10::DeviceIndex, Side> sides;
  auto it = sides.find(dev);
  if (it == sides.end()) {
    Side s{c10::cuda::getStreamFromPool(/*isHighPriority=*/false, dev)};
    C10_CUDA_CHECK(cudaEventCreateWithFlags(&s.fork, cudaEventDisableTiming));
    C10_CUDA_CHECK(cudaEventCreateWithFlags(&s.join, cudaEventDisableTiming));
    int l2 = 0;
    C10_CUDA_CHECK(cudaDeviceGetAttribute(&l2, cudaDevAttrL2CacheSize, dev));
    s.l2_bytes = l2;
    it = sides.emplace(dev, s).first;
  }
  return it->second;
}

}  // namespace

int64_t l2_prefetch_cuda(const at::Tensor& w, int64_t max_bytes) {
  if (!w.is_contiguous() || max_bytes < 16) return 0;
  Side& s = side_for(w.get_device());
  // More than half of L2 in flight would evict what it brought in before the reader comes.
  const int64_t bytes = std::min({static_cast<int64_t>(w.nbytes()), max_bytes, s.l2_bytes / 2});
  if (bytes < 16) return 0;
  const cudaStream_t main = c10::cuda::getCurrentCUDAStream(w.get_device());
  C10_CUDA_CHECK(cudaEventRecord(s.fork, main));
  C10_CUDA_CHECK(cudaStreamWaitEvent(s.stream, s.fork, 0));
  cuda_check(cuda::l2_prefetch(w.data_ptr(), bytes, s.stream), "l2_prefetch");
  s.open = true;
  return bytes;
}

void l2_prefetch_join_cuda(const at::Tensor& like) {
  Side& s = side_for(like.get_device());
  if (!s.open) return;
  C10_CUDA_CHECK(cudaEventRecord(s.join, s.stream));
  C10_CUDA_CHECK(cudaStreamWaitEvent(c10::cuda::getCurrentCUDAStream(like.get_device()), s.join, 0));
  s.open = false;
}

}  // namespace infinilm
