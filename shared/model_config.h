// Model hyperparameters read from a Hugging Face model directory.
#ifndef PDSERVE_SHARED_MODEL_CONFIG_H_
#define PDSERVE_SHARED_MODEL_CONFIG_H_

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "shared/dtype.h"

namespace pdserve {

// Everything the forward pass, the tokenizer front end and the services need
// to know about a decoder-only model. Sources:
//   config.json            architecture and shapes (LlamaForCausalLM,
//                          MistralForCausalLM, Phi3ForCausalLM)
//   generation_config.json eos_token_id (an int or a list), bos_token_id
//   tokenizer_config.json  add_bos_token (Llama: true; Phi-3: false)
struct ModelConfig {
  std::string architecture;  // e.g. "Phi3ForCausalLM"
  std::string model_type;    // e.g. "phi3", "llama", "mistral"
  int vocab_size = 0;        // rows of the embedding and lm_head
  int hidden_size = 0;
  int intermediate_size = 0;  // FFN width
  int num_layers = 0;         // num_hidden_layers
  int num_heads = 0;          // num_attention_heads
  int num_kv_heads = 0;       // num_key_value_heads (defaults to num_heads)
  int head_dim = 0;           // defaults to hidden_size / num_heads
  float rms_norm_eps = 1e-5f;
  float rope_theta = 10000.0f;
  int max_position_embeddings = 0;  // the context limit, in tokens
  bool tie_word_embeddings = false;  // lm_head shares embed_tokens
  DType torch_dtype = DType::kF32;   // checkpoint dtype ("float32", "bfloat16", "float16")
  int bos_token_id = -1;             // -1: none
  std::vector<int32_t> eos_token_ids;  // generation_config.json wins over config.json
  bool add_bos_token = true;           // tokenizer_config.json; default true (Llama)
};

// Reads `model_dir`/config.json and, where present, generation_config.json and
// tokenizer_config.json. Errors: NOT_FOUND when config.json is missing;
// INVALID_ARGUMENT naming the field for a JSON error, an unsupported
// architecture, a missing or non-positive dimension, or num_heads not a
// multiple of num_kv_heads; UNIMPLEMENTED for rope_scaling other than null.
absl::StatusOr<ModelConfig> LoadModelConfig(const std::string& model_dir);

// As LoadModelConfig, from JSON text (the last two may be empty strings).
absl::StatusOr<ModelConfig> ParseModelConfig(const std::string& config_json,
                                             const std::string& generation_config_json,
                                             const std::string& tokenizer_config_json);

}  // namespace pdserve

#endif  // PDSERVE_SHARED_MODEL_CONFIG_H_
