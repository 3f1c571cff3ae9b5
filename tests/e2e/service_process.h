// Runs a pdserve service binary as a child process for end-to-end tests: on
// an ephemeral loopback port, reported through a port file, and ready once
// the standard gRPC health check answers SERVING.
#ifndef PDSERVE_TESTS_E2E_SERVICE_PROCESS_H_
#define PDSERVE_TESTS_E2E_SERVICE_PROCESS_H_

#include <sys/types.h>

#include <memory>
#include <string>
#include <vector>

#include <grpcpp/channel.h>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"

namespace pdserve::e2e {

struct ServiceProcessOptions {
  std::string binary;              // path of the executable
  std::vector<std::string> args;   // e.g. {"--model_dir", dir, "--device", "cpu"}
  // The harness appends `--listen 127.0.0.1:0 --port_file <tmp>/port`; set
  // false for a binary that takes neither (it then cannot become ready).
  bool add_listen_flags = true;
  absl::Duration startup_timeout = absl::Seconds(60);  // port file + SERVING
  absl::Duration stop_timeout = absl::Seconds(10);     // SIGTERM grace before SIGKILL
  // Extra environment entries ("NAME=value") on top of the parent's.
  std::vector<std::string> env;
};

// One child process. The destructor stops it (SIGTERM, then SIGKILL after
// stop_timeout) and reaps it; the child also gets SIGKILL if the test
// process dies first (PR_SET_PDEATHSIG), so a crashed test leaks no servers.
// The child's stdout and stderr go to files in a private temporary directory,
// removed on destruction.
class ServiceProcess {
 public:
  // Spawns the binary and waits (bounded by startup_timeout) until the port
  // file appears and grpc.health.v1.Health/Check("") answers SERVING.
  // Errors: INTERNAL when the process cannot be started; UNAVAILABLE when it
  // exits early, DEADLINE_EXCEEDED when it is not ready in time; the message
  // gives the command line, the exit status and the tail of its stderr.
  static absl::StatusOr<std::unique_ptr<ServiceProcess>> Start(ServiceProcessOptions options);

  ~ServiceProcess();
  ServiceProcess(const ServiceProcess&) = delete;
  ServiceProcess& operator=(const ServiceProcess&) = delete;

  pid_t pid() const { return pid_; }
  int port() const { return port_; }
  std::string address() const;  // "127.0.0.1:PORT"
  // A new insecure channel to address() with generous message limits.
  std::shared_ptr<grpc::Channel> NewChannel() const;

  // Sends SIGTERM, waits up to stop_timeout, then SIGKILL; reaps the child.
  // Returns OK when the child exited with status 0 after SIGTERM, otherwise
  // INTERNAL describing how it ended (signal or exit code) with its stderr
  // tail. Idempotent: later calls return the first result.
  absl::Status Stop();

  // Sends `signal` without waiting (fault-injection tests).
  void Signal(int signal) const;
  // Polls for the child's exit for up to `timeout`; true when it has exited
  // (and is reaped). `wait_status` receives the raw waitpid status.
  bool WaitForExit(absl::Duration timeout, int* wait_status = nullptr);

  // The last `max_bytes` of what the child wrote to stderr (and stdout).
  std::string StderrTail(size_t max_bytes = 4000) const;
  std::string StdoutTail(size_t max_bytes = 4000) const;

 private:
  ServiceProcess() = default;
  absl::Status WaitUntilReady();
  std::string Describe() const;  // command line, for messages

  ServiceProcessOptions options_;
  std::string temp_dir_;
  std::string port_file_;
  std::string stdout_path_;
  std::string stderr_path_;
  pid_t pid_ = -1;
  bool reaped_ = false;
  int wait_status_ = 0;
  int port_ = 0;
  bool stopped_ = false;
  absl::Status stop_status_;
};

// Runs `command` with /bin/sh (stderr joined to stdout); returns its exit
// status (-1 when it did not exit normally) and appends its output to
// `*output`. For tests that drive pdserve-cli.
int RunCommand(const std::string& command, std::string* output);

// Calls grpc.health.v1.Health/Check("") on `channel` until it answers
// SERVING or `timeout` passes. DEADLINE_EXCEEDED with the last answer or RPC
// error otherwise.
absl::Status WaitForServing(const std::shared_ptr<grpc::Channel>& channel, absl::Duration timeout);

// The fully qualified service names a server lists through gRPC server
// reflection (grpc.reflection.v1alpha), sorted.
absl::StatusOr<std::vector<std::string>> ListServicesByReflection(
    const std::shared_ptr<grpc::Channel>& channel, absl::Duration timeout);

}  // namespace pdserve::e2e

#endif  // PDSERVE_TESTS_E2E_SERVICE_PROCESS_H_
