// The pieces of `pdserve-cli generate` that need no network: its options
// turned into a GenerateRequest, repeated flags taken from argv, and the
// streamed responses turned into text. main.cc owns the flags and the call.
#ifndef PDSERVE_CLI_GENERATE_COMMAND_H_
#define PDSERVE_CLI_GENERATE_COMMAND_H_

#include <cstddef>
#include <cstdint>
#include <map>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"
#include "pdserve/v1/generate.pb.h"

namespace pdserve {

// The generate flags, as plain values (defaults are the flags' defaults).
struct GenerateOptions {
  std::string prompt;   // the prompt, or with `chat` the messages JSON ("" with chat: stdin)
  bool chat = false;    // prompt is [{"role": ..., "content": ...}, ...]
  int max_new_tokens = 0;           // 0: the server default
  float temperature = 0.0f;
  int top_k = 0;
  float top_p = 1.0f;
  float min_p = 0.0f;
  float repetition_penalty = 1.0f;
  float presence_penalty = 0.0f;
  float frequency_penalty = 0.0f;
  int64_t seed = -1;                // < 0: let the server draw one
  bool ignore_eos = false;
  std::vector<std::string> stop;    // stop strings
  int logprobs = -1;                // < 0 off; 0: the chosen token's; N > 0: and N alternatives
  int prompt_logprobs = -1;         // < 0 off; N >= 0: each prompt token's and N alternatives
  int n = 1;                        // samples
};

// The request for `options`. Values are sent as given (the server validates
// them); INVALID_ARGUMENT only for chat JSON that is not a non-empty array of
// {"role": string, "content": string} objects (naming the element).
absl::StatusOr<v1::GenerateRequest> BuildGenerateRequest(const GenerateOptions& options);

// Removes every "--NAME VALUE" and "--NAME=VALUE" from `args` (args[0], the
// program, is kept) and returns the values in order, so a flag can be given
// several times (absl flags keep only the last). INVALID_ARGUMENT when
// "--NAME" is the last argument.
absl::StatusOr<std::vector<std::string>> TakeRepeatedFlag(std::vector<char*>& args,
                                                          std::string_view name);

// One line per token: its index, the token's text as streamed (quoted, with
// \n and non-printable bytes escaped), its logprob, and the alternatives as
// piece=logprob, e.g.
//   "   3  \" a\"  -0.0123  | ▁a=-0.0123 ▁the=-4.5012"
std::string FormatLogprobLine(const v1::GenerateResponse& response);

// `text` padded with spaces to `width` columns, counting UTF-8 code points
// (SentencePiece's "▁" is one column, three bytes).
std::string PadToColumns(const std::string& text, size_t width);

// The prompt's logprobs from a stream's first message, one line per prompt
// position: position, id, piece, its logprob given the tokens before it, and
// the alternatives as piece=logprob. A last line sums the logprobs and gives
// the perplexity exp(-sum / count):
//   "prompt logprobs (5 tokens):"
//   "     0       1  <s>"
//   "     1     403  ▁Once              -7.1836  | ▁Once=-7.1836 ▁The=-2.0000"
//   "  sum -12.3456 over 4 tokens, perplexity 21.9000"
// `prompt_tokens` is Tokenize's answer for the same prompt (may be empty, as
// for a chat): when its ids agree with the logprobs' ids it supplies
// position 0 (which has no logprob) and every piece; otherwise a piece comes
// from the position's alternatives when the token is among them, else "?".
// "" when `first` has no prompt logprobs.
std::string FormatPromptLogprobs(const v1::GenerateResponse& first,
                                 const v1::TokenizeResponse& prompt_tokens);

// A finished sample's messages in order (as collected from the stream).
struct SampleOutput {
  std::vector<v1::GenerateResponse> responses;
  std::string text() const;
  // FINISH_REASON_LENGTH -> "length"; "-" before the final message.
  std::string finish() const;
};

// Splits a stream's messages by sample_index.
std::map<int, SampleOutput> GroupBySample(const std::vector<v1::GenerateResponse>& responses);

// n > 1: each sample as a block
//   --- sample 0 (finish: length, 16 tokens) ---
//   <its text>
// followed, when `logprobs` >= 0, by its FormatLogprobLine lines.
std::string FormatSamples(const std::map<int, SampleOutput>& samples, int logprobs);

// FINISH_REASON_LENGTH -> "length".
std::string FinishName(v1::FinishReason reason);

}  // namespace pdserve

#endif  // PDSERVE_CLI_GENERATE_COMMAND_H_
