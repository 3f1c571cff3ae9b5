// Checks a GenerateRequest before any work is done for it and turns it into
// the engine's GenerationRequest.
#ifndef PDSERVE_DECODE_SERVICE_REQUEST_VALIDATION_H_
#define PDSERVE_DECODE_SERVICE_REQUEST_VALIDATION_H_

#include <cstdint>
#include <vector>

#include "absl/status/statusor.h"
#include "decode_service/generation.h"
#include "pdserve/v1/generate.pb.h"
#include "shared/chat_template.h"
#include "shared/model_config.h"
#include "shared/tokenizer.h"

namespace pdserve {

struct RequestLimits {
  int max_new_tokens_cap = 2048;     // --max_new_tokens_cap
  int default_max_new_tokens = 128;  // --default_max_new_tokens (for max_new_tokens 0)
  int max_samples = 16;              // --max_samples: the largest output.n
  int max_stop_strings = 16;         // entries of stopping.stop
  int max_stop_bytes = 256;          // bytes of one stop string
  int max_stop_token_ids = 64;       // entries of stopping.stop_token_ids
  // Bytes of prompt text (or of all messages' contents) accepted before
  // tokenizing: tokenizing is the one step whose cost grows with the text,
  // and it runs on gRPC's threads, so an oversized prompt must not reach it
  // (a 16 MB prompt held other callers for ~15 s). 0: 64 bytes per token of
  // max_position_embeddings (32 KiB for a 512-token context), far more
  // than any prompt that fits needs. --max_prompt_bytes.
  int64_t max_prompt_bytes = 0;
};

// limits.max_prompt_bytes, or its default for `config` when 0.
int64_t MaxPromptBytes(const RequestLimits& limits, const ModelConfig& config);

// INVALID_ARGUMENT naming the field and its limit, checked in this order:
//   prompt / messages    neither given, an empty prompt, or an empty
//                        messages list; add_bos set together with messages;
//                        more text than MaxPromptBytes (checked before
//                        anything is tokenized)
//   sampling.*           ValidateSamplingParams (temperature >= 0 and finite,
//                        top_k >= 0, top_p in (0, 1], repetition_penalty > 0,
//                        min_p in [0, 1], presence_penalty and
//                        frequency_penalty in [-2, 2])
//   stopping.max_new_tokens  negative
//   stopping.stop_token_ids  more than limits.max_stop_token_ids, or an id
//                        outside [0, vocab_size)
//   stopping.stop        more than limits.max_stop_strings, or an entry
//                        empty, longer than limits.max_stop_bytes or not UTF-8
//   output.top_logprobs  outside [0, kMaxTopLogprobs = 20]
//   output.prompt_logprobs  set and outside [0, 20]
//   output.n             outside [0, limits.max_samples] (0 means 1)
//   messages             `chat_format`'s error (FAILED_PRECONDITION naming
//                        the model directory when it has no known chat
//                        format), or EncodeChat's INVALID_ARGUMENT naming
//                        messages[i] (role unknown or out of order)
//   prompt               encodes to no tokens, or leaves no room for one new
//                        token within max_position_embeddings
//   stopping.max_new_tokens  prompt tokens + max_new_tokens beyond
//                        max_position_embeddings, then above
//                        limits.max_new_tokens_cap
// max_new_tokens 0 becomes limits.default_max_new_tokens, shortened to the
// room the context has left. An absent seed becomes `fallback_seed`; add_bos
// defaults to config.add_bos_token. `messages` are rendered with
// EncodeChat(format, add_generation_prompt = true), and the format's
// end-of-turn tokens become extra EOS ids (ChatEndOfTurnIds). The caller
// fills arrival and deadline.
absl::StatusOr<GenerationRequest> ValidateGenerateRequest(
    const v1::GenerateRequest& request, const Tokenizer& tokenizer, const ModelConfig& config,
    const absl::StatusOr<ChatFormat>& chat_format, const RequestLimits& limits,
    uint64_t fallback_seed);

// As above for a model without chat support: requests with `messages` get
// FAILED_PRECONDITION.
absl::StatusOr<GenerationRequest> ValidateGenerateRequest(const v1::GenerateRequest& request,
                                                          const Tokenizer& tokenizer,
                                                          const ModelConfig& config,
                                                          const RequestLimits& limits,
                                                          uint64_t fallback_seed);

// The ids that end an assistant turn in `format`, looked up in the
// tokenizer's vocabulary and added tokens (so they count even when
// generation_config.json lists only some of them): Phi-3 "<|end|>" and
// "<|endoftext|>"; Llama-2-chat and Mistral-instruct "</s>" (eos_id). A
// marker the tokenizer does not have as one token is left out.
std::vector<int32_t> ChatEndOfTurnIds(ChatFormat format, const Tokenizer& tokenizer);

}  // namespace pdserve

#endif  // PDSERVE_DECODE_SERVICE_REQUEST_VALIDATION_H_
