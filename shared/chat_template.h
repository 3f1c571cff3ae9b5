// Chat `messages` -> prompt text/ids, in the chat format of the model family
// (Phi-3, Llama-2-chat, Mistral-instruct), reproducing what Hugging Face's
// `tokenizer.apply_chat_template` produces from each model's published
// tokenizer_config.json "chat_template". We do not run Jinja: each family's
// template is small and fixed, so it is written out in chat_template.cc with
// the template's rules in comments, and tests/reference/chat_reference.py
// checks the result against Jinja2 running the real template text.
#ifndef PDSERVE_SHARED_CHAT_TEMPLATE_H_
#define PDSERVE_SHARED_CHAT_TEMPLATE_H_

#include <cstdint>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"

namespace pdserve {

class Tokenizer;

enum class ChatFormat {
  kPhi3,             // microsoft/Phi-3-mini-4k-instruct
  kLlama2Chat,       // meta-llama/Llama-2-7b-chat-hf (and 13b/70b)
  kMistralInstruct,  // mistralai/Mistral-7B-Instruct-v0.2 (and v0.1)
};

// "phi3", "llama2-chat", "mistral-instruct": for logs and error messages.
std::string_view ChatFormatName(ChatFormat format);

// The family a Jinja chat template belongs to, recognised by its markers:
//   Phi-3             "<|user|>", "<|assistant|>" and "<|end|>"
//   Llama-2-chat      "[INST]" and "<<SYS>>"
//   Mistral-instruct  "[INST]" and no "<<SYS>>"
// nullopt when the markers fit no family or more than one (never a guess).
// Templates of Mistral's v3 tokenizer generation (Mistral-7B-Instruct-v0.3,
// Mixtral-8x22B: "[AVAILABLE_TOOLS]" / "[TOOL_CALLS]") are not recognised:
// they place the system prompt and the spaces differently.
std::optional<ChatFormat> ClassifyChatTemplate(std::string_view chat_template);

// Reads the chat template of the model in `model_dir`: the "chat_template"
// field of tokenizer_config.json (a string, or a list of {"name",
// "template"} of which the one named "default" is used) or, failing that, the
// file chat_template.jinja; then classifies it as above.
// Errors:
//   FAILED_PRECONDITION naming `model_dir` and saying that no chat format is
//     known for it, when there is no template or it fits no family. Chosen
//     over INVALID_ARGUMENT because nothing in a request is wrong: the model
//     directory lacks what chat requests need. A decode service calls this
//     once at start-up and returns the stored error to each request that
//     sends `messages` (plain-prompt requests still work).
//   INVALID_ARGUMENT naming the file for malformed JSON or a "chat_template"
//     of the wrong type; NOT_FOUND/INTERNAL never: a missing file is
//     FAILED_PRECONDITION as above.
absl::StatusOr<ChatFormat> DetectChatFormat(const std::string& model_dir);

// One message of a conversation. `content` is UTF-8 text.
struct ChatMessage {
  std::string role;  // "system", "user" or "assistant"
  std::string content;
};

// A rendered conversation as a sequence of pieces: literal text, or the
// model's BOS/EOS token, which the Llama-2 and Mistral templates write as the
// text "<s>" and "</s>". Those are not added tokens of the SentencePiece model
// (Tokenizer::Encode would encode "<s>" as the three characters '<', 's',
// '>'), so they are kept apart here and become Tokenizer::bos_id()/eos_id()
// in EncodeChat. Phi-3's template ends with its eos_token "<|endoftext|>"
// when add_generation_prompt is false; that one is an added token (32000)
// and stays text.
struct ChatSegment {
  enum class Kind { kText, kBos, kEos };
  Kind kind = Kind::kText;
  std::string text;  // kText only

  bool operator==(const ChatSegment&) const = default;
};

// Renders `messages` in `format` as segments (see RenderChat for the rules and
// errors). Adjacent text is merged; empty text is left out.
absl::StatusOr<std::vector<ChatSegment>> RenderChatSegments(ChatFormat format,
                                                            std::span<const ChatMessage> messages,
                                                            bool add_generation_prompt);

// Exactly the text Hugging Face's apply_chat_template(messages, tokenize=False,
// add_generation_prompt=...) returns with the model's template, BOS/EOS
// written as "<s>"/"</s>". For display and tests; to get token ids use
// EncodeChat, not Tokenizer::Encode on this text.
//
// Phi-3 (any order of roles):
//   each message: "<|" role "|>\n" content "<|end|>\n"
//   then "<|assistant|>\n" if add_generation_prompt, else "<|endoftext|>".
// Llama-2-chat (optional first system message, then user/assistant
// alternating, starting with user; add_generation_prompt is ignored, as the
// template ignores it: a user turn already ends in the prompt " [/INST]"):
//   user:      "<s>[INST] " strip(c) " [/INST]", where for the first user
//              message c = "<<SYS>>\n" system "\n<</SYS>>\n\n" content
//   assistant: " " strip(content) " </s>"
//   strip() is Python's str.strip(): Unicode whitespace at both ends.
// Mistral-instruct (same order rules; add_generation_prompt ignored):
//   "<s>", then user: " [INST] " [system "\n\n" if first] content " [/INST]",
//   assistant: " " content "</s>". No stripping.
// Errors: INVALID_ARGUMENT naming the message index and role for an empty
// `messages`, a role other than system/user/assistant, or a role out of the
// format's order (for Llama-2/Mistral: system other than first, a user/
// assistant sequence that does not alternate starting with user, or no
// message after the system message). Stricter than the Hugging Face
// templates in one way: where a template would silently drop a message
// (Phi-3 with an unknown role, Llama-2 with a system message at an odd
// position) we reject it.
absl::StatusOr<std::string> RenderChat(ChatFormat format, std::span<const ChatMessage> messages,
                                       bool add_generation_prompt);

// The prompt token ids for `messages`: RenderChatSegments, then each text
// segment through tokenizer.Encode(text, /*add_bos=*/false) (which matches
// added tokens such as "<|user|>" first, with their rstrip/lstrip flags:
// Phi-3's "<|user|>\n" is one id) and each BOS/EOS segment as
// tokenizer.bos_id()/eos_id(). The BOS the Llama-2/Mistral templates start
// with is therefore already in the result: do not add another. Phi-3's
// template has no BOS and none is added (apply_chat_template tokenizes with
// add_special_tokens=False). Errors: as RenderChat.
absl::StatusOr<std::vector<int32_t>> EncodeChat(const Tokenizer& tokenizer, ChatFormat format,
                                                std::span<const ChatMessage> messages,
                                                bool add_generation_prompt);

}  // namespace pdserve

#endif  // PDSERVE_SHARED_CHAT_TEMPLATE_H_
