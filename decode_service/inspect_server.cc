#include "decode_service/inspect_server.h"

#include <glog/logging.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <memory>
#include <mutex>
#include <string>
#include <utility>

#include "absl/strings/str_cat.h"
#include "decode_service/host_logits.h"
#include "proto/convert/convert.h"
#include "shared/logprobs.h"
#include "shared/module_summary.h"

namespace pdserve {
namespace {

void ToProto(const ModuleSummary& summary, v1::ModuleNode* out) {
  out->set_name(summary.name);
  out->set_type(summary.type);
  out->set_extra(summary.extra);
  out->set_repeat(summary.repeat);
  out->set_parameters(summary.parameters);
  out->mutable_weight_shape()->Assign(summary.weight_shape.begin(), summary.weight_shape.end());
  out->set_tied_to(summary.tied_to);
  for (const ModuleSummary& child : summary.children) ToProto(child, out->add_children());
}

// Shape [1, n, hidden] and, when asked for, the rows at `positions` of
// `rows` ([n, hidden]).
void FillTensorView(const InspectPlan& plan, int hidden, std::span<const float> rows,
                    v1::TensorView* out) {
  out->add_shape(1);
  out->add_shape(static_cast<int64_t>(plan.token_ids.size()));
  out->add_shape(hidden);
  if (!plan.include_values) return;
  for (int32_t position : plan.positions) {
    out->add_positions(position);
    const std::span<const float> row = rows.subspan(static_cast<size_t>(position) * hidden, hidden);
    out->mutable_values()->Add(row.begin(), row.end());
  }
}

// Whether Inspect needs the final norm of positions other than the last
// (FinalHidden alone covers the last).
bool NeedsAllPositions(const InspectPlan& plan) {
  const int last = static_cast<int>(plan.token_ids.size()) - 1;
  return plan.include_values && std::any_of(plan.positions.begin(), plan.positions.end(),
                                            [last](int32_t p) { return p != last; });
}

// One Inspect call. Finish comes from whichever of two parties is last:
// Start returning (it stores the prefill handle OnCancel needs) and the
// prefill's done callback (which fills the response); so the reactor, which
// OnDone deletes, outlives both.
class InspectReactor final : public grpc::ServerUnaryReactor {
 public:
  InspectReactor(const ServingModel* model, v1::InspectResponse* response)
      : model_(model), response_(response) {}

  void Start(InspectPrefillClient* prefill, InspectPlan plan, InspectPrefillRequest request) {
    plan_ = std::move(plan);
    std::shared_ptr<InspectPrefillCall> call = prefill->Start(
        std::move(request),
        [this](absl::StatusOr<InspectPrefillResult> result) { OnPrefill(std::move(result)); });
    bool cancel = false;
    {
      std::lock_guard<std::mutex> lock(mu_);
      call_ = call;
      cancel = cancelled_;
    }
    if (cancel) call->Cancel();
    Arrive();
  }

  void OnCancel() override {
    std::shared_ptr<InspectPrefillCall> call;
    {
      std::lock_guard<std::mutex> lock(mu_);
      cancelled_ = true;
      call = call_;
    }
    if (call != nullptr) call->Cancel();
  }

  void OnDone() override { delete this; }

 private:
  void OnPrefill(absl::StatusOr<InspectPrefillResult> result) {
    absl::Status status = result.ok() ? Fill(*result) : result.status();
    {
      std::lock_guard<std::mutex> lock(mu_);
      status_ = std::move(status);
    }
    Arrive();
  }

  // The last of Start and OnPrefill finishes the call.
  void Arrive() {
    grpc::Status status;
    {
      std::lock_guard<std::mutex> lock(mu_);
      if (--pending_ > 0) return;
      status = ToGrpcStatus(status_);
    }
    Finish(status);  // may delete this (OnDone)
  }

  absl::Status Fill(const InspectPrefillResult& result) {
    const ModelConfig& config = model_->config();
    const int hidden = config.hidden_size;
    const int n = static_cast<int>(plan_.token_ids.size());
    response_->set_prefill_ms(result.prefill_ms);
    response_->set_kv_dtype(ToProto(result.kv_dtype));
    for (int layer = 0; layer < config.num_layers; ++layer) {
      v1::KvCacheLayer* kv = response_->add_kv_cache();
      kv->set_layer(layer);
      for (auto* shape : {kv->mutable_key_shape(), kv->mutable_value_shape()}) {
        for (int64_t d :
             {int64_t{1}, int64_t{config.num_kv_heads}, int64_t{n}, int64_t{config.head_dim}}) {
          shape->Add(d);
        }
      }
    }
    // The final norm of every position when fetched; otherwise only the
    // last row is real (FinalHidden) and only it is read.
    std::vector<float> final_rows;
    if (auto all = result.hidden_states.find(config.num_layers);
        all != result.hidden_states.end()) {
      final_rows = all->second;
    } else {
      final_rows.assign(static_cast<size_t>(n) * hidden, 0.0f);
      std::copy(result.final_hidden.begin(), result.final_hidden.end(), final_rows.end() - hidden);
    }
    FillTensorView(plan_, hidden, final_rows, response_->mutable_final_hidden());
    for (int32_t layer : plan_.layers) {
      v1::LayerHiddenStates* states = response_->add_hidden_states();
      states->set_layer(layer);
      const auto rows = result.hidden_states.find(layer);
      FillTensorView(plan_, hidden,
                     rows == result.hidden_states.end() ? std::span<const float>()
                                                        : std::span<const float>(rows->second),
                     states->mutable_hidden());
    }

    // softmax(lm_head · h) of the last position: the model's next-token
    // distribution, before any sampling transform.
    absl::StatusOr<std::vector<float>> logits =
        HostLogits(model_->weights().lm_head, result.final_hidden);
    if (!logits.ok()) return absl::InternalError(logits.status().message());
    LogSoftmax(*logits, *logits);
    for (const TokenLogprob& top : TopLogprobs(*logits, plan_.top_k)) {
      v1::NextToken* next = response_->add_next_tokens();
      next->set_id(top.id);
      next->set_piece(model_->tokenizer().IdToPiece(top.id));
      next->set_logprob(top.logprob);
      next->set_probability(std::exp(top.logprob));
    }
    return absl::OkStatus();
  }

  const ServingModel* const model_;
  v1::InspectResponse* const response_;
  InspectPlan plan_;

  std::mutex mu_;
  std::shared_ptr<InspectPrefillCall> call_;  // guarded by mu_
  bool cancelled_ = false;                    // guarded by mu_
  absl::Status status_;                       // guarded by mu_
  int pending_ = 2;                           // guarded by mu_: Start and OnPrefill
};

absl::Time DeadlineOf(const grpc::CallbackServerContext& context) {
  const std::chrono::system_clock::time_point deadline = context.deadline();
  if (deadline == std::chrono::system_clock::time_point::max()) return absl::InfiniteFuture();
  return absl::FromChrono(deadline);
}

}  // namespace

absl::StatusOr<InspectPlan> PlanInspect(const v1::InspectRequest& request,
                                        const Tokenizer& tokenizer, const ModelConfig& config) {
  if (request.prompt().empty()) {
    return absl::InvalidArgumentError("prompt: empty; Inspect needs text to run through the model");
  }
  InspectPlan plan;
  const int max_top_k = std::min(kMaxInspectTopK, config.vocab_size);
  plan.top_k = request.has_top_k() ? request.top_k() : 5;
  if (plan.top_k < 1 || plan.top_k > max_top_k) {
    return absl::InvalidArgumentError(absl::StrCat("top_k: ", plan.top_k, " outside [1, ",
                                                   max_top_k, "] (min(", kMaxInspectTopK,
                                                   ", vocab_size ", config.vocab_size, "))"));
  }
  for (int i = 0; i < request.hidden_state_layers_size(); ++i) {
    const int32_t layer = request.hidden_state_layers(i);
    if (layer < -1 || layer >= config.num_layers) {
      return absl::InvalidArgumentError(absl::StrCat("hidden_state_layers[", i, "]: ", layer,
                                                     " outside [-1, num_layers=", config.num_layers,
                                                     ") (-1: the embeddings output)"));
    }
    if (std::find(plan.layers.begin(), plan.layers.end(), layer) != plan.layers.end()) {
      return absl::InvalidArgumentError(
          absl::StrCat("hidden_state_layers[", i, "]: layer ", layer, " asked for twice"));
    }
    plan.layers.push_back(layer);
  }
  const bool add_bos = request.has_add_bos() ? request.add_bos() : config.add_bos_token;
  plan.token_ids = tokenizer.Encode(request.prompt(), add_bos);
  const int n = static_cast<int>(plan.token_ids.size());
  if (n == 0) return absl::InvalidArgumentError("prompt: tokenizes to no tokens");
  if (n > config.max_position_embeddings) {
    return absl::InvalidArgumentError(absl::StrCat(
        "prompt: ", n, " tokens exceed max_position_embeddings ", config.max_position_embeddings));
  }
  for (int i = 0; i < request.hidden_positions_size(); ++i) {
    const int32_t asked = request.hidden_positions(i);
    if (asked < -n || asked >= n) {
      return absl::InvalidArgumentError(absl::StrCat("hidden_positions[", i, "]: ", asked,
                                                     " outside [-", n, ", ", n,
                                                     ") for a prompt of ", n, " tokens"));
    }
    const int32_t position = asked < 0 ? asked + n : asked;
    if (std::find(plan.positions.begin(), plan.positions.end(), position) != plan.positions.end()) {
      return absl::InvalidArgumentError(
          absl::StrCat("hidden_positions[", i, "]: position ", position, " asked for twice"));
    }
    plan.positions.push_back(position);
  }
  if (plan.positions.empty()) plan.positions.push_back(n - 1);
  plan.include_values = request.include_values();
  return plan;
}

absl::StatusOr<std::unique_ptr<InspectServer>> InspectServer::Create(
    const ServingModel* model, InspectPrefillClient* prefill, absl::Duration prefill_timeout) {
  absl::StatusOr<ModuleSummary> summary =
      SummarizeModules(model->config(), *model->weights().store);
  if (!summary.ok()) return summary.status();
  std::unique_ptr<InspectServer> server(new InspectServer(model, prefill, prefill_timeout));
  ToProto(*summary, &server->module_tree_);
  return server;
}

grpc::ServerUnaryReactor* InspectServer::Inspect(grpc::CallbackServerContext* context,
                                                 const v1::InspectRequest* request,
                                                 v1::InspectResponse* response) {
  absl::StatusOr<InspectPlan> plan = PlanInspect(*request, model_->tokenizer(), model_->config());
  if (!plan.ok()) {
    LOG(WARNING) << "inspect " << request->request_id() << ": rejected: " << plan.status();
    grpc::ServerUnaryReactor* reactor = context->DefaultReactor();
    reactor->Finish(ToGrpcStatus(plan.status()));
    return reactor;
  }
  // What needs no forward pass is filled now.
  for (int32_t id : plan->token_ids) {
    response->add_token_ids(id);
    response->add_pieces(model_->tokenizer().IdToPiece(id));
  }
  *response->mutable_model() = module_tree_;
  response->set_parameter_count(module_tree_.parameters());

  InspectPrefillRequest prefill_request;
  prefill_request.request_id = request->request_id();
  prefill_request.token_ids = plan->token_ids;
  prefill_request.all_positions = NeedsAllPositions(*plan);
  if (plan->include_values) prefill_request.hidden_state_layers = plan->layers;
  prefill_request.deadline = std::min(DeadlineOf(*context), absl::Now() + prefill_timeout_);
  auto* reactor = new InspectReactor(model_, response);
  reactor->Start(prefill_, std::move(*plan), std::move(prefill_request));
  return reactor;
}

}  // namespace pdserve
