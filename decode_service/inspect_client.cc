#include "decode_service/inspect_client.h"

#include <grpcpp/client_context.h>
#include <grpcpp/create_channel.h>
#include <grpcpp/security/credentials.h>
#include <grpcpp/support/channel_arguments.h>
#include <grpcpp/support/client_callback.h>

#include <algorithm>
#include <atomic>
#include <utility>

#include "absl/strings/str_cat.h"
#include "proto/convert/convert.h"
#include "proto/grpc_support/callback_cq_pin.h"
#include "shared/model_fingerprint.h"
#include "shared/status_macros.h"

namespace pdserve {
namespace {

// One Inspect prefill stream; owns itself from Begin until OnDone.
class InspectStream final : public grpc::ClientReadReactor<v1::PrefillResponse>,
                            public InspectPrefillCall {
 public:
  InspectStream(const PrefillExpectation* expectation, InspectPrefillRequest request,
                InspectPrefillDone done)
      : expectation_(expectation), request_(std::move(request)), done_(std::move(done)) {}

  void Begin(v1::PrefillService::Stub* stub, std::shared_ptr<InspectStream> self) {
    self_ = std::move(self);
    wire_request_.set_request_id(request_.request_id);
    wire_request_.mutable_token_ids()->Assign(request_.token_ids.begin(), request_.token_ids.end());
    wire_request_.set_omit_kv(true);
    wire_request_.set_return_all_positions(request_.all_positions);
    wire_request_.mutable_hidden_state_layers()->Assign(request_.hidden_state_layers.begin(),
                                                        request_.hidden_state_layers.end());
    if (request_.deadline != absl::InfiniteFuture()) {
      context_.set_deadline(absl::ToChronoTime(request_.deadline));
    }
    stub->async()->Prefill(&context_, &wire_request_, this);
    StartRead(&response_);
    StartCall();
  }

  void Cancel() override {
    cancelled_ = true;
    context_.TryCancel();
  }

  void OnReadDone(bool ok) override {
    if (!ok) return;  // the stream ended; OnDone follows with its status
    absl::Status status = Consume(response_);
    if (!status.ok()) {
      error_ = std::move(status);
      context_.TryCancel();
      return;
    }
    StartRead(&response_);
  }

  void OnDone(const grpc::Status& status) override {
    std::shared_ptr<InspectStream> keep_alive = std::move(self_);
    InspectPrefillDone done = std::move(done_);
    done(Outcome(status));
  }

 private:
  absl::Status Consume(const v1::PrefillResponse& response) {
    if (response.has_header()) {
      if (have_header_) return absl::InternalError("inspect prefill stream: a second header");
      return ConsumeHeader(response.header());
    }
    if (!have_header_) return absl::InternalError("inspect prefill stream: no header first");
    if (have_final_) {
      return absl::InternalError("inspect prefill stream: a message after the final hidden state");
    }
    switch (response.payload_case()) {
      case v1::PrefillResponse::kHiddenStates:
        return ConsumeHiddenStates(response.hidden_states());
      case v1::PrefillResponse::kFinalHidden:
        return ConsumeFinal(response.final_hidden());
      case v1::PrefillResponse::kKv:
        return absl::InternalError("inspect prefill stream: a KV chunk despite omit_kv");
      default:
        return absl::InternalError("inspect prefill stream: a message with no known payload");
    }
  }

  absl::Status ConsumeHeader(const v1::PrefillHeader& header) {
    result_.num_tokens = static_cast<int>(request_.token_ids.size());
    PDSERVE_ASSIGN_OR_RETURN(result_.kv_dtype,
                             CheckPrefillHeader(header, *expectation_, result_.num_tokens));
    const size_t rows = static_cast<size_t>(result_.num_tokens) * expectation_->hidden_size;
    for (int layer : request_.hidden_state_layers) {
      result_.hidden_states[layer].assign(rows, 0.0f);
    }
    if (request_.all_positions) result_.hidden_states[expectation_->num_layers].assign(rows, 0.0f);
    for (const auto& [layer, values] : result_.hidden_states) {
      seen_[layer].assign(result_.num_tokens, false);
    }
    have_header_ = true;
    return absl::OkStatus();
  }

  absl::Status ConsumeHiddenStates(const v1::HiddenStates& states) {
    const int layer = states.layer();
    auto rows = result_.hidden_states.find(layer);
    if (rows == result_.hidden_states.end()) {
      return absl::InternalError(absl::StrCat("inspect prefill stream: hidden states of layer ",
                                              layer, ", not asked for"));
    }
    const int first = states.first_token();
    const int count = states.num_tokens();
    if (first < 0 || count <= 0 || first > result_.num_tokens - count) {
      return absl::InternalError(
          absl::StrCat("inspect prefill stream: hidden states of layer ", layer, " for tokens [",
                       first, ", ", static_cast<int64_t>(first) + count,
                       ") outside the prompt [0, ", result_.num_tokens, ")"));
    }
    const int hidden = expectation_->hidden_size;
    if (states.values_size() != static_cast<int64_t>(count) * hidden) {
      return absl::InternalError(absl::StrCat(
          "inspect prefill stream: hidden states of layer ", layer, " hold ", states.values_size(),
          " values, expected ", count, " x hidden_size ", hidden));
    }
    std::vector<bool>& seen = seen_[layer];
    for (int t = first; t < first + count; ++t) {
      if (seen[t]) {
        return absl::InternalError(absl::StrCat("inspect prefill stream: token ", t, " of layer ",
                                                layer, " arrived twice"));
      }
      seen[t] = true;
    }
    std::copy(states.values().begin(), states.values().end(),
              rows->second.begin() + static_cast<size_t>(first) * hidden);
    return absl::OkStatus();
  }

  absl::Status ConsumeFinal(const v1::FinalHidden& final_hidden) {
    if (final_hidden.values_size() != expectation_->hidden_size) {
      return absl::InternalError(
          absl::StrCat("prefill final hidden state: ", final_hidden.values_size(),
                       " values, expected hidden_size ", expectation_->hidden_size));
    }
    result_.final_hidden.assign(final_hidden.values().begin(), final_hidden.values().end());
    result_.prefill_ms = final_hidden.prefill_ms();
    have_final_ = true;
    return absl::OkStatus();
  }

  absl::StatusOr<InspectPrefillResult> Outcome(const grpc::Status& status) {
    if (!error_.ok()) return error_;  // our verdict on the stream comes first
    if (!status.ok()) {
      return PrefillStreamStatus(status, cancelled_, have_header_, context_.peer(),
                                 "inspect prefill");
    }
    if (!have_header_ || !have_final_) {
      return absl::InternalError("inspect prefill stream ended without its header or final state");
    }
    for (const auto& [layer, seen] : seen_) {
      if (std::find(seen.begin(), seen.end(), false) != seen.end()) {
        return absl::InternalError(absl::StrCat(
            "inspect prefill stream ended before every token's hidden state of layer ", layer));
      }
    }
    return std::move(result_);
  }

  const PrefillExpectation* const expectation_;
  const InspectPrefillRequest request_;
  InspectPrefillDone done_;
  std::shared_ptr<InspectStream> self_;
  std::atomic<bool> cancelled_{false};

  grpc::ClientContext context_;
  v1::PrefillRequest wire_request_;
  v1::PrefillResponse response_;

  // Stream state; touched only by gRPC's reactions, which never overlap.
  absl::Status error_;
  bool have_header_ = false;
  bool have_final_ = false;
  std::map<int, std::vector<bool>> seen_;  // layer -> [num_tokens]
  InspectPrefillResult result_;
};

}  // namespace

InspectPrefillClient::InspectPrefillClient(const PrefillClientOptions& options,
                                           const PrefillExpectation& expectation)
    : expectation_(expectation) {
  channel_ = MakePrefillChannel(options.channel_target, options.max_message_bytes);
  stub_ = v1::PrefillService::NewStub(channel_);
}

std::shared_ptr<InspectPrefillCall> InspectPrefillClient::Start(InspectPrefillRequest request,
                                                                InspectPrefillDone done) {
  auto stream = std::make_shared<InspectStream>(&expectation_, std::move(request), std::move(done));
  stream->Begin(stub_.get(), stream);
  return stream;
}

}  // namespace pdserve
