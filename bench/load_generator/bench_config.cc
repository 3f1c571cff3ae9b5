#include "bench/load_generator/bench_config.h"

#include <cmath>

#include "absl/strings/str_cat.h"

namespace pdserve::bench {
namespace {

// INVALID_ARGUMENT "--<flag> is <value>; must be <limit>".
absl::Status FlagError(const char* flag, const auto& value, const char* limit) {
  return absl::InvalidArgumentError(absl::StrCat("--", flag, " is ", value, "; must be ", limit));
}

absl::Status CheckNonNegativeSeconds(const char* flag, double value) {
  if (!std::isfinite(value) || value < 0) return FlagError(flag, value, "a finite value >= 0");
  return absl::OkStatus();
}

}  // namespace

absl::Status ValidateAndComplete(BenchConfig& config) {
  if (config.target.empty()) {
    return absl::InvalidArgumentError("--target is empty; must be the decode service's host:port");
  }
  if (config.concurrency < 0) return FlagError("concurrency", config.concurrency, ">= 0");
  if (!std::isfinite(config.request_rate) || config.request_rate < 0) {
    return FlagError("request_rate", config.request_rate, "a finite value >= 0");
  }
  if (config.concurrency > 0 && config.request_rate > 0) {
    return absl::InvalidArgumentError(absl::StrCat("--concurrency is ", config.concurrency,
                                                   " and --request_rate is ", config.request_rate,
                                                   "; set only one (closed loop or open loop)"));
  }
  if (config.concurrency == 0 && config.request_rate == 0) config.concurrency = 1;
  if (config.max_in_flight < 1) return FlagError("max_in_flight", config.max_in_flight, ">= 1");
  if (config.num_requests < 0) return FlagError("num_requests", config.num_requests, ">= 0");
  if (auto status = CheckNonNegativeSeconds("duration_s", config.duration_s); !status.ok()) {
    return status;
  }
  if (config.num_requests == 0 && config.duration_s == 0 && !config.compare_kv_cache) {
    return absl::InvalidArgumentError(
        "--num_requests is 0 and --duration_s is 0; set a request count or a duration");
  }
  if (config.prompts_file.empty() && config.prompt_tokens < 1) {
    return FlagError("prompt_tokens", config.prompt_tokens, ">= 1");
  }
  if (config.max_new_tokens < 0) {
    return FlagError("max_new_tokens", config.max_new_tokens, ">= 0 (0: server default)");
  }
  if (!std::isfinite(config.temperature) || config.temperature < 0) {
    return FlagError("temperature", config.temperature, "a finite value >= 0");
  }
  if (config.warmup_requests < 0)
    return FlagError("warmup_requests", config.warmup_requests, ">= 0");
  if (auto status = CheckNonNegativeSeconds("request_timeout_s", config.request_timeout_s);
      !status.ok()) {
    return status;
  }
  if (!std::isfinite(config.connect_timeout_s) || config.connect_timeout_s <= 0) {
    return FlagError("connect_timeout_s", config.connect_timeout_s, "a finite value > 0");
  }
  if (config.channels < 1) return FlagError("channels", config.channels, ">= 1");
  if (config.compare_new_tokens < 1) {
    return FlagError("compare_new_tokens", config.compare_new_tokens, ">= 1");
  }
  return absl::OkStatus();
}

nlohmann::json ConfigToJson(const BenchConfig& config) {
  nlohmann::json json;
  json["mode"] = config.compare_kv_cache ? "compare_kv_cache"
                 : config.open_loop()    ? "open_loop"
                                         : "closed_loop";
  json["target"] = config.target;
  json["concurrency"] = config.concurrency;
  json["request_rate"] = config.request_rate;
  json["max_in_flight"] = config.max_in_flight;
  json["num_requests"] = config.num_requests;
  json["duration_s"] = config.duration_s;
  json["prompt_tokens"] = config.prompt_tokens;
  json["prompts_file"] = config.prompts_file;
  json["max_new_tokens"] = config.max_new_tokens;
  json["ignore_eos"] = config.ignore_eos;
  json["temperature"] = config.temperature;
  json["seed"] = config.seed;
  json["json_out"] = config.json_out;
  json["warmup_requests"] = config.warmup_requests;
  json["request_timeout_s"] = config.request_timeout_s;
  json["connect_timeout_s"] = config.connect_timeout_s;
  json["channels"] = config.channels;
  json["progress"] = config.progress;
  json["compare_kv_cache"] = config.compare_kv_cache;
  json["compare_new_tokens"] = config.compare_new_tokens;
  return json;
}

}  // namespace pdserve::bench
