#include "bench/load_generator/result_collector.h"

#include <utility>

namespace pdserve::bench {

void ResultCollector::CallStarted() {
  absl::MutexLock lock(&mu_);
  ++in_flight_;
}

void ResultCollector::CallFinished(RequestResult result) {
  absl::MutexLock lock(&mu_);
  results_.push_back(std::move(result));
  --in_flight_;
}

bool ResultCollector::WaitForSlot(int64_t max_in_flight) {
  absl::MutexLock lock(&mu_);
  if (in_flight_ < max_in_flight) return false;
  auto has_slot = [this, max_in_flight]()
                      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) { return in_flight_ < max_in_flight; };
  mu_.Await(absl::Condition(&has_slot));
  return true;
}

void ResultCollector::WaitUntilIdle() {
  absl::MutexLock lock(&mu_);
  auto idle = [this]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) { return in_flight_ == 0; };
  mu_.Await(absl::Condition(&idle));
}

int64_t ResultCollector::in_flight() const {
  absl::MutexLock lock(&mu_);
  return in_flight_;
}

std::vector<RequestResult> ResultCollector::TakeResults() {
  absl::MutexLock lock(&mu_);
  return std::exchange(results_, {});
}

}  // namespace pdserve::bench
