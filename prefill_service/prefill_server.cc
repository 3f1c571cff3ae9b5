#include "prefill_service/prefill_server.h"

#include <glog/logging.h>

#include <algorithm>
#include <climits>
#include <deque>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "prefill_service/kv_chunk_streamer.h"
#include "proto/convert/convert.h"
#include "proto/kv_wire/kv_chunk_encoder.h"
#include "shared/status_macros.h"

namespace pdserve {

absl::StatusOr<ChunkPlan> PlanChunks(int64_t requested_max_chunk_bytes,
                                     int64_t server_max_chunk_bytes, int kv_width, DType kv_dtype) {
  ChunkPlan plan;
  plan.bytes_per_token =
      2 * static_cast<int64_t>(kv_width) * static_cast<int64_t>(DTypeSize(kv_dtype));
  if (requested_max_chunk_bytes < 0) {
    return absl::InvalidArgumentError(absl::StrCat("max_chunk_bytes: ", requested_max_chunk_bytes,
                                                   " is negative (0 selects the server's ",
                                                   server_max_chunk_bytes, ")"));
  }
  const int64_t limit = requested_max_chunk_bytes == 0
                            ? server_max_chunk_bytes
                            : std::min(requested_max_chunk_bytes, server_max_chunk_bytes);
  if (limit < plan.bytes_per_token) {
    return absl::InvalidArgumentError(absl::StrCat("max_chunk_bytes: ", limit,
                                                   " is below one token's K+V of one layer (",
                                                   plan.bytes_per_token, " bytes)"));
  }
  plan.tokens_per_chunk =
      static_cast<int>(std::min<int64_t>(limit / plan.bytes_per_token, INT_MAX));
  plan.max_bytes = limit;
  return plan;
}

void FillModelInfo(const PrefillEngine& engine, v1::ModelInfo* info) {
  const ModelConfig& config = engine.config();
  ToProto(engine.fingerprint(), info->mutable_fingerprint());
  info->set_model_dir(engine.model_dir());
  info->set_model_type(config.model_type);
  info->set_max_position_embeddings(config.max_position_embeddings);
  info->set_intermediate_size(config.intermediate_size);
  info->set_bos_token_id(config.bos_token_id);
  for (int32_t eos : config.eos_token_ids) info->add_eos_token_ids(eos);
  info->set_add_bos_token(config.add_bos_token);
  info->set_device(std::string(engine.device()));
  info->set_kv_dtype(ToProto(engine.kv_dtype()));
  info->set_parameter_count(engine.parameter_count());
}

// INVALID_ARGUMENT naming hidden_state_layers[i] for a layer outside
// [-1, num_layers) or one asked for twice.
absl::Status ValidateHiddenStateLayers(const v1::PrefillRequest& request, int num_layers) {
  const auto& layers = request.hidden_state_layers();
  for (int i = 0; i < layers.size(); ++i) {
    if (layers[i] < -1 || layers[i] >= num_layers) {
      return absl::InvalidArgumentError(absl::StrCat("hidden_state_layers[", i, "]: ", layers[i],
                                                     " outside [-1, num_layers=", num_layers,
                                                     ") (-1: the embeddings output)"));
    }
    if (std::find(layers.begin(), layers.begin() + i, layers[i]) != layers.begin() + i) {
      return absl::InvalidArgumentError(
          absl::StrCat("hidden_state_layers[", i, "]: layer ", layers[i], " asked for twice"));
    }
  }
  return absl::OkStatus();
}

// One Prefill call. Two parties touch it: gRPC's threads (OnWriteDone,
// OnCancel, OnDone) and the engine's worker thread (the sinks and `done` of
// its PrefillWork, which produce the messages). The worker only ever appends
// to the queue; writes and Finish are issued by Pump() from whichever side
// made progress possible. Finish waits until the engine has reported back
// (producer_done_: the work's `done`, from the worker, or from Cancel while
// still queued), so the worker never sees a deleted reactor; OnDone, which
// gRPC runs after Finish and every write have completed, deletes it.
class PrefillReactor final : public grpc::ServerWriteReactor<grpc::ByteBuffer> {
 public:
  // `parsed`: the request's parse result; an error ends the call with it.
  PrefillReactor(PrefillServer* server, const v1::PrefillRequest& request,
                 const absl::Status& parsed)
      : server_(server),
        metrics_(server->options_.metrics),
        request_id_(request.request_id().empty() ? "(no request_id)" : request.request_id()),
        arrival_(absl::Now()) {
    server_->active_streams_.fetch_add(1);
    if (metrics_ != nullptr) metrics_->OnRequest();
    PrefillEngine& engine = *server_->engine_;
    const ModelConfig& config = engine.config();
    const std::span<const int32_t> ids(request.token_ids().data(), request.token_ids().size());
    absl::Status valid = parsed;
    if (valid.ok()) valid = engine.ValidatePrompt(ids);
    absl::StatusOr<ChunkPlan> plan =
        PlanChunks(request.max_chunk_bytes(), server_->options_.max_chunk_bytes,
                   config.num_kv_heads * config.head_dim, engine.kv_dtype());
    if (valid.ok() && !plan.ok()) valid = plan.status();
    if (valid.ok()) valid = ValidateHiddenStateLayers(request, config.num_layers);
    if (!valid.ok()) {
      LOG(WARNING) << "prefill " << request_id_ << ": rejected: " << valid;
      ProducerDone(valid);
      return;
    }
    if (metrics_ != nullptr) metrics_->OnAccepted(static_cast<int>(ids.size()));

    v1::PrefillResponse header;
    v1::PrefillHeader* h = header.mutable_header();
    ToProto(engine.fingerprint(), h->mutable_fingerprint());
    h->set_num_tokens(static_cast<int>(ids.size()));
    h->set_num_layers(config.num_layers);
    h->set_num_kv_heads(config.num_kv_heads);
    h->set_head_dim(config.head_dim);
    h->set_kv_dtype(ToProto(engine.kv_dtype()));
    h->set_hidden_size(config.hidden_size);
    absl::StatusOr<grpc::ByteBuffer> header_bytes = SerializeRawResponse(header);
    if (!header_bytes.ok()) {
      ProducerDone(header_bytes.status());
      return;
    }
    {
      // Queued but not written until the engine has taken the request: a
      // full queue answers RESOURCE_EXHAUSTED with no header. The worker's
      // first message queues behind it.
      absl::MutexLock lock(&mu_);
      queue_.push_back(Pending{*std::move(header_bytes), 0, false});
    }
    absl::StatusOr<PrefillEngine::WorkId> id = engine.Submit(MakeWork(request, *plan));
    if (!id.ok()) {
      LOG(WARNING) << "prefill " << request_id_ << ": " << id.status();
      {
        absl::MutexLock lock(&mu_);
        queue_.clear();
      }
      ProducerDone(id.status());
      return;
    }
    {
      absl::MutexLock lock(&mu_);
      work_id_ = *id;
    }
    Pump();
  }

  void OnWriteDone(bool ok) override {
    {
      absl::MutexLock lock(&mu_);
      write_in_flight_ = false;
      if (ok && metrics_ != nullptr && in_flight_is_kv_) {
        metrics_->OnKvBytesSent(in_flight_bytes_);
      }
      queued_bytes_ -= in_flight_bytes_;
      in_flight_.Clear();
      in_flight_bytes_ = 0;
      if (!ok) CancelLocked();  // the stream is broken: stop producing
    }
    Pump();
  }

  void OnCancel() override {
    PrefillEngine::WorkId work_id = 0;
    {
      absl::MutexLock lock(&mu_);
      CancelLocked();
      work_id = work_id_;
    }
    // Still queued: dropped at once (its `done` reports back here).
    if (work_id != 0 && server_->engine_->Cancel(work_id) && metrics_ != nullptr) {
      metrics_->OnCancelled(PrefillMetrics::CancelStage::kQueued);
    }
    Pump();
  }

  void OnDone() override {
    server_->active_streams_.fetch_sub(1);
    delete this;
  }

 private:
  struct Pending {
    grpc::ByteBuffer message;  // an encoded PrefillResponse
    int64_t bytes = 0;         // payload bytes, for back-pressure and metrics
    bool is_kv = false;
  };

  // The engine's request: sinks that turn K/V and hidden states into
  // messages (cut under plan.max_bytes), and a `done` that sends FinalHidden.
  PrefillWork MakeWork(const v1::PrefillRequest& request, const ChunkPlan& plan) {
    const ModelConfig& config = server_->engine_->config();
    PrefillWork work;
    work.tokens.assign(request.token_ids().begin(), request.token_ids().end());
    num_tokens_ = static_cast<int>(work.tokens.size());
    work.capture.all_positions = request.return_all_positions();
    work.capture.hidden_state_layers.assign(request.hidden_state_layers().begin(),
                                            request.hidden_state_layers().end());
    if (!request.omit_kv()) {
      kv_streamer_ = std::make_unique<KvChunkStreamer>(
          server_->engine_->backend(), config.num_kv_heads * config.head_dim, plan.tokens_per_chunk,
          [this](grpc::ByteBuffer message, int64_t payload_bytes) {
            return Send(std::move(message), payload_bytes, /*is_kv=*/true);
          });
      work.kv_sink = [this](int layer, const DeviceBuffer& k, const DeviceBuffer& v,
                            int first_token, int num_tokens) {
        return kv_streamer_->Add(layer, k, v, first_token, num_tokens);
      };
    }
    if (!work.capture.empty()) {
      const int64_t row_bytes = static_cast<int64_t>(config.hidden_size) * sizeof(float);
      // At least one token per message, even below one row's bytes.
      const int rows_per_message =
          static_cast<int>(std::clamp<int64_t>(plan.max_bytes / row_bytes, 1, INT_MAX));
      work.hidden_sink = [this, rows_per_message](int layer, int first_token, int num_tokens,
                                                  std::span<const float> values) {
        return SendHiddenStates(layer, first_token, num_tokens, values, rows_per_message);
      };
    }
    work.started = [this](int batch_requests, int batch_tokens) {
      start_ = absl::Now();
      batch_requests_ = batch_requests;
      batch_tokens_ = batch_tokens;
      if (metrics_ != nullptr) metrics_->OnForwardStarted();
    };
    work.done = [this](absl::StatusOr<std::vector<float>> hidden) { Done(std::move(hidden)); };
    return work;
  }

  // Worker thread: hidden states [num_tokens, hidden] in HiddenStates
  // messages of at most rows_per_message tokens.
  absl::Status SendHiddenStates(int layer, int first_token, int num_tokens,
                                std::span<const float> values, int rows_per_message) {
    const size_t hidden = values.size() / static_cast<size_t>(num_tokens);
    for (int offset = 0; offset < num_tokens; offset += rows_per_message) {
      const int count = std::min(rows_per_message, num_tokens - offset);
      v1::PrefillResponse message;
      v1::HiddenStates* states = message.mutable_hidden_states();
      states->set_layer(layer);
      states->set_first_token(first_token + offset);
      states->set_num_tokens(count);
      const std::span<const float> rows =
          values.subspan(static_cast<size_t>(offset) * hidden, static_cast<size_t>(count) * hidden);
      states->mutable_values()->Add(rows.begin(), rows.end());
      PDSERVE_ASSIGN_OR_RETURN(grpc::ByteBuffer encoded, SerializeRawResponse(message));
      PDSERVE_RETURN_IF_ERROR(Send(std::move(encoded),
                                   static_cast<int64_t>(rows.size() * sizeof(float)),
                                   /*is_kv=*/false));
    }
    return absl::OkStatus();
  }

  // The request's outcome, from the worker (or from Cancel while queued).
  void Done(absl::StatusOr<std::vector<float>> hidden) {
    const bool ran = start_ != absl::InfinitePast();
    const double prefill_ms = ran ? absl::ToDoubleMilliseconds(absl::Now() - start_) : 0.0;
    if (kv_streamer_ != nullptr) {
      // The last layers' KV may still be on its way to the host; it goes
      // out before FinalHidden, which tells decode that the KV is complete.
      if (hidden.ok()) {
        if (absl::Status flushed = kv_streamer_->Flush(); !flushed.ok()) hidden = flushed;
      }
      kv_streamer_.reset();  // waits for copies still in flight
    }
    if (!hidden.ok()) {
      if (ran && metrics_ != nullptr && cancelled()) {
        metrics_->OnCancelled(PrefillMetrics::CancelStage::kForward);
      }
      ProducerDone(hidden.status());
      return;
    }
    if (metrics_ != nullptr) metrics_->OnForwardCompleted(absl::Now() - start_);
    v1::PrefillResponse message;
    v1::FinalHidden* final_hidden = message.mutable_final_hidden();
    final_hidden->mutable_values()->Add(hidden->begin(), hidden->end());
    final_hidden->set_prefill_ms(prefill_ms);
    const int64_t bytes = static_cast<int64_t>(hidden->size() * sizeof(float));
    absl::StatusOr<grpc::ByteBuffer> encoded = SerializeRawResponse(message);
    absl::Status sent =
        encoded.ok() ? Send(*std::move(encoded), bytes, /*is_kv=*/false) : encoded.status();
    if (!sent.ok() && metrics_ != nullptr) {
      metrics_->OnCancelled(PrefillMetrics::CancelStage::kForward);
    }
    if (sent.ok()) {
      LOG(INFO) << "prefill " << request_id_ << ": " << num_tokens_ << " tokens, forward "
                << prefill_ms << " ms in a batch of " << batch_requests_ << " requests ("
                << batch_tokens_ << " tokens), queued "
                << absl::ToDoubleMilliseconds(start_ - arrival_) << " ms";
    }
    ProducerDone(sent);
  }

  // Worker thread (and the constructor): queues a message, waiting while
  // more than max_queued_bytes are unsent. CANCELLED once the call is
  // cancelled or broken.
  absl::Status Send(grpc::ByteBuffer message, int64_t bytes, bool is_kv) {
    {
      absl::MutexLock lock(&mu_);
      const int64_t limit = server_->options_.max_queued_bytes;
      auto can_queue = [this, limit, bytes]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
        return cancelled_ || queued_bytes_ == 0 || queued_bytes_ + bytes <= limit;
      };
      mu_.Await(absl::Condition(&can_queue));
      if (cancelled_) {
        return absl::CancelledError("prefill: the client cancelled the call or the stream broke");
      }
      queue_.push_back(Pending{std::move(message), bytes, is_kv});
      queued_bytes_ += bytes;
    }
    Pump();
    return absl::OkStatus();
  }

  bool cancelled() {
    absl::MutexLock lock(&mu_);
    return cancelled_;
  }

  // The producer's last touch of this object.
  void ProducerDone(const absl::Status& status) {
    {
      absl::MutexLock lock(&mu_);
      producer_done_ = true;
      final_status_ = status;
      if (!status.ok() && !cancelled_ && status.code() != absl::StatusCode::kInvalidArgument) {
        LOG(WARNING) << "prefill " << request_id_ << ": failed: " << status;
      }
    }
    Pump();
  }

  void CancelLocked() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    if (!cancelled_) LOG(INFO) << "prefill " << request_id_ << ": cancelled";
    cancelled_ = true;
    for (const Pending& pending : queue_) queued_bytes_ -= pending.bytes;
    queue_.clear();
  }

  // Starts the next write or, once nothing more can be written, Finish.
  // Called without mu_ held: gRPC may run reactions inline.
  void Pump() {
    const grpc::ByteBuffer* to_write = nullptr;
    bool finish = false;
    grpc::Status status;
    {
      absl::MutexLock lock(&mu_);
      if (finished_ || write_in_flight_) return;
      if (!cancelled_ && !queue_.empty()) {
        in_flight_ = std::move(queue_.front().message);
        in_flight_bytes_ = queue_.front().bytes;
        in_flight_is_kv_ = queue_.front().is_kv;
        queue_.pop_front();
        write_in_flight_ = true;
        to_write = &in_flight_;
      } else if (producer_done_ && (cancelled_ || queue_.empty())) {
        finished_ = true;
        finish = true;
        status = cancelled_ ? grpc::Status(grpc::StatusCode::CANCELLED, "prefill: cancelled")
                            : ToGrpcStatus(final_status_);
      }
    }
    if (to_write != nullptr) {
      StartWrite(to_write);
    } else if (finish) {
      if (metrics_ != nullptr)
        metrics_->OnEnded(static_cast<absl::StatusCode>(status.error_code()));
      Finish(status);  // may delete this (OnDone): nothing may follow
    }
  }

  PrefillServer* const server_;
  PrefillMetrics* const metrics_;  // may be null
  const std::string request_id_;
  const absl::Time arrival_;
  int num_tokens_ = 0;
  // Set by the worker when the request's batch starts; read by the worker.
  absl::Time start_ = absl::InfinitePast();
  // The KV on its way out (null with omit_kv); used by the worker only, and
  // by `done` (on the cancelling thread when the worker never took it).
  std::unique_ptr<KvChunkStreamer> kv_streamer_;
  int batch_requests_ = 0;
  int batch_tokens_ = 0;

  absl::Mutex mu_;
  std::deque<Pending> queue_ ABSL_GUARDED_BY(mu_);
  int64_t queued_bytes_ ABSL_GUARDED_BY(mu_) = 0;  // queue_ plus the write in flight
  grpc::ByteBuffer in_flight_ ABSL_GUARDED_BY(mu_);
  int64_t in_flight_bytes_ ABSL_GUARDED_BY(mu_) = 0;
  bool in_flight_is_kv_ ABSL_GUARDED_BY(mu_) = false;
  bool write_in_flight_ ABSL_GUARDED_BY(mu_) = false;
  bool cancelled_ ABSL_GUARDED_BY(mu_) = false;
  bool producer_done_ ABSL_GUARDED_BY(mu_) = false;
  absl::Status final_status_ ABSL_GUARDED_BY(mu_);
  bool finished_ ABSL_GUARDED_BY(mu_) = false;
  PrefillEngine::WorkId work_id_ ABSL_GUARDED_BY(mu_) = 0;  // 0: not submitted
};

PrefillServer::PrefillServer(PrefillEngine* engine, PrefillServerOptions options)
    : engine_(engine), options_(options) {}

grpc::ServerWriteReactor<grpc::ByteBuffer>* PrefillServer::Prefill(
    grpc::CallbackServerContext* /*context*/, const grpc::ByteBuffer* request_bytes) {
  // The method is registered raw so that responses can be sent as
  // pre-encoded byte buffers; the request is parsed here instead of by the
  // generated code.
  v1::PrefillRequest request;
  const absl::Status parsed = ParseRawRequest(*request_bytes, &request);
  return new PrefillReactor(this, request, parsed);
}

grpc::ServerUnaryReactor* PrefillServer::GetModelInfo(grpc::CallbackServerContext* context,
                                                      const v1::GetModelInfoRequest* /*request*/,
                                                      v1::ModelInfo* response) {
  FillModelInfo(*engine_, response);
  grpc::ServerUnaryReactor* reactor = context->DefaultReactor();
  reactor->Finish(grpc::Status::OK);
  return reactor;
}

}  // namespace pdserve
