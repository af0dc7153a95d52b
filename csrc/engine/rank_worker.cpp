// RankWorker: the per-rank command loop (device guard, no-grad mode and CPU thread count set once).
#include "csrc/engine/rank_worker.h"

#include <ATen/Parallel.h>
#include <c10/core/DeviceGuard.h>
#include <c10/core/GradMode.h>

namespace infinilm::engine {

RankWorker::RankWorker(int64_t rank, at::Device device, int num_threads) : rank_(rank), device_(device) {
  thread_ = std::thread([this, num_threads] { loop(num_threads); });
}

RankWorker::~RankWorker() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    stopping_ = true;
  }
  cv_.notify_all();
  if (thread_.joinable()) thread_.join();
}

std::future<void> RankWorker::submit(std::function<void()> command) {
  std::packaged_task<void()> task(std::move(command));
  std::future<void> done = task.get_future();
  {
    std::lock_guard<std::mutex> lock(mu_);
    queue_.push_back(std::move(task));
  }
  cv_.notify_one();
  return done;
}

void RankWorker::loop(int num_threads) {
  at::init_num_threads();
  if (num_threads > 0) at::set_num_threads(num_threads);
  c10::AutoGradMode no_grad(false);
  c10::OptionalDeviceGuard guard;
  if (!device_.is_cpu()) guard.reset_device(device_);
  for (;;) {
    std::packaged_task<void()> task;
    {
      std::unique_lock<std::mutex> lock(mu_);
      cv_.wait(lock, [this] { return stopping_ || !queue_.empty(); });
      if (queue_.empty()) return;  // stopping, and every queued command has run
      task = std::move(queue_.front());
      queue_.pop_front();
    }
    task();
  }
}

}  // namespace infinilm::engine
