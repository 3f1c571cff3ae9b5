#include "bench/load_generator/generate_call.h"

#include <grpcpp/client_context.h>
#include <grpcpp/support/client_callback.h>

#include <chrono>
#include <string>
#include <utility>

#include "absl/synchronization/notification.h"
#include "absl/time/clock.h"

namespace pdserve::bench {
namespace {

using Clock = std::chrono::steady_clock;

double MillisecondsBetween(Clock::time_point from, Clock::time_point to) {
  return std::chrono::duration<double, std::milli>(to - from).count();
}

// "FINISH_REASON_LENGTH" -> "LENGTH".
std::string FinishReasonName(v1::FinishReason reason) {
  std::string name = v1::FinishReason_Name(reason);
  constexpr std::string_view kPrefix = "FINISH_REASON_";
  if (name.starts_with(kPrefix)) name.erase(0, kPrefix.size());
  return name;
}

// Owns itself from Start until OnDone, where gRPC promises no further
// callbacks; it deletes itself there before handing the result on.
class GenerateCallReactor final : public grpc::ClientReadReactor<v1::GenerateResponse> {
 public:
  GenerateCallReactor(const v1::GenerateRequest& request, int64_t index, const CallOptions& options,
                      ProgressCounters* progress, CallDone on_done)
      : request_(request), options_(options), progress_(progress), on_done_(std::move(on_done)) {
    result_.index = index;
  }

  void Start(v1::GenerateService::Stub* stub) {
    if (progress_ != nullptr) progress_->CallStarted();
    start_ = Clock::now();
    if (options_.timeout > absl::ZeroDuration()) {
      context_.set_deadline(absl::ToChronoTime(absl::Now() + options_.timeout));
    }
    stub->async()->Generate(&context_, &request_, this);
    StartRead(&response_);
    StartCall();
  }

  void OnReadDone(bool ok) override {
    if (!ok) return;  // end of stream or failure: OnDone follows
    const Clock::time_point now = Clock::now();
    if (result_.output_tokens == 0) {
      result_.ttft_ms = MillisecondsBetween(start_, now);
    } else {
      result_.itl_ms.push_back(MillisecondsBetween(last_token_, now));
    }
    last_token_ = now;
    ++result_.output_tokens;
    if (progress_ != nullptr) progress_->TokenReceived();
    if (options_.record_tokens) {
      result_.token_ids.push_back(response_.token_id());
      result_.text += response_.text();
    }
    if (response_.finish_reason() != v1::FINISH_REASON_UNSPECIFIED) {
      result_.finish_reason = FinishReasonName(response_.finish_reason());
    }
    if (response_.has_usage()) result_.prompt_tokens = response_.usage().prompt_tokens();
    if (response_.has_timings()) {
      const v1::Timings& t = response_.timings();
      result_.server_timings = ServerTimings{.queue_ms = t.queue_ms(),
                                             .prefill_ms = t.prefill_ms(),
                                             .ttft_ms = t.ttft_ms(),
                                             .decode_ms = t.decode_ms(),
                                             .total_ms = t.total_ms()};
    }
    StartRead(&response_);
  }

  void OnDone(const grpc::Status& status) override {
    result_.latency_ms = MillisecondsBetween(start_, Clock::now());
    result_.code = static_cast<absl::StatusCode>(status.error_code());
    result_.error_message = status.error_message();
    RequestResult result = std::move(result_);
    CallDone on_done = std::move(on_done_);
    if (progress_ != nullptr) progress_->CallFinished(status.ok());
    delete this;
    on_done(std::move(result));
  }

 private:
  grpc::ClientContext context_;
  const v1::GenerateRequest request_;
  v1::GenerateResponse response_;
  const CallOptions options_;
  ProgressCounters* const progress_;
  CallDone on_done_;
  RequestResult result_;
  Clock::time_point start_;
  Clock::time_point last_token_;
};

}  // namespace

void StartGenerateCall(v1::GenerateService::Stub* stub, const v1::GenerateRequest& request,
                       int64_t index, const CallOptions& options, ProgressCounters* progress,
                       CallDone on_done) {
  auto* reactor = new GenerateCallReactor(request, index, options, progress, std::move(on_done));
  reactor->Start(stub);
}

RequestResult RunGenerateCall(v1::GenerateService::Stub* stub, const v1::GenerateRequest& request,
                              const CallOptions& options) {
  RequestResult out;
  absl::Notification done;
  StartGenerateCall(stub, request, /*index=*/0, options, /*progress=*/nullptr,
                    [&out, &done](RequestResult result) {
                      out = std::move(result);
                      done.Notify();
                    });
  done.WaitForNotification();
  return out;
}

}  // namespace pdserve::bench
