// Models and prompts the decode service's tests share.
#ifndef PDSERVE_TESTS_DECODE_SERVICE_TEST_MODELS_H_
#define PDSERVE_TESTS_DECODE_SERVICE_TEST_MODELS_H_

#include <string>
#include <vector>

#include "tests/testing/random_checkpoint.h"

namespace pdserve {

// A small Llama-shaped checkpoint with random weights (2 layers, hidden 64,
// Llama 2's tokenizer): a model that is not stories260K.
RandomCheckpointOptions SmallLlamaCheckpoint();

// Eight story openings for stories260K, for batching tests.
const std::vector<std::string>& StoryPrompts();

}  // namespace pdserve

#endif  // PDSERVE_TESTS_DECODE_SERVICE_TEST_MODELS_H_
