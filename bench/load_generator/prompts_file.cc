#include "bench/load_generator/prompts_file.h"

#include <fstream>
#include <sstream>

#include "absl/status/status.h"
#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "nlohmann/json.hpp"

namespace pdserve::bench {
namespace {

absl::StatusOr<std::string> PromptFromJsonLine(absl::string_view line, absl::string_view where) {
  const nlohmann::json object =
      nlohmann::json::parse(line, /*cb=*/nullptr, /*allow_exceptions=*/false);
  if (object.is_discarded() || !object.is_object()) {
    return absl::InvalidArgumentError(
        absl::StrCat(where, ": line starts with '{' but is not a JSON object"));
  }
  const auto it = object.find("prompt");
  if (it == object.end() || !it->is_string()) {
    return absl::InvalidArgumentError(
        absl::StrCat(where, ": JSON line has no string member \"prompt\""));
  }
  return it->get<std::string>();
}

}  // namespace

absl::StatusOr<std::vector<std::string>> ParsePrompts(absl::string_view content,
                                                      absl::string_view source_name) {
  std::vector<std::string> prompts;
  int line_number = 0;
  for (absl::string_view line : absl::StrSplit(content, '\n')) {
    ++line_number;
    if (!line.empty() && line.back() == '\r') line.remove_suffix(1);
    const absl::string_view stripped = absl::StripAsciiWhitespace(line);
    if (stripped.empty()) continue;
    const std::string where = absl::StrCat(source_name, ":", line_number);
    if (stripped.front() == '{') {
      absl::StatusOr<std::string> prompt = PromptFromJsonLine(stripped, where);
      if (!prompt.ok()) return prompt.status();
      if (prompt->empty()) {
        return absl::InvalidArgumentError(absl::StrCat(where, ": \"prompt\" is empty"));
      }
      prompts.push_back(*std::move(prompt));
    } else {
      prompts.emplace_back(line);
    }
  }
  if (prompts.empty()) {
    return absl::InvalidArgumentError(
        absl::StrCat(source_name, ": holds no prompt; need at least 1 non-blank line"));
  }
  return prompts;
}

absl::StatusOr<std::vector<std::string>> LoadPromptsFile(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return absl::NotFoundError(absl::StrCat("prompts_file ", path, " cannot be opened"));
  std::ostringstream content;
  content << in.rdbuf();
  if (in.bad()) return absl::NotFoundError(absl::StrCat("prompts_file ", path, " cannot be read"));
  return ParsePrompts(content.str(), path);
}

}  // namespace pdserve::bench
