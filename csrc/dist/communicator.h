// Communicator: the hook through which a tensor-parallel rank sums partial results across ranks (models
// include it; the engine's c10d implementation lives in csrc/engine).
#pragma once

#include <ATen/ATen.h>

namespace infinilm::dist {

// The model calls all_reduce twice per layer (after o_proj and after down_proj) when tp_size > 1.
// Implementations wrap a torch.distributed c10d backend (Gloo on CPU, NCCL on CUDA); see DESIGN.md.
class Communicator {
 public:
  virtual ~Communicator() = default;
  // In place: tensor = sum over ranks of tensor. Blocks until the result is usable on this rank's stream.
  virtual void all_reduce_sum(at::Tensor& tensor) = 0;
  // This rank's index and the number of ranks in the group (across processes in multi-process mode).
  virtual int64_t rank() const = 0;
  virtual int64_t size() const = 0;
  // Called from any thread when another local rank failed: a pending or later all_reduce_sum throws
  // instead of waiting for a peer that will never arrive. Irreversible.
  virtual void abort() {}
  // Host seconds spent in all_reduce_sum so far (for benchmarks; 0 if not measured).
  virtual double busy_seconds() const { return 0.0; }
};

}  // namespace infinilm::dist
