#include "tests/decode_service/recording_observer.h"

namespace pdserve {

void RecordingObserver::OnToken(const TokenEvent& event) {
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (terminal_calls_ > 0) ++calls_after_terminal_;
    events_.push_back(event);
    if (!event.ends_request) cv_.notify_all();
  }
  if (on_token) on_token(event);
  if (event.ends_request) {
    // Last: a waiter may destroy this object as soon as the lock is released.
    std::lock_guard<std::mutex> lock(mu_);
    ++terminal_calls_;
    cv_.notify_all();
  }
}

void RecordingObserver::OnError(const absl::Status& status) {
  std::lock_guard<std::mutex> lock(mu_);
  if (terminal_calls_ > 0) ++calls_after_terminal_;
  status_ = status;
  ++terminal_calls_;
  cv_.notify_all();
}

bool RecordingObserver::WaitDone(absl::Duration timeout) {
  std::unique_lock<std::mutex> lock(mu_);
  return cv_.wait_for(lock, absl::ToChronoMilliseconds(timeout),
                      [&] { return terminal_calls_ > 0; });
}

bool RecordingObserver::WaitTokens(int n, absl::Duration timeout) {
  std::unique_lock<std::mutex> lock(mu_);
  return cv_.wait_for(lock, absl::ToChronoMilliseconds(timeout), [&] {
    return terminal_calls_ > 0 || static_cast<int>(events_.size()) >= n;
  });
}

std::vector<TokenEvent> RecordingObserver::events() const {
  std::lock_guard<std::mutex> lock(mu_);
  return events_;
}

std::vector<int32_t> RecordingObserver::token_ids() const {
  std::lock_guard<std::mutex> lock(mu_);
  std::vector<int32_t> ids;
  for (const TokenEvent& event : events_) ids.push_back(event.token_id);
  return ids;
}

absl::Status RecordingObserver::status() const {
  std::lock_guard<std::mutex> lock(mu_);
  return status_;
}

std::optional<GenerationSummary> RecordingObserver::summary() const {
  std::lock_guard<std::mutex> lock(mu_);
  if (events_.empty()) return std::nullopt;
  return events_.back().finish;
}

int RecordingObserver::terminal_calls() const {
  std::lock_guard<std::mutex> lock(mu_);
  return terminal_calls_;
}

int RecordingObserver::calls_after_terminal() const {
  std::lock_guard<std::mutex> lock(mu_);
  return calls_after_terminal_;
}

}  // namespace pdserve
