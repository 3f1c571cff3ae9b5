// --compare_kv_cache: the notebook's experiment, over the public API. New
// tokens generated with the KV cache (one greedy Generate) against
// recomputing the whole sequence for every new token (one Generate with
// max_new_tokens 1 per token, on the prompt plus the text so far, so each
// step is a prefill over the growing sequence).
#ifndef PDSERVE_BENCH_LOAD_GENERATOR_KV_CACHE_COMPARISON_H_
#define PDSERVE_BENCH_LOAD_GENERATOR_KV_CACHE_COMPARISON_H_

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "nlohmann/json.hpp"
#include "pdserve/v1/generate.grpc.pb.h"

namespace pdserve::bench {

struct KvCacheComparisonOptions {
  int new_tokens = 100;
  // Passed to both paths. Without it the cached path may stop early at EOS;
  // the recompute path then stops at the step that ends with EOS.
  bool ignore_eos = false;
  absl::Duration call_timeout = absl::Seconds(600);
};

struct KvCacheComparison {
  int prompt_tokens = -1;  // server's usage count for the prompt; -1 if absent
  int new_tokens_requested = 0;
  std::vector<int32_t> cached_token_ids;
  std::vector<int32_t> recomputed_token_ids;
  int recompute_calls = 0;
  double with_cache_s = 0;  // the one streaming call, start to end
  double recompute_s = 0;   // all recompute calls back to back, start to end
  double ratio = 0;         // recompute_s / with_cache_s
  bool token_ids_match = false;
  int first_mismatch = -1;  // first differing position (or the shorter length); -1 when equal
  // At first_mismatch: whether Tokenize(prompt + text so far) equals
  // Tokenize(prompt) followed by the cached ids so far. False means the
  // text round trip changed the tokens, which alone explains the mismatch.
  std::optional<bool> retokenization_matches;
};

// Runs the comparison for `prompt` on `stub`, greedy (temperature 0) on both
// paths, after one untimed warm-up call. Errors: the status of a failed call,
// naming the path and step.
absl::StatusOr<KvCacheComparison> CompareKvCache(v1::GenerateService::Stub* stub,
                                                 const std::string& prompt,
                                                 const KvCacheComparisonOptions& options);

// Every field, under its name; retokenization_matches is null when unchecked.
nlohmann::json KvCacheComparisonToJson(const KvCacheComparison& comparison);
// Times, ratio and the token check as text.
std::string FormatKvCacheComparison(const KvCacheComparison& comparison);

}  // namespace pdserve::bench

#endif  // PDSERVE_BENCH_LOAD_GENERATOR_KV_CACHE_COMPARISON_H_
