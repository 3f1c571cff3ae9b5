#include "shared/metrics.h"

#include <cstdio>
#include <cstdlib>
#include <exception>
#include <mutex>
#include <utility>

#include <prometheus/counter.h>
#include <prometheus/exposer.h>
#include <prometheus/gauge.h>
#include <prometheus/histogram.h>
#include <prometheus/registry.h>
#include <prometheus/text_serializer.h>

#include "absl/strings/str_cat.h"

namespace pdserve {
namespace {

// prometheus-cpp reports a bad name or a type clash by throwing; for us that
// is a programmer error, so it ends here rather than crossing modules.
[[noreturn]] void AbortOnBadMetric(const std::string& name, const std::exception& error) {
  std::fprintf(stderr, "pdserve metrics: cannot register '%s': %s\n", name.c_str(),
               error.what());
  std::abort();
}

}  // namespace

void Counter::Increment(double amount) {
  if (amount >= 0) impl_->Increment(amount);
}
double Counter::value() const { return impl_->Value(); }

void Gauge::Set(double value) { impl_->Set(value); }
void Gauge::Increment(double amount) { impl_->Increment(amount); }
void Gauge::Decrement(double amount) { impl_->Decrement(amount); }
double Gauge::value() const { return impl_->Value(); }

void Histogram::Observe(double value) { impl_->Observe(value); }

std::vector<double> LatencyBucketsMs() {
  return {1, 2.5, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10000, 30000, 60000};
}

std::vector<double> TokenGapBucketsMs() {
  return {0.1, 0.25, 0.5, 1, 2.5, 5, 10, 25, 50, 100, 250, 500, 1000, 5000};
}

// The registry as the exposer and RenderText see it: runs the hooks, then
// collects the registry.
class MetricsRegistry::HookedCollectable final : public prometheus::Collectable {
 public:
  explicit HookedCollectable(std::shared_ptr<prometheus::Registry> registry)
      : registry_(std::move(registry)) {}

  void AddHook(std::function<void()> hook) {
    std::lock_guard<std::mutex> lock(mu_);
    hooks_.push_back(std::move(hook));
  }

  std::vector<prometheus::MetricFamily> Collect() const override {
    {
      // Held while hooks run: concurrent scrapes sample one after the other.
      std::lock_guard<std::mutex> lock(mu_);
      for (const auto& hook : hooks_) hook();
    }
    return registry_->Collect();
  }

 private:
  const std::shared_ptr<prometheus::Registry> registry_;
  mutable std::mutex mu_;
  std::vector<std::function<void()>> hooks_;  // guarded by mu_
};

MetricsRegistry::MetricsRegistry()
    : registry_(std::make_shared<prometheus::Registry>()),
      collectable_(std::make_shared<HookedCollectable>(registry_)) {}

MetricsRegistry::~MetricsRegistry() = default;

Counter MetricsRegistry::AddCounter(const std::string& name, const std::string& help,
                                    const MetricLabels& labels) {
  try {
    auto& family = prometheus::BuildCounter().Name(name).Help(help).Register(*registry_);
    return Counter(&family.Add(labels));
  } catch (const std::exception& error) {
    AbortOnBadMetric(name, error);
  }
}

Gauge MetricsRegistry::AddGauge(const std::string& name, const std::string& help,
                                const MetricLabels& labels) {
  try {
    auto& family = prometheus::BuildGauge().Name(name).Help(help).Register(*registry_);
    return Gauge(&family.Add(labels));
  } catch (const std::exception& error) {
    AbortOnBadMetric(name, error);
  }
}

Histogram MetricsRegistry::AddHistogram(const std::string& name, const std::string& help,
                                        const std::vector<double>& bucket_bounds,
                                        const MetricLabels& labels) {
  try {
    auto& family = prometheus::BuildHistogram().Name(name).Help(help).Register(*registry_);
    return Histogram(&family.Add(labels, bucket_bounds));
  } catch (const std::exception& error) {
    AbortOnBadMetric(name, error);
  }
}

void MetricsRegistry::AddCollectHook(std::function<void()> hook) {
  collectable_->AddHook(std::move(hook));
}

std::string MetricsRegistry::RenderText() const {
  return prometheus::TextSerializer().Serialize(collectable_->Collect());
}

absl::StatusOr<std::unique_ptr<MetricsHttpServer>> MetricsHttpServer::Start(
    const std::string& listen, MetricsRegistry* registry, const std::string& flag_name) {
  const size_t colon = listen.rfind(':');
  if (colon == std::string::npos || colon + 1 == listen.size() ||
      listen.find_first_not_of("0123456789", colon + 1) != std::string::npos) {
    return absl::InvalidArgumentError(
        absl::StrCat(flag_name, ": '", listen, "' is not IP:PORT (port 0 picks a free one)"));
  }
  std::unique_ptr<MetricsHttpServer> server(new MetricsHttpServer());
  try {
    // Two worker threads: scrapes are rare and short.
    server->exposer_ = std::make_unique<prometheus::Exposer>(listen, /*num_threads=*/2);
  } catch (const std::exception& error) {
    return absl::UnavailableError(absl::StrCat(flag_name, ": cannot serve metrics on '", listen,
                                               "' (address in use or invalid): ", error.what()));
  }
  server->exposer_->RegisterCollectable(registry->collectable_, "/metrics");
  const std::vector<int> ports = server->exposer_->GetListeningPorts();
  if (ports.empty() || ports.front() <= 0) {
    return absl::UnavailableError(
        absl::StrCat(flag_name, ": no port bound for '", listen, "'"));
  }
  server->port_ = ports.front();
  return server;
}

MetricsHttpServer::~MetricsHttpServer() = default;

}  // namespace pdserve
