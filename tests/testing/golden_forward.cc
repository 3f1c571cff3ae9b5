#include "tests/testing/golden_forward.h"

#include <algorithm>
#include <cmath>
#include <fstream>

#include <nlohmann/json.hpp>

#include "absl/strings/str_cat.h"
#include "tests/testing/test_paths.h"

namespace pdserve {

namespace {

// One entry of the JSON's "cases", its logits read from `dir`. Throws
// nlohmann::json::exception for a missing or mistyped field.
absl::StatusOr<GoldenForwardCase> ParseCase(const nlohmann::json& entry, const std::string& dir,
                                            const std::string& json_path) {
  GoldenForwardCase c;
  c.name = entry.at("name").get<std::string>();
  c.prompt = entry.at("prompt").get<std::vector<int32_t>>();
  c.greedy_tokens = entry.at("greedy_tokens").get<std::vector<int32_t>>();
  c.greedy_text = entry.at("greedy_text").get<std::string>();
  c.final_hidden_last = entry.at("final_hidden_last").get<std::vector<float>>();
  const std::vector<int> shape = entry.at("logits_shape").get<std::vector<int>>();
  if (shape.size() != 2 ||
      static_cast<size_t>(shape[0]) != c.prompt.size() + c.greedy_tokens.size()) {
    return absl::InvalidArgumentError(
        absl::StrCat(json_path, ": case ", c.name, " has a logits_shape that does not fit"));
  }
  c.vocab = shape[1];
  c.logits.resize(static_cast<size_t>(shape[0]) * shape[1]);
  const std::string raw_path = dir + entry.at("logits_file").get<std::string>();
  std::ifstream raw(raw_path, std::ios::binary);
  raw.read(reinterpret_cast<char*>(c.logits.data()),
           static_cast<std::streamsize>(c.logits.size() * sizeof(float)));
  if (!raw.good()) {
    return absl::InvalidArgumentError(
        absl::StrCat(raw_path, ": shorter than ", c.logits.size(), " float32 values"));
  }
  return c;
}

}  // namespace

absl::StatusOr<std::vector<GoldenForwardCase>> LoadGoldenForwardCases() {
  const std::string dir = TestDataDir() + "/golden/";
  const std::string json_path = dir + "stories260K_forward.json";
  std::ifstream json_file(json_path);
  if (!json_file.good()) return absl::NotFoundError(absl::StrCat("cannot read ", json_path));
  std::vector<GoldenForwardCase> cases;
  try {
    const nlohmann::json golden = nlohmann::json::parse(json_file);
    for (const nlohmann::json& entry : golden.at("cases")) {
      absl::StatusOr<GoldenForwardCase> c = ParseCase(entry, dir, json_path);
      if (!c.ok()) return c.status();
      cases.push_back(*std::move(c));
    }
  } catch (const nlohmann::json::exception& e) {
    return absl::InvalidArgumentError(absl::StrCat(json_path, ": ", e.what()));
  }
  return cases;
}

absl::StatusOr<GoldenForwardCase> LoadGoldenForwardCase(const std::string& name) {
  absl::StatusOr<std::vector<GoldenForwardCase>> cases = LoadGoldenForwardCases();
  if (!cases.ok()) return cases.status();
  for (GoldenForwardCase& c : *cases) {
    if (c.name == name) return std::move(c);
  }
  return absl::NotFoundError(
      absl::StrCat(TestDataDir(), "/golden/stories260K_forward.json: no case named ", name));
}

std::vector<double> ReferenceLogSoftmax(std::span<const float> logits) {
  double max = -INFINITY;
  for (float x : logits) max = std::max(max, static_cast<double>(x));
  double sum = 0.0;
  for (float x : logits) sum += std::exp(x - max);
  const double log_normalizer = max + std::log(sum);
  std::vector<double> out(logits.size());
  for (size_t i = 0; i < logits.size(); ++i) out[i] = logits[i] - log_normalizer;
  return out;
}

}  // namespace pdserve
