#include "decode_service/request_validation.h"

#include <algorithm>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "shared/logprobs.h"
#include "shared/sampler.h"
#include "shared/stop_matcher.h"

namespace pdserve {
namespace {

absl::Status CheckStopping(const v1::StoppingCriteria& stopping, const ModelConfig& config,
                           const RequestLimits& limits) {
  if (stopping.stop_token_ids_size() > limits.max_stop_token_ids) {
    return absl::InvalidArgumentError(
        absl::StrCat("stopping.stop_token_ids: ", stopping.stop_token_ids_size(), " ids; at most ",
                     limits.max_stop_token_ids, " are allowed"));
  }
  for (int i = 0; i < stopping.stop_token_ids_size(); ++i) {
    const int32_t id = stopping.stop_token_ids(i);
    if (id < 0 || id >= config.vocab_size) {
      return absl::InvalidArgumentError(absl::StrCat("stopping.stop_token_ids[", i, "]: ", id,
                                                     " outside [0, ", config.vocab_size,
                                                     ") (the model's vocab_size)"));
    }
  }
  const std::vector<std::string> stops(stopping.stop().begin(), stopping.stop().end());
  absl::Status stops_ok =
      ValidateStopStrings(stops, limits.max_stop_strings, limits.max_stop_bytes);
  if (!stops_ok.ok()) {
    // ValidateStopStrings names entries "stop[i]"; ours live in `stopping`.
    return absl::InvalidArgumentError(absl::StrCat("stopping.", stops_ok.message()));
  }
  return absl::OkStatus();
}

absl::Status CheckOutput(const v1::OutputOptions& output, const RequestLimits& limits) {
  if (output.top_logprobs() < 0 || output.top_logprobs() > kMaxTopLogprobs) {
    return absl::InvalidArgumentError(absl::StrCat("output.top_logprobs: ", output.top_logprobs(),
                                                   " outside [0, ", kMaxTopLogprobs, "]"));
  }
  if (output.has_prompt_logprobs() &&
      (output.prompt_logprobs() < 0 || output.prompt_logprobs() > kMaxTopLogprobs)) {
    return absl::InvalidArgumentError(
        absl::StrCat("output.prompt_logprobs: ", output.prompt_logprobs(), " outside [0, ",
                     kMaxTopLogprobs, "]"));
  }
  if (output.n() < 0 || output.n() > limits.max_samples) {
    return absl::InvalidArgumentError(absl::StrCat("output.n: ", output.n(), " outside [0, ",
                                                   limits.max_samples,
                                                   "] (--max_samples; 0 means 1)"));
  }
  return absl::OkStatus();
}

}  // namespace

std::vector<int32_t> ChatEndOfTurnIds(ChatFormat format, const Tokenizer& tokenizer) {
  std::vector<int32_t> ids;
  if (format != ChatFormat::kPhi3) {
    ids.push_back(tokenizer.eos_id());
    return ids;
  }
  for (const char* marker : {"<|end|>", "<|endoftext|>"}) {
    // Encode splits on added tokens first: a known marker is one added id.
    const std::vector<int32_t> encoded = tokenizer.Encode(marker, /*add_bos=*/false);
    if (encoded.size() == 1 && tokenizer.IsAddedToken(encoded[0])) ids.push_back(encoded[0]);
  }
  return ids;
}

absl::StatusOr<GenerationRequest> ValidateGenerateRequest(const v1::GenerateRequest& request,
                                                          const Tokenizer& tokenizer,
                                                          const ModelConfig& config,
                                                          const RequestLimits& limits,
                                                          uint64_t fallback_seed) {
  const absl::StatusOr<ChatFormat> no_chat =
      absl::FailedPreconditionError("messages: this service was started without chat support");
  return ValidateGenerateRequest(request, tokenizer, config, no_chat, limits, fallback_seed);
}

int64_t MaxPromptBytes(const RequestLimits& limits, const ModelConfig& config) {
  constexpr int64_t kDefaultBytesPerToken = 64;
  if (limits.max_prompt_bytes > 0) return limits.max_prompt_bytes;
  return kDefaultBytesPerToken * std::max(1, config.max_position_embeddings);
}

absl::StatusOr<GenerationRequest> ValidateGenerateRequest(
    const v1::GenerateRequest& request, const Tokenizer& tokenizer, const ModelConfig& config,
    const absl::StatusOr<ChatFormat>& chat_format, const RequestLimits& limits,
    uint64_t fallback_seed) {
  const bool chat = request.has_messages();
  if (!chat && request.prompt().empty()) {
    return absl::InvalidArgumentError("prompt: must not be empty (or send messages instead)");
  }
  if (chat && request.messages().messages().empty()) {
    return absl::InvalidArgumentError(
        "messages: the list is empty; a chat request needs at least one message");
  }
  if (chat && request.has_add_bos()) {
    return absl::InvalidArgumentError(
        "add_bos: applies to prompt only; with messages the chat format decides about BOS");
  }
  int64_t text_bytes = static_cast<int64_t>(request.prompt().size());
  if (chat) {
    text_bytes = 0;
    for (const v1::ChatMessage& message : request.messages().messages()) {
      text_bytes += static_cast<int64_t>(message.content().size());
    }
  }
  if (const int64_t max_bytes = MaxPromptBytes(limits, config); text_bytes > max_bytes) {
    return absl::InvalidArgumentError(absl::StrCat(chat ? "messages" : "prompt", ": ", text_bytes,
                                                   " bytes of text exceed the limit of ", max_bytes,
                                                   " bytes (--max_prompt_bytes; the context holds ",
                                                   config.max_position_embeddings, " tokens)"));
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
  out.sampling.min_p = sampling.min_p();
  out.sampling.presence_penalty = sampling.presence_penalty();
  out.sampling.frequency_penalty = sampling.frequency_penalty();
  absl::Status sampling_ok = ValidateSamplingParams(out.sampling);
  if (!sampling_ok.ok()) {
    return sampling_ok;  // already names the field as sampling.NAME
  }

  const int requested = request.stopping().max_new_tokens();
  if (requested < 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("stopping.max_new_tokens: ", requested, " is negative (allowed 1..",
                     limits.max_new_tokens_cap, ", or 0 for the server default of ",
                     limits.default_max_new_tokens, ")"));
  }
  out.ignore_eos = request.stopping().ignore_eos();
  absl::Status stopping_ok = CheckStopping(request.stopping(), config, limits);
  if (!stopping_ok.ok()) return stopping_ok;
  out.stop_token_ids.assign(request.stopping().stop_token_ids().begin(),
                            request.stopping().stop_token_ids().end());
  out.stop.assign(request.stopping().stop().begin(), request.stopping().stop().end());

  absl::Status output_ok = CheckOutput(request.output(), limits);
  if (!output_ok.ok()) return output_ok;
  out.num_samples = std::max(1, request.output().n());
  out.top_logprobs = request.output().top_logprobs();
  out.logprobs = request.output().logprobs() || out.top_logprobs > 0;
  out.prompt_logprobs =
      request.output().has_prompt_logprobs() ? request.output().prompt_logprobs() : -1;

  if (chat) {
    if (!chat_format.ok()) return chat_format.status();
    std::vector<ChatMessage> messages;
    for (const v1::ChatMessage& message : request.messages().messages()) {
      messages.push_back(ChatMessage{message.role(), message.content()});
    }
    absl::StatusOr<std::vector<int32_t>> ids =
        EncodeChat(tokenizer, *chat_format, messages, /*add_generation_prompt=*/true);
    if (!ids.ok()) return ids.status();  // names messages[i]
    out.prompt = std::move(ids).value();
    out.extra_eos_token_ids = ChatEndOfTurnIds(*chat_format, tokenizer);
  } else {
    const bool add_bos = request.has_add_bos() ? request.add_bos() : config.add_bos_token;
    out.prompt = tokenizer.Encode(request.prompt(), add_bos);
  }
  const char* const input = chat ? "messages" : "prompt";
  const int prompt_tokens = static_cast<int>(out.prompt.size());
  const int context = config.max_position_embeddings;
  if (prompt_tokens == 0) {
    return absl::InvalidArgumentError(absl::StrCat(input, ": encodes to no tokens"));
  }
  if (prompt_tokens >= context) {
    return absl::InvalidArgumentError(
        absl::StrCat(input, ": ", prompt_tokens,
                     " tokens leave no room for a new token within the context "
                     "limit of ",
                     context, " tokens (max_position_embeddings)"));
  }
  if (requested > 0 && prompt_tokens + requested > context) {
    return absl::InvalidArgumentError(absl::StrCat("stopping.max_new_tokens: ", requested,
                                                   " new tokens after a prompt of ", prompt_tokens,
                                                   " tokens exceed the context limit of ", context,
                                                   " tokens (max_position_embeddings; at "
                                                   "most ",
                                                   context - prompt_tokens, " fit)"));
  }
  if (requested > limits.max_new_tokens_cap) {
    return absl::InvalidArgumentError(
        absl::StrCat("stopping.max_new_tokens: ", requested, " exceeds the server cap of ",
                     limits.max_new_tokens_cap, " (--max_new_tokens_cap)"));
  }
  out.max_new_tokens =
      requested > 0 ? requested : std::min(limits.default_max_new_tokens, context - prompt_tokens);
  return out;
}

}  // namespace pdserve
