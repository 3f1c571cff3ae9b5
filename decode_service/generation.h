// What the decode engine is asked to generate, what it reports back per
// token, and the observer interface it reports through. No gRPC here: the
// server (decode_server.cc) converts between these and pdserve.v1 messages.
#ifndef PDSERVE_DECODE_SERVICE_GENERATION_H_
#define PDSERVE_DECODE_SERVICE_GENERATION_H_

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/time/time.h"
#include "shared/logprobs.h"
#include "shared/sampler.h"

namespace pdserve {

// A validated request (see request_validation.h): every field is in range.
struct GenerationRequest {
  std::string request_id;        // the caller's id, for logs; may be empty
  std::vector<int32_t> prompt;   // token ids, BOS included when requested; non-empty
  SamplingParams sampling;       // validated; `seed` always set (drawn when absent)
  int max_new_tokens = 1;        // >= 1; prompt.size() + max_new_tokens <= context limit
  bool ignore_eos = false;       // keep generating past EOS tokens (both kinds below)
  // EOS ids for this request on top of the engine's (EngineOptions): a chat
  // format's end-of-turn tokens, e.g. Phi-3's <|end|>. FinishReason::kEos.
  std::vector<int32_t> extra_eos_token_ids;
  // Ids that end a sample with FinishReason::kStop (never ignored); streamed
  // with no text, like EOS.
  std::vector<int32_t> stop_token_ids;
  // Stop strings (StopMatcher): matched on the sample's text across token
  // boundaries; the text up to the match is sent, the match and the rest
  // are not. FinishReason::kStop. Needs EngineOptions::tokenizer.
  std::vector<std::string> stop;
  // Samples of the prompt, >= 1 and <= EngineOptions::max_batch_size; all
  // share one prefill and its KV blocks (copy-on-write).
  int num_samples = 1;
  bool logprobs = false;  // TokenEvent::logprob for every token
  int top_logprobs = 0;   // [0, kMaxTopLogprobs]: TokenEvent::top_logprobs
  // < 0: off; [0, kMaxTopLogprobs]: TokenEvent::prompt_logprobs with this
  // many alternatives (the prefill sends every position's hidden state).
  int prompt_logprobs = -1;
  absl::Time arrival = absl::Now();               // when the RPC arrived (timings)
  absl::Time deadline = absl::InfiniteFuture();  // the client's deadline
};

// Why a sample stopped. Mirrors pdserve.v1.FinishReason; a client cancel is
// reported as an error status (CANCELLED), not as a finish reason.
enum class FinishReason {
  kLength,  // max_new_tokens, the context limit, or no KV block left (engine.cc)
  kEos,     // one of generation_config.json's eos_token_id values (or extra_eos_token_ids)
  kStop,    // a stop string or one of stop_token_ids
};

// Milliseconds on this instance's clock. queue, prefill, transfer and ttft
// belong to the request (every sample has the same); decode and total to the
// sample.
struct GenerationTimings {
  double queue_ms = 0;    // arrival -> prefill call started
  double prefill_ms = 0;  // prefill call started -> last KV chunk written
  double prefill_compute_ms = 0;  // the prefill instance's forward pass, as it reports it
  double transfer_ms = 0;  // max(0, prefill_ms - prefill_compute_ms)
  double ttft_ms = 0;     // arrival -> first token handed to the observer
  double decode_ms = 0;   // the sample's first token -> its last token
  double total_ms = 0;    // arrival -> the sample's last token
};

// Attached to the last token of a sample that finished normally.
struct GenerationSummary {
  FinishReason reason = FinishReason::kLength;
  int prompt_tokens = 0;
  int generated_tokens = 0;  // this sample's, the final token (EOS, stop id) included
  // Set on the request's terminal event only (TokenEvent::ends_request):
  // generated tokens of all samples; 0 elsewhere.
  int total_generated_tokens = 0;
  GenerationTimings timings;
};

// A prompt token's log-probability given the tokens before it.
struct PromptTokenLogprob {
  int position = 0;  // [1, prompt length)
  int32_t token_id = 0;
  float logprob = 0.0f;
  std::vector<TokenLogprob> top_logprobs;
};

// One generated token of one sample.
struct TokenEvent {
  int32_t token_id = 0;
  int index = 0;         // 0-based among this sample's generated tokens
  int sample_index = 0;  // [0, num_samples)
  bool is_eos = false;   // an EOS id: not rendered as text
  // The UTF-8 text this token adds to the sample (complete characters only;
  // EOS ids and stop ids add none; a stop string and what follows it are cut;
  // the final event adds whatever was held back). Empty without a tokenizer.
  std::string text;
  // With GenerationRequest::logprobs or top_logprobs > 0: token_id's
  // log-probability under log_softmax of the raw logits (logprobs.h).
  std::optional<float> logprob;
  std::vector<TokenLogprob> top_logprobs;  // top_logprobs > 0: most likely first
  // prompt_logprobs >= 0: on the request's first event only (sample 0's
  // first token), positions 1.. of the prompt in order.
  std::vector<PromptTokenLogprob> prompt_logprobs;
  std::optional<GenerationSummary> finish;  // set on the sample's last token only
  bool ends_request = false;  // the last sample finished: the terminal call
};

// Receives a request's tokens, the samples' interleaved. Exactly one terminal
// call ends the stream: either the OnToken with `ends_request` set (the last
// sample's final token; every other sample has had its token with `finish`
// before), or OnError, which ends every sample still running. Calls for one
// request never overlap; they come from the engine thread (OnToken) or from
// whichever thread ends the request (OnError), never with an engine lock
// held, so an observer may call Engine::Cancel from inside them. The observer
// must stay alive until its terminal call.
class GenerationObserver {
 public:
  virtual ~GenerationObserver() = default;
  virtual void OnToken(const TokenEvent& event) = 0;
  // CANCELLED (client cancel), UNAVAILABLE (prefill unreachable, shutdown),
  // FAILED_PRECONDITION (prefill serves another model), DEADLINE_EXCEEDED,
  // INTERNAL (a backend failure or a malformed prefill stream).
  virtual void OnError(const absl::Status& status) = 0;
};

}  // namespace pdserve

#endif  // PDSERVE_DECODE_SERVICE_GENERATION_H_
