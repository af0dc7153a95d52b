// C10dCommunicator: a Communicator over a torch.distributed c10d Backend (ProcessGroupGloo / ProcessGroupNCCL).
#pragma once

#include <torch/csrc/distributed/c10d/Backend.hpp>

#include <atomic>
#include <chrono>
#include <memory>
#include <vector>

#include "csrc/engine/communicator.h"

namespace infinilm::engine {

// The backend is built by the caller: from Python (infinilm_torch.distributed: the torch wheel ships no Gloo
// headers, see DESIGN.md) or, in a C++-only program, e.g. a c10d::ProcessGroupNCCL. C++ only calls allreduce on it
// from the rank threads.
class C10dCommunicator : public Communicator {
 public:
  // owned: the engine created the backend (in-process ranks), so abort() may also abort the backend itself;
  // a user's process group (multi-process mode) is left alone.
  C10dCommunicator(c10::intrusive_ptr<c10d::Backend> backend, std::chrono::milliseconds timeout, bool owned);

  void all_reduce_sum(at::Tensor& tensor) override;
  int64_t rank() const override { return backend_->getRank(); }
  int64_t size() const override { return backend_->getSize(); }
  void abort() override;

  const c10::intrusive_ptr<c10d::Backend>& backend() const { return backend_; }
  double busy_seconds() const override { return busy_ns_.load() * 1e-9; }

 private:
  c10::intrusive_ptr<c10d::Backend> backend_;
  std::chrono::milliseconds timeout_;
  bool owned_;
  std::atomic<bool> aborted_{false};
  std::atomic<int64_t> busy_ns_{0};
};

}  // namespace infinilm::engine
