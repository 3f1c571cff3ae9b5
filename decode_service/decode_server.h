// pdserve.v1.GenerateService, the public entry point, on gRPC's callback API:
// Generate streams one message per token from the engine; Tokenize and
// GetModelInfo answer from the loaded model.
#ifndef PDSERVE_DECODE_SERVICE_DECODE_SERVER_H_
#define PDSERVE_DECODE_SERVICE_DECODE_SERVER_H_

#include <grpcpp/server.h>

#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "decode_service/decode_metrics.h"
#include "decode_service/engine.h"
#include "decode_service/request_validation.h"
#include "decode_service/serving_model.h"
#include "pdserve/v1/generate.grpc.pb.h"
#include "shared/chat_template.h"

namespace pdserve {

// Generate and Tokenize are registered raw: the server parses their
// requests itself, so that bytes gRPC's generated handler cannot parse (not
// protobuf, or a string that is not UTF-8) get INVALID_ARGUMENT instead of
// a bare UNIMPLEMENTED. The wire format is the generated one.
class DecodeServer final : public v1::GenerateService::WithRawCallbackMethod_Generate<
                               v1::GenerateService::WithRawCallbackMethod_Tokenize<
                                   v1::GenerateService::CallbackService>> {
 public:
  // `model` and `engine` (and `metrics`, when not null) must outlive the
  // server (and every call on it). `metrics` counts every Generate call.
  DecodeServer(ServingModel* model, Engine* engine, const RequestLimits& limits,
               DecodeMetrics* metrics = nullptr);

  // Validates (INVALID_ARGUMENT, see ValidateGenerateRequest), submits to the
  // engine (RESOURCE_EXHAUSTED when over capacity) and streams one
  // GenerateResponse per token of each sample: token_id, index,
  // sample_index, the UTF-8-safe text delta (EOS and stop ids render as "",
  // stop strings are cut) and, when asked, logprobs. Each sample's last
  // message adds finish_reason, usage and timings; the stream ends after the
  // last sample's. A client cancel or deadline ends the request in the engine and
  // frees its KV at once; errors from the engine (UNAVAILABLE,
  // FAILED_PRECONDITION, DEADLINE_EXCEEDED, INTERNAL) end the stream.
  // `request`: a serialized GenerateRequest; responses go out serialized.
  grpc::ServerWriteReactor<grpc::ByteBuffer>* Generate(grpc::CallbackServerContext* context,
                                                       const grpc::ByteBuffer* request) override;
  // Ids and SentencePiece pieces of `text` (add_bos defaults to the model's).
  // `request` and `response`: a serialized TokenizeRequest / TokenizeResponse.
  grpc::ServerUnaryReactor* Tokenize(grpc::CallbackServerContext* context,
                                     const grpc::ByteBuffer* request,
                                     grpc::ByteBuffer* response) override;
  grpc::ServerUnaryReactor* GetModelInfo(grpc::CallbackServerContext* context,
                                         const v1::GetModelInfoRequest* request,
                                         v1::ModelInfo* response) override;

  const v1::ModelInfo& model_info() const { return model_info_; }

 private:
  const ServingModel* const model_;
  Engine* const engine_;
  const RequestLimits limits_;
  DecodeMetrics* const metrics_;
  v1::ModelInfo model_info_;
  // DetectChatFormat at start-up; its error goes to requests with messages.
  const absl::StatusOr<ChatFormat> chat_format_;
};

struct GrpcServerOptions {
  std::string listen = "127.0.0.1:50052";  // HOST:PORT; port 0 picks a free one
  int max_message_bytes = 64 << 20;        // both directions
  // Served beside the main service (e.g. InspectService); must outlive the server.
  std::vector<grpc::Service*> more_services;
};

// Builds and starts a gRPC server for `service` on `options.listen` and sets
// `*bound_port`. Health checking and reflection are added when the process
// enabled them before the call (main.cc). UNAVAILABLE naming the address when
// it cannot be bound.
absl::StatusOr<std::unique_ptr<grpc::Server>> StartGrpcServer(const GrpcServerOptions& options,
                                                              grpc::Service* service,
                                                              int* bound_port);

}  // namespace pdserve

#endif  // PDSERVE_DECODE_SERVICE_DECODE_SERVER_H_
