#include "tests/e2e/service_process.h"

#include <fcntl.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <thread>

#include <grpcpp/client_context.h>
#include <grpcpp/create_channel.h>
#include <grpcpp/security/credentials.h>
#include <grpcpp/support/channel_arguments.h>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/strip.h"
#include "grpc/health/v1/health.grpc.pb.h"
#include "grpc/reflection/v1alpha/reflection.grpc.pb.h"

extern char** environ;

namespace pdserve::e2e {
namespace {

constexpr absl::Duration kPollInterval = absl::Milliseconds(20);

std::string TempBase() {
  for (const char* name : {"TEST_TMPDIR", "TMPDIR"}) {
    const char* value = std::getenv(name);
    if (value != nullptr && value[0] != '\0') return value;
  }
  return "/tmp";
}

std::string FileTail(const std::string& path, size_t max_bytes) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return "";
  in.seekg(0, std::ios::end);
  const std::streamoff size = in.tellg();
  const std::streamoff start = size > static_cast<std::streamoff>(max_bytes)
                                   ? size - static_cast<std::streamoff>(max_bytes)
                                   : 0;
  in.seekg(start);
  std::string out(static_cast<size_t>(size - start), '\0');
  in.read(out.data(), static_cast<std::streamsize>(out.size()));
  return out;
}

std::string DescribeWaitStatus(int wait_status) {
  if (WIFEXITED(wait_status)) return absl::StrCat("exited with code ", WEXITSTATUS(wait_status));
  if (WIFSIGNALED(wait_status)) {
    return absl::StrCat("killed by signal ", WTERMSIG(wait_status), " (",
                        strsignal(WTERMSIG(wait_status)), ")");
  }
  return absl::StrCat("ended with wait status ", wait_status);
}

}  // namespace

absl::StatusOr<std::unique_ptr<ServiceProcess>> ServiceProcess::Start(
    ServiceProcessOptions options) {
  std::unique_ptr<ServiceProcess> process(new ServiceProcess());
  std::string templ = TempBase() + "/pdserve-e2e-XXXXXX";
  if (mkdtemp(templ.data()) == nullptr) {
    return absl::InternalError(
        absl::StrCat("mkdtemp(", templ, ") failed: ", std::strerror(errno)));
  }
  process->temp_dir_ = templ;
  process->port_file_ = templ + "/port";
  process->stdout_path_ = templ + "/stdout.log";
  process->stderr_path_ = templ + "/stderr.log";
  if (options.add_listen_flags) {
    options.args.insert(options.args.end(),
                        {"--listen", "127.0.0.1:0", "--port_file", process->port_file_});
  }
  process->options_ = std::move(options);

  // Everything the child needs is prepared before fork: between fork and exec
  // a multi-threaded parent's child may only make async-signal-safe calls.
  std::vector<std::string> argv_storage;
  argv_storage.push_back(process->options_.binary);
  argv_storage.insert(argv_storage.end(), process->options_.args.begin(),
                      process->options_.args.end());
  std::vector<char*> argv;
  for (std::string& arg : argv_storage) argv.push_back(arg.data());
  argv.push_back(nullptr);
  std::vector<std::string> env_storage;
  for (char** e = environ; *e != nullptr; ++e) env_storage.emplace_back(*e);
  env_storage.insert(env_storage.end(), process->options_.env.begin(),
                     process->options_.env.end());
  std::vector<char*> envp;
  for (std::string& entry : env_storage) envp.push_back(entry.data());
  envp.push_back(nullptr);

  const int out_fd = open(process->stdout_path_.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  const int err_fd = open(process->stderr_path_.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  const int null_fd = open("/dev/null", O_RDONLY | O_CLOEXEC);
  if (out_fd < 0 || err_fd < 0 || null_fd < 0) {
    for (int fd : {out_fd, err_fd, null_fd}) {
      if (fd >= 0) close(fd);
    }
    return absl::InternalError(absl::StrCat("cannot create the log files in ", templ, ": ",
                                            std::strerror(errno)));
  }
  const pid_t parent = getpid();
  const pid_t pid = fork();
  if (pid == 0) {
    // Child: die with the test process; start with no blocked signals.
    prctl(PR_SET_PDEATHSIG, SIGKILL);
    if (getppid() != parent) _exit(126);
    sigset_t none;
    sigemptyset(&none);
    sigprocmask(SIG_SETMASK, &none, nullptr);
    dup2(null_fd, STDIN_FILENO);
    dup2(out_fd, STDOUT_FILENO);
    dup2(err_fd, STDERR_FILENO);
    execve(argv[0], argv.data(), envp.data());
    const char message[] = "service_process: execve failed\n";
    (void)!write(STDERR_FILENO, message, sizeof(message) - 1);
    _exit(127);
  }
  const int fork_errno = errno;
  close(out_fd);
  close(err_fd);
  close(null_fd);
  if (pid < 0) {
    return absl::InternalError(
        absl::StrCat("fork for ", process->Describe(), " failed: ", std::strerror(fork_errno)));
  }
  process->pid_ = pid;
  if (absl::Status ready = process->WaitUntilReady(); !ready.ok()) return ready;
  return process;
}

ServiceProcess::~ServiceProcess() {
  if (pid_ > 0) (void)Stop();
  if (!temp_dir_.empty()) {
    std::error_code ignored;
    std::filesystem::remove_all(temp_dir_, ignored);
  }
}

std::string ServiceProcess::address() const { return absl::StrCat("127.0.0.1:", port_); }

std::shared_ptr<grpc::Channel> ServiceProcess::NewChannel() const {
  grpc::ChannelArguments args;
  args.SetMaxReceiveMessageSize(64 << 20);
  args.SetMaxSendMessageSize(64 << 20);
  return grpc::CreateCustomChannel(address(), grpc::InsecureChannelCredentials(), args);
}

std::string ServiceProcess::Describe() const {
  return absl::StrCat(options_.binary, " ", absl::StrJoin(options_.args, " "));
}

std::string ServiceProcess::StderrTail(size_t max_bytes) const {
  return FileTail(stderr_path_, max_bytes);
}

std::string ServiceProcess::StdoutTail(size_t max_bytes) const {
  return FileTail(stdout_path_, max_bytes);
}

bool ServiceProcess::WaitForExit(absl::Duration timeout, int* wait_status) {
  const absl::Time deadline = absl::Now() + timeout;
  while (!reaped_) {
    int status = 0;
    const pid_t r = waitpid(pid_, &status, WNOHANG);
    if (r == pid_ || (r < 0 && errno == ECHILD)) {
      reaped_ = true;
      wait_status_ = status;
      break;
    }
    if (absl::Now() >= deadline) return false;
    absl::SleepFor(kPollInterval);
  }
  if (wait_status != nullptr) *wait_status = wait_status_;
  return true;
}

void ServiceProcess::Signal(int signal) const {
  if (!reaped_ && pid_ > 0) kill(pid_, signal);
}

absl::Status ServiceProcess::WaitUntilReady() {
  const absl::Time deadline = absl::Now() + options_.startup_timeout;
  auto failure = [&](absl::StatusCode code, const std::string& what) {
    return absl::Status(code, absl::StrCat(what, "\ncommand: ", Describe(), "\nstderr tail:\n",
                                           StderrTail()));
  };
  // 1. The port file: written (atomically) once the server listens.
  while (port_ == 0) {
    int status = 0;
    if (WaitForExit(absl::ZeroDuration(), &status)) {
      return failure(absl::StatusCode::kUnavailable,
                     absl::StrCat("service exited before writing its port file: ",
                                  DescribeWaitStatus(status)));
    }
    std::ifstream in(port_file_);
    std::string text;
    if (in && std::getline(in, text)) {
      int port = 0;
      if (absl::SimpleAtoi(absl::StripAsciiWhitespace(text), &port) && port > 0 && port < 65536) {
        port_ = port;
        break;
      }
    }
    if (absl::Now() >= deadline) {
      return failure(absl::StatusCode::kDeadlineExceeded,
                     absl::StrCat("no port in ", port_file_, " after ",
                                  absl::FormatDuration(options_.startup_timeout)));
    }
    absl::SleepFor(kPollInterval);
  }
  // 2. The health check.
  absl::Status serving = WaitForServing(NewChannel(), deadline - absl::Now());
  if (!serving.ok()) {
    int status = 0;
    const std::string exited =
        WaitForExit(absl::ZeroDuration(), &status) ? "; " + DescribeWaitStatus(status) : "";
    return failure(serving.code(), absl::StrCat("service on port ", port_, " never reported SERVING: ",
                                                serving.message(), exited));
  }
  return absl::OkStatus();
}

absl::Status ServiceProcess::Stop() {
  if (stopped_) return stop_status_;
  stopped_ = true;
  int status = 0;
  bool killed = false;
  if (!WaitForExit(absl::ZeroDuration(), &status)) {
    kill(pid_, SIGTERM);
    if (!WaitForExit(options_.stop_timeout, &status)) {
      kill(pid_, SIGKILL);
      killed = true;
      waitpid(pid_, &status, 0);
      reaped_ = true;
      wait_status_ = status;
    }
  }
  if (!killed && WIFEXITED(status) && WEXITSTATUS(status) == 0) {
    stop_status_ = absl::OkStatus();
  } else {
    stop_status_ = absl::InternalError(absl::StrCat(
        Describe(), ": ", killed ? "did not stop within the SIGTERM grace period; " : "",
        DescribeWaitStatus(status), "\nstderr tail:\n", StderrTail()));
  }
  return stop_status_;
}

absl::Status WaitForServing(const std::shared_ptr<grpc::Channel>& channel,
                            absl::Duration timeout) {
  const absl::Time deadline = absl::Now() + timeout;
  auto stub = grpc::health::v1::Health::NewStub(channel);
  std::string last = "no answer";
  while (true) {
    grpc::ClientContext context;
    const absl::Duration per_call = std::min(absl::Seconds(1), deadline - absl::Now());
    context.set_deadline(absl::ToChronoTime(absl::Now() + std::max(per_call, absl::Milliseconds(50))));
    grpc::health::v1::HealthCheckRequest request;
    grpc::health::v1::HealthCheckResponse response;
    const grpc::Status status = stub->Check(&context, request, &response);
    if (status.ok() && response.status() == grpc::health::v1::HealthCheckResponse::SERVING) {
      return absl::OkStatus();
    }
    last = status.ok() ? absl::StrCat("status ",
                                      grpc::health::v1::HealthCheckResponse::ServingStatus_Name(
                                          response.status()))
                       : absl::StrCat("RPC error ", status.error_code(), ": ", status.error_message());
    if (absl::Now() >= deadline) {
      return absl::DeadlineExceededError(absl::StrCat(
          "health check not SERVING within ", absl::FormatDuration(timeout), "; last: ", last));
    }
    absl::SleepFor(kPollInterval);
  }
}

absl::StatusOr<std::vector<std::string>> ListServicesByReflection(
    const std::shared_ptr<grpc::Channel>& channel, absl::Duration timeout) {
  using grpc::reflection::v1alpha::ServerReflection;
  using grpc::reflection::v1alpha::ServerReflectionRequest;
  using grpc::reflection::v1alpha::ServerReflectionResponse;
  auto stub = ServerReflection::NewStub(channel);
  grpc::ClientContext context;
  context.set_deadline(absl::ToChronoTime(absl::Now() + timeout));
  auto stream = stub->ServerReflectionInfo(&context);
  ServerReflectionRequest request;
  request.set_list_services("*");
  ServerReflectionResponse response;
  const bool sent = stream->Write(request);
  const bool got = sent && stream->Read(&response);
  stream->WritesDone();
  // The server closes its side after our WritesDone; drain so Finish returns.
  ServerReflectionResponse rest;
  while (got && stream->Read(&rest)) {
  }
  const grpc::Status status = stream->Finish();
  if (!status.ok()) {
    return absl::UnavailableError(absl::StrCat("ServerReflectionInfo failed: ", status.error_code(),
                                               ": ", status.error_message()));
  }
  if (!got) return absl::UnavailableError("ServerReflectionInfo: no response");
  if (response.has_error_response()) {
    return absl::UnavailableError(absl::StrCat("ServerReflectionInfo error ",
                                               response.error_response().error_code(), ": ",
                                               response.error_response().error_message()));
  }
  std::vector<std::string> names;
  for (const auto& service : response.list_services_response().service()) {
    names.push_back(service.name());
  }
  std::sort(names.begin(), names.end());
  return names;
}

int RunCommand(const std::string& command, std::string* output) {
  FILE* pipe = popen((command + " 2>&1").c_str(), "r");
  if (pipe == nullptr) return -1;
  char buffer[4096];
  size_t n;
  while ((n = fread(buffer, 1, sizeof(buffer), pipe)) > 0) output->append(buffer, n);
  const int status = pclose(pipe);
  return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
}

}  // namespace pdserve::e2e
