// Prompts for the load generator read from a file (--prompts_file).
#ifndef PDSERVE_BENCH_LOAD_GENERATOR_PROMPTS_FILE_H_
#define PDSERVE_BENCH_LOAD_GENERATOR_PROMPTS_FILE_H_

#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace pdserve::bench {

// Prompts in `content`, one per line. A line whose first non-blank character
// is '{' is a JSON object (JSONL) whose string member "prompt" is the prompt,
// so prompts may hold newlines; any other line is the prompt verbatim, less a
// trailing '\r'. Blank lines are skipped; lines may mix both forms.
// Errors: INVALID_ARGUMENT naming `source_name`:line for a JSON line that
// does not parse or lacks a string "prompt", or an empty prompt; and when
// `content` holds no prompt at all.
absl::StatusOr<std::vector<std::string>> ParsePrompts(absl::string_view content,
                                                      absl::string_view source_name);

// ParsePrompts over the file at `path`. Errors: NOT_FOUND when the file
// cannot be read, plus ParsePrompts' errors.
absl::StatusOr<std::vector<std::string>> LoadPromptsFile(const std::string& path);

}  // namespace pdserve::bench

#endif  // PDSERVE_BENCH_LOAD_GENERATOR_PROMPTS_FILE_H_
