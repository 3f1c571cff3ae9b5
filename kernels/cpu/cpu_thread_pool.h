// A fixed set of worker threads the CPU backend splits its ops over.
//
// Why not std::thread per op: a decode step runs ~5 parallel ops per layer,
// and starting and joining threads costs tens of microseconds each time (more
// on a loaded machine). Why not OpenBLAS's own threads: its workers spin
// while waiting for work, which on a machine shared with other processes
// steals the cores the other thread needs. These workers sleep on a condition
// variable between ops.
#ifndef PDSERVE_KERNELS_CPU_CPU_THREAD_POOL_H_
#define PDSERVE_KERNELS_CPU_CPU_THREAD_POOL_H_

#include <atomic>
#include <condition_variable>
#include <mutex>
#include <thread>
#include <vector>

namespace pdserve::cpu {

class ThreadPool {
 public:
  // `num_threads` counts the calling thread: num_threads - 1 workers are
  // started. Values < 1 mean 1 (everything on the caller).
  explicit ThreadPool(int num_threads);
  ~ThreadPool();
  ThreadPool(const ThreadPool&) = delete;
  ThreadPool& operator=(const ThreadPool&) = delete;

  // Threads a Run can use, the caller included.
  int size() const { return static_cast<int>(workers_.size()) + 1; }

  // Calls fn(task) for every task in [0, num_tasks), handing tasks out one at
  // a time to the caller and up to `max_threads` - 1 workers, and returns when
  // all are done. `fn` must not call Run. When another thread's Run is in
  // progress, this one runs every task on the calling thread instead of
  // waiting.
  template <typename Fn>
  void Run(int num_tasks, int max_threads, const Fn& fn) {
    RunErased(num_tasks, max_threads, &CallTask<Fn>, &fn);
  }

 private:
  using TaskFn = void (*)(const void* context, int task);
  template <typename Fn>
  static void CallTask(const void* context, int task) {
    (*static_cast<const Fn*>(context))(task);
  }

  void RunErased(int num_tasks, int max_threads, TaskFn fn, const void* context);
  void WorkerLoop(int index);
  // Takes tasks of the current job until none are left.
  void DrainTasks();

  std::mutex run_mutex_;  // one Run at a time uses the workers

  std::mutex mutex_;
  std::condition_variable work_ready_;
  std::condition_variable work_done_;
  uint64_t generation_ = 0;  // bumped per job; workers wait for a change
  int job_threads_ = 0;      // workers (index < job_threads_) that take part
  int busy_workers_ = 0;     // taking-part workers not yet finished
  bool stopping_ = false;
  TaskFn fn_ = nullptr;
  const void* context_ = nullptr;
  int num_tasks_ = 0;
  std::atomic<int> next_task_{0};

  std::vector<std::thread> workers_;
};

}  // namespace pdserve::cpu

#endif  // PDSERVE_KERNELS_CPU_CPU_THREAD_POOL_H_
