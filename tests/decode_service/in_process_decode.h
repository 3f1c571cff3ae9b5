// The whole decode service (model, KV cache, prefill client, engine, gRPC
// server) in the test process, so tests can talk to it over loopback gRPC and
// still look at its KV pool and engine.
#ifndef PDSERVE_TESTS_DECODE_SERVICE_IN_PROCESS_DECODE_H_
#define PDSERVE_TESTS_DECODE_SERVICE_IN_PROCESS_DECODE_H_

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include <grpcpp/server.h>

#include "absl/status/statusor.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "decode_service/decode_server.h"
#include "decode_service/engine.h"
#include "decode_service/prefill_client.h"
#include "decode_service/serving_model.h"
#include "pdserve/v1/generate.grpc.pb.h"
#include "shared/kv_cache.h"

namespace pdserve {

struct InProcessDecodeOptions {
  std::string model_dir;
  std::string prefill_target;  // --prefill_target syntax
  int kv_cache_blocks = 256;
  int block_size = 16;
  int max_batch_size = 64;
  int max_queue = 256;
  absl::Duration prefill_timeout = absl::Seconds(60);
  RequestLimits limits;
  // Replaces generation_config.json's EOS ids when set.
  std::optional<std::vector<int32_t>> eos_token_ids;
};

class InProcessDecode {
 public:
  static absl::StatusOr<std::unique_ptr<InProcessDecode>> Start(
      const InProcessDecodeOptions& options);
  // Shuts the server and the engine down like pdserve-decode does.
  ~InProcessDecode();

  v1::GenerateService::Stub& stub() { return *stub_; }
  KvCache& cache() { return *cache_; }
  Engine& engine() { return *engine_; }
  ServingModel& model() { return *model_; }
  int port() const { return port_; }

 private:
  InProcessDecode() = default;
  std::unique_ptr<ServingModel> model_;
  std::unique_ptr<KvCache> cache_;
  std::unique_ptr<PrefillClient> prefill_;
  std::unique_ptr<Engine> engine_;
  std::unique_ptr<DecodeServer> service_;
  std::unique_ptr<grpc::Server> server_;
  std::unique_ptr<v1::GenerateService::Stub> stub_;
  int port_ = 0;
};

// What one Generate call produced.
struct GenerateOutcome {
  grpc::Status status;
  std::vector<v1::GenerateResponse> responses;

  std::vector<int32_t> token_ids() const;
  std::string text() const;  // the concatenated text deltas
};

// Runs Generate to its end with the synchronous client API. `cancel_after`
// >= 0: cancels the call once that many responses have arrived. `timeout`:
// the call's deadline.
GenerateOutcome RunGenerate(v1::GenerateService::Stub& stub, const v1::GenerateRequest& request,
                            int cancel_after = -1, absl::Duration timeout = absl::Seconds(120));

// Threads of this process, from /proc/self/status.
int ProcessThreadCount();

// Polls `condition` for up to `timeout`: for state the server updates after
// the client has already seen the stream end (blocks are freed by the engine
// thread, threads exit on their own schedule).
template <typename Condition>
bool Eventually(Condition condition, absl::Duration timeout = absl::Seconds(30)) {
  const absl::Time deadline = absl::Now() + timeout;
  while (!condition()) {
    if (absl::Now() > deadline) return false;
    absl::SleepFor(absl::Milliseconds(5));
  }
  return true;
}

}  // namespace pdserve

#endif  // PDSERVE_TESTS_DECODE_SERVICE_IN_PROCESS_DECODE_H_
