#include "bench/load_generator/kv_cache_comparison.h"

#include <algorithm>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "bench/load_generator/generate_call.h"
#include "bench/load_generator/run_summary.h"
#include "bench/load_generator/target_channel.h"

namespace pdserve::bench {
namespace {

v1::GenerateRequest GreedyRequest(const std::string& prompt, int max_new_tokens, bool ignore_eos) {
  v1::GenerateRequest request;
  request.set_prompt(prompt);
  request.mutable_sampling()->set_temperature(0);
  request.mutable_stopping()->set_max_new_tokens(max_new_tokens);
  request.mutable_stopping()->set_ignore_eos(ignore_eos);
  request.set_request_id("compare-kv-cache");
  return request;
}

absl::Status CallError(const RequestResult& result, const std::string& what) {
  return absl::Status(
      result.code, absl::StrCat("compare_kv_cache: ", what, ": ", StatusCodeName(result.code), ": ",
                                result.error_message));
}

// Whether re-tokenizing the recompute path's prompt at step `step` gives
// the prompt's ids followed by the first `step` cached ids.
absl::StatusOr<bool> RetokenizationMatches(v1::GenerateService::Stub* stub,
                                           const std::string& prompt,
                                           const std::string& step_prompt,
                                           const std::vector<int32_t>& cached_ids, int step,
                                           absl::Duration timeout) {
  absl::StatusOr<std::vector<int32_t>> expected = TokenizeOnTarget(stub, prompt, timeout);
  if (!expected.ok()) return expected.status();
  expected->insert(expected->end(), cached_ids.begin(), cached_ids.begin() + step);
  absl::StatusOr<std::vector<int32_t>> actual = TokenizeOnTarget(stub, step_prompt, timeout);
  if (!actual.ok()) return actual.status();
  return *actual == *expected;
}

}  // namespace

absl::StatusOr<KvCacheComparison> CompareKvCache(v1::GenerateService::Stub* stub,
                                                 const std::string& prompt,
                                                 const KvCacheComparisonOptions& options) {
  const CallOptions call{.timeout = options.call_timeout, .record_tokens = true};
  KvCacheComparison comparison;
  comparison.new_tokens_requested = options.new_tokens;

  // Warm-up: connection, server-side lazy set-up and caches out of the timing.
  const RequestResult warmup =
      RunGenerateCall(stub, GreedyRequest(prompt, 1, options.ignore_eos), call);
  if (warmup.code != absl::StatusCode::kOk) return CallError(warmup, "warm-up call");
  comparison.prompt_tokens = warmup.prompt_tokens;

  const RequestResult cached =
      RunGenerateCall(stub, GreedyRequest(prompt, options.new_tokens, options.ignore_eos), call);
  if (cached.code != absl::StatusCode::kOk) return CallError(cached, "call with the KV cache");
  comparison.with_cache_s = cached.latency_ms / 1000.0;
  comparison.cached_token_ids = cached.token_ids;

  // Recompute: step k sends the prompt plus the text of the k tokens so far.
  std::string sequence_text = prompt;
  std::vector<std::string> step_prompts;
  const absl::Time start = absl::Now();
  for (int step = 0; step < options.new_tokens; ++step) {
    step_prompts.push_back(sequence_text);
    const RequestResult result =
        RunGenerateCall(stub, GreedyRequest(sequence_text, 1, options.ignore_eos), call);
    ++comparison.recompute_calls;
    if (result.code != absl::StatusCode::kOk) {
      return CallError(result, absl::StrCat("recompute step ", step));
    }
    if (result.token_ids.empty()) break;
    comparison.recomputed_token_ids.push_back(result.token_ids.front());
    sequence_text += result.text;
    if (result.finish_reason == "EOS") break;
  }
  comparison.recompute_s = absl::ToDoubleSeconds(absl::Now() - start);
  if (comparison.with_cache_s > 0)
    comparison.ratio = comparison.recompute_s / comparison.with_cache_s;

  const std::vector<int32_t>& a = comparison.cached_token_ids;
  const std::vector<int32_t>& b = comparison.recomputed_token_ids;
  comparison.token_ids_match = a == b;
  if (!comparison.token_ids_match) {
    const auto [it_a, it_b] = std::mismatch(a.begin(), a.end(), b.begin(), b.end());
    comparison.first_mismatch = static_cast<int>(it_a - a.begin());
    if (comparison.first_mismatch < static_cast<int>(step_prompts.size())) {
      absl::StatusOr<bool> retokenized =
          RetokenizationMatches(stub, prompt, step_prompts[comparison.first_mismatch], a,
                                comparison.first_mismatch, options.call_timeout);
      if (!retokenized.ok()) return retokenized.status();
      comparison.retokenization_matches = *retokenized;
    }
  }
  return comparison;
}

nlohmann::json KvCacheComparisonToJson(const KvCacheComparison& comparison) {
  nlohmann::json json;
  json["prompt_tokens"] = comparison.prompt_tokens;
  json["new_tokens_requested"] = comparison.new_tokens_requested;
  json["with_cache_tokens"] = comparison.cached_token_ids.size();
  json["recompute_tokens"] = comparison.recomputed_token_ids.size();
  json["recompute_calls"] = comparison.recompute_calls;
  json["with_cache_s"] = comparison.with_cache_s;
  json["recompute_s"] = comparison.recompute_s;
  json["ratio"] = comparison.ratio;
  json["token_ids_match"] = comparison.token_ids_match;
  json["first_mismatch"] = comparison.first_mismatch;
  json["retokenization_matches"] = comparison.retokenization_matches.has_value()
                                       ? nlohmann::json(*comparison.retokenization_matches)
                                       : nlohmann::json(nullptr);
  json["with_cache_token_ids"] = comparison.cached_token_ids;
  json["recompute_token_ids"] = comparison.recomputed_token_ids;
  return json;
}

std::string FormatKvCacheComparison(const KvCacheComparison& comparison) {
  std::string out;
  absl::StrAppendFormat(&out, "prompt tokens       %d\n", comparison.prompt_tokens);
  absl::StrAppendFormat(&out, "with KV cache       %.3f s for %d tokens (1 call)\n",
                        comparison.with_cache_s, comparison.cached_token_ids.size());
  absl::StrAppendFormat(&out, "recompute each step %.3f s for %d tokens (%d calls)\n",
                        comparison.recompute_s, comparison.recomputed_token_ids.size(),
                        comparison.recompute_calls);
  absl::StrAppendFormat(&out, "ratio               %.2fx\n", comparison.ratio);
  if (comparison.token_ids_match) {
    absl::StrAppend(&out, "token ids           identical on both paths\n");
  } else {
    absl::StrAppendFormat(&out, "token ids           DIFFER from position %d\n",
                          comparison.first_mismatch);
    if (comparison.retokenization_matches.has_value()) {
      absl::StrAppend(&out, "                    re-tokenizing the text so far ",
                      *comparison.retokenization_matches
                          ? "gives the same ids: the two paths computed different tokens\n"
                          : "changes the ids: the text round trip explains the difference\n");
    }
  }
  return out;
}

}  // namespace pdserve::bench
