// pdserve-make-checkpoint: writes a random-weight Hugging Face model
// directory (see random_checkpoint.h) for benchmarks and manual runs.
//
//   pdserve-make-checkpoint --out_dir=/tmp/phi3 --preset=phi3-mini --num_layers=4
#include <cstdio>
#include <filesystem>
#include <string>
#include <system_error>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/flags/usage.h"
#include "shared/flags_help.h"
#include "tests/testing/random_checkpoint.h"

ABSL_FLAG(std::string, out_dir, "", "Directory to write (created when missing).");
ABSL_FLAG(std::string, preset, "phi3-tiny", "Base shapes: phi3-tiny, phi3-mini or tinyllama-1.1b.");
ABSL_FLAG(std::string, architecture, "",
          "Override: Phi3ForCausalLM, LlamaForCausalLM or MistralForCausalLM.");
ABSL_FLAG(int, num_layers, 0, "Override the preset's layer count (0: keep).");
ABSL_FLAG(int, hidden_size, 0, "Override (0: keep).");
ABSL_FLAG(int, num_heads, 0, "Override (0: keep).");
ABSL_FLAG(int, num_kv_heads, 0, "Override (0: keep).");
ABSL_FLAG(int, intermediate_size, 0, "Override (0: keep).");
ABSL_FLAG(int, vocab_size, 0, "Override (0: keep).");
ABSL_FLAG(int, max_position_embeddings, 0, "Override (0: keep).");
ABSL_FLAG(std::string, dtype, "",
          "Override: F32, BF16 or F16 (empty: keep, BF16 in every preset).");
ABSL_FLAG(uint64_t, seed, 0, "Weight seed.");
ABSL_FLAG(int, num_shards, 1, "Number of safetensors files (> 1 writes an index json).");
ABSL_FLAG(bool, tied, false, "Tie lm_head to the embedding (no lm_head.weight).");
ABSL_FLAG(std::string, tokenizer_model, "",
          "SentencePiece model to copy (empty: the repository's Llama 2 one).");

namespace {

int Fail(const std::string& message) {
  std::fprintf(stderr, "pdserve-make-checkpoint: %s\n", message.c_str());
  return 1;
}

void OverrideIfSet(int flag_value, int& field) {
  if (flag_value != 0) field = flag_value;
}

}  // namespace

int main(int argc, char** argv) {
  absl::SetProgramUsageMessage(
      "Writes a random-weight HF checkpoint. Usage: pdserve-make-checkpoint --out_dir=DIR");
  pdserve::ShowMainFlagsInHelp();
  absl::ParseCommandLine(argc, argv);

  const std::string out_dir = absl::GetFlag(FLAGS_out_dir);
  if (out_dir.empty()) return Fail("--out_dir is required");
  const std::string preset = absl::GetFlag(FLAGS_preset);
  pdserve::RandomCheckpointOptions options;
  if (preset == "phi3-tiny") {
    options = pdserve::Phi3Tiny();
  } else if (preset == "phi3-mini") {
    options = pdserve::Phi3Mini();
  } else if (preset == "tinyllama-1.1b") {
    options = pdserve::TinyLlama();
  } else {
    return Fail("--preset '" + preset + "' unknown (phi3-tiny, phi3-mini, tinyllama-1.1b)");
  }
  if (!absl::GetFlag(FLAGS_architecture).empty())
    options.architecture = absl::GetFlag(FLAGS_architecture);
  OverrideIfSet(absl::GetFlag(FLAGS_num_layers), options.num_layers);
  OverrideIfSet(absl::GetFlag(FLAGS_hidden_size), options.hidden_size);
  OverrideIfSet(absl::GetFlag(FLAGS_num_heads), options.num_heads);
  OverrideIfSet(absl::GetFlag(FLAGS_num_kv_heads), options.num_kv_heads);
  OverrideIfSet(absl::GetFlag(FLAGS_intermediate_size), options.intermediate_size);
  OverrideIfSet(absl::GetFlag(FLAGS_vocab_size), options.vocab_size);
  OverrideIfSet(absl::GetFlag(FLAGS_max_position_embeddings), options.max_position_embeddings);
  const std::string dtype = absl::GetFlag(FLAGS_dtype);
  if (dtype == "F32") {
    options.dtype = pdserve::DType::kF32;
  } else if (dtype == "BF16") {
    options.dtype = pdserve::DType::kBF16;
  } else if (dtype == "F16") {
    options.dtype = pdserve::DType::kF16;
  } else if (!dtype.empty()) {
    return Fail("--dtype '" + dtype + "' unknown (F32, BF16, F16)");
  }
  options.seed = absl::GetFlag(FLAGS_seed);
  options.num_shards = absl::GetFlag(FLAGS_num_shards);
  options.tie_word_embeddings = absl::GetFlag(FLAGS_tied);
  options.tokenizer_model_path = absl::GetFlag(FLAGS_tokenizer_model);

  std::error_code error;
  std::filesystem::create_directories(out_dir, error);
  if (error) return Fail("cannot create " + out_dir + ": " + error.message());
  const absl::Status status = pdserve::WriteRandomCheckpoint(out_dir, options);
  if (!status.ok()) return Fail(status.ToString());
  std::printf("wrote %s (%s, %d layers, hidden %d)\n", out_dir.c_str(),
              options.architecture.c_str(), options.num_layers, options.hidden_size);
  return 0;
}
