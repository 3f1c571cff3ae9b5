// pdserve-bench: load generator for the decode service's GenerateService.
// docs/load_generator.md describes every flag and the JSON report.
#include <cstdio>
#include <string>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/flags/usage.h"
#include "bench/load_generator/bench_config.h"
#include "bench/load_generator/bench_runner.h"
#include "shared/allocator_tuning.h"
#include "shared/flags_help.h"

ABSL_FLAG(std::string, target, "", "Decode service address (host:port), e.g. 127.0.0.1:50051");
ABSL_FLAG(int, concurrency, 0,
          "Closed loop: this many callers, each sending its next request when the last one ends. "
          "Default 1 when --request_rate is unset");
ABSL_FLAG(double, request_rate, 0,
          "Open loop: Poisson arrivals at this many requests/s (seeded by --seed); excludes "
          "--concurrency");
ABSL_FLAG(int, max_in_flight, 256, "Open loop: at most this many requests outstanding");
ABSL_FLAG(int64_t, num_requests, 100, "Measured requests; 0: as many as --duration_s allows");
ABSL_FLAG(double, duration_s, 0, "Start no request after this many seconds; 0: no cap");
ABSL_FLAG(int, prompt_tokens, 128,
          "Synthetic prompts of about this many tokens, calibrated with the target's Tokenize");
ABSL_FLAG(std::string, prompts_file, "",
          "Prompts instead of synthetic ones: one per line, or JSONL {\"prompt\": ...}");
ABSL_FLAG(int, max_new_tokens, 64, "New tokens per request; 0: the server's default");
ABSL_FLAG(bool, ignore_eos, false, "Keep generating after EOS (up to --max_new_tokens)");
ABSL_FLAG(double, temperature, 0, "Sampling temperature; 0 is greedy");
ABSL_FLAG(uint64_t, seed, 0, "Seed of the arrivals, synthetic prompts and per-request sampling");
ABSL_FLAG(std::string, json_out, "", "Write the report as JSON to this file");
ABSL_FLAG(int, warmup_requests, 0, "Unmeasured requests sent first (closed loop)");
ABSL_FLAG(double, request_timeout_s, 600, "Deadline of each call in seconds; 0: none");
ABSL_FLAG(double, connect_timeout_s, 30, "Wait this long for the target to accept connections");
ABSL_FLAG(int, channels, 1, "gRPC channels (TCP connections) to spread the requests over");
ABSL_FLAG(bool, progress, true, "Print a progress line on stderr about once a second");
ABSL_FLAG(bool, compare_kv_cache, false,
          "Instead of a load run: time --compare_new_tokens greedy tokens with the KV cache "
          "against recomputing the sequence for every token");
ABSL_FLAG(int, compare_new_tokens, 100, "New tokens for --compare_kv_cache");

namespace {

pdserve::bench::BenchConfig ConfigFromFlags() {
  pdserve::bench::BenchConfig config;
  config.target = absl::GetFlag(FLAGS_target);
  config.concurrency = absl::GetFlag(FLAGS_concurrency);
  config.request_rate = absl::GetFlag(FLAGS_request_rate);
  config.max_in_flight = absl::GetFlag(FLAGS_max_in_flight);
  config.num_requests = absl::GetFlag(FLAGS_num_requests);
  config.duration_s = absl::GetFlag(FLAGS_duration_s);
  config.prompt_tokens = absl::GetFlag(FLAGS_prompt_tokens);
  config.prompts_file = absl::GetFlag(FLAGS_prompts_file);
  config.max_new_tokens = absl::GetFlag(FLAGS_max_new_tokens);
  config.ignore_eos = absl::GetFlag(FLAGS_ignore_eos);
  config.temperature = static_cast<float>(absl::GetFlag(FLAGS_temperature));
  config.seed = absl::GetFlag(FLAGS_seed);
  config.json_out = absl::GetFlag(FLAGS_json_out);
  config.warmup_requests = absl::GetFlag(FLAGS_warmup_requests);
  config.request_timeout_s = absl::GetFlag(FLAGS_request_timeout_s);
  config.connect_timeout_s = absl::GetFlag(FLAGS_connect_timeout_s);
  config.channels = absl::GetFlag(FLAGS_channels);
  config.progress = absl::GetFlag(FLAGS_progress);
  config.compare_kv_cache = absl::GetFlag(FLAGS_compare_kv_cache);
  config.compare_new_tokens = absl::GetFlag(FLAGS_compare_new_tokens);
  return config;
}

}  // namespace

// Exit status: 0 when every request succeeded, 3 when the run completed but
// some requests failed (the report counts them), 2 for bad flags, 1 when
// the run could not be made.
int main(int argc, char** argv) {
  // Before any thread: malloc settings for large streamed gRPC messages, as
  // the services use (why: shared/allocator_tuning.h).
  if (!pdserve::TuneAllocatorForStreaming()) {
    std::fprintf(stderr, "pdserve-bench: glibc refused the malloc thresholds (mallopt)\n");
  }
  absl::SetProgramUsageMessage(
      "Load generator for pdserve's GenerateService.\n"
      "  pdserve-bench --target 127.0.0.1:50051 --concurrency 8 --num_requests 200 "
      "--json_out out.json");
  pdserve::ShowMainFlagsInHelp();
  absl::ParseCommandLine(argc, argv);
  pdserve::bench::BenchConfig config = ConfigFromFlags();
  if (absl::Status status = pdserve::bench::ValidateAndComplete(config); !status.ok()) {
    std::fprintf(stderr, "pdserve-bench: %s\n", status.ToString().c_str());
    return 2;
  }
  absl::StatusOr<nlohmann::json> report = pdserve::bench::RunBench(config);
  if (!report.ok()) {
    std::fprintf(stderr, "pdserve-bench: %s\n", report.status().ToString().c_str());
    return 1;
  }
  if (report->contains("error_count") && (*report)["error_count"].get<int64_t>() > 0) return 3;
  return 0;
}
