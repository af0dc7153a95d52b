// The CPU kernels' fork-join pool: the caller takes part and never waits for a worker that has not started.
//
// Why not `#pragma omp parallel`: libgomp's team barrier makes every region wait until each team thread has
// been scheduled, run its share and checked in, and idle team threads spin (GOMP_SPINCOUNT) on the cores the
// caller needs. On a busy machine a decode step's ~200 regions then each wait a scheduler time slice for a
// descheduled worker: with two busy processes on 2 cores one generate ran 25-40x slower, where torch's own
// (mostly single-threaded at decode sizes) ops ran 2x slower. Here items are claimed one at a time from a
// shared ticket, the caller claims too, and it waits only for items a worker has already claimed; a worker
// that wakes late finds nothing left. Idle workers spin briefly (yielding the core when others want it), then
// sleep on a condition variable.
#pragma once

#include <sched.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <mutex>
#include <thread>
#include <vector>

namespace infinilm::cpu {

class ThreadPool {
 public:
  using Fn = void (*)(void* ctx, int64_t item);

  explicit ThreadPool(int threads) : threads_(threads < 1 ? 1 : threads), pid_(getpid()) {
    for (int i = 1; i < threads_; ++i) workers_.emplace_back([this] { worker_loop(); });
  }

  ~ThreadPool() {
    {
      std::lock_guard<std::mutex> lock(mu_);
      stop_.store(true);
    }
    cv_.notify_all();
    for (auto& t : workers_) t.join();
  }

  int threads() const { return threads_; }
  pid_t pid() const { return pid_; }

  // fn(ctx, i) for every i in [0, n), n < 2^31; returns when all have run. Not reentrant: one caller at a time
  // (the pool belongs to its calling thread, see pool_for_this_thread).
  void run(int64_t n, Fn fn, void* ctx) {
    fn_.store(fn, std::memory_order_relaxed);
    ctx_.store(ctx, std::memory_order_relaxed);
    n_.store(n, std::memory_order_relaxed);
    done_.store(0, std::memory_order_relaxed);
    uint64_t gen = ++gen_ & 0xffffffffu;
    if (gen == 0) gen = ++gen_ & 0xffffffffu;  // 0 is every worker's initial "seen"
    ticket_.store(gen << 32, std::memory_order_seq_cst);
    if (sleepers_.load(std::memory_order_seq_cst) > 0) {
      { std::lock_guard<std::mutex> lock(mu_); }
      cv_.notify_all();
    }
    const int64_t mine = claim_and_run(gen, false);
    // Wait only for items workers claimed; they are running now, so yield the core after a short spin.
    for (int spins = 0; done_.load(std::memory_order_acquire) + mine < n; ++spins) pause_or_yield(spins);
  }

 private:
  // Claims items of job `gen` until none are left; returns how many this thread ran.
  // Workers count each item as it finishes (counts = true); the caller counts its own.
  int64_t claim_and_run(uint64_t gen, bool counts) {
    int64_t ran = 0;
    uint64_t t = ticket_.load(std::memory_order_acquire);
    while ((t >> 32) == gen) {
      const Fn fn = fn_.load(std::memory_order_relaxed);
      void* ctx = ctx_.load(std::memory_order_relaxed);
      const int64_t n = n_.load(std::memory_order_relaxed);
      const int64_t i = static_cast<int64_t>(t & 0xffffffffu);
      if (i >= n) break;
      // The job's fields were read under generation `gen`; the exchange fails if another job began since.
      if (!ticket_.compare_exchange_weak(t, t + 1, std::memory_order_acq_rel, std::memory_order_acquire)) continue;
      in_pool_job() = true;
      fn(ctx, i);
      in_pool_job() = false;
      ++ran;
      if (counts) done_.fetch_add(1, std::memory_order_release);
      t = ticket_.load(std::memory_order_acquire);
    }
    return ran;
  }

  void worker_loop() {
    uint64_t seen = 0;
    for (;;) {
      uint64_t gen = ticket_.load(std::memory_order_acquire) >> 32;
      const auto start = std::chrono::steady_clock::now();
      for (int spins = 0; gen == seen && !stop_.load(std::memory_order_relaxed); ++spins) {
        if ((spins & 63) == 63 && std::chrono::steady_clock::now() - start > kSpin) break;
        pause_or_yield(spins);
        gen = ticket_.load(std::memory_order_acquire) >> 32;
      }
      if (gen == seen) {
        std::unique_lock<std::mutex> lock(mu_);
        sleepers_.fetch_add(1, std::memory_order_seq_cst);
        cv_.wait(lock, [&] { return stop_.load() || (ticket_.load(std::memory_order_seq_cst) >> 32) != seen; });
        sleepers_.fetch_sub(1, std::memory_order_relaxed);
        gen = ticket_.load(std::memory_order_acquire) >> 32;
      }
      if (stop_.load()) return;
      seen = gen;
      claim_and_run(gen, true);
    }
  }

  static void pause_or_yield(int spins) {
    if (spins < 256) {
#if defined(__x86_64__) || defined(__i386__)
      __builtin_ia32_pause();
#endif
    } else {
      sched_yield();  // returns at once on an idle core; gives the core away when others are runnable
    }
  }

 public:
  // True inside an item: nested parallel_for calls run inline.
  static bool& in_pool_job() {
    static thread_local bool flag = false;
    return flag;
  }

 private:
  // Longer than the gaps between a decode step's kernels, far shorter than a scheduler time slice.
  static constexpr std::chrono::microseconds kSpin{200};

  const int threads_;
  const pid_t pid_;
  std::vector<std::thread> workers_;
  std::atomic<uint64_t> ticket_{0};  // generation << 32 | next unclaimed item
  std::atomic<Fn> fn_{nullptr};
  std::atomic<void*> ctx_{nullptr};
  std::atomic<int64_t> n_{0};
  std::atomic<int64_t> done_{0};  // items finished by workers in the current generation
  uint64_t gen_ = 0;
  std::atomic<int> sleepers_{0};
  std::atomic<bool> stop_{false};
  std::mutex mu_;
  std::condition_variable cv_;
};

// The calling thread's pool of `threads` (itself included), made on first use and remade when the count
// changes or after a fork. Each engine rank thread has its own, so ranks never share workers. A pool copied
// by fork() is leaked, never destroyed: its threads do not exist in the child and its mutex may be held.
inline ThreadPool* pool_for_this_thread(int threads) {
  struct Holder {
    ThreadPool* pool = nullptr;
    ~Holder() {
      if (pool != nullptr && pool->pid() == getpid()) delete pool;
    }
  };
  static thread_local Holder h;
  if (h.pool == nullptr || h.pool->threads() != threads || h.pool->pid() != getpid()) {
    if (h.pool != nullptr && h.pool->pid() == getpid()) delete h.pool;
    h.pool = new ThreadPool(threads);
  }
  return h.pool;
}

}  // namespace infinilm::cpu
