// C10dCommunicator: a Communicator over a torch.distributed c10d Backend (ProcessGroupGloo / ProcessGroupNCCL).
#pragma once

#include <torch/csrc/distributed/c10d/Backend.hpp>

#include <atomic>
#include <chrono>
#include <memory>
#include <vector>

#include "csrc/engine/communicator.h"
#include "csrc/engine/dist_config.h"
#include "csrc/models/llama/config.h"

namespace pybind11 {
class handle;
}

namespace infinilm::engine {

// The backends are built in Python (the torch wheel ships no Gloo headers, see DESIGN.md) and handed over as
// c10d::Backend; C++ only calls allreduce on them from the rank threads.
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

// The communicators InferEngine's binding passes on. process_group None: tp_size > 1 in-process ranks get
// backends built by infinilm_torch.distributed (Gloo on CPU, NCCL on CUDA), none for tp_size 1. A
// ProcessGroup (or Backend): one local rank of that group (multi-process mode); `dist` then names this
// process's device (its default: LOCAL_RANK for CUDA). Raises before building anything on bad arguments.
std::vector<std::shared_ptr<Communicator>> engine_communicators(const models::llama::LlamaConfig& config,
                                                                distributed::DistConfig& dist, bool dist_given,
                                                                c10::DeviceType device_type,
                                                                pybind11::handle process_group, double timeout_s);

// backends: a Python sequence of torch c10d Backend objects (or ProcessGroups, whose backend for `device_type`
// is taken), one per local rank. Call with the GIL held.
std::vector<std::shared_ptr<Communicator>> make_c10d_communicators(pybind11::handle backends,
                                                                   c10::DeviceType device_type, double timeout_s,
                                                                   bool owned);

}  // namespace infinilm::engine
