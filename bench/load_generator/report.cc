#include "bench/load_generator/report.h"

#include <fstream>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"

namespace pdserve::bench {
namespace {

std::string FormatLatencyRow(const char* name, const LatencySummary& s) {
  if (s.count == 0) return absl::StrFormat("  %-18s (no samples)\n", name);
  return absl::StrFormat("  %-18s %10.2f %10.2f %10.2f %10.2f %10.2f %8d\n", name, s.mean, s.p50,
                         s.p90, s.p99, s.max, s.count);
}

}  // namespace

nlohmann::json LatencySummaryToJson(const LatencySummary& summary) {
  nlohmann::json json;
  json["count"] = summary.count;
  const bool empty = summary.count == 0;
  json["mean"] = empty ? nlohmann::json(nullptr) : nlohmann::json(summary.mean);
  json["p50"] = empty ? nlohmann::json(nullptr) : nlohmann::json(summary.p50);
  json["p90"] = empty ? nlohmann::json(nullptr) : nlohmann::json(summary.p90);
  json["p99"] = empty ? nlohmann::json(nullptr) : nlohmann::json(summary.p99);
  json["max"] = empty ? nlohmann::json(nullptr) : nlohmann::json(summary.max);
  return json;
}

nlohmann::json RunSummaryToJson(const RunSummary& summary) {
  nlohmann::json json;
  json["requests"] = summary.requests;
  json["ok_requests"] = summary.ok_requests;
  json["error_count"] = summary.error_count;
  json["errors"] = nlohmann::json::object();
  for (const auto& [code, count] : summary.errors_by_code) json["errors"][code] = count;
  json["error_samples"] = summary.error_samples;
  json["finish_reasons"] = nlohmann::json::object();
  for (const auto& [reason, count] : summary.finish_reasons) json["finish_reasons"][reason] = count;
  json["duration_s"] = summary.duration_s;
  json["output_tokens"] = summary.output_tokens;
  json["output_tokens_per_s"] = summary.output_tokens_per_s;
  json["requests_per_s"] = summary.requests_per_s;
  json["prompt_tokens_mean"] = summary.prompt_tokens_mean;
  json["ttft_ms"] = LatencySummaryToJson(summary.ttft_ms);
  json["itl_ms"] = LatencySummaryToJson(summary.itl_ms);
  json["latency_ms"] = LatencySummaryToJson(summary.latency_ms);
  json["server"]["queue_ms"] = LatencySummaryToJson(summary.server_queue_ms);
  json["server"]["prefill_ms"] = LatencySummaryToJson(summary.server_prefill_ms);
  json["server"]["ttft_ms"] = LatencySummaryToJson(summary.server_ttft_ms);
  return json;
}

std::string FormatRunSummary(const RunSummary& summary) {
  std::string out;
  absl::StrAppendFormat(&out, "requests            %d (%d ok, %d failed)\n", summary.requests,
                        summary.ok_requests, summary.error_count);
  for (const auto& [code, count] : summary.errors_by_code) {
    absl::StrAppendFormat(&out, "  %-18s %d\n", code, count);
  }
  for (const std::string& sample : summary.error_samples) {
    absl::StrAppend(&out, "  e.g. ", sample, "\n");
  }
  if (!summary.finish_reasons.empty()) {
    absl::StrAppend(&out, "finish reasons     ");
    for (const auto& [reason, count] : summary.finish_reasons) {
      absl::StrAppendFormat(&out, " %s=%d", reason, count);
    }
    absl::StrAppend(&out, "\n");
  }
  absl::StrAppendFormat(&out, "duration            %.3f s\n", summary.duration_s);
  absl::StrAppendFormat(&out, "prompt tokens       %.1f mean (server count)\n",
                        summary.prompt_tokens_mean);
  absl::StrAppendFormat(&out, "output tokens       %d\n", summary.output_tokens);
  absl::StrAppendFormat(&out, "output tokens/s     %.1f\n", summary.output_tokens_per_s);
  absl::StrAppendFormat(&out, "requests/s          %.2f\n", summary.requests_per_s);
  absl::StrAppendFormat(&out, "  %-18s %10s %10s %10s %10s %10s %8s\n", "(ms)", "mean", "p50",
                        "p90", "p99", "max", "n");
  absl::StrAppend(&out, FormatLatencyRow("ttft", summary.ttft_ms));
  absl::StrAppend(&out, FormatLatencyRow("inter-token", summary.itl_ms));
  absl::StrAppend(&out, FormatLatencyRow("latency", summary.latency_ms));
  absl::StrAppend(&out, FormatLatencyRow("server queue", summary.server_queue_ms));
  absl::StrAppend(&out, FormatLatencyRow("server prefill", summary.server_prefill_ms));
  absl::StrAppend(&out, FormatLatencyRow("server ttft", summary.server_ttft_ms));
  return out;
}

absl::Status WriteJsonFile(const std::string& path, const nlohmann::json& json) {
  std::ofstream out(path, std::ios::trunc);
  if (!out)
    return absl::InternalError(absl::StrCat("json_out ", path, " cannot be opened for writing"));
  out << json.dump(2) << "\n";
  out.close();
  if (!out) return absl::InternalError(absl::StrCat("json_out ", path, " could not be written"));
  return absl::OkStatus();
}

}  // namespace pdserve::bench
