#include "decode_service/decode_server.h"

#include <glog/logging.h>
#include <grpcpp/security/server_credentials.h>
#include <grpcpp/server_builder.h>

#include <chrono>
#include <deque>
#include <mutex>
#include <optional>
#include <random>
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "proto/convert/convert.h"

namespace pdserve {
namespace {

v1::FinishReason ToProto(FinishReason reason) {
  switch (reason) {
    case FinishReason::kLength:
      return v1::FINISH_REASON_LENGTH;
    case FinishReason::kEos:
      return v1::FINISH_REASON_EOS;
    case FinishReason::kStop:
      return v1::FINISH_REASON_STOP;
  }
  return v1::FINISH_REASON_UNSPECIFIED;
}

uint64_t RandomSeed() {
  std::random_device device;
  return (static_cast<uint64_t>(device()) << 32) ^ device();
}

absl::Time DeadlineOf(const grpc::CallbackServerContext& context) {
  const std::chrono::system_clock::time_point deadline = context.deadline();
  if (deadline == std::chrono::system_clock::time_point::max()) return absl::InfiniteFuture();
  return absl::FromChrono(deadline);
}

// One Generate stream. The engine produces tokens at its own pace; they queue
// here and go out one write at a time. Invariants (under mu_): at most one
// write in flight; Finish is called exactly once, only after the engine's
// terminal call and with no write in flight; so OnDone, which deletes the
// reactor, comes after the engine has let go of it.
class GenerateReactor final : public grpc::ServerWriteReactor<grpc::ByteBuffer>,
                              public GenerationObserver {
 public:
  // deadline: the client's (absl::InfiniteFuture() for none).
  GenerateReactor(Engine* engine, const Tokenizer* tokenizer, DecodeMetrics* metrics,
                  absl::Time arrival, absl::Time deadline)
      : engine_(engine), tokenizer_(tokenizer), deadline_(deadline), metrics_(metrics, arrival) {}

  // Runs in DecodeServer::Generate, before gRPC has bound the reactor; the
  // reactor's Start* calls made meanwhile are replayed when it binds.
  void Begin(absl::StatusOr<GenerationRequest> request) {
    if (!request.ok()) {
      FinishWithoutEngine(request.status());
      return;
    }
    request_id_ = request->request_id.empty() ? "(no request_id)" : request->request_id;
    metrics_.Accepted(static_cast<int>(request->prompt.size()));
    absl::StatusOr<Engine::RequestId> id = engine_->Submit(std::move(request).value(), this);
    if (!id.ok()) {
      FinishWithoutEngine(id.status());
      return;
    }
    std::lock_guard<std::mutex> lock(mu_);
    id_ = *id;
  }

  // ---- GenerationObserver (engine thread or the thread ending the request).
  void OnToken(const TokenEvent& event) override {
    metrics_.Token(event);
    v1::GenerateResponse response;
    response.set_token_id(event.token_id);
    response.set_index(event.index);
    response.set_sample_index(event.sample_index);
    response.set_text(event.text);  // the engine's: whole characters, stop strings cut
    if (event.logprob.has_value()) response.set_logprob(*event.logprob);
    for (const TokenLogprob& top : event.top_logprobs) AddTop(top, response.add_top_logprobs());
    for (const PromptTokenLogprob& prompt : event.prompt_logprobs) {
      v1::PromptTokenLogprob* entry = response.add_prompt_logprobs();
      entry->set_position(prompt.position);
      entry->set_token_id(prompt.token_id);
      entry->set_logprob(prompt.logprob);
      for (const TokenLogprob& top : prompt.top_logprobs) AddTop(top, entry->add_top_logprobs());
    }
    if (event.finish.has_value()) {
      const GenerationSummary& summary = *event.finish;
      response.set_finish_reason(ToProto(summary.reason));
      response.mutable_usage()->set_prompt_tokens(summary.prompt_tokens);
      response.mutable_usage()->set_generated_tokens(summary.generated_tokens);
      response.mutable_usage()->set_total_generated_tokens(summary.total_generated_tokens);
      v1::Timings* timings = response.mutable_timings();
      timings->set_queue_ms(summary.timings.queue_ms);
      timings->set_prefill_ms(summary.timings.prefill_ms);
      timings->set_prefill_compute_ms(summary.timings.prefill_compute_ms);
      timings->set_transfer_ms(summary.timings.transfer_ms);
      timings->set_ttft_ms(summary.timings.ttft_ms);
      timings->set_decode_ms(summary.timings.decode_ms);
      timings->set_total_ms(summary.timings.total_ms);
      VLOG(1) << "Generate " << request_id_ << " sample " << event.sample_index << ": "
              << summary.generated_tokens << " tokens, finish "
              << v1::FinishReason_Name(response.finish_reason()) << ", total "
              << summary.timings.total_ms << " ms";
    }
    // Protobuf refuses only messages over 2 GiB; one token's message is a
    // few KiB at most (top_logprobs <= 20), so a failure is a bug.
    absl::StatusOr<grpc::ByteBuffer> bytes = SerializeRawResponse(response);
    CHECK(bytes.ok()) << "Generate " << request_id_ << ": " << bytes.status();
    std::lock_guard<std::mutex> lock(mu_);
    if (!write_failed_) pending_.push_back(*std::move(bytes));
    if (event.ends_request) final_status_ = grpc::Status::OK;
    PumpLocked();
  }

  void OnError(const absl::Status& status) override {
    if (status.code() != absl::StatusCode::kCancelled) {
      LOG(WARNING) << "Generate " << request_id_ << " failed: " << status;
    }
    // gRPC ends a call whose deadline passed like a cancelled one (OnCancel,
    // or a failed write), and the engine then ends the request CANCELLED.
    // Name it for what it was, so that pdserve_decode_errors_total tells
    // client deadlines from client cancels. The client sees
    // DEADLINE_EXCEEDED either way (its own clock).
    absl::Status ended = status;
    if (status.code() == absl::StatusCode::kCancelled &&
        absl::Now() >= deadline_ - kDeadlineSlack) {
      ended = absl::DeadlineExceededError(
          absl::StrCat("the call's deadline passed while generating (", status.message(), ")"));
    }
    std::lock_guard<std::mutex> lock(mu_);
    final_status_ = ToGrpcStatus(ended);
    PumpLocked();
  }

  // ---- gRPC reactions.
  void OnWriteDone(bool ok) override {
    std::optional<Engine::RequestId> cancel;
    {
      std::lock_guard<std::mutex> lock(mu_);
      writing_ = false;
      pending_.pop_front();
      if (!ok && !write_failed_) {
        // The client is gone; stop generating for it. The engine's terminal
        // call then lets us finish.
        write_failed_ = true;
        pending_.clear();
        cancel = id_;
      }
      PumpLocked();
    }
    if (cancel.has_value()) engine_->Cancel(*cancel);
  }

  void OnCancel() override {
    std::optional<Engine::RequestId> cancel;
    {
      std::lock_guard<std::mutex> lock(mu_);
      cancel = id_;
    }
    if (cancel.has_value()) engine_->Cancel(*cancel);
  }

  void OnDone() override { delete this; }

 private:
  void AddTop(const TokenLogprob& top, v1::TokenLogprob* entry) const {
    entry->set_token_id(top.id);
    entry->set_logprob(top.logprob);
    entry->set_piece(tokenizer_->IdToPiece(top.id));
  }

  void FinishWithoutEngine(const absl::Status& status) {
    std::lock_guard<std::mutex> lock(mu_);
    final_status_ = ToGrpcStatus(status);
    PumpLocked();
  }

  // Starts the next write, or Finish once everything is written.
  void PumpLocked() {
    if (writing_ || finish_called_) return;
    if (!pending_.empty()) {
      writing_ = true;
      StartWrite(&pending_.front());
      return;
    }
    if (final_status_.has_value()) {
      finish_called_ = true;
      metrics_.Ended(static_cast<absl::StatusCode>(final_status_->error_code()));
      Finish(*final_status_);
    }
  }

  // gRPC's deadline timer may fire a little before our clock reads the
  // deadline.
  static constexpr absl::Duration kDeadlineSlack = absl::Milliseconds(5);

  Engine* const engine_;
  const Tokenizer* const tokenizer_;
  const absl::Time deadline_;
  std::string request_id_;
  // Begin, then OnToken, then the one Finish (under mu_): never overlapping.
  GenerateCallMetrics metrics_;

  std::mutex mu_;
  std::optional<Engine::RequestId> id_;       // guarded by mu_; set once submitted
  std::deque<grpc::ByteBuffer> pending_;      // guarded by mu_; serialized; front is in flight
  bool writing_ = false;                      // guarded by mu_
  bool write_failed_ = false;                 // guarded by mu_
  bool finish_called_ = false;                // guarded by mu_
  std::optional<grpc::Status> final_status_;  // guarded by mu_
};

v1::ModelInfo MakeModelInfo(ServingModel& model) {
  v1::ModelInfo info;
  const ModelConfig& config = model.config();
  ToProto(model.fingerprint(), info.mutable_fingerprint());
  info.set_model_dir(model.model_dir());
  info.set_model_type(config.model_type);
  info.set_max_position_embeddings(config.max_position_embeddings);
  info.set_intermediate_size(config.intermediate_size);
  info.set_bos_token_id(config.bos_token_id);
  for (int32_t eos : config.eos_token_ids) info.add_eos_token_ids(eos);
  info.set_add_bos_token(config.add_bos_token);
  info.set_device(std::string(model.backend().name()));
  info.set_kv_dtype(ToProto(model.backend().kv_dtype()));
  info.set_parameter_count(model.parameter_count());
  return info;
}

}  // namespace

DecodeServer::DecodeServer(ServingModel* model, Engine* engine, const RequestLimits& limits,
                           DecodeMetrics* metrics)
    : model_(model),
      engine_(engine),
      limits_(limits),
      metrics_(metrics),
      model_info_(MakeModelInfo(*model)),
      chat_format_(DetectChatFormat(model->model_dir())) {
  if (chat_format_.ok()) {
    LOG(INFO) << "chat format: " << ChatFormatName(*chat_format_);
  } else {
    LOG(INFO) << "no chat format (requests with messages fail): " << chat_format_.status();
  }
}

grpc::ServerWriteReactor<grpc::ByteBuffer>* DecodeServer::Generate(
    grpc::CallbackServerContext* context, const grpc::ByteBuffer* request_bytes) {
  const absl::Time arrival = absl::Now();
  const absl::Time deadline = DeadlineOf(*context);
  auto* reactor = new GenerateReactor(engine_, &model_->tokenizer(), metrics_, arrival, deadline);
  v1::GenerateRequest request;
  const absl::Status parsed = ParseRawRequest(*request_bytes, &request);
  absl::StatusOr<GenerationRequest> validated =
      parsed.ok() ? ValidateGenerateRequest(request, model_->tokenizer(), model_->config(),
                                            chat_format_, limits_, RandomSeed())
                  : absl::StatusOr<GenerationRequest>(parsed);
  if (validated.ok()) {
    validated->arrival = arrival;
    validated->deadline = deadline;
  }
  reactor->Begin(std::move(validated));
  return reactor;
}

grpc::ServerUnaryReactor* DecodeServer::Tokenize(grpc::CallbackServerContext* context,
                                                 const grpc::ByteBuffer* request_bytes,
                                                 grpc::ByteBuffer* response_bytes) {
  grpc::ServerUnaryReactor* reactor = context->DefaultReactor();
  v1::TokenizeRequest request;
  if (absl::Status parsed = ParseRawRequest(*request_bytes, &request); !parsed.ok()) {
    reactor->Finish(ToGrpcStatus(parsed));
    return reactor;
  }
  const Tokenizer& tokenizer = model_->tokenizer();
  const bool add_bos = request.has_add_bos() ? request.add_bos() : model_->config().add_bos_token;
  // The same cap as a prompt's: tokenizing runs on gRPC's threads.
  if (const int64_t max_bytes = MaxPromptBytes(limits_, model_->config());
      static_cast<int64_t>(request.text().size()) > max_bytes) {
    reactor->Finish(
        grpc::Status(grpc::StatusCode::INVALID_ARGUMENT,
                     absl::StrCat("text: ", request.text().size(), " bytes exceed the limit of ",
                                  max_bytes, " bytes (--max_prompt_bytes)")));
    return reactor;
  }
  v1::TokenizeResponse response;
  for (int32_t id : tokenizer.Encode(request.text(), add_bos)) {
    response.add_token_ids(id);
    response.add_pieces(tokenizer.IdToPiece(id));
  }
  absl::StatusOr<grpc::ByteBuffer> bytes = SerializeRawResponse(response);
  if (bytes.ok()) *response_bytes = *std::move(bytes);
  reactor->Finish(ToGrpcStatus(bytes.status()));
  return reactor;
}

grpc::ServerUnaryReactor* DecodeServer::GetModelInfo(grpc::CallbackServerContext* context,
                                                     const v1::GetModelInfoRequest* /*request*/,
                                                     v1::ModelInfo* response) {
  *response = model_info_;
  grpc::ServerUnaryReactor* reactor = context->DefaultReactor();
  reactor->Finish(grpc::Status::OK);
  return reactor;
}

absl::StatusOr<std::unique_ptr<grpc::Server>> StartGrpcServer(const GrpcServerOptions& options,
                                                              grpc::Service* service,
                                                              int* bound_port) {
  grpc::ServerBuilder builder;
  builder.AddListeningPort(options.listen, grpc::InsecureServerCredentials(), bound_port);
  builder.SetMaxReceiveMessageSize(options.max_message_bytes);
  builder.SetMaxSendMessageSize(options.max_message_bytes);
  builder.RegisterService(service);
  for (grpc::Service* more : options.more_services) builder.RegisterService(more);
  std::unique_ptr<grpc::Server> server = builder.BuildAndStart();
  if (server == nullptr || *bound_port == 0) {
    return absl::UnavailableError(absl::StrCat("cannot listen on '", options.listen,
                                               "' (--listen): address in use or invalid"));
  }
  return server;
}

}  // namespace pdserve
