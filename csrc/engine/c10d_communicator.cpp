// C10dCommunicator: all-reduce over a c10d Backend with an abortable, time-limited wait (no Python here).
#include "csrc/engine/c10d_communicator.h"

#include <c10/util/Exception.h>

namespace infinilm::engine {

C10dCommunicator::C10dCommunicator(c10::intrusive_ptr<c10d::Backend> backend, std::chrono::milliseconds timeout,
                                   bool owned)
    : backend_(std::move(backend)), timeout_(timeout), owned_(owned) {
  TORCH_CHECK_VALUE(backend_, "C10dCommunicator: 'backend' is null");
  TORCH_CHECK_VALUE(timeout_.count() > 0, "C10dCommunicator: 'timeout' must be > 0 ms, got ", timeout_.count());
}

void C10dCommunicator::all_reduce_sum(at::Tensor& tensor) {
  TORCH_CHECK(!aborted_.load(), "all_reduce (rank ", rank(), "): aborted because another rank failed");
  const auto start = std::chrono::steady_clock::now();
  std::vector<at::Tensor> tensors{tensor};
  c10d::AllreduceOptions opts;
  opts.reduceOp = c10d::ReduceOp::SUM;
  c10::intrusive_ptr<c10d::Work> work = backend_->allreduce(tensors, opts);
  if (tensor.is_cuda()) {
    // NCCL: wait() only orders this rank's current stream after the collective. A dead peer is caught by
    // NCCL's watchdog (the process group's timeout) or by abort(), which aborts the communicator.
    work->wait();
  } else {
    // Gloo completes on its own threads: wait in slices so that abort() (a local rank failed) and the
    // deadline (a remote rank died) both end the wait with an exception instead of a hang.
    const auto deadline = start + timeout_;
    for (;;) {
      try {
        work->wait(std::chrono::milliseconds(50));
        break;
      } catch (const c10::Error&) {
        if (work->isCompleted()) throw;  // the collective itself failed
      }
      TORCH_CHECK(!aborted_.load(), "all_reduce (rank ", rank(), "): aborted because another rank failed");
      TORCH_CHECK(std::chrono::steady_clock::now() < deadline, "all_reduce (rank ", rank(), " of ", size(),
                  ", ", backend_->getBackendName(), "): no result after ", timeout_.count(),
                  " ms; a peer rank is dead or stuck");
    }
  }
  busy_ns_ += std::chrono::duration_cast<std::chrono::nanoseconds>(std::chrono::steady_clock::now() - start).count();
}

void C10dCommunicator::abort() {
  aborted_.store(true);
  // Unblocks kernels already waiting on a peer (NCCL); Gloo's abort is a no-op and the flag above suffices.
  if (owned_) backend_->abort();
}

}  // namespace infinilm::engine
