// Models and prompts the decode service's tests share.
#ifndef PDSERVE_TESTS_DECODE_SERVICE_TEST_MODELS_H_
#define PDSERVE_TESTS_DECODE_SERVICE_TEST_MODELS_H_

#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "pdserve/v1/generate.pb.h"

#include "tests/testing/random_checkpoint.h"

namespace pdserve {

// A small Llama-shaped checkpoint with random weights (2 layers, hidden 64,
// Llama 2's tokenizer): a model that is not stories260K.
RandomCheckpointOptions SmallLlamaCheckpoint();

// Eight story openings for stories260K, for batching tests.
const std::vector<std::string>& StoryPrompts();

// Phi3Tiny() written to `dir` with Phi-3-mini's real chat template
// (tests/data/chat_templates/phi3_mini_4k_instruct.jinja) and added-token
// flags (tests/data/tokenizers/phi3_mini_4k_instruct) in
// tokenizer_config.json, and a generation_config.json that lists only
// <|endoftext|> (32000) as EOS: chat requests must still end on <|end|>.
absl::Status WritePhi3ChatCheckpoint(const std::string& dir);

// The "three_turn" conversation of tests/data/golden/phi3_chat_ids.json
// (system, user, assistant, user; add_generation_prompt true) and the ids
// Hugging Face's apply_chat_template gives for it.
struct GoldenChat {
  std::vector<std::pair<std::string, std::string>> messages;  // (role, content)
  std::vector<int32_t> ids;
};
absl::StatusOr<GoldenChat> LoadPhi3ThreeTurnChat();
// `chat`'s messages as a GenerateRequest's `messages`.
v1::GenerateRequest ChatRequest(const GoldenChat& chat);

}  // namespace pdserve

#endif  // PDSERVE_TESTS_DECODE_SERVICE_TEST_MODELS_H_
