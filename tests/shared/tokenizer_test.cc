#include "shared/tokenizer.h"

#include <filesystem>
#include <fstream>
#include <initializer_list>
#include <iterator>
#include <random>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "nlohmann/json.hpp"
#include "tests/testing/random_checkpoint.h"
#include "tests/testing/test_paths.h"

namespace pdserve {
namespace {

using ::testing::ElementsAre;
using ::testing::ElementsAreArray;
using ::testing::HasSubstr;
using ::testing::StartsWith;

std::string Llama2Dir() { return TestDataDir() + "/tokenizers/llama2"; }

std::unique_ptr<Tokenizer> LoadOrDie(const std::string& dir) {
  absl::StatusOr<std::unique_ptr<Tokenizer>> tokenizer = Tokenizer::Load(dir);
  EXPECT_TRUE(tokenizer.ok()) << tokenizer.status();
  return tokenizer.ok() ? std::move(*tokenizer) : nullptr;
}

// Strict UTF-8 check (RFC 3629): no overlongs, surrogates or truncation.
bool IsValidUtf8(const std::string& text) {
  size_t i = 0;
  while (i < text.size()) {
    const unsigned char c = text[i];
    int length = 0;
    uint32_t code_point = 0;
    if (c < 0x80) {
      ++i;
      continue;
    } else if ((c & 0xE0) == 0xC0) {
      length = 2;
      code_point = c & 0x1F;
    } else if ((c & 0xF0) == 0xE0) {
      length = 3;
      code_point = c & 0x0F;
    } else if ((c & 0xF8) == 0xF0) {
      length = 4;
      code_point = c & 0x07;
    } else {
      return false;
    }
    if (i + length > text.size()) return false;
    for (int k = 1; k < length; ++k) {
      const unsigned char continuation = text[i + k];
      if ((continuation & 0xC0) != 0x80) return false;
      code_point = (code_point << 6) | (continuation & 0x3F);
    }
    static constexpr uint32_t kMinimum[] = {0, 0, 0x80, 0x800, 0x10000};
    if (code_point < kMinimum[length] || code_point > 0x10FFFF ||
        (code_point >= 0xD800 && code_point <= 0xDFFF)) {
      return false;
    }
    i += length;
  }
  return true;
}

TEST(Utf8CheckerTest, RejectsBrokenSequences) {
  EXPECT_TRUE(IsValidUtf8("a\xC3\xA9\xE9\x95\x87\xF0\x9F\xA6\x99"));  // a é 镇 🦙
  EXPECT_FALSE(IsValidUtf8("\xF0\x9F\xA6"));                          // truncated
  EXPECT_FALSE(IsValidUtf8("\x9F"));                                  // lone continuation
  EXPECT_FALSE(IsValidUtf8("\xC0\xAF"));                              // overlong
}

// Every case of tests/data/tokenizers/llama2/cases.json.
struct Case {
  std::string text;
  std::vector<int32_t> ids;
};

std::vector<Case> Llama2Cases() {
  std::ifstream in(Llama2Dir() + "/cases.json");
  EXPECT_TRUE(in.good());
  const nlohmann::json json = nlohmann::json::parse(in);
  std::vector<Case> cases;
  for (const nlohmann::json& c : json.at("cases")) {
    cases.push_back(
        {c.at("text").get<std::string>(), c.at("ids_without_bos").get<std::vector<int32_t>>()});
  }
  return cases;
}

TEST(TokenizerTest, MatchesEveryLlama2Case) {
  std::unique_ptr<Tokenizer> tokenizer = LoadOrDie(Llama2Dir());
  ASSERT_NE(tokenizer, nullptr);
  const std::vector<Case> cases = Llama2Cases();
  ASSERT_GE(cases.size(), 11u);
  for (const Case& c : cases) {
    EXPECT_THAT(tokenizer->Encode(c.text, /*add_bos=*/false), ElementsAreArray(c.ids)) << c.text;
    std::vector<int32_t> with_bos = {1};
    with_bos.insert(with_bos.end(), c.ids.begin(), c.ids.end());
    EXPECT_THAT(tokenizer->Encode(c.text, /*add_bos=*/true), ElementsAreArray(with_bos)) << c.text;
    // The Llama 2 model keeps every space (remove_extra_whitespaces off), so
    // every case round-trips, including the leading-space ones.
    EXPECT_EQ(tokenizer->Decode(c.ids), c.text);
    EXPECT_EQ(tokenizer->Decode(with_bos), c.text);
  }
}

TEST(TokenizerTest, Llama2Vocabulary) {
  std::unique_ptr<Tokenizer> tokenizer = LoadOrDie(Llama2Dir());
  ASSERT_NE(tokenizer, nullptr);
  EXPECT_EQ(tokenizer->vocab_size(), 32000);
  EXPECT_EQ(tokenizer->bos_id(), 1);
  EXPECT_EQ(tokenizer->eos_id(), 2);
  EXPECT_EQ(tokenizer->IdToPiece(450), "\xE2\x96\x81The");  // "▁The"
  EXPECT_EQ(tokenizer->IdToPiece(13), "<0x0A>");
  EXPECT_EQ(tokenizer->IdToPiece(1), "<s>");
  EXPECT_EQ(tokenizer->IdToPiece(-1), "");
  EXPECT_EQ(tokenizer->IdToPiece(32000), "");
  EXPECT_FALSE(tokenizer->IsAddedToken(1));
  // BOS and EOS render as nothing; ids outside the vocabulary are skipped.
  EXPECT_EQ(tokenizer->Decode(std::vector<int32_t>{1, 450, 7483, 2}), "The capital");
  EXPECT_EQ(tokenizer->Decode(std::vector<int32_t>{450, 99999, 7483}), "The capital");
  EXPECT_EQ(tokenizer->Encode("", false), std::vector<int32_t>{});
  EXPECT_THAT(tokenizer->Encode("", true), ElementsAre(1));
}

TEST(TokenizerTest, Stories260K) {
  std::unique_ptr<Tokenizer> tokenizer = LoadOrDie(Stories260KDir());
  ASSERT_NE(tokenizer, nullptr);
  EXPECT_EQ(tokenizer->vocab_size(), 512);
  // models/stories260K/README.md: BOS + "Once upon a time".
  EXPECT_THAT(tokenizer->Encode("Once upon a time", true), ElementsAre(1, 403, 407, 261, 378));
  // ... and the start of its greedy continuation.
  const std::vector<int32_t> story = {1,   403, 407, 261, 378, 432, 383, 286, 261, 376, 298,
                                      315, 421, 395, 317, 426, 338, 401, 396, 267, 337};
  EXPECT_THAT(
      tokenizer->Decode(story),
      StartsWith("Once upon a time, there was a little girl named Lily. She loved to play"));
}

// A directory holding Llama 2's tokenizer.model plus `extra_file` (name,
// contents) when given.
class TokenizerDir {
 public:
  explicit TokenizerDir(const std::string& extra_name = "",
                        const std::string& extra_contents = "") {
    std::filesystem::copy_file(Llama2TokenizerModelPath(), dir_.File("tokenizer.model"));
    if (!extra_name.empty()) Add(extra_name, extra_contents);
  }
  void Add(const std::string& name, const std::string& contents) {
    std::ofstream(dir_.File(name)) << contents;
  }
  const std::string& path() const { return dir_.path(); }

 private:
  TempDir dir_;
};

// Phi-3-mini's added_tokens.json (tests/data/tokenizers/llama2/README.md).
constexpr char kPhi3AddedTokens[] = R"({
  "<|assistant|>": 32001, "<|end|>": 32007, "<|endoftext|>": 32000,
  "<|placeholder1|>": 32002, "<|placeholder2|>": 32003, "<|placeholder3|>": 32004,
  "<|placeholder4|>": 32005, "<|placeholder5|>": 32008, "<|placeholder6|>": 32009,
  "<|system|>": 32006, "<|user|>": 32010})";

TEST(TokenizerTest, Phi3AddedTokens) {
  TokenizerDir dir("added_tokens.json", kPhi3AddedTokens);
  std::unique_ptr<Tokenizer> phi3 = LoadOrDie(dir.path());
  ASSERT_NE(phi3, nullptr);
  std::unique_ptr<Tokenizer> llama2 = LoadOrDie(Llama2Dir());
  ASSERT_NE(llama2, nullptr);
  EXPECT_EQ(phi3->vocab_size(), 32011);
  EXPECT_TRUE(phi3->IsAddedToken(32010));
  EXPECT_FALSE(phi3->IsAddedToken(450));
  EXPECT_EQ(phi3->IdToPiece(32010), "<|user|>");
  EXPECT_EQ(phi3->IdToPiece(32007), "<|end|>");

  // Segments between added tokens encode as in cases.json.
  EXPECT_THAT(phi3->Encode("<|user|>", false), ElementsAre(32010));
  EXPECT_THAT(phi3->Encode("<|user|>The capital of France is<|end|>", false),
              ElementsAre(32010, 450, 7483, 310, 3444, 338, 32007));
  EXPECT_THAT(phi3->Encode("<|user|>\n<|end|>", false), ElementsAre(32010, 29871, 13, 32007));
  EXPECT_THAT(phi3->Encode("<|user|>grabbed<|end|>\n<|assistant|>", true),
              ElementsAre(1, 32010, 2646, 1327, 287, 32007, 29871, 13, 32001));
  EXPECT_THAT(phi3->Encode("<|system|><|end|><|endoftext|>", false),
              ElementsAre(32006, 32007, 32000));

  // The chat template's shape, with the plain tokenizer's ids in between.
  const std::string prompt = "<|user|>\nHi<|end|>\n<|assistant|>\n";
  std::vector<int32_t> expected = {32010};
  for (int32_t id : llama2->Encode("\nHi", false)) expected.push_back(id);
  expected.push_back(32007);
  for (int32_t id : {29871, 13, 32001, 29871, 13}) expected.push_back(id);
  const std::vector<int32_t> ids = phi3->Encode(prompt, false);
  EXPECT_THAT(ids, ElementsAreArray(expected));
  EXPECT_EQ(phi3->Decode(ids), prompt);

  // Near misses are ordinary text.
  EXPECT_EQ(phi3->Encode("<|user|", false), llama2->Encode("<|user|", false));
  EXPECT_EQ(phi3->Encode("<|USER|>", false), llama2->Encode("<|USER|>", false));
  for (const char* text : {"<|user|>The capital of France is<|end|>", "a<|user|>b<|end|>c",
                           "<|user|>\n\xF0\x9F\xA6\x99<|end|>", "<|user|"}) {
    EXPECT_EQ(phi3->Decode(phi3->Encode(text, false)), text);
  }
}

// Phi-3-mini-4k-instruct's own tokenizer_config.json: rstrip on its role,
// end and placeholder tokens (tests/data/tokenizers/phi3_mini_4k_instruct).
std::string Phi3TokenizerConfig() {
  std::ifstream file(TestDataDir() + "/tokenizers/phi3_mini_4k_instruct/tokenizer_config.json");
  return std::string(std::istreambuf_iterator<char>(file), std::istreambuf_iterator<char>());
}

std::vector<int32_t> Concat(std::initializer_list<std::vector<int32_t>> parts) {
  std::vector<int32_t> ids;
  for (const std::vector<int32_t>& part : parts) ids.insert(ids.end(), part.begin(), part.end());
  return ids;
}

TEST(TokenizerTest, Phi3RstripTokensTakeTheWhitespaceAfterThem) {
  TokenizerDir dir("added_tokens.json", kPhi3AddedTokens);
  const std::string config = Phi3TokenizerConfig();
  ASSERT_FALSE(config.empty());
  dir.Add("tokenizer_config.json", config);
  std::unique_ptr<Tokenizer> phi3 = LoadOrDie(dir.path());
  ASSERT_NE(phi3, nullptr);
  std::unique_ptr<Tokenizer> llama2 = LoadOrDie(Llama2Dir());
  ASSERT_NE(llama2, nullptr);

  // Hugging Face's ids for microsoft/Phi-3-mini-4k-instruct, as Microsoft's
  // onnxruntime-extensions test (Phi3MiniChatTemplate) records them.
  EXPECT_THAT(phi3->Encode("<|system|>\nSystem message<|end|>\n<|user|>\nHello, can you call some "
                           "tools for me?<|end|>\n<|assistant|>\nSure, I can calculate the sum for "
                           "you!<|end|>\n<|assistant|>\n",
                           false),
              ElementsAre(32006, 2184, 2643, 32007, 32010, 15043, 29892, 508, 366, 1246, 777, 8492,
                          363, 592, 29973, 32007, 32001, 18585, 29892, 306, 508, 8147, 278, 2533,
                          363, 366, 29991, 32007, 32001));
  // The "\n" after <|user|> is no token: "Hi" is encoded as "▁Hi" (6324).
  EXPECT_THAT(phi3->Encode("<|user|>\nHi<|end|>\n<|assistant|>\n", false),
              ElementsAre(32010, 6324, 32007, 32001));

  // Unicode White_Space goes (LF, CR, tab, U+3000, NBSP, U+2003, U+0085);
  // U+001C, which only Python calls whitespace, stays.
  EXPECT_THAT(phi3->Encode("<|user|>\r\n\t \xE3\x80\x80\xC2\xA0\xE2\x80\x83\xC2\x85Hi", false),
              ElementsAre(32010, 6324));
  EXPECT_EQ(phi3->Encode("<|user|>\n\x1cHi", false),
            Concat({{32010}, llama2->Encode("\x1cHi", false)}));
  // Only after the token (lstrip is false), and not for <|endoftext|>.
  EXPECT_EQ(phi3->Encode("say <|end|>  now", false),
            Concat({llama2->Encode("say ", false), {32007}, llama2->Encode("now", false)}));
  EXPECT_EQ(phi3->Encode("<|endoftext|>\nHi", false),
            Concat({{32000}, llama2->Encode("\nHi", false)}));
  // All whitespace to the next token, or to the end, goes.
  EXPECT_THAT(phi3->Encode("<|user|>\n \n<|end|>\n\n", false), ElementsAre(32010, 32007));
  EXPECT_EQ(phi3->Decode(phi3->Encode("<|user|>\nHi<|end|>\n", false)), "<|user|>Hi<|end|>");
}

TEST(TokenizerTest, StripFlagsFromTokenizerJsonBeforeTokenizerConfig) {
  TokenizerDir dir("added_tokens.json", R"({"<|a|>": 32000, "<|b|>": 32001, "<|c|>": 32002})");
  // tokenizer.json lists <|a|> (lstrip) and <|b|> (no flags); its flags win
  // over tokenizer_config.json's, which only <|c|> takes.
  dir.Add("tokenizer.json", R"({"added_tokens": [
      {"id": 32000, "content": "<|a|>", "lstrip": true, "rstrip": false},
      {"id": 32001, "content": "<|b|>"}]})");
  dir.Add("tokenizer_config.json", R"({"added_tokens_decoder": {
      "32000": {"content": "<|a|>", "lstrip": false, "rstrip": true},
      "32001": {"content": "<|b|>", "rstrip": true},
      "32002": {"content": "<|c|>", "rstrip": true},
      "32003": {"content": "<|not-added|>", "lstrip": true}}})");
  std::unique_ptr<Tokenizer> tokenizer = LoadOrDie(dir.path());
  ASSERT_NE(tokenizer, nullptr);
  std::unique_ptr<Tokenizer> llama2 = LoadOrDie(Llama2Dir());
  ASSERT_NE(llama2, nullptr);
  EXPECT_EQ(tokenizer->Encode("x \t<|a|> y", false),
            Concat({llama2->Encode("x", false), {32000}, llama2->Encode(" y", false)}));
  EXPECT_EQ(tokenizer->Encode("<|b|> y", false), Concat({{32001}, llama2->Encode(" y", false)}));
  EXPECT_EQ(tokenizer->Encode("<|c|> y", false), Concat({{32002}, llama2->Encode("y", false)}));
  // lstrip stops at the token before.
  EXPECT_THAT(tokenizer->Encode("<|b|>  <|a|>", false), ElementsAre(32001, 32000));
  EXPECT_EQ(tokenizer->Encode("<|not-added|>", false), llama2->Encode("<|not-added|>", false));
}

TEST(TokenizerTest, RandomPhi3CheckpointHasPhi3Tokens) {
  TempDir dir;
  ASSERT_TRUE(WriteRandomCheckpoint(dir.path(), Phi3Tiny()).ok());
  std::unique_ptr<Tokenizer> tokenizer = LoadOrDie(dir.path());
  ASSERT_NE(tokenizer, nullptr);
  EXPECT_THAT(tokenizer->Encode("<|user|>The capital of France is<|end|>", false),
              ElementsAre(32010, 450, 7483, 310, 3444, 338, 32007));
  EXPECT_EQ(tokenizer->vocab_size(), 32011);
}

TEST(TokenizerTest, TokenizerJsonAddedTokensLongestFirst) {
  TokenizerDir dir("tokenizer.json", R"({"version": "1.0", "added_tokens": [
      {"id": 0, "content": "<unk>", "special": true},
      {"id": 32000, "content": "<|end|>", "special": true},
      {"id": 32001, "content": "<|end|>x", "special": true}]})");
  std::unique_ptr<Tokenizer> tokenizer = LoadOrDie(dir.path());
  ASSERT_NE(tokenizer, nullptr);
  EXPECT_EQ(tokenizer->vocab_size(), 32002);
  EXPECT_THAT(tokenizer->Encode("<|end|>x<|end|>", false), ElementsAre(32001, 32000));
  // An added token inside the SentencePiece range decodes as SentencePiece
  // does.
  EXPECT_EQ(tokenizer->Decode(std::vector<int32_t>{32001, 450}), "<|end|>xThe");
}

TEST(TokenizerTest, LoadErrorsNameTheFile) {
  TempDir empty;
  absl::Status status = Tokenizer::Load(empty.path()).status();
  EXPECT_EQ(status.code(), absl::StatusCode::kNotFound) << status;
  EXPECT_THAT(status.message(), HasSubstr("tokenizer.model"));

  std::ofstream(empty.File("tokenizer.model")) << "not a model proto";
  status = Tokenizer::Load(empty.path()).status();
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument) << status;
  EXPECT_THAT(status.message(), HasSubstr("tokenizer.model"));

  const std::pair<const char*, const char*> bad_files[] = {
      {"added_tokens.json", "{\"<|user|>\": "},
      {"added_tokens.json", "[\"<|user|>\"]"},
      {"added_tokens.json", "{\"<|user|>\": -5}"},
      {"added_tokens.json", "{\"<|user|>\": \"32010\"}"},
      {"added_tokens.json", "{\"<|a|>\": 32010, \"<|b|>\": 32010}"},
      {"added_tokens.json", "{\"\": 32010}"},
      {"tokenizer.json", "{\"added_tokens\": [{\"id\": 3}]}"},
      {"tokenizer.json", "{\"added_tokens\": 7}"},
      {"tokenizer.json", "nope"},
      {"tokenizer.json", R"({"added_tokens": [{"id": 3, "content": "<x>", "rstrip": 1}]})"},
      {"tokenizer_config.json", R"({"added_tokens_decoder": 7})"},
      {"tokenizer_config.json", R"({"added_tokens_decoder": {"3": {"content": "<x>",
          "lstrip": "no"}}})"},
      {"tokenizer_config.json", R"({"added_tokens_decoder": {"3": {"rstrip": true}}})"},
      {"tokenizer_config.json", "{"},
  };
  for (const auto& [name, contents] : bad_files) {
    TokenizerDir dir(name, contents);
    status = Tokenizer::Load(dir.path()).status();
    EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument) << contents << ": " << status;
    EXPECT_THAT(status.message(), HasSubstr(name)) << contents;
  }
}

// Pushes `generated` after `context`, checking each delta is valid UTF-8.
std::string DetokenizeIncrementally(const Tokenizer& tokenizer, const std::vector<int32_t>& context,
                                    const std::vector<int32_t>& generated) {
  IncrementalDetokenizer detokenizer(&tokenizer, context);
  std::string streamed;
  for (int32_t id : generated) {
    const std::string delta = detokenizer.Push(id);
    EXPECT_TRUE(IsValidUtf8(delta)) << "id " << id << " gave invalid UTF-8";
    streamed += delta;
  }
  const std::string tail = detokenizer.Flush();
  EXPECT_TRUE(IsValidUtf8(tail));
  return streamed + tail;
}

TEST(IncrementalDetokenizerTest, StreamsWholeCharactersAndSpaces) {
  TokenizerDir dir("added_tokens.json", kPhi3AddedTokens);
  std::unique_ptr<Tokenizer> tokenizer = LoadOrDie(dir.path());
  ASSERT_NE(tokenizer, nullptr);
  const char* texts[] = {
      "The capital of France is Paris.",
      "\xE9\x95\x87 is one character",                   // 镇
      "\xF0\x9F\xA6\x99\xEA\x99\x8A then text",          // 🦙Ꙋ, byte fallback
      "na\xC3\xAFve caf\xC3\xA9 \xE2\x80\x94 \xC3\xBC",  // naïve café — ü
      "  two  spaces\n\tand a tab",
      "emoji at the end \xF0\x9F\x98\x80",  // 😀
      "<|user|>\nHi \xF0\x9F\xA6\x99<|end|>\n<|assistant|>\nHello",
      "\n",
  };
  for (const char* text : texts) {
    const std::vector<int32_t> ids = tokenizer->Encode(text, false);
    EXPECT_EQ(DetokenizeIncrementally(*tokenizer, {}, ids), text) << text;
    // With BOS as the context, nothing changes.
    EXPECT_EQ(DetokenizeIncrementally(*tokenizer, {1}, ids), text) << text;
  }
}

TEST(IncrementalDetokenizerTest, ByteFallbackCharacterArrivesWhole) {
  std::unique_ptr<Tokenizer> tokenizer = LoadOrDie(Llama2Dir());
  ASSERT_NE(tokenizer, nullptr);
  // cases.json: "🦙Ꙋ" is "▁" then the bytes F0 9F A6 99 and EA 99 8A as
  // <0xNN> pieces (id = byte + 3).
  const std::vector<int32_t> ids = {29871, 243, 162, 169, 156, 237, 156, 141};
  IncrementalDetokenizer detokenizer(tokenizer.get(), {});
  std::vector<std::string> deltas;
  for (int32_t id : ids) deltas.push_back(detokenizer.Push(id));
  EXPECT_THAT(deltas, ElementsAre("", "", "", "", "\xF0\x9F\xA6\x99", "", "", "\xEA\x99\x8A"));
  EXPECT_EQ(detokenizer.Flush(), "");
}

TEST(IncrementalDetokenizerTest, ContextGivesTheLeadingSpace) {
  std::unique_ptr<Tokenizer> tokenizer = LoadOrDie(Llama2Dir());
  ASSERT_NE(tokenizer, nullptr);
  // "The capital of France" then "▁is" (cases.json): the space shows.
  IncrementalDetokenizer detokenizer(tokenizer.get(), std::vector<int32_t>{450, 7483, 310, 3444});
  EXPECT_EQ(detokenizer.Push(338), " is");
  // Without context the first piece's space is dropped, as in Decode.
  IncrementalDetokenizer fresh(tokenizer.get(), {});
  EXPECT_EQ(fresh.Push(338), "is");

  // Any split of a text into context and generated ids streams exactly
  // Decode(all) minus Decode(context).
  const std::string text = "Write an email \xF0\x9F\xA6\x99 to Sarah.\nThanks!";
  const std::vector<int32_t> all = tokenizer->Encode(text, true);
  for (size_t split = 1; split < all.size(); ++split) {
    const std::vector<int32_t> context(all.begin(), all.begin() + split);
    const std::vector<int32_t> generated(all.begin() + split, all.end());
    const std::string decoded_context = tokenizer->Decode(context);
    const std::string streamed = DetokenizeIncrementally(*tokenizer, context, generated);
    if (decoded_context.find("\xEF\xBF\xBD") == std::string::npos) {
      EXPECT_EQ(decoded_context + streamed, text) << "split " << split;
    } else {
      // The context ends inside the emoji (Decode shows its bytes as
      // U+FFFD): the stream delivers the whole emoji and the rest.
      EXPECT_EQ(streamed, text.substr(text.find("\xF0\x9F\xA6\x99"))) << "split " << split;
    }
  }
}

TEST(IncrementalDetokenizerTest, FlushReplacesAnIncompleteTail) {
  std::unique_ptr<Tokenizer> tokenizer = LoadOrDie(Llama2Dir());
  ASSERT_NE(tokenizer, nullptr);
  IncrementalDetokenizer detokenizer(tokenizer.get(), {});
  EXPECT_EQ(detokenizer.Push(450), "The");
  EXPECT_EQ(detokenizer.Push(243), "");  // <0xF0>: first of four bytes
  EXPECT_EQ(detokenizer.Push(162), "");  // <0x9F>
  const std::string tail = detokenizer.Flush();
  EXPECT_TRUE(IsValidUtf8(tail));
  EXPECT_THAT(tail, HasSubstr("\xEF\xBF\xBD"));  // U+FFFD
  EXPECT_EQ(detokenizer.Flush(), "");
}

TEST(IncrementalDetokenizerTest, ControlTokensAddNothing) {
  std::unique_ptr<Tokenizer> tokenizer = LoadOrDie(Llama2Dir());
  ASSERT_NE(tokenizer, nullptr);
  IncrementalDetokenizer detokenizer(tokenizer.get(), std::vector<int32_t>{450});
  EXPECT_EQ(detokenizer.Push(7483), " capital");
  EXPECT_EQ(detokenizer.Push(2), "");  // EOS
  EXPECT_EQ(detokenizer.Flush(), "");
}

TEST(IncrementalDetokenizerTest, ALoneSpacePieceKeepsTheNextPiecesSpace) {
  // stories260K's SentencePiece model drops the leading "▁" of every piece
  // until text has come out, so decoding a window that starts at a lone "▁"
  // piece would lose the space of the piece after it.
  std::unique_ptr<Tokenizer> tokenizer = LoadOrDie(Stories260KDir());
  ASSERT_NE(tokenizer, nullptr);
  int32_t space = -1, timmy = -1;
  for (int32_t id = 0; id < tokenizer->vocab_size(); ++id) {
    if (tokenizer->IdToPiece(id) == "\xE2\x96\x81") space = id;             // "▁"
    if (tokenizer->IdToPiece(id) == "\xE2\x96\x81Timmy") timmy = id;  // "▁Timmy"
  }
  ASSERT_GE(space, 0);
  ASSERT_GE(timmy, 0);
  const std::vector<int32_t> context = tokenizer->Encode("Once upon a time", true);
  const std::vector<int32_t> generated = {space, timmy, space, space, timmy};
  std::vector<int32_t> all = context;
  all.insert(all.end(), generated.begin(), generated.end());
  ASSERT_EQ(tokenizer->Decode(all), "Once upon a time  Timmy   Timmy");
  EXPECT_EQ(DetokenizeIncrementally(*tokenizer, context, generated), "  Timmy   Timmy");
}

TEST(IncrementalDetokenizerTest, RandomIdsStreamExactlyTheWholeDecode) {
  // stories260K: 512 pieces, half of them byte-fallback pieces, plus "▁",
  // control ids and ordinary words: random ids hit every awkward case
  // (characters split over ids, invalid byte runs, lone spaces).
  std::unique_ptr<Tokenizer> tokenizer = LoadOrDie(Stories260KDir());
  ASSERT_NE(tokenizer, nullptr);
  std::mt19937 rng(31);
  std::uniform_int_distribution<int32_t> id(0, tokenizer->vocab_size() - 1);
  for (int trial = 0; trial < 300; ++trial) {
    std::vector<int32_t> context = tokenizer->Encode("Once upon a time", true);
    for (int i = trial % 3; i > 0; --i) context.push_back(id(rng));
    std::vector<int32_t> generated(1 + trial % 40);
    for (int32_t& g : generated) g = id(rng);
    std::vector<int32_t> all = context;
    all.insert(all.end(), generated.begin(), generated.end());
    const std::string whole = tokenizer->Decode(all);
    const std::string head = tokenizer->Decode(context);
    const std::string streamed = DetokenizeIncrementally(*tokenizer, context, generated);
    if (head.size() <= whole.size() && whole.compare(0, head.size(), head) == 0) {
      EXPECT_EQ(streamed, whole.substr(head.size())) << "trial " << trial;
    } else {
      // The context ends inside a character that the generated ids
      // complete: Decode(context) shows U+FFFD where the whole shows the
      // character, which the stream delivers whole.
      EXPECT_EQ(head.substr(head.size() - 3), "\xEF\xBF\xBD") << "trial " << trial;
    }
  }
}

}  // namespace
}  // namespace pdserve
