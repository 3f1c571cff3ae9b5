#include "decode_service/request_validation.h"

#include <algorithm>

#include "absl/strings/str_cat.h"
#include "shared/sampler.h"

namespace pdserve {

absl::StatusOr<GenerationRequest> ValidateGenerateRequest(const v1::GenerateRequest& request,
                                                          const Tokenizer& tokenizer,
                                                          const ModelConfig& config,
                                                          const RequestLimits& limits,
                                                          uint64_t fallback_seed) {
  if (request.prompt().empty()) {
    return absl::InvalidArgumentError("prompt: must not be empty");
  }

  GenerationRequest out;
  out.request_id = request.request_id();
  const v1::SamplingParams& sampling = request.sampling();
  out.sampling.temperature = sampling.temperature();
  out.sampling.top_k = sampling.top_k();
  out.sampling.top_p = sampling.has_top_p() ? sampling.top_p() : 1.0f;
  out.sampling.repetition_penalty =
      sampling.has_repetition_penalty() ? sampling.repetition_penalty() : 1.0f;
  out.sampling.seed = sampling.has_seed() ? sampling.seed() : fallback_seed;
  absl::Status sampling_ok = ValidateSamplingParams(out.sampling);
  if (!sampling_ok.ok()) {
    return sampling_ok;  // already names the field as sampling.NAME
  }

  const int requested = request.stopping().max_new_tokens();
  if (requested < 0) {
    return absl::InvalidArgumentError(absl::StrCat(
        "stopping.max_new_tokens: ", requested, " is negative (allowed 1..",
        limits.max_new_tokens_cap, ", or 0 for the server default of ",
        limits.default_max_new_tokens, ")"));
  }
  out.ignore_eos = request.stopping().ignore_eos();

  const bool add_bos = request.has_add_bos() ? request.add_bos() : config.add_bos_token;
  out.prompt = tokenizer.Encode(request.prompt(), add_bos);
  const int prompt_tokens = static_cast<int>(out.prompt.size());
  const int context = config.max_position_embeddings;
  if (prompt_tokens == 0) {
    return absl::InvalidArgumentError("prompt: encodes to no tokens");
  }
  if (prompt_tokens >= context) {
    return absl::InvalidArgumentError(absl::StrCat(
        "prompt: ", prompt_tokens, " tokens leave no room for a new token within the context "
        "limit of ", context, " tokens (max_position_embeddings)"));
  }
  if (requested > 0 && prompt_tokens + requested > context) {
    return absl::InvalidArgumentError(absl::StrCat(
        "stopping.max_new_tokens: ", requested, " new tokens after a prompt of ", prompt_tokens,
        " tokens exceed the context limit of ", context, " tokens (max_position_embeddings; at "
        "most ", context - prompt_tokens, " fit)"));
  }
  if (requested > limits.max_new_tokens_cap) {
    return absl::InvalidArgumentError(
        absl::StrCat("stopping.max_new_tokens: ", requested, " exceeds the server cap of ",
                     limits.max_new_tokens_cap, " (--max_new_tokens_cap)"));
  }
  out.max_new_tokens =
      requested > 0 ? requested
                    : std::min(limits.default_max_new_tokens, context - prompt_tokens);
  return out;
}

}  // namespace pdserve
