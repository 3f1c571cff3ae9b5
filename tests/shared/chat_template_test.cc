#include "shared/chat_template.h"

#include <cstdint>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "nlohmann/json.hpp"
#include "shared/tokenizer.h"
#include "tests/testing/test_paths.h"

namespace pdserve {
namespace {

using Json = nlohmann::json;
using ::testing::Contains;
using ::testing::HasSubstr;
using ::testing::Not;

std::string ReadFile(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  EXPECT_TRUE(in.good()) << path;
  return std::string(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
}

void WriteFile(const std::string& path, const std::string& text) {
  std::ofstream out(path, std::ios::binary);
  out << text;
  ASSERT_TRUE(out.good()) << path;
}

std::string ChatTemplatePath(const std::string& file) {
  return TestDataDir() + "/chat_templates/" + file;
}

std::string Phi3Template() { return ReadFile(ChatTemplatePath("phi3_mini_4k_instruct.jinja")); }
std::string Llama2Template() { return ReadFile(ChatTemplatePath("llama2_7b_chat_hf.jinja")); }
std::string MistralTemplate() {
  return ReadFile(ChatTemplatePath("mistral_7b_instruct_v02.jinja"));
}

// A tokenizer_config.json as the Hugging Face checkpoints ship it.
void WriteTokenizerConfig(const TempDir& dir, const Json& chat_template) {
  Json config = {{"add_bos_token", true}, {"bos_token", "<s>"}, {"eos_token", "</s>"}};
  if (!chat_template.is_null()) config["chat_template"] = chat_template;
  WriteFile(dir.File("tokenizer_config.json"), config.dump(1));
}

const std::vector<ChatMessage>& ThreeTurn() {
  static const auto* messages = new std::vector<ChatMessage>{
      {"system", "You are a helpful assistant."},
      {"user", "What is the capital of France?"},
      {"assistant", "The capital of France is Paris."},
      {"user", "And of Italy?"},
  };
  return *messages;
}

// ---- rendering: readable expectations for the three-turn conversation ----

TEST(RenderChatTest, Phi3ThreeTurn) {
  EXPECT_EQ(RenderChat(ChatFormat::kPhi3, ThreeTurn(), true).value(),
            "<|system|>\nYou are a helpful assistant.<|end|>\n"
            "<|user|>\nWhat is the capital of France?<|end|>\n"
            "<|assistant|>\nThe capital of France is Paris.<|end|>\n"
            "<|user|>\nAnd of Italy?<|end|>\n"
            "<|assistant|>\n");
  // Without the generation prompt the template ends with eos_token.
  EXPECT_EQ(RenderChat(ChatFormat::kPhi3, ThreeTurn(), false).value(),
            "<|system|>\nYou are a helpful assistant.<|end|>\n"
            "<|user|>\nWhat is the capital of France?<|end|>\n"
            "<|assistant|>\nThe capital of France is Paris.<|end|>\n"
            "<|user|>\nAnd of Italy?<|end|>\n"
            "<|endoftext|>");
}

TEST(RenderChatTest, Llama2ChatThreeTurn) {
  const std::string expected =
      "<s>[INST] <<SYS>>\nYou are a helpful assistant.\n<</SYS>>\n\n"
      "What is the capital of France? [/INST] The capital of France is Paris. </s>"
      "<s>[INST] And of Italy? [/INST]";
  EXPECT_EQ(RenderChat(ChatFormat::kLlama2Chat, ThreeTurn(), true).value(), expected);
  // The template does not read add_generation_prompt.
  EXPECT_EQ(RenderChat(ChatFormat::kLlama2Chat, ThreeTurn(), false).value(), expected);
}

TEST(RenderChatTest, MistralInstructThreeTurn) {
  const std::string expected =
      "<s> [INST] You are a helpful assistant.\n\nWhat is the capital of France? [/INST]"
      " The capital of France is Paris.</s> [INST] And of Italy? [/INST]";
  EXPECT_EQ(RenderChat(ChatFormat::kMistralInstruct, ThreeTurn(), true).value(), expected);
  EXPECT_EQ(RenderChat(ChatFormat::kMistralInstruct, ThreeTurn(), false).value(), expected);
}

TEST(RenderChatTest, Llama2StripsLikePythonStrip) {
  // U+3000 and U+00A0 around the assistant text and U+2003 after the user
  // text are whitespace to Python's str.strip(); the template strips them.
  const std::vector<ChatMessage> messages = {
      {"user", " \t hi\xE2\x80\x83"},
      {"assistant", "\xE3\x80\x80ok\xC2\xA0"},
      {"user", "\xC3\xA9t\xC3\xA9"},  // non-whitespace multi-byte at both ends stays
  };
  EXPECT_EQ(RenderChat(ChatFormat::kLlama2Chat, messages, true).value(),
            "<s>[INST] hi [/INST] ok </s><s>[INST] \xC3\xA9t\xC3\xA9 [/INST]");
}

// ---- rendering: every case against Jinja2 running the real templates ----

ChatFormat FormatFromGoldenName(const std::string& name) {
  if (name == "phi3") return ChatFormat::kPhi3;
  if (name == "llama2_chat") return ChatFormat::kLlama2Chat;
  EXPECT_EQ(name, "mistral_instruct");
  return ChatFormat::kMistralInstruct;
}

std::vector<ChatMessage> MessagesFromJson(const Json& messages) {
  std::vector<ChatMessage> out;
  for (const Json& m : messages) out.push_back({m.at("role"), m.at("content")});
  return out;
}

Json LoadGolden(const std::string& file) {
  return Json::parse(ReadFile(TestDataDir() + "/golden/" + file));
}

TEST(RenderChatTest, MatchesJinjaReferenceOnEveryCase) {
  const Json golden = LoadGolden("chat_template_renders.json");
  int rendered = 0, rejected = 0;
  for (const auto& [name, format_cases] : golden.at("formats").items()) {
    const ChatFormat format = FormatFromGoldenName(name);
    for (const Json& c : format_cases.at("cases")) {
      const std::vector<ChatMessage> messages = MessagesFromJson(c.at("messages"));
      const bool add_generation_prompt = c.at("add_generation_prompt");
      SCOPED_TRACE(name + " / " + c.at("conversation").get<std::string>() +
                   (add_generation_prompt ? " / generation prompt" : ""));
      absl::StatusOr<std::string> text = RenderChat(format, messages, add_generation_prompt);
      if (c.contains("error")) {
        EXPECT_EQ(text.status().code(), absl::StatusCode::kInvalidArgument) << text.status();
        ++rejected;
      } else {
        ASSERT_TRUE(text.ok()) << text.status();
        EXPECT_EQ(*text, c.at("text").get<std::string>());
        ++rendered;
      }
    }
  }
  // 3 formats x 12 conversations x 2; the 3 bad orders fail for 2 formats.
  EXPECT_EQ(rendered + rejected, 72);
  EXPECT_EQ(rejected, 12);
}

TEST(RenderChatTest, Llama2SegmentsKeepBosAndEosApart) {
  using Kind = ChatSegment::Kind;
  const std::vector<ChatSegment> segments =
      RenderChatSegments(ChatFormat::kLlama2Chat, ThreeTurn(), true).value();
  const std::vector<ChatSegment> expected = {
      {Kind::kBos, ""},
      {Kind::kText,
       "[INST] <<SYS>>\nYou are a helpful assistant.\n<</SYS>>\n\nWhat is the capital of France? "
       "[/INST] The capital of France is Paris. "},
      {Kind::kEos, ""},
      {Kind::kBos, ""},
      {Kind::kText, "[INST] And of Italy? [/INST]"},
  };
  EXPECT_EQ(segments, expected);
  // Phi-3 has no BOS/EOS segments: its special tokens are added tokens.
  const std::vector<ChatSegment> phi3 =
      RenderChatSegments(ChatFormat::kPhi3, ThreeTurn(), false).value();
  ASSERT_EQ(phi3.size(), 1u);
  EXPECT_EQ(phi3[0].kind, Kind::kText);
}

// ---- rendering: validation ----

constexpr ChatFormat kAllFormats[] = {ChatFormat::kPhi3, ChatFormat::kLlama2Chat,
                                      ChatFormat::kMistralInstruct};

TEST(RenderChatTest, RejectsEmptyMessages) {
  for (ChatFormat format : kAllFormats) {
    absl::StatusOr<std::string> text = RenderChat(format, {}, true);
    EXPECT_EQ(text.status().code(), absl::StatusCode::kInvalidArgument);
    EXPECT_THAT(text.status().message(), HasSubstr("messages is empty"));
  }
}

TEST(RenderChatTest, RejectsUnknownRoleNamingIndexAndRole) {
  const std::vector<ChatMessage> messages = {{"user", "a"}, {"assistant", "b"}, {"tool", "c"}};
  for (ChatFormat format : kAllFormats) {
    absl::StatusOr<std::string> text = RenderChat(format, messages, true);
    EXPECT_EQ(text.status().code(), absl::StatusCode::kInvalidArgument);
    EXPECT_THAT(text.status().message(), HasSubstr("messages[2].role 'tool'"));
    EXPECT_THAT(text.status().message(), HasSubstr(ChatFormatName(format)));
  }
}

TEST(RenderChatTest, Llama2AndMistralOrderErrorsNameIndexAndRole) {
  struct Case {
    std::vector<ChatMessage> messages;
    std::string want;
  };
  const std::vector<Case> cases = {
      // Hugging Face's Llama 2 template drops this system message silently.
      {{{"system", "s"}, {"user", "a"}, {"system", "t"}}, "messages[2].role is 'system'"},
      {{{"user", "a"}, {"user", "b"}}, "messages[1].role is 'user'"},
      {{{"assistant", "a"}}, "messages[0].role is 'assistant'"},
      {{{"system", "s"}, {"assistant", "a"}}, "messages[1].role is 'assistant'"},
      {{{"system", "s"}}, "messages[0].role is 'system' and no message follows it"},
  };
  for (ChatFormat format : {ChatFormat::kLlama2Chat, ChatFormat::kMistralInstruct}) {
    for (const Case& c : cases) {
      absl::StatusOr<std::string> text = RenderChat(format, c.messages, true);
      EXPECT_EQ(text.status().code(), absl::StatusCode::kInvalidArgument) << c.want;
      EXPECT_THAT(text.status().message(), HasSubstr(c.want));
    }
  }
}

TEST(RenderChatTest, Phi3AcceptsAnyOrderOfKnownRoles) {
  // Phi-3's template has no order rules; neither do we.
  EXPECT_EQ(RenderChat(ChatFormat::kPhi3, {{{"system", "s"}}}, true).value(),
            "<|system|>\ns<|end|>\n<|assistant|>\n");
  EXPECT_EQ(
      RenderChat(ChatFormat::kPhi3, {{{"assistant", "a"}, {"user", "b"}, {"user", "c"}}}, true)
          .value(),
      "<|assistant|>\na<|end|>\n<|user|>\nb<|end|>\n<|user|>\nc<|end|>\n<|assistant|>\n");
}

// ---- token ids against SentencePiece (tests/reference/chat_reference.py) ----

// A Phi-3-like model directory: the shared SentencePiece model, Phi-3-mini's
// added_tokens.json and its own tokenizer_config.json (the chat_template, and
// the added tokens' rstrip flags the ids depend on).
void MakePhi3ModelDir(const TempDir& dir, const Json& added_tokens) {
  std::filesystem::copy_file(Llama2TokenizerModelPath(), dir.File("tokenizer.model"));
  WriteFile(dir.File("added_tokens.json"), added_tokens.dump(1));
  std::filesystem::copy_file(
      TestDataDir() + "/tokenizers/phi3_mini_4k_instruct/tokenizer_config.json",
      dir.File("tokenizer_config.json"));
}

TEST(EncodeChatTest, Phi3IdsMatchSentencePieceReference) {
  const Json golden = LoadGolden("phi3_chat_ids.json");
  TempDir dir;
  MakePhi3ModelDir(dir, golden.at("added_tokens"));
  ASSERT_EQ(DetectChatFormat(dir.path()).value(), ChatFormat::kPhi3);
  absl::StatusOr<std::unique_ptr<Tokenizer>> tokenizer = Tokenizer::Load(dir.path());
  ASSERT_TRUE(tokenizer.ok()) << tokenizer.status();

  int checked = 0;
  for (const Json& c : golden.at("cases")) {
    const bool add_generation_prompt = c.at("add_generation_prompt");
    SCOPED_TRACE(c.at("conversation").get<std::string>() +
                 (add_generation_prompt ? " / generation prompt" : ""));
    absl::StatusOr<std::vector<int32_t>> ids = EncodeChat(
        **tokenizer, ChatFormat::kPhi3, MessagesFromJson(c.at("messages")), add_generation_prompt);
    ASSERT_TRUE(ids.ok()) << ids.status();
    EXPECT_EQ(*ids, c.at("ids").get<std::vector<int32_t>>());
    ++checked;
  }
  EXPECT_EQ(checked, 24);  // 12 conversations x 2, all valid for Phi-3
}

TEST(EncodeChatTest, Phi3ThreeTurnStartsWithSystemTokenAndNoBos) {
  const Json golden = LoadGolden("phi3_chat_ids.json");
  TempDir dir;
  MakePhi3ModelDir(dir, golden.at("added_tokens"));
  std::unique_ptr<Tokenizer> tokenizer = Tokenizer::Load(dir.path()).value();
  const std::vector<int32_t> ids =
      EncodeChat(*tokenizer, ChatFormat::kPhi3, ThreeTurn(), true).value();
  ASSERT_GE(ids.size(), 3u);
  EXPECT_EQ(ids.front(), 32006);  // <|system|>
  // Ends with "<|assistant|>": its rstrip took the template's "\n" along
  // (Hugging Face's Phi-3 tokenizer does; before, SentencePiece's "▁" and
  // LF byte 29871, 13 followed).
  EXPECT_EQ(ids.back(), 32001);
  // No "\n" token anywhere: every newline of the template follows a token
  // with rstrip, and the contents have none.
  EXPECT_THAT(ids, Not(Contains(13)));
}

TEST(EncodeChatTest, Llama2AndMistralIdsMatchReference) {
  const Json golden = LoadGolden("chat_template_renders.json");
  TempDir dir;
  std::filesystem::copy_file(Llama2TokenizerModelPath(), dir.File("tokenizer.model"));
  absl::StatusOr<std::unique_ptr<Tokenizer>> tokenizer = Tokenizer::Load(dir.path());
  ASSERT_TRUE(tokenizer.ok()) << tokenizer.status();
  ASSERT_EQ((*tokenizer)->bos_id(), 1);
  ASSERT_EQ((*tokenizer)->eos_id(), 2);
  int checked = 0;
  for (const char* name : {"llama2_chat", "mistral_instruct"}) {
    for (const Json& c : golden.at("formats").at(name).at("cases")) {
      if (c.contains("error")) continue;
      const bool add_generation_prompt = c.at("add_generation_prompt");
      SCOPED_TRACE(std::string(name) + " / " + c.at("conversation").get<std::string>());
      absl::StatusOr<std::vector<int32_t>> ids =
          EncodeChat(**tokenizer, FormatFromGoldenName(name), MessagesFromJson(c.at("messages")),
                     add_generation_prompt);
      ASSERT_TRUE(ids.ok()) << ids.status();
      EXPECT_EQ(*ids, c.at("ids").get<std::vector<int32_t>>());
      ++checked;
    }
  }
  EXPECT_EQ(checked, 36);
}

// ---- detection ----

struct DetectCase {
  const char* file;
  ChatFormat format;
};

TEST(DetectChatFormatTest, RecognisesEachFamilyFromItsPublishedTemplate) {
  for (const DetectCase& c :
       {DetectCase{"phi3_mini_4k_instruct.jinja", ChatFormat::kPhi3},
        DetectCase{"llama2_7b_chat_hf.jinja", ChatFormat::kLlama2Chat},
        DetectCase{"mistral_7b_instruct_v02.jinja", ChatFormat::kMistralInstruct}}) {
    TempDir dir;
    WriteTokenizerConfig(dir, ReadFile(ChatTemplatePath(c.file)));
    absl::StatusOr<ChatFormat> format = DetectChatFormat(dir.path());
    ASSERT_TRUE(format.ok()) << c.file << ": " << format.status();
    EXPECT_EQ(*format, c.format) << c.file;
  }
}

TEST(DetectChatFormatTest, OlderRevisionsKeepTheirFamily) {
  // Mistral-7B-Instruct-v0.2 as first published (December 2023).
  EXPECT_EQ(
      ClassifyChatTemplate(
          "{{ bos_token }}{% for message in messages %}{% if (message['role'] == 'user') != "
          "(loop.index0 % 2 == 0) %}{{ raise_exception('Conversation roles must alternate "
          "user/assistant/user/assistant/...') }}{% endif %}{% if message['role'] == 'user' "
          "%}{{ '[INST] ' + message['content'] + ' [/INST]' }}{% elif message['role'] == "
          "'assistant' %}{{ message['content'] + eos_token}}{% else %}{{ raise_exception('Only "
          "user and assistant roles are supported!') }}{% endif %}{% endfor %}"),
      ChatFormat::kMistralInstruct);
  // Phi-3-mini-4k-instruct as first published (April 2024).
  EXPECT_EQ(ClassifyChatTemplate(
                "{{ bos_token }}{% for message in messages %}{% if (message['role'] == 'user') "
                "%}{{'<|user|>' + '\n' + message['content'] + '<|end|>' + '\n' + '<|assistant|>' + "
                "'\n'}}{% elif (message['role'] == 'assistant') %}{{message['content'] + '<|end|>' "
                "+ '\n'}}{% endif %}{% endfor %}"),
            ChatFormat::kPhi3);
}

TEST(DetectChatFormatTest, OtherFamiliesAreNotGuessed) {
  // ChatML (Qwen, ...).
  EXPECT_FALSE(ClassifyChatTemplate("{% for message in messages %}{{'<|im_start|>' + "
                                    "message['role'] + '\n' + message['content'] + '<|im_end|>' + "
                                    "'\n'}}{% endfor %}")
                   .has_value());
  // Zephyr / TinyLlama-chat: "<|user|>" and "<|assistant|>" but no "<|end|>".
  EXPECT_FALSE(ClassifyChatTemplate("{% for message in messages %}{% if message['role'] == 'user' "
                                    "%}{{ '<|user|>\n' + message['content'] + eos_token }}{% endif "
                                    "%}{% endfor %}{{ '<|assistant|>' }}")
                   .has_value());
  // Mistral's v3 tokenizer generation (v0.3, Mixtral-8x22B): tool markers.
  EXPECT_FALSE(ClassifyChatTemplate("{{ bos_token }}{% if tools %}[AVAILABLE_TOOLS]{% endif %}"
                                    "{{ '[INST] ' + content + '[/INST]' }}")
                   .has_value());
  // Markers of two families at once.
  EXPECT_FALSE(ClassifyChatTemplate("<|user|> <|assistant|> <|end|> [INST]").has_value());
  EXPECT_FALSE(ClassifyChatTemplate("").has_value());
}

TEST(DetectChatFormatTest, UnknownTemplateErrorNamesModelDir) {
  TempDir dir;
  WriteTokenizerConfig(
      dir, "{% for message in messages %}<|im_start|>{{ message['role'] }}{% endfor %}");
  absl::StatusOr<ChatFormat> format = DetectChatFormat(dir.path());
  EXPECT_EQ(format.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(format.status().message(), HasSubstr(dir.path()));
  EXPECT_THAT(format.status().message(), HasSubstr("no chat format is known"));
}

TEST(DetectChatFormatTest, MissingTemplateErrorNamesModelDir) {
  TempDir no_config;
  absl::StatusOr<ChatFormat> format = DetectChatFormat(no_config.path());
  EXPECT_EQ(format.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(format.status().message(), HasSubstr(no_config.path()));
  EXPECT_THAT(format.status().message(), HasSubstr("no chat format is known"));

  TempDir no_template;  // a base model: tokenizer_config.json without chat_template
  WriteTokenizerConfig(no_template, nullptr);
  format = DetectChatFormat(no_template.path());
  EXPECT_EQ(format.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(format.status().message(), HasSubstr(no_template.path()));
  EXPECT_THAT(format.status().message(), HasSubstr("no chat_template"));
}

TEST(DetectChatFormatTest, ReadsNamedTemplatesAndChatTemplateJinja) {
  TempDir named;
  WriteTokenizerConfig(named,
                       Json::array({{{"name", "tool_use"}, {"template", "[INST] <<SYS>>"}},
                                    {{"name", "default"}, {"template", MistralTemplate()}}}));
  EXPECT_EQ(DetectChatFormat(named.path()).value(), ChatFormat::kMistralInstruct);

  TempDir jinja_file;  // newer transformers save the template beside the config
  WriteTokenizerConfig(jinja_file, nullptr);
  WriteFile(jinja_file.File("chat_template.jinja"), Llama2Template());
  EXPECT_EQ(DetectChatFormat(jinja_file.path()).value(), ChatFormat::kLlama2Chat);
}

TEST(DetectChatFormatTest, MalformedConfigIsInvalidArgumentNamingTheFile) {
  TempDir dir;
  WriteFile(dir.File("tokenizer_config.json"), "{\"chat_template\": ");
  absl::StatusOr<ChatFormat> format = DetectChatFormat(dir.path());
  EXPECT_EQ(format.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(format.status().message(), HasSubstr(dir.File("tokenizer_config.json")));

  WriteFile(dir.File("tokenizer_config.json"), "{\"chat_template\": 7}");
  format = DetectChatFormat(dir.path());
  EXPECT_EQ(format.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(format.status().message(), HasSubstr("'chat_template' must be a string"));
}

}  // namespace
}  // namespace pdserve
