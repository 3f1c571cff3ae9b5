// A GenerationObserver that records everything the engine tells it, for
// engine tests.
#ifndef PDSERVE_TESTS_DECODE_SERVICE_RECORDING_OBSERVER_H_
#define PDSERVE_TESTS_DECODE_SERVICE_RECORDING_OBSERVER_H_

#include <condition_variable>
#include <cstdint>
#include <functional>
#include <mutex>
#include <optional>
#include <vector>

#include "absl/status/status.h"
#include "absl/time/time.h"
#include "decode_service/generation.h"

namespace pdserve {

class RecordingObserver final : public GenerationObserver {
 public:
  // Runs inside OnToken (on the engine thread) after the event is recorded.
  std::function<void(const TokenEvent&)> on_token;

  void OnToken(const TokenEvent& event) override;
  void OnError(const absl::Status& status) override;

  // True once a terminal call arrived (false after `timeout`).
  bool WaitDone(absl::Duration timeout = absl::Seconds(60));
  // True once `n` tokens arrived or the stream ended.
  bool WaitTokens(int n, absl::Duration timeout = absl::Seconds(60));

  std::vector<TokenEvent> events() const;
  std::vector<int32_t> token_ids() const;
  // OK after a normal finish; the error otherwise.
  absl::Status status() const;
  std::optional<GenerationSummary> summary() const;
  int terminal_calls() const;
  // Calls that came after the terminal one (must stay 0).
  int calls_after_terminal() const;

 private:
  mutable std::mutex mu_;
  std::condition_variable cv_;
  std::vector<TokenEvent> events_;
  absl::Status status_;
  int terminal_calls_ = 0;
  int calls_after_terminal_ = 0;
};

}  // namespace pdserve

#endif  // PDSERVE_TESTS_DECODE_SERVICE_RECORDING_OBSERVER_H_
