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
#include "shared/sampler.h"

namespace pdserve {

// A validated request (see request_validation.h): every field is in range.
struct GenerationRequest {
  std::string request_id;        // the caller's id, for logs; may be empty
  std::vector<int32_t> prompt;   // token ids, BOS included when requested; non-empty
  SamplingParams sampling;       // validated; `seed` always set (drawn when absent)
  int max_new_tokens = 1;        // >= 1; prompt.size() + max_new_tokens <= context limit
  bool ignore_eos = false;       // keep generating past EOS tokens
  absl::Time arrival = absl::Now();               // when the RPC arrived (timings)
  absl::Time deadline = absl::InfiniteFuture();  // the client's deadline
};

// Why a sequence stopped. Mirrors pdserve.v1.FinishReason; a client cancel is
// reported as an error status (CANCELLED), not as a finish reason.
enum class FinishReason {
  kLength,  // max_new_tokens, the context limit, or no KV block left (engine.cc)
  kEos,     // one of generation_config.json's eos_token_id values
  kStop,    // a stop sequence (reserved: stop strings are not implemented yet)
};

// Milliseconds on this instance's clock.
struct GenerationTimings {
  double queue_ms = 0;    // arrival -> prefill call started
  double prefill_ms = 0;  // prefill call started -> last KV chunk written
  double ttft_ms = 0;     // arrival -> first token handed to the observer
  double decode_ms = 0;   // first token -> last token
  double total_ms = 0;    // arrival -> last token
};

// Attached to the last token of a sequence that finished normally.
struct GenerationSummary {
  FinishReason reason = FinishReason::kLength;
  int prompt_tokens = 0;
  int generated_tokens = 0;  // EOS included when it ended the sequence
  GenerationTimings timings;
};

// One generated token. (Later: logprobs and, for n > 1, the sample index
// belong here.)
struct TokenEvent {
  int32_t token_id = 0;
  int index = 0;        // 0-based among the generated tokens
  bool is_eos = false;  // an EOS id: not to be rendered as text
  std::optional<GenerationSummary> finish;  // set on the last token only
};

// Receives a request's tokens. Exactly one terminal call ends the stream:
// either OnToken with `finish` set, or OnError. Calls for one request never
// overlap; they come from the engine thread (OnToken) or from whichever
// thread ends the request (OnError), never with an engine lock held, so an
// observer may call Engine::Cancel from inside them. The observer must stay
// alive until its terminal call.
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
