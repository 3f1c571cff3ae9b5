#include "tests/decode_service/test_models.h"

#include <fstream>
#include <iterator>

#include <nlohmann/json.hpp>

#include "tests/testing/test_paths.h"

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

absl::Status WritePhi3ChatCheckpoint(const std::string& dir) {
  absl::Status written = WriteRandomCheckpoint(dir, Phi3Tiny());
  if (!written.ok()) return written;
  const std::string template_path =
      TestDataDir() + "/chat_templates/phi3_mini_4k_instruct.jinja";
  std::ifstream template_file(template_path);
  const std::string chat_template((std::istreambuf_iterator<char>(template_file)),
                                  std::istreambuf_iterator<char>());
  if (chat_template.empty()) return absl::NotFoundError("cannot read " + template_path);
  std::ifstream config_in(dir + "/tokenizer_config.json");
  nlohmann::json config = nlohmann::json::parse(config_in, nullptr, /*allow_exceptions=*/false);
  if (!config.is_object()) return absl::InternalError("bad tokenizer_config.json in " + dir);
  config["chat_template"] = chat_template;
  // Phi-3-mini's own added-token flags (rstrip on its role and end tokens),
  // which decide its chat ids.
  const std::string phi3_config_path =
      TestDataDir() + "/tokenizers/phi3_mini_4k_instruct/tokenizer_config.json";
  std::ifstream phi3_config_file(phi3_config_path);
  const nlohmann::json phi3_config =
      nlohmann::json::parse(phi3_config_file, nullptr, /*allow_exceptions=*/false);
  if (!phi3_config.is_object() || !phi3_config.contains("added_tokens_decoder")) {
    return absl::NotFoundError("cannot read added_tokens_decoder from " + phi3_config_path);
  }
  config["added_tokens_decoder"] = phi3_config["added_tokens_decoder"];
  std::ofstream(dir + "/tokenizer_config.json") << config.dump(1);
  std::ofstream(dir + "/generation_config.json") << R"({"eos_token_id": 32000})";
  return absl::OkStatus();
}

absl::StatusOr<GoldenChat> LoadPhi3ThreeTurnChat() {
  const std::string path = TestDataDir() + "/golden/phi3_chat_ids.json";
  std::ifstream file(path);
  const nlohmann::json golden = nlohmann::json::parse(file, nullptr, /*allow_exceptions=*/false);
  if (!golden.is_object() || !golden.contains("cases")) {
    return absl::NotFoundError("cannot read " + path);
  }
  for (const nlohmann::json& entry : golden["cases"]) {
    if (entry.value("conversation", "") != "three_turn" ||
        !entry.value("add_generation_prompt", false)) {
      continue;
    }
    GoldenChat chat;
    for (const nlohmann::json& message : entry["messages"]) {
      chat.messages.emplace_back(message["role"].get<std::string>(),
                                 message["content"].get<std::string>());
    }
    chat.ids = entry["ids"].get<std::vector<int32_t>>();
    return chat;
  }
  return absl::NotFoundError(path + ": no three_turn case with add_generation_prompt");
}

v1::GenerateRequest ChatRequest(const GoldenChat& chat) {
  v1::GenerateRequest request;
  for (const auto& [role, content] : chat.messages) {
    v1::ChatMessage* message = request.mutable_messages()->add_messages();
    message->set_role(role);
    message->set_content(content);
  }
  return request;
}

}  // namespace pdserve
