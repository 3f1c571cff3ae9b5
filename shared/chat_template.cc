#include "shared/chat_template.h"

#include <cstdint>
#include <fstream>
#include <iterator>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "nlohmann/json.hpp"
#include "shared/status_macros.h"
#include "shared/tokenizer.h"

// The three templates this file reproduces, as published in each model's
// tokenizer_config.json (copies in tests/data/chat_templates/). Hugging Face
// renders them with Jinja2, trim_blocks and lstrip_blocks on, bos_token "<s>"
// and eos_token "<|endoftext|>" (Phi-3) or "</s>" (Llama 2, Mistral).
//
// microsoft/Phi-3-mini-4k-instruct (revision of mid 2024, the one with a
// system role):
//   for each message: system/user/assistant -> '<|' role '|>\n' + content +
//   '<|end|>\n'; any other role renders nothing.
//   then: add_generation_prompt ? '<|assistant|>\n' : eos_token.
//   No bos_token; no order rules.
//   (The first, April 2024 revision started with bos_token, had no system
//   role and wrote '<|assistant|>\n' after every user turn.)
//
// meta-llama/Llama-2-7b-chat-hf:
//   if messages[0] is system: system_message = its content, loop over the
//   rest; else system_message = false.
//   loop: raise unless role == 'user' exactly at even loop indices.
//   content = (loop index 0 and system_message != false)
//             ? '<<SYS>>\n' + system_message + '\n<</SYS>>\n\n' + content
//             : content
//   user:      bos_token + '[INST] ' + content.strip() + ' [/INST]'
//   assistant: ' ' + content.strip() + ' ' + eos_token
//   other roles (only reachable at odd loop indices) render nothing.
//   add_generation_prompt is not used.
//   Note: '' != false in Jinja, so an empty system message still renders its
//   <<SYS>> block; .strip() is Python's, over the whole combined content.
//
// mistralai/Mistral-7B-Instruct-v0.2 (revision of 2024, the one with a
// system message; v0.1 has the same template):
//   if messages[0] is system: system_message = its content, loop over rest.
//   bos_token first, then for each loop message:
//   raise unless role == 'user' exactly at even loop indices.
//   user:      ' [INST] ' + (loop.first and system_message defined
//                            ? system_message + '\n\n' : '')
//              + content + ' [/INST]'
//   assistant: ' ' + content + eos_token
//   other roles raise. No stripping. add_generation_prompt is not used.
//   (The December 2023 revision wrote '[INST] ' without the leading space,
//   the assistant content without it, and had no system message; the
//   current one matches mistral_common's tokenization of these models, so we
//   render it for every Mistral-style template.)

namespace pdserve {
namespace {

using Json = nlohmann::json;

constexpr char kTokenizerConfigFile[] = "tokenizer_config.json";
constexpr char kChatTemplateFile[] = "chat_template.jinja";

// Reads a small text file; nullopt when it cannot be opened (missing).
std::optional<std::string> ReadTextFile(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return std::nullopt;
  return std::string(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
}

std::string JoinModelPath(const std::string& dir, const char* name) {
  if (dir.empty() || dir.back() == '/') return absl::StrCat(dir, name);
  return absl::StrCat(dir, "/", name);
}

// Debian's Abseil has its own string_view type, which StrCat needs.
absl::string_view AsAbsl(std::string_view text) {
  return absl::string_view(text.data(), text.size());
}

absl::Status NoChatFormat(const std::string& model_dir, std::string_view why) {
  return absl::FailedPreconditionError(absl::StrCat(
      "model directory '", model_dir, "': no chat format is known for this model (", AsAbsl(why),
      "); chat messages need a Phi-3, Llama-2-chat or Mistral-instruct chat_template"));
}

// The template text from tokenizer_config.json's "chat_template", or "" when
// the field is absent/null.
absl::StatusOr<std::string> TemplateFromTokenizerConfig(const std::string& path,
                                                        const std::string& text) {
  Json config;
  try {
    config = Json::parse(text);
  } catch (const Json::exception& e) {
    return absl::InvalidArgumentError(absl::StrCat(path, ": JSON parse error: ", e.what()));
  }
  if (!config.is_object()) {
    return absl::InvalidArgumentError(absl::StrCat(path, ": top level must be a JSON object"));
  }
  auto it = config.find("chat_template");
  if (it == config.end() || it->is_null()) return std::string();
  if (it->is_string()) return it->get<std::string>();
  if (it->is_array()) {
    // Named templates (transformers >= 4.34): [{"name": ..., "template": ...}].
    for (const Json& entry : *it) {
      if (!entry.is_object()) continue;
      auto name = entry.find("name");
      auto body = entry.find("template");
      if (name != entry.end() && name->is_string() && *name == "default" && body != entry.end() &&
          body->is_string()) {
        return body->get<std::string>();
      }
    }
    return std::string();
  }
  return absl::InvalidArgumentError(
      absl::StrCat(path, ": 'chat_template' must be a string or a list of named templates, got ",
                   it->type_name()));
}

// Python's str.isspace() for one code point: bidirectional class WS, B or S,
// or general category Zs.
bool IsPythonWhitespace(char32_t c) {
  return (c >= 0x09 && c <= 0x0D) || (c >= 0x1C && c <= 0x20) || c == 0x85 || c == 0xA0 ||
         c == 0x1680 || (c >= 0x2000 && c <= 0x200A) || c == 0x2028 || c == 0x2029 || c == 0x202F ||
         c == 0x205F || c == 0x3000;
}

// Decodes the UTF-8 character at `text[pos]`; `length` gets its byte count.
// An invalid byte decodes as itself with length 1 (never whitespace above
// 0x7F, so it stops the strip, as Python's surrogateescape'd byte would).
char32_t DecodeAt(std::string_view text, size_t pos, size_t* length) {
  const auto byte = [&](size_t i) { return static_cast<unsigned char>(text[i]); };
  const unsigned char lead = byte(pos);
  size_t n = lead < 0x80           ? 1
             : (lead >> 5) == 0x6  ? 2
             : (lead >> 4) == 0xE  ? 3
             : (lead >> 3) == 0x1E ? 4
                                   : 0;
  if (n == 0 || pos + n > text.size()) {
    *length = 1;
    return 0xFFFFFFFF;
  }
  char32_t c = n == 1 ? lead : lead & (0x7F >> n);
  for (size_t i = 1; i < n; ++i) {
    if ((byte(pos + i) & 0xC0) != 0x80) {
      *length = 1;
      return 0xFFFFFFFF;
    }
    c = (c << 6) | (byte(pos + i) & 0x3F);
  }
  *length = n;
  return c;
}

// Python's str.strip() with no arguments, on UTF-8 text.
std::string_view PythonStrip(std::string_view text) {
  size_t begin = 0;
  while (begin < text.size()) {
    size_t length = 0;
    if (!IsPythonWhitespace(DecodeAt(text, begin, &length))) break;
    begin += length;
  }
  size_t end = text.size();
  while (end > begin) {
    // Step back to the start of the last character.
    size_t start = end - 1;
    while (start > begin && end - start < 4 &&
           (static_cast<unsigned char>(text[start]) & 0xC0) == 0x80) {
      --start;
    }
    size_t length = 0;
    const char32_t c = DecodeAt(text, start, &length);
    if (start + length != end || !IsPythonWhitespace(c)) break;
    end = start;
  }
  return text.substr(begin, end - begin);
}

// Accumulates segments, merging adjacent text and dropping empty text.
class SegmentWriter {
 public:
  void Text(std::string_view text) {
    if (text.empty()) return;
    if (segments_.empty() || segments_.back().kind != ChatSegment::Kind::kText) {
      segments_.push_back(ChatSegment{ChatSegment::Kind::kText, std::string()});
    }
    segments_.back().text.append(text);
  }
  void Bos() { segments_.push_back(ChatSegment{ChatSegment::Kind::kBos, std::string()}); }
  void Eos() { segments_.push_back(ChatSegment{ChatSegment::Kind::kEos, std::string()}); }
  std::vector<ChatSegment> Take() { return std::move(segments_); }

 private:
  std::vector<ChatSegment> segments_;
};

bool IsKnownRole(const std::string& role) {
  return role == "system" || role == "user" || role == "assistant";
}

absl::Status UnknownRole(ChatFormat format, size_t index, const std::string& role) {
  return absl::InvalidArgumentError(absl::StrCat(
      "messages[", index, "].role '", role, "' is not supported by the ",
      AsAbsl(ChatFormatName(format)), " chat format (allowed: system, user, assistant)"));
}

absl::Status CheckNotEmpty(std::span<const ChatMessage> messages) {
  if (messages.empty()) {
    return absl::InvalidArgumentError(
        "messages is empty: a chat request needs at least one message");
  }
  return absl::OkStatus();
}

absl::StatusOr<std::vector<ChatSegment>> RenderPhi3(std::span<const ChatMessage> messages,
                                                    bool add_generation_prompt) {
  SegmentWriter out;
  for (size_t i = 0; i < messages.size(); ++i) {
    const ChatMessage& message = messages[i];
    if (!IsKnownRole(message.role)) return UnknownRole(ChatFormat::kPhi3, i, message.role);
    out.Text(absl::StrCat("<|", message.role, "|>\n", message.content, "<|end|>\n"));
  }
  // Phi-3's eos_token is the added token "<|endoftext|>", so it stays text.
  out.Text(add_generation_prompt ? "<|assistant|>\n" : "<|endoftext|>");
  return out.Take();
}

// The order rule Llama 2 and Mistral share: an optional first system message,
// then user/assistant alternating, starting with user, at least one of them.
absl::Status CheckAlternation(ChatFormat format, std::span<const ChatMessage> messages) {
  const size_t first = messages[0].role == "system" ? 1 : 0;
  for (size_t i = 0; i < messages.size(); ++i) {
    const std::string& role = messages[i].role;
    if (!IsKnownRole(role)) return UnknownRole(format, i, role);
    if (i < first) continue;
    const char* expected = (i - first) % 2 == 0 ? "user" : "assistant";
    if (role != expected) {
      return absl::InvalidArgumentError(absl::StrCat(
          "messages[", i, "].role is '", role, "' but the ", AsAbsl(ChatFormatName(format)),
          " chat format needs '", expected,
          "' there: after an optional first system message, roles must alternate user, "
          "assistant, user, ..."));
    }
  }
  if (first == messages.size()) {
    return absl::InvalidArgumentError(
        absl::StrCat("messages[0].role is 'system' and no message follows it: the ",
                     AsAbsl(ChatFormatName(format)),
                     " chat format needs a user message after the system message"));
  }
  return absl::OkStatus();
}

absl::StatusOr<std::vector<ChatSegment>> RenderLlama2(std::span<const ChatMessage> messages) {
  PDSERVE_RETURN_IF_ERROR(CheckAlternation(ChatFormat::kLlama2Chat, messages));
  const bool has_system = messages[0].role == "system";
  SegmentWriter out;
  for (size_t i = has_system ? 1 : 0; i < messages.size(); ++i) {
    const ChatMessage& message = messages[i];
    if (message.role == "user") {
      std::string content = message.content;
      if (has_system && i == 1) {
        content = absl::StrCat("<<SYS>>\n", messages[0].content, "\n<</SYS>>\n\n", content);
      }
      out.Bos();
      out.Text(absl::StrCat("[INST] ", AsAbsl(PythonStrip(content)), " [/INST]"));
    } else {  // assistant
      out.Text(absl::StrCat(" ", AsAbsl(PythonStrip(message.content)), " "));
      out.Eos();
    }
  }
  return out.Take();
}

absl::StatusOr<std::vector<ChatSegment>> RenderMistral(std::span<const ChatMessage> messages) {
  PDSERVE_RETURN_IF_ERROR(CheckAlternation(ChatFormat::kMistralInstruct, messages));
  const bool has_system = messages[0].role == "system";
  SegmentWriter out;
  out.Bos();
  for (size_t i = has_system ? 1 : 0; i < messages.size(); ++i) {
    const ChatMessage& message = messages[i];
    if (message.role == "user") {
      const bool with_system = has_system && i == 1;
      out.Text(absl::StrCat(" [INST] ", with_system ? messages[0].content : "",
                            with_system ? "\n\n" : "", message.content, " [/INST]"));
    } else {  // assistant
      out.Text(absl::StrCat(" ", message.content));
      out.Eos();
    }
  }
  return out.Take();
}

}  // namespace

std::string_view ChatFormatName(ChatFormat format) {
  switch (format) {
    case ChatFormat::kPhi3:
      return "phi3";
    case ChatFormat::kLlama2Chat:
      return "llama2-chat";
    case ChatFormat::kMistralInstruct:
      return "mistral-instruct";
  }
  return "unknown";
}

std::optional<ChatFormat> ClassifyChatTemplate(std::string_view chat_template) {
  const auto has = [&](std::string_view marker) {
    return chat_template.find(marker) != std::string_view::npos;
  };
  const bool phi3 = has("<|user|>") && has("<|assistant|>") && has("<|end|>");
  const bool inst = has("[INST]");
  if (phi3 == inst) return std::nullopt;  // neither family, or markers of both
  if (phi3) return ChatFormat::kPhi3;
  if (has("<<SYS>>")) return ChatFormat::kLlama2Chat;
  // Mistral's v3 tokenizer generation formats differently; see the header.
  if (has("[AVAILABLE_TOOLS]") || has("[TOOL_CALLS]")) return std::nullopt;
  return ChatFormat::kMistralInstruct;
}

absl::StatusOr<ChatFormat> DetectChatFormat(const std::string& model_dir) {
  std::string chat_template;
  const std::string config_path = JoinModelPath(model_dir, kTokenizerConfigFile);
  if (std::optional<std::string> config = ReadTextFile(config_path)) {
    PDSERVE_ASSIGN_OR_RETURN(chat_template, TemplateFromTokenizerConfig(config_path, *config));
  }
  if (chat_template.empty()) {
    std::optional<std::string> jinja = ReadTextFile(JoinModelPath(model_dir, kChatTemplateFile));
    if (!jinja.has_value() || jinja->empty()) {
      return NoChatFormat(model_dir, absl::StrCat("no chat_template in ", kTokenizerConfigFile,
                                                  " and no ", kChatTemplateFile));
    }
    chat_template = std::move(*jinja);
  }
  std::optional<ChatFormat> format = ClassifyChatTemplate(chat_template);
  if (!format.has_value()) {
    return NoChatFormat(model_dir, "its chat_template matches none of the supported families");
  }
  return *format;
}

absl::StatusOr<std::vector<ChatSegment>> RenderChatSegments(ChatFormat format,
                                                            std::span<const ChatMessage> messages,
                                                            bool add_generation_prompt) {
  PDSERVE_RETURN_IF_ERROR(CheckNotEmpty(messages));
  switch (format) {
    case ChatFormat::kPhi3:
      return RenderPhi3(messages, add_generation_prompt);
    case ChatFormat::kLlama2Chat:
      return RenderLlama2(messages);
    case ChatFormat::kMistralInstruct:
      return RenderMistral(messages);
  }
  return absl::InvalidArgumentError(
      absl::StrCat("chat format ", static_cast<int>(format), " is not a ChatFormat value"));
}

absl::StatusOr<std::string> RenderChat(ChatFormat format, std::span<const ChatMessage> messages,
                                       bool add_generation_prompt) {
  PDSERVE_ASSIGN_OR_RETURN(std::vector<ChatSegment> segments,
                           RenderChatSegments(format, messages, add_generation_prompt));
  std::string text;
  for (const ChatSegment& segment : segments) {
    switch (segment.kind) {
      case ChatSegment::Kind::kText:
        text += segment.text;
        break;
      case ChatSegment::Kind::kBos:
        text += "<s>";
        break;
      case ChatSegment::Kind::kEos:
        text += "</s>";
        break;
    }
  }
  return text;
}

absl::StatusOr<std::vector<int32_t>> EncodeChat(const Tokenizer& tokenizer, ChatFormat format,
                                                std::span<const ChatMessage> messages,
                                                bool add_generation_prompt) {
  PDSERVE_ASSIGN_OR_RETURN(std::vector<ChatSegment> segments,
                           RenderChatSegments(format, messages, add_generation_prompt));
  std::vector<int32_t> ids;
  for (const ChatSegment& segment : segments) {
    switch (segment.kind) {
      case ChatSegment::Kind::kText: {
        std::vector<int32_t> piece = tokenizer.Encode(segment.text, /*add_bos=*/false);
        ids.insert(ids.end(), piece.begin(), piece.end());
        break;
      }
      case ChatSegment::Kind::kBos:
        ids.push_back(tokenizer.bos_id());
        break;
      case ChatSegment::Kind::kEos:
        ids.push_back(tokenizer.eos_id());
        break;
    }
  }
  return ids;
}

}  // namespace pdserve
