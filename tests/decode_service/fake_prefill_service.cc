#include "tests/decode_service/fake_prefill_service.h"

#include <chrono>
#include <cstring>
#include <vector>

#include <grpcpp/security/server_credentials.h>
#include <grpcpp/server_builder.h>

#include "absl/strings/str_cat.h"
#include "proto/convert/convert.h"

namespace pdserve {
namespace {

std::string ToWire(const float* values, size_t n, DType dtype) {
  std::string bytes(n * DTypeSize(dtype), '\0');
  if (dtype == DType::kF32) {
    std::memcpy(bytes.data(), values, bytes.size());
  } else {
    ConvertFromFloat(values, n, dtype, bytes.data());
  }
  return bytes;
}

}  // namespace

grpc::Status FakePrefillService::Prefill(grpc::ServerContext* context,
                                         const v1::PrefillRequest* request,
                                         grpc::ServerWriter<v1::PrefillResponse>* writer) {
  FakePrefillOptions options;
  {
    std::lock_guard<std::mutex> lock(mu_);
    options = options_;
    ++calls_;
    last_token_ids_.assign(request->token_ids().begin(), request->token_ids().end());
  }
  const ModelConfig& config = model_->config();
  const int kv_width = config.num_kv_heads * config.head_dim;
  const std::vector<int32_t> tokens(request->token_ids().begin(), request->token_ids().end());
  const int n = static_cast<int>(tokens.size());

  // The whole forward pass first, so no lock is held while streaming.
  std::vector<std::vector<float>> k_layers(config.num_layers), v_layers(config.num_layers);
  absl::StatusOr<std::vector<float>> hidden;
  {
    std::lock_guard<std::mutex> lock(model_mu_);
    Backend& backend = model_->backend();
    hidden = model_->transformer().Prefill(
        tokens, [&](int layer, const DeviceBuffer& k, const DeviceBuffer& v, int num_tokens) {
          const size_t count = static_cast<size_t>(num_tokens) * kv_width;
          k_layers[layer].resize(count);
          v_layers[layer].resize(count);
          absl::Status status =
              backend.CopyToHost(k, 0, count, k_layers[layer].data(), DType::kF32);
          if (!status.ok()) return status;
          return backend.CopyToHost(v, 0, count, v_layers[layer].data(), DType::kF32);
        });
  }
  if (!hidden.ok()) return ToGrpcStatus(hidden.status());

  v1::PrefillResponse header_message;
  v1::PrefillHeader* header = header_message.mutable_header();
  ToProto(model_->fingerprint(), header->mutable_fingerprint());
  header->set_num_tokens(options.fault == PrefillFault::kWrongNumTokens ? n + 1 : n);
  header->set_num_layers(config.num_layers);
  header->set_num_kv_heads(config.num_kv_heads);
  header->set_head_dim(options.fault == PrefillFault::kWrongHeadDim ? config.head_dim + 1
                                                                     : config.head_dim);
  header->set_kv_dtype(ToProto(options.wire_dtype));
  header->set_hidden_size(config.hidden_size);
  if (!writer->Write(header_message)) return grpc::Status(grpc::StatusCode::CANCELLED, "write");

  bool first_chunk = true;
  for (int layer = 0; layer < config.num_layers; ++layer) {
    for (int first = 0; first < n; first += options.chunk_tokens) {
      const int count = std::min(options.chunk_tokens, n - first);
      const bool last_chunk = layer == config.num_layers - 1 && first + count == n;
      if (options.fault == PrefillFault::kMissingChunk && last_chunk) continue;
      v1::PrefillResponse message;
      v1::KvChunk* chunk = message.mutable_kv();
      chunk->set_layer(layer);
      chunk->set_first_token(first);
      chunk->set_num_tokens(count);
      const size_t offset = static_cast<size_t>(first) * kv_width;
      chunk->set_k(ToWire(k_layers[layer].data() + offset, static_cast<size_t>(count) * kv_width,
                          options.wire_dtype));
      chunk->set_v(ToWire(v_layers[layer].data() + offset, static_cast<size_t>(count) * kv_width,
                          options.wire_dtype));
      if (first_chunk && options.fault == PrefillFault::kShortChunk) {
        chunk->mutable_k()->resize(chunk->k().size() - DTypeSize(options.wire_dtype));
      }
      if (first_chunk && options.fault == PrefillFault::kChunkPastPrompt) {
        chunk->set_first_token(n);
      }
      if (!writer->Write(message)) return grpc::Status(grpc::StatusCode::CANCELLED, "write");
      if (first_chunk && options.fault == PrefillFault::kDuplicateChunk) {
        if (!writer->Write(message)) return grpc::Status(grpc::StatusCode::CANCELLED, "write");
      }
      if (first_chunk && options.fault == PrefillFault::kHoldAfterFirstChunk) {
        std::unique_lock<std::mutex> lock(mu_);
        ++held_;
        cv_.notify_all();
        while (!released_ && !context->IsCancelled()) {
          cv_.wait_for(lock, std::chrono::milliseconds(10));
        }
        --held_;
        if (context->IsCancelled()) return grpc::Status(grpc::StatusCode::CANCELLED, "cancelled");
      }
      first_chunk = false;
    }
    if (layer == 0 && options.fault == PrefillFault::kFailAfterFirstLayer) {
      return ToGrpcStatus(options.fail_status);
    }
  }

  if (options.fault != PrefillFault::kNoFinalHidden) {
    v1::PrefillResponse message;
    message.mutable_final_hidden()->mutable_values()->Assign(hidden->begin(), hidden->end());
    if (!writer->Write(message)) return grpc::Status(grpc::StatusCode::CANCELLED, "write");
  }
  return grpc::Status::OK;
}

grpc::Status FakePrefillService::GetModelInfo(grpc::ServerContext* /*context*/,
                                              const v1::GetModelInfoRequest* /*request*/,
                                              v1::ModelInfo* response) {
  ToProto(model_->fingerprint(), response->mutable_fingerprint());
  response->set_model_dir(model_->model_dir());
  response->set_max_position_embeddings(model_->config().max_position_embeddings);
  response->set_device("cpu");
  response->set_kv_dtype(v1::DTYPE_F32);
  return grpc::Status::OK;
}

void FakePrefillService::set_options(const FakePrefillOptions& options) {
  std::lock_guard<std::mutex> lock(mu_);
  options_ = options;
  released_ = false;
}

bool FakePrefillService::WaitForHeld(absl::Duration timeout) {
  std::unique_lock<std::mutex> lock(mu_);
  return cv_.wait_for(lock, absl::ToChronoMilliseconds(timeout), [&] { return held_ > 0; });
}

void FakePrefillService::Release() {
  std::lock_guard<std::mutex> lock(mu_);
  released_ = true;
  cv_.notify_all();
}

int FakePrefillService::calls() const {
  std::lock_guard<std::mutex> lock(mu_);
  return calls_;
}

std::vector<int32_t> FakePrefillService::last_token_ids() const {
  std::lock_guard<std::mutex> lock(mu_);
  return last_token_ids_;
}

absl::StatusOr<std::unique_ptr<FakePrefillServer>> FakePrefillServer::Start(
    const std::string& model_dir) {
  std::unique_ptr<FakePrefillServer> server(new FakePrefillServer());
  absl::StatusOr<std::unique_ptr<ServingModel>> model = ServingModel::Load(model_dir, "cpu");
  if (!model.ok()) return model.status();
  server->model_ = std::move(model).value();
  server->service_ = std::make_unique<FakePrefillService>(server->model_.get());
  grpc::ServerBuilder builder;
  builder.AddListeningPort("127.0.0.1:0", grpc::InsecureServerCredentials(), &server->port_);
  builder.SetMaxReceiveMessageSize(64 << 20);
  builder.SetMaxSendMessageSize(64 << 20);
  builder.RegisterService(server->service_.get());
  server->server_ = builder.BuildAndStart();
  if (server->server_ == nullptr || server->port_ == 0) {
    return absl::UnavailableError("fake prefill: cannot listen on 127.0.0.1:0");
  }
  return server;
}

FakePrefillServer::~FakePrefillServer() { Kill(); }

std::string FakePrefillServer::address() const { return absl::StrCat("127.0.0.1:", port_); }

void FakePrefillServer::Kill() {
  if (server_ == nullptr) return;
  server_->Shutdown(std::chrono::system_clock::now());
  server_->Wait();
  server_.reset();
}

}  // namespace pdserve
