// Reading a service's /metrics in tests, independently of the library that
// renders it: a plain HTTP/1.1 GET over a socket, and a parser of the
// Prometheus text exposition format 0.0.4 written from its specification
// (https://prometheus.io/docs/instrumenting/exposition_formats/).
#ifndef PDSERVE_TESTS_TESTING_METRICS_TEXT_H_
#define PDSERVE_TESTS_TESTING_METRICS_TEXT_H_

#include <map>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/time/time.h"

namespace pdserve {

struct MetricSample {
  std::string name;                           // e.g. "pdserve_decode_ttft_ms_bucket"
  std::map<std::string, std::string> labels;  // unescaped values
  double value = 0;
};

struct MetricsText {
  std::vector<MetricSample> samples;
  std::map<std::string, std::string> types;  // family name -> "counter", "gauge", ...
  std::map<std::string, std::string> helps;  // family name -> help text

  // The value of the one sample named `name` whose labels are exactly
  // `labels`. NOT_FOUND naming both when there is none.
  absl::StatusOr<double> Value(const std::string& name,
                               const std::map<std::string, std::string>& labels = {}) const;
  // Like Value, but 0 when the sample is absent (a labelled counter child
  // that was never incremented need not be exported).
  double ValueOrZero(const std::string& name,
                     const std::map<std::string, std::string>& labels = {}) const;
  // Sum over every sample named `name`, whatever its labels.
  double Sum(const std::string& name) const;
};

// Parses `text`. Every line must be empty, a comment ("# ..."), a
// "# HELP name text" / "# TYPE name type" line, or a sample
// `name[{label="value",...}] value [timestamp]`; names must match
// [a-zA-Z_:][a-zA-Z0-9_:]*, label names [a-zA-Z_][a-zA-Z0-9_]*, label values
// may escape \\, \" and \n, and a value is a float, NaN, +Inf or -Inf (case
// ignored, as Prometheus's parser does). Further checks: a family's TYPE
// comes before its samples and at most once; a sample of a histogram family
// is `_bucket` (with an `le` label), `_sum` or `_count`; buckets of one
// series are cumulative (non-decreasing in `le`) and the "+Inf" bucket equals
// `_count`. INVALID_ARGUMENT naming the line number and the line otherwise.
absl::StatusOr<MetricsText> ParseMetricsText(std::string_view text);

struct HttpResponse {
  int status_code = 0;
  std::map<std::string, std::string> headers;  // names lower-cased
  std::string body;                            // de-chunked
};

// GET `path` from 127.0.0.1:`port` with HTTP/1.1 and "Connection: close",
// reading until the server closes. UNAVAILABLE when the connection fails,
// DEADLINE_EXCEEDED after `timeout`, INTERNAL for a malformed response.
absl::StatusOr<HttpResponse> HttpGet(int port, const std::string& path,
                                     absl::Duration timeout = absl::Seconds(10));

// HttpGet(port, "/metrics") parsed with ParseMetricsText; any non-200
// status is INTERNAL.
absl::StatusOr<MetricsText> ScrapeMetrics(int port);

}  // namespace pdserve

#endif  // PDSERVE_TESTS_TESTING_METRICS_TEXT_H_
