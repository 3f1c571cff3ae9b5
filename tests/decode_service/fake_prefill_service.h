// An in-process pdserve.v1.PrefillService for the decode service's tests: it
// runs the real Transformer::Prefill (shared/) on its own CPU backend and
// streams the result, and can break the stream in the ways a faulty or dying
// prefill instance would.
#ifndef PDSERVE_TESTS_DECODE_SERVICE_FAKE_PREFILL_SERVICE_H_
#define PDSERVE_TESTS_DECODE_SERVICE_FAKE_PREFILL_SERVICE_H_

#include <condition_variable>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include <grpcpp/server.h>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "decode_service/serving_model.h"
#include "pdserve/v1/prefill.grpc.pb.h"
#include "shared/dtype.h"

namespace pdserve {

enum class PrefillFault {
  kNone,
  kDuplicateChunk,        // layer 0's first chunk twice
  kMissingChunk,          // the last layer's last chunk left out
  kShortChunk,            // the first chunk's k one element short
  kChunkPastPrompt,       // a chunk starting at num_tokens
  kWrongNumTokens,        // header.num_tokens one more than the prompt
  kWrongHeadDim,          // header.head_dim one more than the model's
  kNoFinalHidden,         // the FinalHidden message left out
  kFailAfterFirstLayer,   // return `fail_status` after layer 0
  kHoldAfterFirstChunk,   // stop after the first chunk until Release()
};

struct FakePrefillOptions {
  int chunk_tokens = 3;                // tokens per KvChunk
  DType wire_dtype = DType::kF32;      // F32, BF16 or F16 on the wire
  PrefillFault fault = PrefillFault::kNone;
  absl::Status fail_status = absl::ResourceExhaustedError("fake prefill: out of memory");
};

class FakePrefillService final : public v1::PrefillService::Service {
 public:
  explicit FakePrefillService(ServingModel* model) : model_(model) {}

  grpc::Status Prefill(grpc::ServerContext* context, const v1::PrefillRequest* request,
                       grpc::ServerWriter<v1::PrefillResponse>* writer) override;
  grpc::Status GetModelInfo(grpc::ServerContext* context, const v1::GetModelInfoRequest* request,
                            v1::ModelInfo* response) override;

  void set_options(const FakePrefillOptions& options);
  // kHoldAfterFirstChunk: true once a stream is held (false after `timeout`).
  bool WaitForHeld(absl::Duration timeout);
  // Lets held streams go on (and later ones pass).
  void Release();
  int calls() const;
  // The token ids of the latest Prefill request.
  std::vector<int32_t> last_token_ids() const;

 private:
  ServingModel* const model_;
  std::mutex model_mu_;  // one prefill at a time on the model

  mutable std::mutex mu_;
  std::condition_variable cv_;
  FakePrefillOptions options_;
  bool released_ = false;
  int held_ = 0;
  int calls_ = 0;
  std::vector<int32_t> last_token_ids_;
};

// The service on 127.0.0.1:<free port> with its own model.
class FakePrefillServer {
 public:
  static absl::StatusOr<std::unique_ptr<FakePrefillServer>> Start(const std::string& model_dir);
  ~FakePrefillServer();

  std::string address() const;  // "127.0.0.1:PORT"
  FakePrefillService& service() { return *service_; }
  ServingModel& model() { return *model_; }
  // Stops the server at once, breaking every stream in flight: the in-process
  // stand-in for a prefill instance that dies.
  void Kill();

 private:
  FakePrefillServer() = default;
  std::unique_ptr<ServingModel> model_;
  std::unique_ptr<FakePrefillService> service_;
  std::unique_ptr<grpc::Server> server_;
  int port_ = 0;
};

}  // namespace pdserve

#endif  // PDSERVE_TESTS_DECODE_SERVICE_FAKE_PREFILL_SERVICE_H_
