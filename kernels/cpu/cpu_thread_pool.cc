#include "kernels/cpu/cpu_thread_pool.h"

#include <algorithm>

namespace pdserve::cpu {

ThreadPool::ThreadPool(int num_threads) {
  const int workers = std::max(num_threads, 1) - 1;
  workers_.reserve(workers);
  for (int i = 0; i < workers; ++i) workers_.emplace_back([this, i] { WorkerLoop(i); });
}

ThreadPool::~ThreadPool() {
  {
    std::lock_guard<std::mutex> lock(mutex_);
    stopping_ = true;
  }
  work_ready_.notify_all();
  for (std::thread& worker : workers_) worker.join();
}

void ThreadPool::DrainTasks() {
  for (int task = next_task_.fetch_add(1); task < num_tasks_; task = next_task_.fetch_add(1)) {
    fn_(context_, task);
  }
}

void ThreadPool::RunErased(int num_tasks, int max_threads, TaskFn fn, const void* context) {
  if (num_tasks <= 0) return;
  const int helpers = std::min({static_cast<int>(workers_.size()), max_threads - 1, num_tasks - 1});
  std::unique_lock<std::mutex> run_lock(run_mutex_, std::try_to_lock);
  if (helpers <= 0 || !run_lock.owns_lock()) {
    for (int task = 0; task < num_tasks; ++task) fn(context, task);
    return;
  }
  {
    std::lock_guard<std::mutex> lock(mutex_);
    fn_ = fn;
    context_ = context;
    num_tasks_ = num_tasks;
    next_task_.store(0, std::memory_order_relaxed);
    job_threads_ = helpers;
    busy_workers_ = helpers;
    ++generation_;
  }
  work_ready_.notify_all();
  DrainTasks();
  std::unique_lock<std::mutex> lock(mutex_);
  work_done_.wait(lock, [this] { return busy_workers_ == 0; });
}

void ThreadPool::WorkerLoop(int index) {
  uint64_t seen = 0;
  std::unique_lock<std::mutex> lock(mutex_);
  while (true) {
    work_ready_.wait(lock, [&] { return stopping_ || generation_ != seen; });
    if (stopping_) return;
    seen = generation_;
    if (index >= job_threads_) continue;  // this job wants fewer threads
    lock.unlock();
    DrainTasks();
    lock.lock();
    if (--busy_workers_ == 0) work_done_.notify_one();
  }
}

}  // namespace pdserve::cpu
