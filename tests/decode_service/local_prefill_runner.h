// A PrefillRunner for engine tests: runs Transformer::Prefill in this process
// on its own CPU backend (so it never touches the engine's), one thread per
// job, with switches to hold jobs and to make them fail.
#ifndef PDSERVE_TESTS_DECODE_SERVICE_LOCAL_PREFILL_RUNNER_H_
#define PDSERVE_TESTS_DECODE_SERVICE_LOCAL_PREFILL_RUNNER_H_

#include <condition_variable>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "decode_service/prefill_runner.h"
#include "decode_service/serving_model.h"

namespace pdserve {

class LocalPrefillRunner final : public PrefillRunner {
 public:
  static absl::StatusOr<std::unique_ptr<LocalPrefillRunner>> Create(const std::string& model_dir);
  // Releases held jobs and joins every job thread.
  ~LocalPrefillRunner() override;

  std::shared_ptr<PrefillCall> Start(PrefillJob job, PrefillDone done) override;

  // While on, every job waits before computing until ReleaseAll() or its
  // Cancel().
  void set_hold(bool hold);
  void ReleaseAll();
  // True once `n` jobs are waiting (false after `timeout`).
  bool WaitForHeld(int n, absl::Duration timeout);
  // Non-OK: jobs write the first half of their layers, then end with it.
  void set_failure(absl::Status failure);
  int jobs_started() const;

 private:
  struct Job;
  explicit LocalPrefillRunner(std::unique_ptr<ServingModel> model) : model_(std::move(model)) {}
  void Run(std::shared_ptr<Job> job);

  std::unique_ptr<ServingModel> model_;
  std::mutex model_mu_;  // the Transformer serves one prefill at a time

  mutable std::mutex mu_;
  std::condition_variable cv_;
  bool hold_ = false;
  int held_ = 0;
  int started_ = 0;
  absl::Status failure_;
  std::vector<std::thread> threads_;
};

}  // namespace pdserve

#endif  // PDSERVE_TESTS_DECODE_SERVICE_LOCAL_PREFILL_RUNNER_H_
