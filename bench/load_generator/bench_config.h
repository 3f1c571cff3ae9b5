// Configuration of one pdserve-bench run, as main.cc reads it from flags.
#ifndef PDSERVE_BENCH_LOAD_GENERATOR_BENCH_CONFIG_H_
#define PDSERVE_BENCH_LOAD_GENERATOR_BENCH_CONFIG_H_

#include <cstdint>
#include <string>

#include "absl/status/status.h"
#include "nlohmann/json.hpp"

namespace pdserve::bench {

// Field meanings and defaults are the flags' (docs/load_generator.md).
struct BenchConfig {
  std::string target;          // decode service address, host:port
  int concurrency = 0;         // closed loop: callers issuing back to back
  double request_rate = 0;     // open loop: Poisson arrivals per second
  int max_in_flight = 256;     // open loop: cap on outstanding calls
  int64_t num_requests = 100;  // measured requests; 0: until duration_s
  double duration_s = 0;       // stop issuing after this many seconds; 0: no cap
  int prompt_tokens = 128;     // synthetic prompt length, tokens
  std::string prompts_file;    // prompts instead of synthetic text
  int max_new_tokens = 64;     // 0: the server's default
  bool ignore_eos = false;
  float temperature = 0;  // 0: greedy
  uint64_t seed = 0;
  std::string json_out;  // empty: no JSON file
  int warmup_requests = 0;
  double request_timeout_s = 600;  // per-call deadline; 0: none
  double connect_timeout_s = 30;
  int channels = 1;  // gRPC channels (TCP connections) to spread calls over
  bool progress = true;
  bool compare_kv_cache = false;
  int compare_new_tokens = 100;

  bool open_loop() const { return request_rate > 0; }
};

// Checks every field against its limits and fills the default load shape:
// with neither concurrency nor request_rate set, a closed loop of 1.
// Errors: INVALID_ARGUMENT naming the flag and its limit.
absl::Status ValidateAndComplete(BenchConfig& config);

// Every field under its flag name, plus "mode": "closed_loop", "open_loop"
// or "compare_kv_cache".
nlohmann::json ConfigToJson(const BenchConfig& config);

}  // namespace pdserve::bench

#endif  // PDSERVE_BENCH_LOAD_GENERATOR_BENCH_CONFIG_H_
