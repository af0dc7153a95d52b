// C10dCommunicator: all-reduce over a c10d Backend with an abortable, time-limited wait; Python hand-over.
#include "csrc/engine/c10d_communicator.h"

#include <torch/extension.h>

#include "csrc/engine/infer_engine.h"

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

std::vector<std::shared_ptr<Communicator>> make_c10d_communicators(pybind11::handle backends,
                                                                   c10::DeviceType device_type, double timeout_s,
                                                                   bool owned) {
  namespace py = pybind11;
  TORCH_CHECK_VALUE(timeout_s > 0, "InferEngine: 'comm_timeout' must be > 0 seconds, got ", timeout_s);
  const auto timeout = std::chrono::milliseconds(static_cast<int64_t>(timeout_s * 1000.0));
  std::vector<std::shared_ptr<Communicator>> out;
  for (py::handle obj : backends) {
    py::object b = py::reinterpret_borrow<py::object>(obj);
    if (py::hasattr(b, "_get_backend")) {  // a ProcessGroup: take its backend for this device type
      py::object device = py::module_::import("torch").attr("device")(device_type == c10::DeviceType::CUDA ? "cuda" : "cpu");
      b = b.attr("_get_backend")(device);
    }
    c10::intrusive_ptr<c10d::Backend> backend;
    try {
      backend = b.cast<c10::intrusive_ptr<c10d::Backend>>();
    } catch (const py::cast_error&) {
      throw py::type_error("InferEngine: 'process_group' must be a torch.distributed ProcessGroup or Backend, got " +
                           std::string(py::str(py::type::of(b))));
    }
    out.push_back(std::make_shared<C10dCommunicator>(std::move(backend), timeout, owned));
  }
  return out;
}

std::vector<std::shared_ptr<Communicator>> engine_communicators(const models::llama::LlamaConfig& config,
                                                                distributed::DistConfig& dist, bool dist_given,
                                                                c10::DeviceType device_type,
                                                                pybind11::handle process_group, double timeout_s) {
  namespace py = pybind11;
  TORCH_CHECK_VALUE(timeout_s > 0, "InferEngine: 'comm_timeout' must be > 0 seconds, got ", timeout_s);
  const char* type = device_type == c10::DeviceType::CUDA ? "cuda" : "cpu";
  py::module_ helper = py::module_::import("infinilm_torch.distributed");
  if (process_group.is_none()) {
    if (dist.tp_size() == 1) return {};
    InferEngine::check_args(config, dist, device_type, dist.tp_size());
    py::object backends = helper.attr("rank_backends")(dist.tp_device_ids, type, timeout_s);
    return make_c10d_communicators(backends, device_type, timeout_s, /*owned=*/true);
  }
  TORCH_CHECK_VALUE(py::hasattr(process_group, "size") && py::hasattr(process_group, "rank"),
                    "InferEngine: 'process_group' must be a torch.distributed ProcessGroup or Backend, got ",
                    std::string(py::str(py::type::of(process_group))));
  if (dist_given) {
    TORCH_CHECK_VALUE(dist.tp_size() == 1, "InferEngine: with 'process_group' each process runs one rank, so "
                      "'distributed_config' must list one device id, got ", dist.tp_size());
  } else {
    dist = distributed::DistConfig(std::vector<int64_t>{helper.attr("local_device_id")(type).cast<int64_t>()});
  }
  const int64_t world = process_group.attr("size")().cast<int64_t>();
  InferEngine::check_args(config, dist, device_type, world);
  py::tuple one = py::make_tuple(process_group);
  return make_c10d_communicators(one, device_type, timeout_s, /*owned=*/false);
}

}  // namespace infinilm::engine
