#include "shared/logprobs.h"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <limits>
#include <span>
#include <vector>

namespace pdserve {
namespace {

// a ranks before b: higher logprob, then lower id.
bool RanksBefore(const TokenLogprob& a, const TokenLogprob& b) {
  return a.logprob > b.logprob || (a.logprob == b.logprob && a.id < b.id);
}

}  // namespace

void LogSoftmax(std::span<const float> logits, std::span<float> out) {
  if (logits.size() != out.size()) {
    std::fprintf(stderr, "LogSoftmax: logits has %zu entries but out has %zu\n", logits.size(),
                 out.size());
    std::abort();
  }
  if (logits.empty()) return;
  // log_softmax(x)_i = x_i - m - log(sum_j exp(x_j - m)) for any m; m = max
  // keeps every exponent <= 0, so nothing overflows and the largest term is 1.
  double max = -std::numeric_limits<double>::infinity();
  bool has_nan = false;
  for (float x : logits) {
    has_nan |= std::isnan(x);
    max = std::max(max, static_cast<double>(x));
  }
  if (has_nan || !std::isfinite(max)) {
    for (float& y : out) y = std::numeric_limits<float>::quiet_NaN();
    return;
  }
  double sum = 0.0;
  for (float x : logits) sum += std::exp(static_cast<double>(x) - max);
  const double log_normalizer = max + std::log(sum);
  for (size_t i = 0; i < logits.size(); ++i) {
    out[i] = static_cast<float>(static_cast<double>(logits[i]) - log_normalizer);
  }
}

std::vector<TokenLogprob> TopLogprobs(std::span<const float> logprobs, int n) {
  std::vector<TokenLogprob> top;
  if (n <= 0) return top;
  const size_t limit = static_cast<size_t>(n);
  top.reserve(std::min(limit, logprobs.size()));
  // `top` stays sorted best-first; a candidate that does not beat the current
  // last entry of a full list is rejected with one comparison.
  for (size_t i = 0; i < logprobs.size(); ++i) {
    const TokenLogprob candidate{static_cast<int32_t>(i), logprobs[i]};
    if (std::isnan(candidate.logprob)) continue;
    if (top.size() == limit) {
      if (!RanksBefore(candidate, top.back())) continue;
      top.pop_back();
    }
    auto pos = std::upper_bound(top.begin(), top.end(), candidate, RanksBefore);
    top.insert(pos, candidate);
  }
  return top;
}

}  // namespace pdserve
