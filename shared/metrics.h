// Service metrics in the Prometheus text exposition format (version 0.0.4),
// served over HTTP at GET /metrics.
//
// A thin layer over Debian's prometheus-cpp core (registry, metric types and
// the text serializer): the services see only these types, never
// prometheus-cpp's headers, and no prometheus-cpp exception crosses this
// file. The HTTP endpoint is our own small server, not prometheus-cpp's pull
// exposer: Debian's civetweb runs its threads on ~100 KiB stacks, and in a
// process that links OpenBLAS (libgfortran loads libquadmath, which registers
// printf hooks, so every printf takes glibc's stack-hungry positional path)
// its first snprintf overflows them. Built as its own target,
// `pdserve_metrics`, only with the services (the GPU check build has no
// prometheus-cpp).
//
// Conventions (https://prometheus.io/docs/practices/naming/): names are
// `pdserve_<service>_<what>[_<unit>]`, counters end in `_total`; durations are
// histograms in milliseconds (`_ms`) with fixed bucket boundaries, sizes are
// in bytes (`_bytes`).
#ifndef PDSERVE_SHARED_METRICS_H_
#define PDSERVE_SHARED_METRICS_H_

#include <functional>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"

namespace prometheus {
class Counter;
class Gauge;
class Histogram;
class Registry;
}  // namespace prometheus

namespace pdserve {

// Label name -> value, e.g. {{"code", "INVALID_ARGUMENT"}}. Values may hold
// any UTF-8; the text format escapes them.
using MetricLabels = std::map<std::string, std::string>;

// A monotonically increasing count. Cheap to copy; valid while its registry
// lives. Thread-safe.
class Counter {
 public:
  // `amount` >= 0 (a negative amount is ignored, as counters never go down).
  void Increment(double amount = 1.0);
  double value() const;

 private:
  friend class MetricsRegistry;
  explicit Counter(prometheus::Counter* impl) : impl_(impl) {}
  prometheus::Counter* impl_;
};

// A value that goes up and down. Cheap to copy; valid while its registry
// lives. Thread-safe.
class Gauge {
 public:
  void Set(double value);
  void Increment(double amount = 1.0);
  void Decrement(double amount = 1.0);
  double value() const;

 private:
  friend class MetricsRegistry;
  explicit Gauge(prometheus::Gauge* impl) : impl_(impl) {}
  prometheus::Gauge* impl_;
};

// Observations counted into fixed buckets: the exposition gives
// `_bucket{le="b"}` (cumulative counts of observations <= b, then "+Inf"),
// `_sum` and `_count`. Cheap to copy; valid while its registry lives.
// Thread-safe.
class Histogram {
 public:
  void Observe(double value);

 private:
  friend class MetricsRegistry;
  explicit Histogram(prometheus::Histogram* impl) : impl_(impl) {}
  prometheus::Histogram* impl_;
};

// Bucket upper bounds in milliseconds for request-scale latencies: 1 ms to
// 60 s, roughly x2.5 apart.
std::vector<double> LatencyBucketsMs();
// Bucket upper bounds in milliseconds for per-token gaps: 0.1 ms to 5 s.
std::vector<double> TokenGapBucketsMs();

// Owns a process's metrics. Thread-safe. Names must match
// [a-zA-Z_:][a-zA-Z0-9_:]* and label names [a-zA-Z_][a-zA-Z0-9_]*; one name
// has one type and one help text. Adding the same (name, labels) twice
// returns the same metric, so a caller may look a labelled child up on every
// event. A bad name or a name reused with another type is a programmer error
// and aborts with a message naming it.
class MetricsRegistry {
 public:
  MetricsRegistry();
  ~MetricsRegistry();
  MetricsRegistry(const MetricsRegistry&) = delete;
  MetricsRegistry& operator=(const MetricsRegistry&) = delete;

  Counter AddCounter(const std::string& name, const std::string& help,
                     const MetricLabels& labels = {});
  Gauge AddGauge(const std::string& name, const std::string& help,
                 const MetricLabels& labels = {});
  // `bucket_bounds`: strictly increasing upper bounds ("+Inf" is implicit).
  // Only the first Add of a (name, labels) decides the bounds.
  Histogram AddHistogram(const std::string& name, const std::string& help,
                         const std::vector<double>& bucket_bounds,
                         const MetricLabels& labels = {});

  // `hook` runs at the start of every collection (RenderText, each scrape),
  // on the collecting thread, before any value is read: the place to Set
  // gauges sampled from elsewhere (queue lengths, free KV blocks). It must
  // not call back into this registry's collection and must stay valid until
  // the registry (and any MetricsHttpServer serving it) is destroyed.
  void AddCollectHook(std::function<void()> hook);

  // Every metric in the text exposition format, version 0.0.4 (# HELP and
  // # TYPE lines, then one `name{labels} value` line per sample).
  std::string RenderText() const;

 private:
  class HookedCollectable;

  std::shared_ptr<prometheus::Registry> registry_;
  std::shared_ptr<HookedCollectable> collectable_;
};

// A small HTTP/1.1 server on one thread of its own, answering GET /metrics
// with `registry`'s text exposition (Content-Type: text/plain;
// version=0.0.4), 404 for other paths and 405 for other methods. One
// connection at a time, "Connection: close" after each answer; a client gets
// 5 s to send its request. Meant for a Prometheus scraper or a curl now and
// then, not for load.
class MetricsHttpServer {
 public:
  // Listens on `listen`, "IP:PORT" with an IPv4 literal or "[IPv6]:PORT";
  // port 0 picks a free port (see port()). `registry` must outlive the
  // server. UNAVAILABLE naming `flag_name` and the address when it cannot
  // be bound; INVALID_ARGUMENT when `listen` has no port.
  static absl::StatusOr<std::unique_ptr<MetricsHttpServer>> Start(
      const std::string& listen, MetricsRegistry* registry,
      const std::string& flag_name = "--metrics_listen");
  // Stops serving (a request in progress is finished first) and joins the
  // server's thread.
  ~MetricsHttpServer();
  MetricsHttpServer(const MetricsHttpServer&) = delete;
  MetricsHttpServer& operator=(const MetricsHttpServer&) = delete;

  int port() const { return port_; }

 private:
  class Loop;
  MetricsHttpServer() = default;
  std::unique_ptr<Loop> loop_;
  int port_ = 0;
};

}  // namespace pdserve

#endif  // PDSERVE_SHARED_METRICS_H_
