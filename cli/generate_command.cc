#include "cli/generate_command.h"

#include <cmath>
#include <string>
#include <utility>

#include <nlohmann/json.hpp>

#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/strip.h"

namespace pdserve {
namespace {

absl::Status AddChatMessages(std::string_view json_text, v1::GenerateRequest& request) {
  const nlohmann::json messages =
      nlohmann::json::parse(json_text, nullptr, /*allow_exceptions=*/false);
  if (messages.is_discarded() || !messages.is_array() || messages.empty()) {
    return absl::InvalidArgumentError(
        "--chat: expected a non-empty JSON array of {\"role\": ..., \"content\": ...} objects");
  }
  v1::ChatMessages* out = request.mutable_messages();
  for (size_t i = 0; i < messages.size(); ++i) {
    const nlohmann::json& message = messages[i];
    if (!message.is_object() || !message.contains("role") || !message["role"].is_string() ||
        !message.contains("content") || !message["content"].is_string()) {
      return absl::InvalidArgumentError(absl::StrCat(
          "--chat: message ", i, " must be an object with string \"role\" and \"content\""));
    }
    v1::ChatMessage* entry = out->add_messages();
    entry->set_role(message["role"].get<std::string>());
    entry->set_content(message["content"].get<std::string>());
  }
  return absl::OkStatus();
}

// The token's text quoted for one line: \n, \t, quotes and bytes below 0x20
// escaped; UTF-8 passes through.
std::string Quoted(std::string_view text) {
  std::string out = "\"";
  for (char c : text) {
    switch (c) {
      case '\n':
        out += "\\n";
        break;
      case '\t':
        out += "\\t";
        break;
      case '"':
        out += "\\\"";
        break;
      case '\\':
        out += "\\\\";
        break;
      default:
        if (static_cast<unsigned char>(c) < 0x20) {
          out += absl::StrFormat("\\x%02x", static_cast<unsigned char>(c));
        } else {
          out += c;
        }
    }
  }
  return out + "\"";
}

}  // namespace

absl::StatusOr<v1::GenerateRequest> BuildGenerateRequest(const GenerateOptions& options) {
  v1::GenerateRequest request;
  if (options.chat) {
    absl::Status added = AddChatMessages(options.prompt, request);
    if (!added.ok()) return added;
  } else {
    request.set_prompt(options.prompt);
  }
  v1::SamplingParams* sampling = request.mutable_sampling();
  sampling->set_temperature(options.temperature);
  sampling->set_top_k(options.top_k);
  sampling->set_top_p(options.top_p);
  sampling->set_min_p(options.min_p);
  sampling->set_repetition_penalty(options.repetition_penalty);
  sampling->set_presence_penalty(options.presence_penalty);
  sampling->set_frequency_penalty(options.frequency_penalty);
  if (options.seed >= 0) sampling->set_seed(static_cast<uint64_t>(options.seed));
  v1::StoppingCriteria* stopping = request.mutable_stopping();
  stopping->set_max_new_tokens(options.max_new_tokens);
  stopping->set_ignore_eos(options.ignore_eos);
  for (const std::string& stop : options.stop) stopping->add_stop(stop);
  v1::OutputOptions* output = request.mutable_output();
  output->set_logprobs(options.logprobs >= 0);
  output->set_top_logprobs(options.logprobs > 0 ? options.logprobs : 0);
  if (options.prompt_logprobs >= 0) output->set_prompt_logprobs(options.prompt_logprobs);
  output->set_n(options.n);
  return request;
}

absl::StatusOr<std::vector<std::string>> TakeRepeatedFlag(std::vector<char*>& args,
                                                          std::string_view name) {
  const std::string flag = "--" + std::string(name);
  const std::string with_value = flag + "=";
  std::vector<std::string> values;
  std::vector<char*> kept;
  for (size_t i = 0; i < args.size(); ++i) {
    const std::string_view arg = args[i];
    if (i > 0 && arg == flag) {
      if (i + 1 == args.size()) {
        return absl::InvalidArgumentError(absl::StrCat(flag, " needs a value"));
      }
      values.emplace_back(args[++i]);
    } else if (i > 0 && arg.substr(0, with_value.size()) == with_value) {
      values.emplace_back(arg.substr(with_value.size()));
    } else {
      kept.push_back(args[i]);
    }
  }
  args = std::move(kept);
  return values;
}

std::string FormatLogprobLine(const v1::GenerateResponse& response) {
  std::string line = absl::StrFormat("%4d  %-16s", response.index(), Quoted(response.text()));
  if (response.has_logprob()) absl::StrAppendFormat(&line, "  %9.4f", response.logprob());
  if (response.top_logprobs_size() > 0) {
    line += "  |";
    for (const v1::TokenLogprob& top : response.top_logprobs()) {
      absl::StrAppendFormat(&line, " %s=%.4f", top.piece(), top.logprob());
    }
  }
  return line + "\n";
}

std::string PadToColumns(const std::string& text, size_t width) {
  size_t characters = 0;
  for (char c : text) characters += (static_cast<unsigned char>(c) & 0xC0) != 0x80;
  return characters >= width ? text : text + std::string(width - characters, ' ');
}

std::string FormatPromptLogprobs(const v1::GenerateResponse& first,
                                 const v1::TokenizeResponse& prompt_tokens) {
  const auto& entries = first.prompt_logprobs();
  if (entries.empty()) return "";
  // Tokenize's answer names every position only if it is the same prompt.
  bool tokens_agree = prompt_tokens.token_ids_size() == entries.size() + 1 &&
                      prompt_tokens.pieces_size() == prompt_tokens.token_ids_size();
  for (int i = 0; tokens_agree && i < entries.size(); ++i) {
    const int position = entries[i].position();
    tokens_agree = position >= 0 && position < prompt_tokens.token_ids_size() &&
                   prompt_tokens.token_ids(position) == entries[i].token_id();
  }
  std::string out = absl::StrCat("prompt logprobs (", entries.size() + 1, " tokens):\n");
  if (tokens_agree) {
    absl::StrAppendFormat(&out, "  %4d  %6d  %s\n", 0, prompt_tokens.token_ids(0),
                          prompt_tokens.pieces(0));
  }
  double sum = 0.0;
  for (const v1::PromptTokenLogprob& entry : entries) {
    std::string piece = "?";
    if (tokens_agree) {
      piece = prompt_tokens.pieces(entry.position());
    } else {
      for (const v1::TokenLogprob& top : entry.top_logprobs()) {
        if (top.token_id() == entry.token_id()) piece = top.piece();
      }
    }
    absl::StrAppendFormat(&out, "  %4d  %6d  %s  %9.4f", entry.position(), entry.token_id(),
                          PadToColumns(piece, 16), entry.logprob());
    if (entry.top_logprobs_size() > 0) {
      out += "  |";
      for (const v1::TokenLogprob& top : entry.top_logprobs()) {
        absl::StrAppendFormat(&out, " %s=%.4f", top.piece(), top.logprob());
      }
    }
    out += "\n";
    sum += entry.logprob();
  }
  absl::StrAppendFormat(&out, "  sum %.4f over %d tokens, perplexity %.4f\n", sum, entries.size(),
                        std::exp(-sum / entries.size()));
  return out;
}

std::string SampleOutput::text() const {
  std::string text;
  for (const v1::GenerateResponse& response : responses) text += response.text();
  return text;
}

std::string SampleOutput::finish() const {
  if (responses.empty() || responses.back().finish_reason() == v1::FINISH_REASON_UNSPECIFIED) {
    return "-";
  }
  return FinishName(responses.back().finish_reason());
}

std::map<int, SampleOutput> GroupBySample(const std::vector<v1::GenerateResponse>& responses) {
  std::map<int, SampleOutput> samples;
  for (const v1::GenerateResponse& response : responses) {
    samples[response.sample_index()].responses.push_back(response);
  }
  return samples;
}

std::string FormatSamples(const std::map<int, SampleOutput>& samples, int logprobs) {
  std::string out;
  for (const auto& [index, sample] : samples) {
    absl::StrAppend(&out, "--- sample ", index, " (finish: ", sample.finish(), ", ",
                    sample.responses.size(), " tokens) ---\n", sample.text(), "\n");
    if (logprobs < 0) continue;
    for (const v1::GenerateResponse& response : sample.responses) {
      out += FormatLogprobLine(response);
    }
  }
  return out;
}

std::string FinishName(v1::FinishReason reason) {
  return absl::AsciiStrToLower(
      absl::StripPrefix(v1::FinishReason_Name(reason), "FINISH_REASON_"));
}

}  // namespace pdserve
