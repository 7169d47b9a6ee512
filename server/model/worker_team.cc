#include "server/model/worker_team.h"

#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <memory>
#include <mutex>
#include <thread>
#include <vector>

#include <ATen/Parallel.h>
#include <omp.h>

namespace deltaserve::model {
namespace {

// How long an idle worker spins before it parks: longer than the gaps between the parallel
// sections of a step and between steps (sampling, scheduling), far shorter than a human pause.
constexpr std::chrono::microseconds kSpinTime(500);

void Pause() {
#if defined(__x86_64__) || defined(__i386__)
  __builtin_ia32_pause();
#endif
}

thread_local bool inside_section = false;

class WorkerTeam {
 public:
  explicit WorkerTeam(int threads) : threads_(threads) {
    for (int index = 1; index < threads; ++index) workers_.emplace_back([this, index] { Work(index); });
  }

  ~WorkerTeam() {
    {
      std::lock_guard<std::mutex> lock(mutex_);
      stop_.store(true);
    }
    wake_.notify_all();
    for (std::thread& worker : workers_) worker.join();
  }

  int threads() const { return threads_; }

  void Run(int64_t begin, int64_t end, int64_t members, const std::function<void(int64_t, int64_t)>& body) {
    body_ = &body;
    begin_ = begin;
    end_ = end;
    chunk_ = (end - begin + members - 1) / members;
    pending_.store(threads_ - 1);
    generation_.fetch_add(1);  // seq_cst, paired with the workers' sleeping_ increment
    if (sleeping_.load() > 0) {
      std::lock_guard<std::mutex> lock(mutex_);
      wake_.notify_all();
    }
    RunChunk(0);
    while (pending_.load(std::memory_order_acquire) > 0) Pause();
  }

  int parked() const { return sleeping_.load(); }

 private:
  void RunChunk(int index) {
    const int64_t first = begin_ + index * chunk_;
    const int64_t last = std::min(end_, first + chunk_);
    if (first < last) (*body_)(first, last);
  }

  void Work(int index) {
    inside_section = true;  // sections started by a body run on its thread alone,
    at::get_num_threads();  // (libtorch's lazy per-thread set-up first, so it cannot undo the next line)
    omp_set_num_threads(1);  // and so do its libtorch and BLAS calls
    uint64_t seen = 0;
    while (true) {
      auto spinning_since = std::chrono::steady_clock::now();
      int spins = 0;
      while (generation_.load(std::memory_order_acquire) == seen && !stop_.load(std::memory_order_relaxed)) {
        Pause();
        if (++spins % 1024 != 0) continue;
        if (std::chrono::steady_clock::now() - spinning_since < kSpinTime) continue;
        std::unique_lock<std::mutex> lock(mutex_);
        sleeping_.fetch_add(1);  // seq_cst: the next Run either sees it or is seen below
        wake_.wait(lock, [&] { return generation_.load() != seen || stop_.load(); });
        sleeping_.fetch_sub(1);
        spinning_since = std::chrono::steady_clock::now();
      }
      if (stop_.load()) return;
      seen = generation_.load(std::memory_order_acquire);
      RunChunk(index);
      pending_.fetch_sub(1, std::memory_order_release);
    }
  }

  const int threads_;
  std::vector<std::thread> workers_;
  // The current section, written by the owner before generation_ moves on and read by the
  // workers after they see it move; the owner waits for every worker before the next section.
  const std::function<void(int64_t, int64_t)>* body_ = nullptr;
  int64_t begin_ = 0, end_ = 0, chunk_ = 0;
  std::atomic<uint64_t> generation_{0};
  std::atomic<int> pending_{0};
  std::atomic<int> sleeping_{0};
  std::atomic<bool> stop_{false};
  std::mutex mutex_;
  std::condition_variable wake_;
};

thread_local std::unique_ptr<WorkerTeam> this_threads_team;

}  // namespace

void SetWorkerTeamOfThisThread(int threads) {
  at::get_num_threads();  // libtorch's lazy per-thread set-up, before ParallelFor saves the count
  this_threads_team.reset();
  if (threads > 1) this_threads_team = std::make_unique<WorkerTeam>(threads);
}

int ParkedWorkersOfThisThread() {
  return this_threads_team == nullptr ? 0 : this_threads_team->parked();
}

void ParallelFor(int64_t begin, int64_t end, int64_t grain,
                 const std::function<void(int64_t, int64_t)>& body) {
  if (begin >= end) return;
  if (inside_section) return body(begin, end);
  WorkerTeam* team = this_threads_team.get();
  if (team == nullptr) return at::parallel_for(begin, end, grain, body);
  const int64_t members = std::min<int64_t>(team->threads(), (end - begin + grain - 1) / std::max<int64_t>(1, grain));
  if (members <= 1) return body(begin, end);
  // The owner's share runs like the workers': libtorch and BLAS calls in it on one thread.
  const int openmp_threads = omp_get_max_threads();
  omp_set_num_threads(1);
  inside_section = true;
  team->Run(begin, end, members, body);
  inside_section = false;
  omp_set_num_threads(openmp_threads);
}

}  // namespace deltaserve::model
