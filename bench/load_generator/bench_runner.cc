#include "bench/load_generator/bench_runner.h"

#include <algorithm>
#include <cstdio>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/strings/str_format.h"
#include "bench/load_generator/closed_loop_driver.h"
#include "bench/load_generator/kv_cache_comparison.h"
#include "bench/load_generator/open_loop_driver.h"
#include "bench/load_generator/progress.h"
#include "bench/load_generator/prompts_file.h"
#include "bench/load_generator/report.h"
#include "bench/load_generator/request_source.h"
#include "bench/load_generator/run_summary.h"
#include "bench/load_generator/synthetic_prompt.h"
#include "bench/load_generator/target_channel.h"
#include "shared/status_macros.h"

namespace pdserve::bench {
namespace {

// Distinct synthetic prompts per run: enough that requests do not all carry
// the same text, few enough that calibration stays a handful of RPCs.
constexpr int kSyntheticPromptVariants = 8;

struct Prompts {
  std::vector<std::string> texts;
  nlohmann::json description;
};

absl::Duration RpcTimeout(const BenchConfig& config) {
  return config.request_timeout_s > 0 ? absl::Seconds(config.request_timeout_s) : absl::Seconds(60);
}

absl::StatusOr<Prompts> BuildPrompts(const BenchConfig& config, v1::GenerateService::Stub* stub) {
  Prompts prompts;
  if (!config.prompts_file.empty()) {
    PDSERVE_ASSIGN_OR_RETURN(prompts.texts, LoadPromptsFile(config.prompts_file));
    prompts.description = {{"source", "file"}, {"count", prompts.texts.size()}};
    return prompts;
  }
  const TokenCounter count_tokens = [stub,
                                     &config](const std::string& text) -> absl::StatusOr<int> {
    PDSERVE_ASSIGN_OR_RETURN(std::vector<int32_t> ids,
                             TokenizeOnTarget(stub, text, RpcTimeout(config)));
    return static_cast<int>(ids.size());
  };
  const int64_t wanted = config.compare_kv_cache ? 1 : std::max<int64_t>(config.num_requests, 1);
  const int variants = static_cast<int>(std::min<int64_t>(kSyntheticPromptVariants, wanted));
  std::vector<int> token_counts;
  for (int v = 0; v < variants; ++v) {
    PDSERVE_ASSIGN_OR_RETURN(
        SyntheticPrompt prompt,
        BuildSyntheticPrompt(config.prompt_tokens, config.seed + static_cast<uint64_t>(v),
                             count_tokens));
    prompts.texts.push_back(std::move(prompt.text));
    token_counts.push_back(prompt.tokens);
  }
  prompts.description = {{"source", "synthetic"},
                         {"count", variants},
                         {"target_tokens", config.prompt_tokens},
                         {"tokens", token_counts}};
  std::fprintf(stderr, "[pdserve-bench] %d synthetic prompts of %d-%d tokens (target %d)\n",
               variants, *std::min_element(token_counts.begin(), token_counts.end()),
               *std::max_element(token_counts.begin(), token_counts.end()), config.prompt_tokens);
  return prompts;
}

absl::StatusOr<nlohmann::json> RunComparison(const BenchConfig& config,
                                             v1::GenerateService::Stub* stub,
                                             const std::string& prompt) {
  std::fprintf(stderr, "[pdserve-bench] comparing %d new tokens with and without the KV cache\n",
               config.compare_new_tokens);
  PDSERVE_ASSIGN_OR_RETURN(
      KvCacheComparison comparison,
      CompareKvCache(stub, prompt,
                     KvCacheComparisonOptions{.new_tokens = config.compare_new_tokens,
                                              .ignore_eos = config.ignore_eos,
                                              .call_timeout = RpcTimeout(config)}));
  std::printf("%s", FormatKvCacheComparison(comparison).c_str());
  return nlohmann::json{{"compare_kv_cache", KvCacheComparisonToJson(comparison)}};
}

absl::StatusOr<LoadRun> RunLoad(const BenchConfig& config, const LoadTarget& target,
                                int64_t num_requests) {
  const absl::Duration duration =
      config.duration_s > 0 ? absl::Seconds(config.duration_s) : absl::ZeroDuration();
  if (config.open_loop()) {
    return RunOpenLoop(target, OpenLoopOptions{.request_rate = config.request_rate,
                                               .seed = config.seed,
                                               .max_in_flight = config.max_in_flight,
                                               .num_requests = num_requests,
                                               .duration = duration});
  }
  return RunClosedLoop(target, ClosedLoopOptions{.concurrency = config.concurrency,
                                                 .num_requests = num_requests,
                                                 .duration = duration});
}

// Warm-up requests, closed loop, not measured; reports how many failed.
nlohmann::json RunWarmup(const BenchConfig& config, const LoadTarget& measured_target,
                         const std::vector<std::string>& prompts) {
  const RequestSource source(prompts, RequestOptions{.max_new_tokens = config.max_new_tokens,
                                                     .ignore_eos = config.ignore_eos,
                                                     .temperature = config.temperature,
                                                     .seed = config.seed,
                                                     .id_prefix = "warmup"});
  LoadTarget target = measured_target;
  target.progress = nullptr;
  target.make_request = [&source](int64_t index) { return source.Make(index); };
  const int callers = std::min(config.warmup_requests,
                               config.open_loop() ? config.max_in_flight : config.concurrency);
  std::fprintf(stderr, "[pdserve-bench] %d warm-up requests\n", config.warmup_requests);
  const LoadRun run = RunClosedLoop(
      target, ClosedLoopOptions{.concurrency = callers, .num_requests = config.warmup_requests});
  const RunSummary summary = SummarizeRun(run.results, run.duration_s);
  if (summary.error_count > 0) {
    std::fprintf(stderr, "[pdserve-bench] warning: %lld of %lld warm-up requests failed\n",
                 static_cast<long long>(summary.error_count),
                 static_cast<long long>(summary.requests));
  }
  return nlohmann::json{{"requests", summary.requests}, {"errors", summary.error_count}};
}

}  // namespace

absl::StatusOr<nlohmann::json> RunBench(const BenchConfig& config) {
  PDSERVE_ASSIGN_OR_RETURN(
      std::vector<std::shared_ptr<grpc::Channel>> channels,
      ConnectToTarget(config.target, config.channels, absl::Seconds(config.connect_timeout_s)));
  std::vector<std::unique_ptr<v1::GenerateService::Stub>> stubs;
  for (const auto& channel : channels) stubs.push_back(v1::GenerateService::NewStub(channel));

  PDSERVE_ASSIGN_OR_RETURN(Prompts prompts, BuildPrompts(config, stubs.front().get()));
  nlohmann::json report;
  if (config.compare_kv_cache) {
    PDSERVE_ASSIGN_OR_RETURN(report,
                             RunComparison(config, stubs.front().get(), prompts.texts.front()));
  } else {
    LoadTarget target;
    for (const auto& stub : stubs) target.stubs.push_back(stub.get());
    target.call.timeout = config.request_timeout_s > 0 ? absl::Seconds(config.request_timeout_s)
                                                       : absl::ZeroDuration();
    nlohmann::json warmup = {{"requests", 0}, {"errors", 0}};
    if (config.warmup_requests > 0) warmup = RunWarmup(config, target, prompts.texts);

    const RequestSource source(prompts.texts,
                               RequestOptions{.max_new_tokens = config.max_new_tokens,
                                              .ignore_eos = config.ignore_eos,
                                              .temperature = config.temperature,
                                              .seed = config.seed});
    target.make_request = [&source](int64_t index) { return source.Make(index); };
    ProgressCounters progress;
    target.progress = &progress;
    std::optional<ProgressPrinter> printer;
    if (config.progress) printer.emplace(&progress, config.num_requests, stderr);
    absl::StatusOr<LoadRun> run = RunLoad(config, target, config.num_requests);
    printer.reset();
    if (!run.ok()) return run.status();

    const RunSummary summary = SummarizeRun(run->results, run->duration_s);
    std::printf("%s", FormatRunSummary(summary).c_str());
    report = RunSummaryToJson(summary);
    report["warmup"] = std::move(warmup);
    if (config.open_loop()) {
      report["open_loop"] = {{"delayed_arrivals", run->delayed_arrivals},
                             {"max_dispatch_lag_ms", run->max_dispatch_lag_ms}};
    }
  }
  report["prompts"] = std::move(prompts.description);
  report["config"] = ConfigToJson(config);
  if (!config.json_out.empty()) PDSERVE_RETURN_IF_ERROR(WriteJsonFile(config.json_out, report));
  return report;
}

}  // namespace pdserve::bench
