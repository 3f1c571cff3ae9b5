// ThreadPool: every task runs exactly once whatever the task and thread
// counts, a Run that finds the pool busy runs on its own thread, and the
// workers are gone once the pool is destroyed.
#include "kernels/cpu/cpu_thread_pool.h"

#include <dirent.h>
#include <gtest/gtest.h>

#include <atomic>
#include <thread>
#include <vector>

namespace pdserve::cpu {
namespace {

// Threads of this process, from /proc/self/task.
int CountThreads() {
  DIR* dir = opendir("/proc/self/task");
  if (dir == nullptr) return -1;
  int count = 0;
  while (dirent* entry = readdir(dir)) {
    if (entry->d_name[0] != '.') ++count;
  }
  closedir(dir);
  return count;
}

TEST(CpuBackendThreadPoolTest, EveryTaskRunsOnce) {
  ThreadPool pool(3);
  EXPECT_EQ(pool.size(), 3);
  for (int tasks : {0, 1, 2, 7, 1000}) {
    for (int max_threads : {1, 2, 3, 8}) {
      SCOPED_TRACE(testing::Message() << "tasks=" << tasks << " max_threads=" << max_threads);
      std::vector<std::atomic<int>> runs(tasks);
      pool.Run(tasks, max_threads, [&](int task) { runs[task].fetch_add(1); });
      for (int i = 0; i < tasks; ++i) ASSERT_EQ(runs[i].load(), 1) << "task " << i;
    }
  }
}

TEST(CpuBackendThreadPoolTest, OneThreadRunsOnTheCaller) {
  ThreadPool pool(4);
  const std::thread::id caller = std::this_thread::get_id();
  std::atomic<int> elsewhere{0};
  pool.Run(50, /*max_threads=*/1, [&](int) {
    if (std::this_thread::get_id() != caller) elsewhere.fetch_add(1);
  });
  EXPECT_EQ(elsewhere.load(), 0);
}

TEST(CpuBackendThreadPoolTest, ConcurrentRunsBothComplete) {
  ThreadPool pool(2);
  std::vector<std::atomic<int>> a(5000), b(5000);
  std::thread other([&] {
    for (int round = 0; round < 20; ++round) {
      pool.Run(250, 2, [&](int task) { b[round * 250 + task].fetch_add(1); });
    }
  });
  for (int round = 0; round < 20; ++round) {
    pool.Run(250, 2, [&](int task) { a[round * 250 + task].fetch_add(1); });
  }
  other.join();
  for (int i = 0; i < 5000; ++i) {
    ASSERT_EQ(a[i].load(), 1) << "a " << i;
    ASSERT_EQ(b[i].load(), 1) << "b " << i;
  }
}

TEST(CpuBackendThreadPoolTest, WorkersEndWithThePool) {
  const int before = CountThreads();
  ASSERT_GT(before, 0);
  {
    ThreadPool pool(4);
    EXPECT_EQ(CountThreads(), before + 3);  // the caller is the fourth
    std::atomic<int> sum{0};
    pool.Run(100, 4, [&](int task) { sum.fetch_add(task); });
    EXPECT_EQ(sum.load(), 99 * 100 / 2);
  }
  EXPECT_EQ(CountThreads(), before);
  ThreadPool single(1);
  EXPECT_EQ(single.size(), 1);
  EXPECT_EQ(CountThreads(), before);
}

}  // namespace
}  // namespace pdserve::cpu
