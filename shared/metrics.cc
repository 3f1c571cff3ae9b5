#include "shared/metrics.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <exception>
#include <mutex>
#include <thread>
#include <utility>

#include <prometheus/counter.h>
#include <prometheus/gauge.h>
#include <prometheus/histogram.h>
#include <prometheus/registry.h>
#include <prometheus/text_serializer.h>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"

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

// The server's socket and thread. The thread polls the listening socket and
// an eventfd; the destructor writes the eventfd to stop it.
class MetricsHttpServer::Loop {
 public:
  Loop(int listen_fd, int wake_fd, MetricsRegistry* registry)
      : listen_fd_(listen_fd), wake_fd_(wake_fd), registry_(registry) {
    thread_ = std::thread([this] { Run(); });
  }
  ~Loop() {
    const uint64_t one = 1;
    (void)!write(wake_fd_, &one, sizeof(one));
    thread_.join();
    close(listen_fd_);
    close(wake_fd_);
  }

 private:
  void Run() {
    while (true) {
      pollfd fds[2] = {{listen_fd_, POLLIN, 0}, {wake_fd_, POLLIN, 0}};
      if (poll(fds, 2, -1) < 0) {
        if (errno == EINTR) continue;
        return;
      }
      if (fds[1].revents != 0) return;
      if ((fds[0].revents & POLLIN) == 0) continue;
      const int fd = accept4(listen_fd_, nullptr, nullptr, SOCK_CLOEXEC);
      if (fd < 0) continue;  // the client gave up already, or out of descriptors
      Serve(fd);
      close(fd);
    }
  }

  // Reads one request head (5 s, 16 KiB at most) and answers it.
  void Serve(int fd) {
    std::string head;
    const absl::Time deadline = absl::Now() + absl::Seconds(5);
    char buffer[4096];
    while (head.find("\r\n\r\n") == std::string::npos && head.size() < (16 << 10)) {
      const int64_t left_ms = absl::ToInt64Milliseconds(deadline - absl::Now());
      if (left_ms <= 0) return;
      pollfd pfd{fd, POLLIN, 0};
      const int ready = poll(&pfd, 1, static_cast<int>(left_ms));
      if (ready < 0 && errno == EINTR) continue;
      if (ready <= 0) return;
      const ssize_t n = recv(fd, buffer, sizeof(buffer), 0);
      if (n <= 0) return;
      head.append(buffer, static_cast<size_t>(n));
    }
    // "METHOD SP TARGET SP HTTP/x.y" (RFC 9112, section 3).
    const std::string line = head.substr(0, head.find("\r\n"));
    const size_t sp1 = line.find(' ');
    const size_t sp2 = sp1 == std::string::npos ? std::string::npos : line.find(' ', sp1 + 1);
    if (sp2 == std::string::npos) {
      Respond(fd, "400 Bad Request", "text/plain", "bad request line\n");
      return;
    }
    const std::string method = line.substr(0, sp1);
    std::string target = line.substr(sp1 + 1, sp2 - sp1 - 1);
    target = target.substr(0, target.find('?'));
    if (target != "/metrics") {
      Respond(fd, "404 Not Found", "text/plain", "only /metrics is served here\n");
    } else if (method != "GET") {
      Respond(fd, "405 Method Not Allowed", "text/plain", "GET only\n");
    } else {
      Respond(fd, "200 OK", "text/plain; version=0.0.4; charset=utf-8", registry_->RenderText());
    }
  }

  static void Respond(int fd, const char* status, const char* content_type,
                      const std::string& body) {
    const std::string response =
        absl::StrCat("HTTP/1.1 ", status, "\r\nContent-Type: ", content_type,
                     "\r\nContent-Length: ", body.size(), "\r\nConnection: close\r\n\r\n", body);
    for (size_t sent = 0; sent < response.size();) {
      const ssize_t n = send(fd, response.data() + sent, response.size() - sent, MSG_NOSIGNAL);
      if (n < 0 && errno == EINTR) continue;
      if (n <= 0) return;  // the client went away
      sent += static_cast<size_t>(n);
    }
  }

  const int listen_fd_;
  const int wake_fd_;
  MetricsRegistry* const registry_;
  std::thread thread_;
};

absl::StatusOr<std::unique_ptr<MetricsHttpServer>> MetricsHttpServer::Start(
    const std::string& listen, MetricsRegistry* registry, const std::string& flag_name) {
  const size_t colon = listen.rfind(':');
  int port = -1;
  if (colon == std::string::npos || !absl::SimpleAtoi(listen.substr(colon + 1), &port) ||
      port < 0 || port > 65535 ||
      listen.find_first_not_of("0123456789", colon + 1) != std::string::npos) {
    return absl::InvalidArgumentError(
        absl::StrCat(flag_name, ": '", listen, "' is not IP:PORT (port 0 picks a free one)"));
  }
  std::string host = listen.substr(0, colon);
  sockaddr_storage address{};
  socklen_t address_size = 0;
  if (host.size() >= 2 && host.front() == '[' && host.back() == ']') {
    auto* in6 = reinterpret_cast<sockaddr_in6*>(&address);
    in6->sin6_family = AF_INET6;
    in6->sin6_port = htons(static_cast<uint16_t>(port));
    if (inet_pton(AF_INET6, host.substr(1, host.size() - 2).c_str(), &in6->sin6_addr) != 1) {
      host.clear();
    }
    address_size = sizeof(sockaddr_in6);
  } else {
    auto* in4 = reinterpret_cast<sockaddr_in*>(&address);
    in4->sin_family = AF_INET;
    in4->sin_port = htons(static_cast<uint16_t>(port));
    if (inet_pton(AF_INET, host.c_str(), &in4->sin_addr) != 1) host.clear();
    address_size = sizeof(sockaddr_in);
  }
  if (host.empty()) {
    return absl::InvalidArgumentError(absl::StrCat(
        flag_name, ": '", listen, "' needs an IPv4 literal or a bracketed IPv6 literal"));
  }
  const int fd = socket(address.ss_family, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) {
    return absl::UnavailableError(absl::StrCat(flag_name, ": socket: ", std::strerror(errno)));
  }
  const int on = 1;
  setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &on, sizeof(on));
  if (bind(fd, reinterpret_cast<const sockaddr*>(&address), address_size) != 0 ||
      ::listen(fd, 16) != 0) {
    const std::string error = std::strerror(errno);
    close(fd);
    return absl::UnavailableError(
        absl::StrCat(flag_name, ": cannot serve metrics on '", listen, "': ", error));
  }
  sockaddr_storage bound{};
  socklen_t bound_size = sizeof(bound);
  getsockname(fd, reinterpret_cast<sockaddr*>(&bound), &bound_size);
  const int wake_fd = eventfd(0, EFD_CLOEXEC);
  if (wake_fd < 0) {
    close(fd);
    return absl::UnavailableError(absl::StrCat(flag_name, ": eventfd: ", std::strerror(errno)));
  }
  std::unique_ptr<MetricsHttpServer> server(new MetricsHttpServer());
  server->port_ = ntohs(bound.ss_family == AF_INET6
                            ? reinterpret_cast<const sockaddr_in6*>(&bound)->sin6_port
                            : reinterpret_cast<const sockaddr_in*>(&bound)->sin_port);
  server->loop_ = std::make_unique<Loop>(fd, wake_fd, registry);
  return server;
}

MetricsHttpServer::~MetricsHttpServer() = default;

}  // namespace pdserve
