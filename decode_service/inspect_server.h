// pdserve.v1.InspectService on gRPC's callback API: a look inside the model
// for one prompt. The decode service tokenizes, describes the model from its
// config and tensor table, asks a prefill instance for the hidden states
// (InspectPrefillClient: no KV moves), and computes the next-token
// distribution from the final hidden state on the host (HostLogits), so
// Inspect never waits for the decode engine's thread.
#ifndef PDSERVE_DECODE_SERVICE_INSPECT_SERVER_H_
#define PDSERVE_DECODE_SERVICE_INSPECT_SERVER_H_

#include <cstdint>
#include <vector>

#include <grpcpp/support/server_callback.h>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "decode_service/inspect_client.h"
#include "decode_service/serving_model.h"
#include "pdserve/v1/inspect.grpc.pb.h"

namespace pdserve {

// Inspect's request, checked and resolved against the tokenized prompt.
struct InspectPlan {
  std::vector<int32_t> token_ids;
  int top_k = 5;
  std::vector<int32_t> positions;  // 0-based, in the order asked for
  std::vector<int32_t> layers;     // hidden_state_layers, in the order asked for
  bool include_values = false;
};

// The largest top_k Inspect serves (and never more than the vocabulary).
inline constexpr int kMaxInspectTopK = 100;

// INVALID_ARGUMENT naming the field and its limit: an empty prompt, one
// beyond max_position_embeddings once tokenized, top_k outside
// [1, min(100, vocab_size)], a hidden_state_layers entry outside
// [-1, num_layers) or repeated, a hidden_positions entry outside
// [-n, n) or naming a position twice.
absl::StatusOr<InspectPlan> PlanInspect(const v1::InspectRequest& request,
                                        const Tokenizer& tokenizer, const ModelConfig& config);

class InspectServer final : public v1::InspectService::CallbackService {
 public:
  // `model` and `prefill` must outlive the server and every call on it.
  // Each call's prefill gets the client's deadline, capped at
  // `prefill_timeout`. Errors: those of SummarizeModules.
  static absl::StatusOr<std::unique_ptr<InspectServer>> Create(const ServingModel* model,
                                                               InspectPrefillClient* prefill,
                                                               absl::Duration prefill_timeout);

  // See inspect.proto. A client cancel stops the prefill call.
  grpc::ServerUnaryReactor* Inspect(grpc::CallbackServerContext* context,
                                    const v1::InspectRequest* request,
                                    v1::InspectResponse* response) override;

 private:
  InspectServer(const ServingModel* model, InspectPrefillClient* prefill,
                absl::Duration prefill_timeout)
      : model_(model), prefill_(prefill), prefill_timeout_(prefill_timeout) {}

  const ServingModel* const model_;
  InspectPrefillClient* const prefill_;
  const absl::Duration prefill_timeout_;
  v1::ModuleNode module_tree_;  // the same for every call
};

}  // namespace pdserve

#endif  // PDSERVE_DECODE_SERVICE_INSPECT_SERVER_H_
