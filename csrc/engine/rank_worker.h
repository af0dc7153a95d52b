// RankWorker: one thread per tensor-parallel rank running submitted commands in order (a command loop).
#pragma once

#include <ATen/ATen.h>

#include <condition_variable>
#include <deque>
#include <functional>
#include <future>
#include <mutex>
#include <thread>

namespace infinilm::engine {

// The engine's commands (init, load, run, reset cache) are closures run on this thread, so each rank's
// model, cache and device context live on one thread; stop is the destructor, which joins the thread.
class RankWorker {
 public:
  // num_threads: intra-op CPU threads for this rank (OpenMP settings are per thread, so set them here).
  RankWorker(int64_t rank, at::Device device, int num_threads);
  ~RankWorker();
  RankWorker(const RankWorker&) = delete;
  RankWorker& operator=(const RankWorker&) = delete;

  // Queues a command; the future carries its exception, if any.
  std::future<void> submit(std::function<void()> command);

  int64_t rank() const { return rank_; }
  at::Device device() const { return device_; }

 private:
  void loop(int num_threads);

  int64_t rank_;
  at::Device device_;
  std::mutex mu_;
  std::condition_variable cv_;
  std::deque<std::packaged_task<void()>> queue_;
  bool stopping_ = false;
  std::thread thread_;
};

}  // namespace infinilm::engine
