// Checks a GenerateRequest before any work is done for it and turns it into
// the engine's GenerationRequest.
#ifndef PDSERVE_DECODE_SERVICE_REQUEST_VALIDATION_H_
#define PDSERVE_DECODE_SERVICE_REQUEST_VALIDATION_H_

#include <cstdint>

#include "absl/status/statusor.h"
#include "decode_service/generation.h"
#include "pdserve/v1/generate.pb.h"
#include "shared/model_config.h"
#include "shared/tokenizer.h"

namespace pdserve {

struct RequestLimits {
  int max_new_tokens_cap = 2048;     // --max_new_tokens_cap
  int default_max_new_tokens = 128;  // --default_max_new_tokens (for max_new_tokens 0)
};

// INVALID_ARGUMENT naming the field and its limit, checked in this order:
//   prompt               empty
//   sampling.*           ValidateSamplingParams (temperature >= 0 and finite,
//                        top_k >= 0, top_p in (0, 1], repetition_penalty > 0)
//   stopping.max_new_tokens  negative
//   prompt               encodes to no tokens, or leaves no room for one new
//                        token within max_position_embeddings
//   stopping.max_new_tokens  prompt tokens + max_new_tokens beyond
//                        max_position_embeddings, then above
//                        limits.max_new_tokens_cap
// max_new_tokens 0 becomes limits.default_max_new_tokens, shortened to the
// room the context has left. An absent seed becomes `fallback_seed`; add_bos
// defaults to config.add_bos_token. The caller fills arrival and deadline.
absl::StatusOr<GenerationRequest> ValidateGenerateRequest(const v1::GenerateRequest& request,
                                                          const Tokenizer& tokenizer,
                                                          const ModelConfig& config,
                                                          const RequestLimits& limits,
                                                          uint64_t fallback_seed);

}  // namespace pdserve

#endif  // PDSERVE_DECODE_SERVICE_REQUEST_VALIDATION_H_
