// Complete Hugging Face model directories with random weights, for tests and
// benchmarks that need a Phi-3- or Llama-shaped model without downloading
// one.
#ifndef PDSERVE_TESTS_TESTING_RANDOM_CHECKPOINT_H_
#define PDSERVE_TESTS_TESTING_RANDOM_CHECKPOINT_H_

#include <cstdint>
#include <string>

#include "absl/status/status.h"
#include "shared/dtype.h"

namespace pdserve {

// Defaults: Phi-3-mini-4k-instruct's shapes (hidden 3072, 32 heads, no GQA,
// FFN 8192, vocab 32064, 4096 positions, bf16) with 2 layers instead of 32.
struct RandomCheckpointOptions {
  // "Phi3ForCausalLM": Phi-3's exact tensor names with fused
  // self_attn.qkv_proj and mlp.gate_up_proj, Phi-3's 11 added tokens
  // (added_tokens.json), eos [32000, 32001, 32007], add_bos_token false.
  // "LlamaForCausalLM" / "MistralForCausalLM": separate q/k/v and gate/up,
  // eos 2, add_bos_token true.
  std::string architecture = "Phi3ForCausalLM";
  int num_layers = 2;
  int hidden_size = 3072;
  int num_heads = 32;
  int num_kv_heads = 32;
  int intermediate_size = 8192;
  // At least the tokenizer's vocabulary: 32000 (Llama 2 SentencePiece), and
  // 32011 for Phi-3's added tokens.
  int vocab_size = 32064;
  int max_position_embeddings = 4096;
  float rope_theta = 10000.0f;
  float rms_norm_eps = 1e-5f;
  DType dtype = DType::kBF16;  // F32, BF16 or F16
  uint64_t seed = 0;
  // 1: model.safetensors. N > 1: model-0000i-of-0000N.safetensors plus
  // model.safetensors.index.json, tensors split in order, evenly by count.
  int num_shards = 1;
  // true: no lm_head.weight, tie_word_embeddings true in config.json.
  bool tie_word_embeddings = false;
  // Linear weights and embeddings are uniform with this standard deviation;
  // RMSNorm weights are 1 + uniform(+-0.1). Keeps activations finite and of
  // order 1 through any number of layers.
  float weight_scale = 0.02f;
  // Copied to <dir>/tokenizer.model; "" means Llama2TokenizerModelPath().
  std::string tokenizer_model_path;
};

// Phi-3 layout at a size that runs in milliseconds on a CPU: hidden 256,
// 4 heads of 64, FFN 512, vocab 32064, 2 layers, bf16.
RandomCheckpointOptions Phi3Tiny();

// Phi-3-mini-4k-instruct's exact shapes with `num_layers` layers.
RandomCheckpointOptions Phi3Mini(int num_layers = 2);

// TinyLlama-1.1B's shapes (hidden 2048, 32 heads / 4 kv heads, FFN 5632,
// vocab 32000, 2048 positions, bf16) with `num_layers` layers (22 in the
// real model).
RandomCheckpointOptions TinyLlama(int num_layers = 22);

// Writes config.json, generation_config.json, tokenizer_config.json,
// tokenizer.model (+ added_tokens.json for Phi-3) and the safetensors into
// `dir`, which must exist. Weights depend only on (seed, tensor name,
// element index), so the same options give the same bytes on any machine.
// Errors: INVALID_ARGUMENT naming a bad option; NOT_FOUND for a missing
// tokenizer model; INTERNAL for an I/O failure.
absl::Status WriteRandomCheckpoint(const std::string& dir, const RandomCheckpointOptions& options);

}  // namespace pdserve

#endif  // PDSERVE_TESTS_TESTING_RANDOM_CHECKPOINT_H_
