#include "tests/testing/metrics_text.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cctype>
#include <cerrno>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <optional>
#include <set>
#include <utility>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "absl/strings/string_view.h"
#include "absl/time/clock.h"

namespace pdserve {
namespace {

bool IsNameStart(char c, bool allow_colon) {
  return std::isalpha(static_cast<unsigned char>(c)) || c == '_' || (allow_colon && c == ':');
}
bool IsNameChar(char c, bool allow_colon) {
  return IsNameStart(c, allow_colon) || std::isdigit(static_cast<unsigned char>(c));
}

// Reads a metric (allow_colon) or label name at `*pos`; empty when none.
std::string ReadName(absl::string_view line, size_t* pos, bool allow_colon) {
  const size_t start = *pos;
  if (*pos >= line.size() || !IsNameStart(line[*pos], allow_colon)) return "";
  ++*pos;
  while (*pos < line.size() && IsNameChar(line[*pos], allow_colon)) ++*pos;
  return std::string(line.substr(start, *pos - start));
}

std::optional<double> ParseValue(absl::string_view text) {
  const std::string lower = absl::AsciiStrToLower(text);
  if (lower == "nan") return std::numeric_limits<double>::quiet_NaN();
  if (lower == "+inf" || lower == "inf") return std::numeric_limits<double>::infinity();
  if (lower == "-inf") return -std::numeric_limits<double>::infinity();
  double value = 0;
  if (!absl::SimpleAtod(text, &value)) return std::nullopt;
  return value;
}

// `name{labels}` without `le`, the key of one histogram series.
std::string SeriesKey(const std::string& family, std::map<std::string, std::string> labels) {
  labels.erase("le");
  std::string key = family;
  for (const auto& [k, v] : labels) absl::StrAppend(&key, "|", k, "=", v);
  return key;
}

// The histogram family a sample name belongs to, or "" when none.
std::string HistogramFamily(const std::string& name, const MetricsText& parsed,
                            std::string* suffix) {
  for (const char* s : {"_bucket", "_sum", "_count"}) {
    const absl::string_view sv(s);
    if (absl::EndsWith(name, sv) && name.size() > sv.size()) {
      const std::string family = name.substr(0, name.size() - sv.size());
      auto it = parsed.types.find(family);
      if (it != parsed.types.end() && it->second == "histogram") {
        *suffix = std::string(sv);
        return family;
      }
    }
  }
  return "";
}

absl::Status LineError(int number, absl::string_view line, absl::string_view what) {
  return absl::InvalidArgumentError(
      absl::StrCat("metrics line ", number, " '", line, "': ", what));
}

}  // namespace

absl::StatusOr<double> MetricsText::Value(const std::string& name,
                                          const std::map<std::string, std::string>& labels) const {
  for (const MetricSample& sample : samples) {
    if (sample.name == name && sample.labels == labels) return sample.value;
  }
  std::vector<std::string> pairs;
  for (const auto& [k, v] : labels) pairs.push_back(absl::StrCat(k, "=\"", v, "\""));
  return absl::NotFoundError(
      absl::StrCat("no metric sample ", name, "{", absl::StrJoin(pairs, ","), "}"));
}

double MetricsText::ValueOrZero(const std::string& name,
                                const std::map<std::string, std::string>& labels) const {
  absl::StatusOr<double> value = Value(name, labels);
  return value.ok() ? *value : 0.0;
}

double MetricsText::Sum(const std::string& name) const {
  double sum = 0;
  for (const MetricSample& sample : samples) {
    if (sample.name == name) sum += sample.value;
  }
  return sum;
}

absl::StatusOr<MetricsText> ParseMetricsText(std::string_view std_text) {
  const absl::string_view text(std_text.data(), std_text.size());
  MetricsText parsed;
  std::set<std::string> families_with_samples;
  // Histogram series key -> (last le, last cumulative count).
  std::map<std::string, std::pair<double, double>> last_bucket;
  std::map<std::string, double> inf_bucket;
  std::map<std::string, double> counts;
  int number = 0;
  for (absl::string_view line : absl::StrSplit(text, '\n')) {
    ++number;
    if (line.empty()) continue;
    if (line[0] == '#') {
      std::vector<absl::string_view> parts = absl::StrSplit(line, absl::MaxSplits(' ', 3));
      if (parts.size() >= 3 && (parts[1] == "HELP" || parts[1] == "TYPE")) {
        size_t pos = 0;
        const std::string name = ReadName(parts[2], &pos, true);
        if (name.empty() || pos != parts[2].size()) {
          return LineError(number, line, "bad metric name");
        }
        const std::string rest = parts.size() > 3 ? std::string(parts[3]) : "";
        if (parts[1] == "TYPE") {
          static const std::set<std::string> kTypes = {"counter", "gauge", "histogram",
                                                       "summary", "untyped"};
          if (kTypes.count(rest) == 0) return LineError(number, line, "unknown type");
          if (parsed.types.count(name) != 0) return LineError(number, line, "second TYPE");
          if (families_with_samples.count(name) != 0) {
            return LineError(number, line, "TYPE after the family's samples");
          }
          parsed.types[name] = rest;
        } else {
          parsed.helps[name] = rest;
        }
      }
      continue;  // any other comment
    }

    MetricSample sample;
    size_t pos = 0;
    sample.name = ReadName(line, &pos, true);
    if (sample.name.empty()) return LineError(number, line, "no metric name");
    if (pos < line.size() && line[pos] == '{') {
      ++pos;
      while (true) {
        if (pos < line.size() && line[pos] == '}') {
          ++pos;
          break;
        }
        const std::string label = ReadName(line, &pos, false);
        if (label.empty()) return LineError(number, line, "bad label name");
        if (pos + 1 >= line.size() || line[pos] != '=' || line[pos + 1] != '"') {
          return LineError(number, line, "label without =\"value\"");
        }
        pos += 2;
        std::string value;
        bool closed = false;
        while (pos < line.size()) {
          const char c = line[pos++];
          if (c == '"') {
            closed = true;
            break;
          }
          if (c == '\\') {
            if (pos >= line.size()) break;
            const char e = line[pos++];
            if (e == 'n') {
              value += '\n';
            } else if (e == '\\' || e == '"') {
              value += e;
            } else {
              return LineError(number, line, "bad escape in a label value");
            }
          } else {
            value += c;
          }
        }
        if (!closed) return LineError(number, line, "unterminated label value");
        if (!sample.labels.emplace(label, value).second) {
          return LineError(number, line, "label given twice");
        }
        if (pos < line.size() && line[pos] == ',') ++pos;
      }
    }
    if (pos >= line.size() || line[pos] != ' ') {
      return LineError(number, line, "no space before the value");
    }
    std::vector<absl::string_view> fields =
        absl::StrSplit(line.substr(pos + 1), ' ', absl::SkipEmpty());
    if (fields.empty() || fields.size() > 2) {
      return LineError(number, line, "expected a value and at most a timestamp");
    }
    std::optional<double> value = ParseValue(fields[0]);
    if (!value.has_value()) return LineError(number, line, "value is not a number");
    int64_t timestamp = 0;
    if (fields.size() == 2 && !absl::SimpleAtoi(fields[1], &timestamp)) {
      return LineError(number, line, "timestamp is not an integer");
    }
    sample.value = *value;

    std::string suffix;
    const std::string histogram = HistogramFamily(sample.name, parsed, &suffix);
    if (!histogram.empty()) {
      families_with_samples.insert(histogram);
      const std::string key = SeriesKey(histogram, sample.labels);
      if (suffix == "_bucket") {
        auto le = sample.labels.find("le");
        if (le == sample.labels.end()) return LineError(number, line, "bucket without le");
        std::optional<double> bound = ParseValue(le->second);
        if (!bound.has_value()) return LineError(number, line, "le is not a number");
        auto last = last_bucket.find(key);
        if (last != last_bucket.end() &&
            (*bound <= last->second.first || sample.value < last->second.second)) {
          return LineError(number, line, "buckets not increasing in le and cumulative");
        }
        last_bucket[key] = {*bound, sample.value};
        if (std::isinf(*bound)) inf_bucket[key] = sample.value;
      } else if (suffix == "_count") {
        counts[key] = sample.value;
      }
    } else {
      auto type = parsed.types.find(sample.name);
      if (type != parsed.types.end() && type->second == "histogram") {
        return LineError(number, line, "a histogram sample without _bucket/_sum/_count");
      }
      // A summary's _sum/_count, or a plain sample.
      families_with_samples.insert(sample.name);
    }
    parsed.samples.push_back(std::move(sample));
  }
  for (const auto& [key, count] : counts) {
    auto inf = inf_bucket.find(key);
    if (inf == inf_bucket.end() || inf->second != count) {
      return absl::InvalidArgumentError(
          absl::StrCat("metrics histogram ", key, ": _count ", count,
                       " differs from its +Inf bucket (or that bucket is missing)"));
    }
  }
  return parsed;
}

absl::StatusOr<HttpResponse> HttpGet(int port, const std::string& path, absl::Duration timeout) {
  const absl::Time deadline = absl::Now() + timeout;
  const int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) return absl::InternalError(absl::StrCat("socket: ", std::strerror(errno)));
  struct Closer {
    int fd;
    ~Closer() { close(fd); }
  } closer{fd};
  sockaddr_in address{};
  address.sin_family = AF_INET;
  address.sin_port = htons(static_cast<uint16_t>(port));
  address.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  if (connect(fd, reinterpret_cast<const sockaddr*>(&address), sizeof(address)) != 0) {
    return absl::UnavailableError(
        absl::StrCat("connect to 127.0.0.1:", port, ": ", std::strerror(errno)));
  }
  const std::string request = absl::StrCat("GET ", path, " HTTP/1.1\r\nHost: 127.0.0.1:", port,
                                           "\r\nConnection: close\r\n\r\n");
  for (size_t sent = 0; sent < request.size();) {
    const ssize_t n = send(fd, request.data() + sent, request.size() - sent, MSG_NOSIGNAL);
    if (n <= 0) return absl::UnavailableError(absl::StrCat("send: ", std::strerror(errno)));
    sent += static_cast<size_t>(n);
  }
  std::string raw;
  char buffer[8192];
  while (true) {
    const absl::Duration left = deadline - absl::Now();
    if (left <= absl::ZeroDuration()) {
      return absl::DeadlineExceededError(absl::StrCat("GET ", path, ": no end of response within ",
                                                      absl::FormatDuration(timeout)));
    }
    pollfd poll_fd{fd, POLLIN, 0};
    const int ready = poll(&poll_fd, 1, static_cast<int>(absl::ToInt64Milliseconds(left)) + 1);
    if (ready < 0 && errno != EINTR) {
      return absl::InternalError(absl::StrCat("poll: ", std::strerror(errno)));
    }
    if (ready <= 0) continue;
    const ssize_t n = recv(fd, buffer, sizeof(buffer), 0);
    if (n < 0) return absl::UnavailableError(absl::StrCat("recv: ", std::strerror(errno)));
    if (n == 0) break;
    raw.append(buffer, static_cast<size_t>(n));
  }

  const size_t header_end = raw.find("\r\n\r\n");
  if (header_end == std::string::npos) {
    return absl::InternalError(absl::StrCat("GET ", path, ": response without a header end"));
  }
  HttpResponse response;
  std::vector<absl::string_view> header_lines =
      absl::StrSplit(absl::string_view(raw).substr(0, header_end), "\r\n");
  std::vector<absl::string_view> status_line = absl::StrSplit(header_lines[0], ' ');
  if (status_line.size() < 2 || !absl::StartsWith(status_line[0], "HTTP/1.") ||
      !absl::SimpleAtoi(status_line[1], &response.status_code)) {
    return absl::InternalError(absl::StrCat("GET ", path, ": bad status line '",
                                            header_lines[0], "'"));
  }
  for (size_t i = 1; i < header_lines.size(); ++i) {
    const size_t colon = header_lines[i].find(':');
    if (colon == absl::string_view::npos) continue;
    response.headers[absl::AsciiStrToLower(header_lines[i].substr(0, colon))] =
        std::string(absl::StripAsciiWhitespace(header_lines[i].substr(colon + 1)));
  }
  absl::string_view body = absl::string_view(raw).substr(header_end + 4);
  auto encoding = response.headers.find("transfer-encoding");
  if (encoding != response.headers.end() && absl::AsciiStrToLower(encoding->second) == "chunked") {
    // size-in-hex CRLF data CRLF ... 0 CRLF CRLF
    while (true) {
      const size_t line_end = body.find("\r\n");
      if (line_end == absl::string_view::npos) {
        return absl::InternalError(absl::StrCat("GET ", path, ": truncated chunked body"));
      }
      const std::string size_text(body.substr(0, line_end));
      char* end = nullptr;
      const unsigned long size = std::strtoul(size_text.c_str(), &end, 16);
      if (end == size_text.c_str() || body.size() < line_end + 2 + size) {
        return absl::InternalError(absl::StrCat("GET ", path, ": bad chunk size '", size_text, "'"));
      }
      if (size == 0) break;
      absl::StrAppend(&response.body, body.substr(line_end + 2, size));
      body.remove_prefix(std::min(body.size(), line_end + 2 + size + 2));
    }
  } else {
    response.body = std::string(body);
    auto length = response.headers.find("content-length");
    size_t expected = 0;
    if (length != response.headers.end() && absl::SimpleAtoi(length->second, &expected) &&
        expected != response.body.size()) {
      return absl::InternalError(absl::StrCat("GET ", path, ": body of ", response.body.size(),
                                              " bytes, Content-Length ", expected));
    }
  }
  return response;
}

absl::StatusOr<MetricsText> ScrapeMetrics(int port) {
  absl::StatusOr<HttpResponse> response = HttpGet(port, "/metrics");
  if (!response.ok()) return response.status();
  if (response->status_code != 200) {
    return absl::InternalError(absl::StrCat("GET /metrics: HTTP ", response->status_code));
  }
  return ParseMetricsText(response->body);
}

}  // namespace pdserve
