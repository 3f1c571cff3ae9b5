#include "tests/decode_service/in_process_decode.h"

#include <fstream>
#include <utility>

#include <grpcpp/client_context.h>
#include <grpcpp/create_channel.h>
#include <grpcpp/security/credentials.h>

#include "absl/strings/str_cat.h"
#include "decode_service/kv_cache_sizing.h"
#include "decode_service/prefill_target.h"
#include "shared/status_macros.h"

namespace pdserve {

absl::StatusOr<std::unique_ptr<InProcessDecode>> InProcessDecode::Start(
    const InProcessDecodeOptions& options) {
  std::unique_ptr<InProcessDecode> decode(new InProcessDecode());
  PDSERVE_ASSIGN_OR_RETURN(decode->model_, ServingModel::Load(options.model_dir, "cpu"));
  const ModelConfig& config = decode->model_->config();
  PDSERVE_ASSIGN_OR_RETURN(
      decode->cache_,
      KvCache::Create(&decode->model_->backend(),
                      KvCacheOptionsFor(config, options.kv_cache_blocks, options.block_size)));

  PDSERVE_ASSIGN_OR_RETURN(std::vector<std::string> targets,
                           SplitPrefillTargets(options.prefill_target));
  PrefillClientOptions prefill;
  PDSERVE_ASSIGN_OR_RETURN(prefill.channel_target, PrefillChannelTarget(targets));
  decode->prefill_ = std::make_unique<PrefillClient>(
      prefill, PrefillExpectation::For(config, decode->model_->fingerprint()));

  EngineOptions engine;
  engine.max_batch_size = options.max_batch_size;
  engine.max_queue = options.max_queue;
  engine.prefill_timeout = options.prefill_timeout;
  engine.eos_token_ids = options.eos_token_ids.value_or(config.eos_token_ids);
  engine.context_limit = config.max_position_embeddings;
  engine.tokenizer = &decode->model_->tokenizer();
  decode->engine_ = std::make_unique<Engine>(&decode->model_->transformer(), decode->cache_.get(),
                                             decode->prefill_.get(), engine);
  decode->service_ =
      std::make_unique<DecodeServer>(decode->model_.get(), decode->engine_.get(), options.limits);
  GrpcServerOptions server;
  server.listen = "127.0.0.1:0";
  PDSERVE_ASSIGN_OR_RETURN(decode->server_,
                           StartGrpcServer(server, decode->service_.get(), &decode->port_));
  decode->stub_ = v1::GenerateService::NewStub(grpc::CreateChannel(
      absl::StrCat("127.0.0.1:", decode->port_), grpc::InsecureChannelCredentials()));
  return decode;
}

InProcessDecode::~InProcessDecode() {
  if (server_ != nullptr) server_->Shutdown(std::chrono::system_clock::now() + std::chrono::seconds(5));
  if (engine_ != nullptr) engine_->Shutdown();
  if (server_ != nullptr) server_->Wait();
}

std::vector<int32_t> GenerateOutcome::token_ids() const {
  std::vector<int32_t> ids;
  for (const v1::GenerateResponse& response : responses) ids.push_back(response.token_id());
  return ids;
}

std::string GenerateOutcome::text() const {
  std::string text;
  for (const v1::GenerateResponse& response : responses) text += response.text();
  return text;
}

GenerateOutcome RunGenerate(v1::GenerateService::Stub& stub, const v1::GenerateRequest& request,
                            int cancel_after, absl::Duration timeout) {
  grpc::ClientContext context;
  context.set_deadline(absl::ToChronoTime(absl::Now() + timeout));
  std::unique_ptr<grpc::ClientReader<v1::GenerateResponse>> reader =
      stub.Generate(&context, request);
  GenerateOutcome outcome;
  v1::GenerateResponse response;
  while (reader->Read(&response)) {
    outcome.responses.push_back(response);
    if (cancel_after >= 0 && static_cast<int>(outcome.responses.size()) >= cancel_after) {
      context.TryCancel();
    }
  }
  outcome.status = reader->Finish();
  return outcome;
}

int ProcessThreadCount() {
  std::ifstream status("/proc/self/status");
  std::string line;
  while (std::getline(status, line)) {
    if (line.rfind("Threads:", 0) == 0) return std::stoi(line.substr(8));
  }
  return -1;
}

}  // namespace pdserve
