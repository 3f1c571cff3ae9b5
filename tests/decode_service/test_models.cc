#include "tests/decode_service/test_models.h"

namespace pdserve {

RandomCheckpointOptions SmallLlamaCheckpoint() {
  RandomCheckpointOptions options;
  options.architecture = "LlamaForCausalLM";
  options.num_layers = 2;
  options.hidden_size = 64;
  options.num_heads = 8;
  options.num_kv_heads = 4;
  options.intermediate_size = 96;
  options.vocab_size = 32000;
  options.max_position_embeddings = 512;
  options.dtype = DType::kF32;
  options.seed = 7;
  return options;
}

const std::vector<std::string>& StoryPrompts() {
  static const std::vector<std::string>* const prompts = new std::vector<std::string>{
      "Once upon a time",    "The little dog", "Lily and Tom went to", "One day, a big bird",
      "The sun was hot and", "Mom said",       "There was a tree",     "Ben liked to play with his"};
  return *prompts;
}

}  // namespace pdserve
