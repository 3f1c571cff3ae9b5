#include "decode_service/prefill_client.h"

#include <glog/logging.h>
#include <grpcpp/alarm.h>
#include <grpcpp/client_context.h>
#include <grpcpp/create_channel.h>
#include <grpcpp/generic/generic_stub.h>
#include <grpcpp/security/credentials.h>
#include <grpcpp/support/byte_buffer.h>
#include <grpcpp/support/channel_arguments.h>
#include <grpcpp/support/client_callback.h>

#include <algorithm>
#include <atomic>
#include <memory>
#include <mutex>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "decode_service/decode_metrics.h"
#include "decode_service/prefill_target.h"
#include "proto/convert/convert.h"
#include "proto/grpc_support/callback_cq_pin.h"
#include "proto/kv_wire/prefill_response_decoder.h"
#include "shared/status_macros.h"

namespace pdserve {
namespace {

using PrefillRawStub = grpc::TemplatedGenericStub<v1::PrefillRequest, grpc::ByteBuffer>;

const std::string& PrefillMethodName() {
  static const std::string* const name =
      new std::string(absl::StrCat("/", v1::PrefillService::service_full_name(), "/Prefill"));
  return *name;
}

// One Prefill stream: one attempt of a job (FailoverCall below makes the
// attempts). Owns itself from Begin until OnDone (gRPC needs the reactor alive
// that long); `job` must outlive OnDone. The server-streaming Prefill is
// driven as a generic bidi call (the only streaming shape gRPC's generic
// callback stub offers): one request, half-close, then read raw responses;
// on the wire the two are the same.
class PrefillStream final : public grpc::ClientBidiReactor<v1::PrefillRequest, grpc::ByteBuffer>,
                            public PrefillCall {
 public:
  PrefillStream(const PrefillExpectation* expectation, const PrefillJob* job,
                DecodeMetrics* metrics, PrefillDone done)
      : expectation_(expectation), job_(*job), metrics_(metrics), done_(std::move(done)) {}

  void Begin(PrefillRawStub* stub, std::shared_ptr<PrefillStream> self, int64_t max_chunk_bytes) {
    self_ = std::move(self);
    request_.set_request_id(job_.request_id);
    request_.mutable_token_ids()->Assign(job_.token_ids.begin(), job_.token_ids.end());
    request_.set_max_chunk_bytes(max_chunk_bytes);
    request_.set_return_all_positions(job_.return_all_positions);
    if (job_.deadline != absl::InfiniteFuture()) {
      context_.set_deadline(absl::ToChronoTime(job_.deadline));
    }
    stub->PrepareBidiStreamingCall(&context_, PrefillMethodName(), grpc::StubOptions(), this);
    StartWriteLast(&request_, grpc::WriteOptions());
    StartRead(&response_);
    StartCall();
  }

  void Cancel() override {
    cancelled_ = true;
    context_.TryCancel();
  }

  void OnReadDone(bool ok) override {
    if (!ok) return;  // the stream ended; OnDone follows with its status
    absl::Status status = Consume();
    if (!status.ok()) {
      error_ = std::move(status);
      context_.TryCancel();
      return;
    }
    StartRead(&response_);
  }

  void OnDone(const grpc::Status& status) override {
    std::shared_ptr<PrefillStream> keep_alive = std::move(self_);
    PrefillDone done = std::move(done_);
    done(Outcome(status));
  }

 private:
  absl::Status Consume() {
    absl::StatusOr<PrefillResponseDecoder::Kind> kind =
        decoder_.Decode(&response_, job_.kv_ranges ? &placer_ : nullptr);
    response_.Clear();
    if (!kind.ok()) return kind.status();
    if (*kind == PrefillResponseDecoder::Kind::kKvChunk) {
      if (!have_header_) return absl::InternalError("prefill stream: a KV chunk before the header");
      if (have_final_) {
        return absl::InternalError("prefill stream: a KV chunk after the final hidden state");
      }
      return ConsumeChunk(decoder_.kv());
    }
    const v1::PrefillResponse& response = decoder_.other();
    switch (response.payload_case()) {
      case v1::PrefillResponse::kHeader:
        if (have_header_) return absl::InternalError("prefill stream: a second header");
        return ConsumeHeader(response.header());
      case v1::PrefillResponse::kKv:  // the decoder reports every KvChunk as kKvChunk
        break;
      case v1::PrefillResponse::kFinalHidden:
        if (!have_header_) {
          return absl::InternalError("prefill stream: the final hidden state before the header");
        }
        if (have_final_) return absl::InternalError("prefill stream: a second final hidden state");
        return ConsumeFinal(response.final_hidden());
      case v1::PrefillResponse::kHiddenStates:
        if (!have_header_) {
          return absl::InternalError("prefill stream: hidden states before the header");
        }
        return ConsumeHiddenStates(response.hidden_states());
      case v1::PrefillResponse::PAYLOAD_NOT_SET:
        break;
    }
    return absl::InternalError("prefill stream: a message with no payload");
  }

  absl::Status ConsumeHeader(const v1::PrefillHeader& header) {
    num_tokens_ = static_cast<int>(job_.token_ids.size());
    PDSERVE_ASSIGN_OR_RETURN(kv_dtype_, CheckPrefillHeader(header, *expectation_, num_tokens_));
    token_bytes_ = static_cast<size_t>(expectation_->num_kv_heads) * expectation_->head_dim *
                   DTypeSize(kv_dtype_);
    received_.assign(static_cast<size_t>(expectation_->num_layers) * num_tokens_, false);
    if (job_.return_all_positions) {
      result_.all_hidden.assign(static_cast<size_t>(num_tokens_) * expectation_->hidden_size, 0.0f);
      hidden_received_.assign(num_tokens_, false);
    }
    have_header_ = true;
    return absl::OkStatus();
  }

  absl::Status ConsumeChunk(const KvChunkView& chunk) {
    const int layer = chunk.layer;
    const int first = chunk.first_token;
    const int count = chunk.num_tokens;
    if (layer < 0 || layer >= expectation_->num_layers) {
      return absl::InternalError(absl::StrCat("prefill KV chunk layer: ", layer, " outside [0, ",
                                              expectation_->num_layers, ")"));
    }
    if (first < 0 || count <= 0 || first > num_tokens_ - count) {
      return absl::InternalError(absl::StrCat("prefill KV chunk of layer ", layer, ": tokens [",
                                              first, ", ", static_cast<int64_t>(first) + count,
                                              ") outside the prompt [0, ", num_tokens_, ")"));
    }
    const size_t expected_bytes = token_bytes_ * count;
    if (chunk.k_bytes != expected_bytes || chunk.v_bytes != expected_bytes) {
      return absl::InternalError(
          absl::StrCat("prefill KV chunk of layer ", layer, ": k ", chunk.k_bytes, " and v ",
                       chunk.v_bytes, " bytes, expected ", expected_bytes, " each (", count,
                       " tokens x ", expectation_->num_kv_heads, " heads x ",
                       expectation_->head_dim, " x ", std::string(DTypeName(kv_dtype_)), ")"));
    }
    const size_t base = static_cast<size_t>(layer) * num_tokens_;
    for (int t = first; t < first + count; ++t) {
      if (received_[base + t]) {
        return absl::InternalError(
            absl::StrCat("prefill KV chunk: token ", t, " of layer ", layer, " arrived twice"));
      }
    }
    if (!chunk.placed) {  // otherwise the decoder already copied it into the cache
      absl::Status written =
          job_.write_kv(layer, first, count, chunk.k.data(), chunk.v.data(), kv_dtype_);
      if (!written.ok()) {
        return absl::InternalError(absl::StrCat("writing prefill KV: ", written.message()));
      }
    }
    for (int t = first; t < first + count; ++t) received_[base + t] = true;
    num_received_ += count;
    if (metrics_ != nullptr) metrics_->OnKvBytesReceived(2 * static_cast<int64_t>(expected_bytes));
    kv_complete_ = absl::Now();
    return absl::OkStatus();
  }

  absl::Status ConsumeFinal(const v1::FinalHidden& final_hidden) {
    if (final_hidden.values_size() != expectation_->hidden_size) {
      return absl::InternalError(
          absl::StrCat("prefill final hidden state: ", final_hidden.values_size(),
                       " values, expected hidden_size ", expectation_->hidden_size));
    }
    result_.final_hidden.assign(final_hidden.values().begin(), final_hidden.values().end());
    result_.remote_prefill_ms = final_hidden.prefill_ms();
    have_final_ = true;
    return absl::OkStatus();
  }

  // HiddenStates of the final norm's output (layer num_layers), asked for
  // with return_all_positions: each prompt token exactly once.
  absl::Status ConsumeHiddenStates(const v1::HiddenStates& states) {
    const int hidden = expectation_->hidden_size;
    if (!job_.return_all_positions || states.layer() != expectation_->num_layers) {
      return absl::InternalError(absl::StrCat("prefill hidden states of layer ", states.layer(),
                                              ", which this stream did not ask for"));
    }
    const int first = states.first_token();
    const int count = states.num_tokens();
    if (first < 0 || count <= 0 || first > num_tokens_ - count ||
        states.values_size() != static_cast<int64_t>(count) * hidden) {
      return absl::InternalError(absl::StrCat("prefill hidden states: tokens [", first, ", ",
                                              static_cast<int64_t>(first) + count, ") with ",
                                              states.values_size(), " values; the prompt has ",
                                              num_tokens_, " tokens of hidden_size ", hidden));
    }
    for (int t = first; t < first + count; ++t) {
      if (hidden_received_[t]) {
        return absl::InternalError(
            absl::StrCat("prefill hidden states: token ", t, " arrived twice"));
      }
      hidden_received_[t] = true;
    }
    std::copy(states.values().begin(), states.values().end(),
              result_.all_hidden.begin() + static_cast<size_t>(first) * hidden);
    num_hidden_received_ += count;
    return absl::OkStatus();
  }

  absl::StatusOr<PrefillResult> Outcome(const grpc::Status& status) {
    if (!error_.ok()) return error_;  // our verdict on the stream comes first
    if (!status.ok()) {
      return PrefillStreamStatus(status, cancelled_, have_header_, context_.peer(), "prefill");
    }
    if (!have_header_) return absl::InternalError("prefill stream ended without a header");
    const int64_t expected = static_cast<int64_t>(expectation_->num_layers) * num_tokens_;
    if (num_received_ != expected) {
      return absl::InternalError(absl::StrCat("prefill stream ended with ", num_received_, " of ",
                                              expected, " (layer, token) KV entries"));
    }
    if (!have_final_) {
      return absl::InternalError("prefill stream ended without the final hidden state");
    }
    if (job_.return_all_positions && num_hidden_received_ != num_tokens_) {
      return absl::InternalError(absl::StrCat("prefill stream ended with the hidden states of ",
                                              num_hidden_received_, " of ", num_tokens_,
                                              " prompt tokens (return_all_positions)"));
    }
    result_.kv_complete = kv_complete_;
    return std::move(result_);
  }

  const PrefillExpectation* const expectation_;
  const PrefillJob& job_;
  DecodeMetrics* const metrics_;
  PrefillDone done_;
  std::shared_ptr<PrefillStream> self_;
  std::atomic<bool> cancelled_{false};

  grpc::ClientContext context_;
  v1::PrefillRequest request_;
  grpc::ByteBuffer response_;
  PrefillResponseDecoder decoder_;
  // Lets the decoder copy a chunk straight into the KV cache when it is one
  // this stream expects (the checks ConsumeChunk makes would pass) and
  // job_.kv_ranges can place it; otherwise ConsumeChunk writes or rejects it.
  const KvPlacer placer_ = [this](int layer, int first, int count, size_t bytes,
                                  std::vector<std::span<char>>* k,
                                  std::vector<std::span<char>>* v) {
    if (!have_header_ || have_final_ || layer < 0 || layer >= expectation_->num_layers ||
        first < 0 || count <= 0 || first > num_tokens_ - count || bytes != token_bytes_ * count) {
      return false;
    }
    const size_t base = static_cast<size_t>(layer) * num_tokens_;
    for (int t = first; t < first + count; ++t) {
      if (received_[base + t]) return false;
    }
    return job_.kv_ranges(layer, first, count, kv_dtype_, k, v);
  };

  // Stream state; touched only by gRPC's reactions, which never overlap.
  absl::Status error_;
  bool have_header_ = false;
  bool have_final_ = false;
  int num_tokens_ = 0;
  DType kv_dtype_ = DType::kF32;
  size_t token_bytes_ = 0;      // bytes of K (or V) per token
  std::vector<bool> received_;  // [num_layers, num_tokens]
  int64_t num_received_ = 0;
  std::vector<bool> hidden_received_;  // [num_tokens], with return_all_positions
  int num_hidden_received_ = 0;
  absl::Time kv_complete_ = absl::Now();
  PrefillResult result_;
};

// One job over up to `max_attempts` streams. A stream that fails with
// UNAVAILABLE (no instance reachable, or the instance died mid-stream) is
// retried after a short pause, while the job is not cancelled and its
// deadline has not passed: the channel's round_robin picker hands the new
// stream to the next READY instance, and the pause lets the channel notice a
// dead one first. The new stream rewrites every (layer, token) of the same
// lease, so partial KV of a failed attempt is simply overwritten and no block
// changes hands. Any other outcome, or the last attempt's, goes to `done`.
//
// Lifetime: the object keeps itself alive (self_) from Begin until `done`
// has run; the engine's handle may outlive it. An attempt may end (and the
// job finish) on another thread while StartAttempt is still running, so
// StartAttempt and OnAttemptDone hold a reference of their own.
class FailoverCall final : public PrefillCall, public std::enable_shared_from_this<FailoverCall> {
 public:
  FailoverCall(PrefillRawStub* stub, const PrefillClientOptions* options,
               const PrefillExpectation* expectation, PrefillJob job, PrefillDone done)
      : stub_(stub),
        options_(options),
        expectation_(expectation),
        job_(std::move(job)),
        done_(std::move(done)) {}

  void Begin(std::shared_ptr<FailoverCall> self) {
    self_ = std::move(self);
    StartAttempt();
  }

  void Cancel() override {
    std::shared_ptr<PrefillStream> stream;
    grpc::Alarm* backoff = nullptr;
    {
      std::lock_guard<std::mutex> lock(mu_);
      if (cancelled_) return;
      cancelled_ = true;
      stream = stream_;
      if (backoff_pending_ && !alarms_.empty()) backoff = alarms_.back().get();
    }
    if (stream != nullptr) stream->Cancel();
    if (backoff != nullptr) backoff->Cancel();  // its callback then ends the job
  }

 private:
  void StartAttempt() {
    const std::shared_ptr<FailoverCall> hold = shared_from_this();
    ++attempts_;
    auto stream = std::make_shared<PrefillStream>(
        expectation_, &job_, options_->metrics,
        [this](absl::StatusOr<PrefillResult> result) { OnAttemptDone(std::move(result)); });
    {
      std::lock_guard<std::mutex> lock(mu_);
      stream_ = stream;
    }
    stream->Begin(stub_, stream, options_->max_chunk_bytes);
    bool cancel = false;
    {
      std::lock_guard<std::mutex> lock(mu_);
      cancel = cancelled_;
    }
    if (cancel) stream->Cancel();  // Cancel ran before stream_ was set
  }

  // Runs on a gRPC thread (or inline from StartAttempt), never concurrently
  // with another attempt: the next attempt starts only from here.
  void OnAttemptDone(absl::StatusOr<PrefillResult> result) {
    const std::shared_ptr<FailoverCall> hold = shared_from_this();
    bool retry = false;
    {
      std::lock_guard<std::mutex> lock(mu_);
      stream_.reset();
      retry = !cancelled_ && absl::IsUnavailable(result.status()) &&
              attempts_ < options_->max_attempts &&
              absl::Now() + options_->retry_backoff < job_.deadline;
      if (retry) backoff_pending_ = true;
    }
    if (!retry) {
      Finish(std::move(result));
      return;
    }
    LOG(WARNING) << "prefill " << job_.request_id << ": attempt " << attempts_ << " of "
                 << options_->max_attempts << " failed, retrying: " << result.status().message();
    if (options_->metrics != nullptr) options_->metrics->OnPrefillRetry();
    grpc::Alarm* alarm = nullptr;
    {
      // A new alarm each time (one is not re-armed); they live as long as
      // this object, so Cancel may use one without racing its destruction.
      std::lock_guard<std::mutex> lock(mu_);
      alarms_.push_back(std::make_unique<grpc::Alarm>());
      alarm = alarms_.back().get();
    }
    alarm->Set(absl::ToChronoTime(absl::Now() + options_->retry_backoff), [this](bool fired) {
      {
        std::lock_guard<std::mutex> lock(mu_);
        backoff_pending_ = false;
        fired = fired && !cancelled_;
      }
      if (fired) {
        StartAttempt();
      } else {
        Finish(absl::CancelledError("prefill cancelled: the request ended"));
      }
    });
    // A Cancel between the decision and Set found no alarm to cancel.
    bool cancelled = false;
    {
      std::lock_guard<std::mutex> lock(mu_);
      cancelled = cancelled_;
    }
    if (cancelled) alarm->Cancel();
  }

  void Finish(absl::StatusOr<PrefillResult> result) {
    if (absl::IsUnavailable(result.status()) && attempts_ > 1) {
      result = absl::UnavailableError(
          absl::StrCat("prefill failed on all ", attempts_, " attempts (--prefill_max_attempts ",
                       options_->max_attempts, "); last: ", result.status().message()));
    }
    std::shared_ptr<FailoverCall> keep_alive = std::move(self_);
    PrefillDone done = std::move(done_);
    done(std::move(result));
  }

  PrefillRawStub* const stub_;
  const PrefillClientOptions* const options_;
  const PrefillExpectation* const expectation_;
  const PrefillJob job_;
  PrefillDone done_;
  std::shared_ptr<FailoverCall> self_;
  int attempts_ = 0;  // touched by StartAttempt/OnAttemptDone, which never overlap

  std::mutex mu_;
  bool cancelled_ = false;                            // guarded by mu_
  bool backoff_pending_ = false;                      // guarded by mu_
  std::shared_ptr<PrefillStream> stream_;             // guarded by mu_; the attempt in flight
  std::vector<std::unique_ptr<grpc::Alarm>> alarms_;  // guarded by mu_; one per retry
};

}  // namespace

PrefillClient::PrefillClient(const PrefillClientOptions& options,
                             const PrefillExpectation& expectation)
    : options_(options),
      expectation_(expectation),
      channel_(MakePrefillChannel(options.channel_target, options.max_message_bytes)),
      stub_(std::make_unique<PrefillRawStub>(channel_)) {}

std::shared_ptr<PrefillCall> PrefillClient::Start(PrefillJob job, PrefillDone done) {
  auto call = std::make_shared<FailoverCall>(stub_.get(), &options_, &expectation_, std::move(job),
                                             std::move(done));
  call->Begin(call);
  return call;
}

absl::Status CheckPrefillTargets(const std::vector<std::string>& addresses,
                                 const ModelFingerprint& ours, absl::Duration wait,
                                 int max_message_bytes) {
  const absl::Time deadline = absl::Now() + wait;
  for (const std::string& address : addresses) {
    PDSERVE_ASSIGN_OR_RETURN(std::string target, PrefillChannelTarget({address}));
    std::unique_ptr<v1::PrefillService::Stub> stub =
        v1::PrefillService::NewStub(MakePrefillChannel(target, max_message_bytes));
    grpc::ClientContext context;
    context.set_wait_for_ready(true);  // a starting instance gets until the deadline
    context.set_deadline(absl::ToChronoTime(deadline));
    v1::ModelInfo info;
    grpc::Status status = stub->GetModelInfo(&context, v1::GetModelInfoRequest(), &info);
    if (!status.ok()) {
      const bool unreachable = status.error_code() == grpc::StatusCode::UNAVAILABLE ||
                               status.error_code() == grpc::StatusCode::DEADLINE_EXCEEDED;
      return absl::Status(
          unreachable ? absl::StatusCode::kUnavailable
                      : static_cast<absl::StatusCode>(status.error_code()),
          absl::StrCat("prefill target '", address, "' ",
                       unreachable ? absl::StrCat("unreachable within ", absl::FormatDuration(wait))
                                   : "failed GetModelInfo",
                       ": ", status.error_message()));
    }
    absl::StatusOr<ModelFingerprint> theirs = FromProto(info.fingerprint());
    absl::Status same = theirs.ok() ? CheckSameModel(ours, *theirs)
                                    : absl::FailedPreconditionError(theirs.status().message());
    if (!same.ok()) {
      return absl::FailedPreconditionError(
          absl::StrCat("prefill target '", address, "' serves another model: ", same.message()));
    }
  }
  return absl::OkStatus();
}

}  // namespace pdserve
