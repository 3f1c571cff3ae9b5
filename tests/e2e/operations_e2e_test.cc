// Decode at scale, with the real binaries as processes (docs/operations.md):
// bursts with client cancels, admission control, a prefill instance killed
// under load, cancellation reaching the prefill, a prefill target given as a
// DNS name, and the /metrics endpoints,
// read with the independent parser of tests/testing/metrics_text.h.
//
// Resource checks read the decode process from outside: KV blocks from its
// metrics (pdserve_decode_kv_blocks_free), threads from /proc/PID/status.
#include <grpcpp/client_context.h>
#include <signal.h>

#include <algorithm>
#include <atomic>
#include <filesystem>
#include <fstream>
#include <functional>
#include <map>
#include <memory>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "pdserve/v1/generate.grpc.pb.h"
#include "pdserve/v1/prefill.grpc.pb.h"
#include "tests/e2e/service_process.h"
#include "tests/testing/golden_forward.h"
#include "tests/testing/metrics_text.h"
#include "tests/testing/random_checkpoint.h"
#include "tests/testing/test_paths.h"

namespace pdserve {
namespace {

using ::testing::HasSubstr;

const std::string kModelDir = std::string(PDSERVE_SOURCE_DIR) + "/models/stories260K";
constexpr absl::Duration kSettle = absl::Seconds(60);  // bound of every "wait until"

// ---- processes --------------------------------------------------------------

struct Service {
  std::unique_ptr<e2e::ServiceProcess> process;
  int metrics_port = 0;
};

// The port of "<binary> metrics on HOST:PORT" on the process's stdout.
absl::StatusOr<int> MetricsPortOf(const e2e::ServiceProcess& process) {
  const std::string out = process.StdoutTail();
  const std::string marker = " metrics on ";
  const size_t at = out.find(marker);
  if (at == std::string::npos) {
    return absl::NotFoundError(absl::StrCat("no metrics line in stdout: ", out));
  }
  const size_t colon = out.find(':', at + marker.size());
  return std::stoi(out.substr(colon + 1));
}

absl::StatusOr<Service> StartService(const char* binary, std::vector<std::string> args) {
  e2e::ServiceProcessOptions options;
  options.binary = binary;
  options.args = std::move(args);
  options.args.insert(options.args.end(), {"--device", "cpu", "--metrics_listen", "127.0.0.1:0"});
  absl::StatusOr<std::unique_ptr<e2e::ServiceProcess>> process =
      e2e::ServiceProcess::Start(options);
  if (!process.ok()) return process.status();
  absl::StatusOr<int> port = MetricsPortOf(**process);
  if (!port.ok()) return port.status();
  return Service{std::move(*process), *port};
}

absl::StatusOr<Service> StartPrefill(const std::string& model_dir) {
  return StartService(PDSERVE_PREFILL_BIN, {"--model_dir", model_dir});
}

absl::StatusOr<Service> StartDecode(const std::string& model_dir, const std::string& targets,
                                    std::vector<std::string> extra = {}) {
  std::vector<std::string> args = {"--model_dir", model_dir, "--prefill_target", targets};
  args.insert(args.end(), extra.begin(), extra.end());
  return StartService(PDSERVE_DECODE_BIN, args);
}

int ThreadsOf(pid_t pid) {
  std::ifstream status(absl::StrCat("/proc/", pid, "/status"));
  std::string line;
  while (std::getline(status, line)) {
    if (line.rfind("Threads:", 0) == 0) return std::stoi(line.substr(8));
  }
  return -1;
}

// "name name ..." of the process's threads (/proc/PID/task/*/comm), sorted:
// what a failed thread check prints.
std::string ThreadNamesOf(pid_t pid) {
  std::vector<std::string> names;
  std::error_code error;
  for (const auto& task :
       std::filesystem::directory_iterator(absl::StrCat("/proc/", pid, "/task"), error)) {
    std::ifstream comm(task.path() / "comm");
    std::string name;
    std::getline(comm, name);
    names.push_back(name);
  }
  std::sort(names.begin(), names.end());
  std::string joined;
  for (const std::string& name : names) absl::StrAppend(&joined, joined.empty() ? "" : " ", name);
  return joined;
}

// Scrapes until `done(metrics)` holds or kSettle passes; the last scrape.
MetricsText WaitForMetrics(int port, const std::function<bool(const MetricsText&)>& done) {
  const absl::Time give_up = absl::Now() + kSettle;
  while (true) {
    absl::StatusOr<MetricsText> metrics = ScrapeMetrics(port);
    EXPECT_TRUE(metrics.ok()) << metrics.status();
    if (!metrics.ok()) return MetricsText();
    if (done(*metrics) || absl::Now() > give_up) return *metrics;
    absl::SleepFor(absl::Milliseconds(5));
  }
}

double V(const MetricsText& metrics, const std::string& name,
         const std::map<std::string, std::string>& labels = {}) {
  return metrics.ValueOrZero(name, labels);
}

// ---- calls ------------------------------------------------------------------

struct CallResult {
  grpc::Status status;
  int tokens = 0;
  int prompt_tokens = 0;  // usage, from the last message
  v1::FinishReason finish = v1::FINISH_REASON_UNSPECIFIED;
};

// `cancel_after`: -1 never; otherwise the client cancels once that many
// messages have arrived (0: right after the call starts).
CallResult Call(v1::GenerateService::Stub& stub, const v1::GenerateRequest& request,
                int cancel_after = -1, grpc::ClientContext* shared_context = nullptr) {
  grpc::ClientContext own_context;
  grpc::ClientContext& context = shared_context != nullptr ? *shared_context : own_context;
  context.set_deadline(absl::ToChronoTime(absl::Now() + absl::Seconds(120)));
  auto reader = stub.Generate(&context, request);
  if (cancel_after == 0) context.TryCancel();
  CallResult result;
  v1::GenerateResponse response;
  while (reader->Read(&response)) {
    ++result.tokens;
    if (response.has_usage()) result.prompt_tokens = response.usage().prompt_tokens();
    if (response.finish_reason() != v1::FINISH_REASON_UNSPECIFIED) {
      result.finish = response.finish_reason();
    }
    if (cancel_after > 0 && result.tokens == cancel_after) context.TryCancel();
  }
  result.status = reader->Finish();
  return result;
}

v1::GenerateRequest Request(const std::string& prompt, int max_new_tokens, bool ignore_eos = true) {
  v1::GenerateRequest request;
  request.set_prompt(prompt);
  request.mutable_sampling()->set_temperature(0.0f);
  request.mutable_stopping()->set_max_new_tokens(max_new_tokens);
  request.mutable_stopping()->set_ignore_eos(ignore_eos);
  return request;
}

// A prompt of about `words` words of a children's story.
std::string StoryPrompt(int words) {
  static const char* kWords[] = {"Once", "upon",   "a",    "time", "there", "was",
                                 "a",    "little", "girl", "who",  "liked", "to"};
  std::string prompt;
  for (int i = 0; i < words; ++i) {
    if (i > 0) prompt += ' ';
    prompt += kWords[i % 12];
  }
  return prompt;
}

int PromptTokens(v1::GenerateService::Stub& stub, const std::string& prompt) {
  grpc::ClientContext context;
  v1::TokenizeRequest request;
  request.set_text(prompt);
  v1::TokenizeResponse response;
  EXPECT_TRUE(stub.Tokenize(&context, request, &response).ok());
  return response.token_ids_size();
}

// K+V bytes per prompt token as the prefill sends them (its kv_dtype).
int64_t WireKvBytesPerToken(const std::shared_ptr<grpc::Channel>& prefill_channel) {
  auto stub = v1::PrefillService::NewStub(prefill_channel);
  grpc::ClientContext context;
  v1::ModelInfo info;
  EXPECT_TRUE(stub->GetModelInfo(&context, v1::GetModelInfoRequest(), &info).ok());
  const v1::ModelFingerprint& f = info.fingerprint();
  const int64_t element_bytes = info.kv_dtype() == v1::DTYPE_F32 ? 4 : 2;
  return int64_t{2} * f.num_layers() * f.num_kv_heads() * f.head_dim() * element_bytes;
}

// ---- tests --------------------------------------------------------------------

// 64 concurrent calls, about half cancelled by the client at random points
// (before the first token, while queued for blocks, mid-generation): the KV
// pool and the thread count come back to their levels before the burst, and
// the counters agree with what the clients saw. The baseline is taken after
// two warm-up bursts (one without cancels, one like the measured one), so
// gRPC's own thread pools have already grown to what such a burst needs; a
// thread leaked per call, or per cancel, would show.
TEST(OperationsE2eTest, BurstWithRandomCancelsLeavesPoolAndThreadsAtStartingLevels) {
  auto prefill = StartPrefill(kModelDir);
  ASSERT_TRUE(prefill.ok()) << prefill.status();
  // 160 blocks of 16 tokens: a burst wants more (64 calls of 2-3 blocks at
  // admission, up to 6 by their end), so calls also wait in the admission
  // queue and run out of blocks mid-generation.
  auto decode = StartDecode(kModelDir, prefill->process->address(),
                            {"--kv_cache_blocks", "160", "--block_size", "16"});
  ASSERT_TRUE(decode.ok()) << decode.status();
  auto stub = v1::GenerateService::NewStub(decode->process->NewChannel());

  int cancelled_at_start = 0;
  auto burst = [&](bool cancels, std::vector<CallResult>* results) {
    std::mt19937 rng(2024);
    std::vector<int> cancel_after(64, -1);
    cancelled_at_start = 0;
    if (cancels) {
      for (int& c : cancel_after) {
        c = rng() % 2 == 0 ? -1 : static_cast<int>(rng() % 12);
        if (c == 0) ++cancelled_at_start;
      }
    }
    results->assign(64, CallResult());
    std::vector<std::thread> threads;
    for (int i = 0; i < 64; ++i) {
      threads.emplace_back([&, i] {
        (*results)[i] =
            Call(*stub, Request(StoryPrompt(20 + i % 16), 32 + i % 17), cancel_after[i]);
      });
    }
    for (std::thread& t : threads) t.join();
  };

  std::vector<CallResult> warmup;
  burst(false, &warmup);
  for (const CallResult& r : warmup) ASSERT_TRUE(r.status.ok()) << r.status.error_message();
  burst(true, &warmup);
  const auto idle = [](const MetricsText& m) {
    return V(m, "pdserve_decode_kv_blocks_used") == 0 &&
           V(m, "pdserve_decode_requests_running") == 0 &&
           V(m, "pdserve_decode_requests_waiting") == 0 &&
           V(m, "pdserve_decode_requests_prefilling") == 0;
  };
  const MetricsText before = WaitForMetrics(decode->metrics_port, idle);
  ASSERT_EQ(V(before, "pdserve_decode_kv_blocks_free"), 160);
  const pid_t pid = decode->process->pid();
  const int threads_before = ThreadsOf(pid);
  const std::string names_before = ThreadNamesOf(pid);
  ASSERT_GT(threads_before, 0);

  std::vector<CallResult> results;
  burst(true, &results);
  int cancelled = 0;
  int ok = 0;
  for (const CallResult& r : results) {
    if (r.status.ok()) {
      ++ok;
    } else {
      EXPECT_EQ(r.status.error_code(), grpc::StatusCode::CANCELLED) << r.status.error_message();
      ++cancelled;
    }
  }
  EXPECT_GT(cancelled, 10);
  EXPECT_GT(ok, 10);

  const MetricsText after = WaitForMetrics(decode->metrics_port, idle);
  EXPECT_EQ(V(after, "pdserve_decode_kv_blocks_free"), 160);
  EXPECT_EQ(V(after, "pdserve_decode_kv_blocks_used"), 0);
  // A call cancelled right at its start may never reach the server, so the
  // server saw between the calls not cancelled at once and all of them.
  const auto delta = [&](const std::string& name,
                         const std::map<std::string, std::string>& labels = {}) {
    return V(after, name, labels) - V(before, name, labels);
  };
  const double seen = delta("pdserve_decode_requests_total");
  EXPECT_LE(seen, 64);
  EXPECT_GE(seen, 64 - cancelled_at_start);
  // A call the client cancelled after its last token may still end OK on the
  // server; never the other way round.
  const double server_cancelled = delta("pdserve_decode_errors_total", {{"code", "CANCELLED"}});
  EXPECT_LE(server_cancelled, cancelled);
  EXPECT_EQ(after.Sum("pdserve_decode_errors_total") - before.Sum("pdserve_decode_errors_total"),
            server_cancelled);
  // Every call the server saw ended, one way or the other, exactly once.
  EXPECT_EQ(after.Sum("pdserve_decode_sequences_finished_total") -
                before.Sum("pdserve_decode_sequences_finished_total") + server_cancelled,
            seen);

  const absl::Time give_up = absl::Now() + kSettle;
  while (ThreadsOf(pid) > threads_before && absl::Now() < give_up) {
    absl::SleepFor(absl::Milliseconds(50));
  }
  EXPECT_LE(ThreadsOf(pid), threads_before)
      << "before: " << names_before << "\nafter: " << ThreadNamesOf(pid);
}

// --max_queue 2 over a pool that holds one long prompt: with the prefill
// instance stopped (SIGSTOP), the first call holds the blocks, two wait, and
// the rest are refused at once with RESOURCE_EXHAUSTED naming the flag. Once
// the prefill resumes, the three complete and every block comes back. A
// prompt larger than the whole pool is refused the same way, and a call that
// outgrows the pool mid-generation ends with FINISH_REASON_LENGTH exactly
// where the pool runs out.
// A client deadline that passes while tokens are being generated reaches
// the server as a cancel; the server counts it as DEADLINE_EXCEEDED, not
// CANCELLED, so operators can tell deadlines from client cancels. The
// deadline grows until a call has streamed tokens and is still running when
// it passes (a loaded machine may need longer for the prefill).
TEST(OperationsE2eTest, DeadlineWhileGeneratingIsCountedAsDeadlineExceeded) {
  auto prefill = StartPrefill(kModelDir);
  ASSERT_TRUE(prefill.ok()) << prefill.status();
  auto decode = StartDecode(kModelDir, prefill->process->address(), {});
  ASSERT_TRUE(decode.ok()) << decode.status();
  auto stub = v1::GenerateService::NewStub(decode->process->NewChannel());
  const auto idle = [](const MetricsText& m) {
    return V(m, "pdserve_decode_kv_blocks_used") == 0 &&
           V(m, "pdserve_decode_requests_running") == 0 &&
           V(m, "pdserve_decode_requests_waiting") == 0 &&
           V(m, "pdserve_decode_requests_prefilling") == 0;
  };
  bool hit = false;
  for (int deadline_ms = 30; deadline_ms <= 2000 && !hit; deadline_ms *= 2) {
    const MetricsText before = WaitForMetrics(decode->metrics_port, idle);
    grpc::ClientContext context;
    context.set_deadline(absl::ToChronoTime(absl::Now() + absl::Milliseconds(deadline_ms)));
    auto reader = stub->Generate(&context, Request("Once upon a time", 480));
    v1::GenerateResponse response;
    int tokens = 0;
    while (reader->Read(&response)) ++tokens;
    const grpc::Status status = reader->Finish();
    if (tokens == 0 || status.error_code() != grpc::StatusCode::DEADLINE_EXCEEDED) continue;
    hit = true;
    const MetricsText after = WaitForMetrics(decode->metrics_port, idle);
    const auto delta = [&](const std::string& code) {
      return V(after, "pdserve_decode_errors_total", {{"code", code}}) -
             V(before, "pdserve_decode_errors_total", {{"code", code}});
    };
    EXPECT_EQ(delta("CANCELLED"), 0)
        << "deadline " << deadline_ms << " ms, " << tokens << " tokens streamed";
    EXPECT_EQ(delta("DEADLINE_EXCEEDED"), 1);
    EXPECT_EQ(V(after, "pdserve_decode_kv_blocks_used"), 0);
  }
  EXPECT_TRUE(hit) << "no deadline from 30 ms to 2 s passed mid-generation";
}

TEST(OperationsE2eTest, FullQueueIsResourceExhaustedAndBlocksReturn) {
  auto prefill = StartPrefill(kModelDir);
  ASSERT_TRUE(prefill.ok()) << prefill.status();
  constexpr int kBlocks = 8;
  constexpr int kBlockSize = 16;
  auto decode = StartDecode(kModelDir, prefill->process->address(),
                            {"--kv_cache_blocks", absl::StrCat(kBlocks), "--block_size",
                             absl::StrCat(kBlockSize), "--max_queue", "2"});
  ASSERT_TRUE(decode.ok()) << decode.status();
  auto stub = v1::GenerateService::NewStub(decode->process->NewChannel());

  // ~100 tokens: with the first generated token's slot, more than half the pool.
  const std::string long_prompt = StoryPrompt(80);
  const int prompt_tokens = PromptTokens(*stub, long_prompt);
  ASSERT_GT(prompt_tokens + 1, kBlocks * kBlockSize / 2);
  ASSERT_LT(prompt_tokens + 1, kBlocks * kBlockSize);

  // Alone, a call that wants more tokens than the pool holds ends where it
  // runs out: positions 0..127 hold prompt_tokens + generated - 1 tokens (the
  // last generated token is never fed back), so generated = 129 - prompt.
  CallResult alone = Call(*stub, Request(long_prompt, 300));
  ASSERT_TRUE(alone.status.ok()) << alone.status.error_message();
  EXPECT_EQ(alone.prompt_tokens, prompt_tokens);
  EXPECT_EQ(alone.finish, v1::FINISH_REASON_LENGTH);
  EXPECT_EQ(alone.tokens, kBlocks * kBlockSize + 1 - alone.prompt_tokens);

  // Larger than the whole pool: refused before anything else.
  CallResult huge = Call(*stub, Request(StoryPrompt(200), 4));
  EXPECT_EQ(huge.status.error_code(), grpc::StatusCode::RESOURCE_EXHAUSTED);
  EXPECT_THAT(huge.status.error_message(), HasSubstr("--kv_cache_blocks"));

  prefill->process->Signal(SIGSTOP);
  std::vector<CallResult> held(3);
  std::vector<std::thread> threads;
  threads.emplace_back([&] { held[0] = Call(*stub, Request(long_prompt, 8)); });
  MetricsText m = WaitForMetrics(decode->metrics_port, [](const MetricsText& m) {
    return V(m, "pdserve_decode_requests_prefilling") == 1;
  });
  ASSERT_EQ(V(m, "pdserve_decode_requests_prefilling"), 1);
  for (int i = 1; i <= 2; ++i) {
    threads.emplace_back([&, i] { held[i] = Call(*stub, Request(long_prompt, 8)); });
  }
  m = WaitForMetrics(decode->metrics_port, [](const MetricsText& m) {
    return V(m, "pdserve_decode_requests_waiting") == 2;
  });
  ASSERT_EQ(V(m, "pdserve_decode_requests_waiting"), 2);
  for (int i = 0; i < 3; ++i) {
    CallResult refused = Call(*stub, Request(long_prompt, 8));
    EXPECT_EQ(refused.status.error_code(), grpc::StatusCode::RESOURCE_EXHAUSTED);
    EXPECT_THAT(refused.status.error_message(), HasSubstr("--max_queue"));
  }
  prefill->process->Signal(SIGCONT);
  for (std::thread& t : threads) t.join();
  for (const CallResult& r : held) {
    EXPECT_TRUE(r.status.ok()) << r.status.error_message();
    EXPECT_EQ(r.tokens, 8);
  }
  m = WaitForMetrics(decode->metrics_port, [](const MetricsText& m) {
    return V(m, "pdserve_decode_kv_blocks_free") == kBlocks;
  });
  EXPECT_EQ(V(m, "pdserve_decode_kv_blocks_free"), kBlocks);
  EXPECT_EQ(V(m, "pdserve_decode_requests_waiting"), 0);
  EXPECT_EQ(V(m, "pdserve_decode_errors_total", {{"code", "RESOURCE_EXHAUSTED"}}), 4);
  EXPECT_EQ(V(m, "pdserve_decode_requests_total"), 1 + 1 + 3 + 3);
}

// Two prefill instances; 40 calls at concurrency 4. Midway one instance is
// frozen (SIGSTOP) until calls are stuck in its prefill, then killed with
// SIGKILL: those calls fail over to the other instance, and no call fails.
TEST(OperationsE2eTest, KillingOneOfTwoPrefillInstancesFailsNoRequest) {
  auto first = StartPrefill(kModelDir);
  ASSERT_TRUE(first.ok()) << first.status();
  auto second = StartPrefill(kModelDir);
  ASSERT_TRUE(second.ok()) << second.status();
  auto decode =
      StartDecode(kModelDir, first->process->address() + "," + second->process->address());
  ASSERT_TRUE(decode.ok()) << decode.status();
  auto stub = v1::GenerateService::NewStub(decode->process->NewChannel());

  constexpr int kCalls = 40;
  constexpr int kConcurrency = 4;
  std::atomic<int> next{0};
  std::atomic<int> done{0};
  std::vector<CallResult> results(kCalls);
  std::vector<std::thread> callers;
  for (int c = 0; c < kConcurrency; ++c) {
    callers.emplace_back([&] {
      for (int i = next++; i < kCalls; i = next++) {
        results[i] = Call(*stub, Request(StoryPrompt(5 + i % 7), 24));
        ++done;
      }
    });
  }
  while (done < kCalls / 4) absl::SleepFor(absl::Milliseconds(1));
  first->process->Signal(SIGSTOP);
  // Round robin sends every other prefill to the frozen instance, so soon
  // every caller waits on it.
  const MetricsText stuck = WaitForMetrics(decode->metrics_port, [](const MetricsText& m) {
    return V(m, "pdserve_decode_requests_prefilling") == kConcurrency;
  });
  EXPECT_EQ(V(stuck, "pdserve_decode_requests_prefilling"), kConcurrency);
  first->process->Signal(SIGKILL);
  for (std::thread& t : callers) t.join();

  int64_t prompt_tokens = 0;
  int64_t tokens = 0;
  for (const CallResult& r : results) {
    EXPECT_TRUE(r.status.ok()) << r.status.error_message();
    EXPECT_EQ(r.tokens, 24);
    prompt_tokens += r.prompt_tokens;
    tokens += r.tokens;
  }
  const MetricsText m = WaitForMetrics(decode->metrics_port, [](const MetricsText& m) {
    return V(m, "pdserve_decode_kv_blocks_used") == 0;
  });
  EXPECT_GE(V(m, "pdserve_decode_prefill_retries_total"), 1);
  EXPECT_EQ(V(m, "pdserve_decode_requests_total"), kCalls);
  EXPECT_EQ(m.Sum("pdserve_decode_errors_total"), 0);
  EXPECT_EQ(V(m, "pdserve_decode_sequences_finished_total", {{"reason", "length"}}), kCalls);
  EXPECT_EQ(V(m, "pdserve_decode_prompt_tokens_total"), prompt_tokens);
  EXPECT_EQ(V(m, "pdserve_decode_generated_tokens_total"), tokens);
  EXPECT_EQ(V(m, "pdserve_decode_kv_blocks_used"), 0);
  // The survivor served at least the calls retried onto it.
  absl::StatusOr<MetricsText> survivor = ScrapeMetrics(second->metrics_port);
  ASSERT_TRUE(survivor.ok()) << survivor.status();
  EXPECT_GE(V(*survivor, "pdserve_prefill_requests_total"),
            V(m, "pdserve_decode_prefill_retries_total"));
}

// A mix of good, invalid and over-capacity calls, then every counter on both
// services against what was sent and received.
TEST(OperationsE2eTest, CountersMatchTheRequestsSent) {
  auto prefill = StartPrefill(kModelDir);
  ASSERT_TRUE(prefill.ok()) << prefill.status();
  auto decode = StartDecode(
      kModelDir, prefill->process->address(),
      {"--kv_cache_blocks", "16", "--max_new_tokens_cap", "100", "--default_max_new_tokens", "16"});
  ASSERT_TRUE(decode.ok()) << decode.status();
  auto stub = v1::GenerateService::NewStub(decode->process->NewChannel());

  int64_t prompt_tokens = 0;
  int64_t tokens = 0;
  std::map<v1::FinishReason, int> finished;
  constexpr int kGood = 12;
  for (int i = 0; i < kGood; ++i) {
    // Without ignore_eos some of them may end on EOS.
    CallResult r = Call(*stub, Request(StoryPrompt(3 + i), 5 + 7 * i, i % 2 == 0));
    ASSERT_TRUE(r.status.ok()) << r.status.error_message();
    prompt_tokens += r.prompt_tokens;
    tokens += r.tokens;
    ++finished[r.finish];
  }
  constexpr int kInvalid = 3;
  EXPECT_EQ(Call(*stub, Request("", 4)).status.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_EQ(Call(*stub, Request("Once", 101)).status.error_code(),
            grpc::StatusCode::INVALID_ARGUMENT);
  v1::GenerateRequest bad_temperature = Request("Once", 4);
  bad_temperature.mutable_sampling()->set_temperature(-1.0f);
  EXPECT_EQ(Call(*stub, bad_temperature).status.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  constexpr int kTooLong = 2;
  for (int i = 0; i < kTooLong; ++i) {
    EXPECT_EQ(Call(*stub, Request(StoryPrompt(300), 4)).status.error_code(),
              grpc::StatusCode::RESOURCE_EXHAUSTED);
  }

  absl::StatusOr<MetricsText> d = ScrapeMetrics(decode->metrics_port);
  ASSERT_TRUE(d.ok()) << d.status();
  EXPECT_EQ(V(*d, "pdserve_decode_requests_total"), kGood + kInvalid + kTooLong);
  EXPECT_EQ(V(*d, "pdserve_decode_errors_total", {{"code", "INVALID_ARGUMENT"}}), kInvalid);
  EXPECT_EQ(V(*d, "pdserve_decode_errors_total", {{"code", "RESOURCE_EXHAUSTED"}}), kTooLong);
  EXPECT_EQ(d->Sum("pdserve_decode_errors_total"), kInvalid + kTooLong);
  EXPECT_EQ(V(*d, "pdserve_decode_prompt_tokens_total"), prompt_tokens);
  EXPECT_EQ(V(*d, "pdserve_decode_generated_tokens_total"), tokens);
  EXPECT_EQ(V(*d, "pdserve_decode_sequences_finished_total", {{"reason", "length"}}),
            finished[v1::FINISH_REASON_LENGTH]);
  EXPECT_EQ(V(*d, "pdserve_decode_sequences_finished_total", {{"reason", "eos"}}),
            finished[v1::FINISH_REASON_EOS]);
  EXPECT_EQ(V(*d, "pdserve_decode_ttft_ms_count"), kGood);
  EXPECT_EQ(V(*d, "pdserve_decode_request_latency_ms_count"), kGood);
  EXPECT_EQ(V(*d, "pdserve_decode_inter_token_latency_ms_count"), tokens - kGood);
  EXPECT_EQ(V(*d, "pdserve_decode_kv_blocks_free"), 16);
  EXPECT_EQ(V(*d, "pdserve_decode_prefill_retries_total"), 0);
  EXPECT_EQ(d->types.at("pdserve_decode_ttft_ms"), "histogram");
  EXPECT_EQ(d->types.at("pdserve_decode_kv_blocks_free"), "gauge");
  EXPECT_EQ(d->types.at("pdserve_decode_requests_total"), "counter");

  absl::StatusOr<MetricsText> p = ScrapeMetrics(prefill->metrics_port);
  ASSERT_TRUE(p.ok()) << p.status();
  // Only the good calls reach the prefill, once each.
  EXPECT_EQ(V(*p, "pdserve_prefill_requests_total"), kGood);
  EXPECT_EQ(V(*p, "pdserve_prefill_prompt_tokens_total"), prompt_tokens);
  EXPECT_EQ(V(*p, "pdserve_prefill_forward_passes_total"), kGood);
  EXPECT_EQ(V(*p, "pdserve_prefill_forward_ms_count"), kGood);
  EXPECT_EQ(p->Sum("pdserve_prefill_errors_total"), 0);
  EXPECT_EQ(p->Sum("pdserve_prefill_cancelled_total"), 0);
  EXPECT_EQ(V(*p, "pdserve_prefill_queue_length"), 0);
  EXPECT_EQ(V(*p, "pdserve_prefill_streams_active"), 0);
  // Both ends count the same K+V bytes: every prompt token of every layer.
  const int64_t kv_bytes = prompt_tokens * WireKvBytesPerToken(prefill->process->NewChannel());
  EXPECT_EQ(V(*p, "pdserve_prefill_kv_sent_bytes_total"), kv_bytes);
  EXPECT_EQ(V(*d, "pdserve_decode_kv_received_bytes_total"), kv_bytes);
}

// A client cancel while the prompt's forward pass runs reaches the prefill
// instance: decode cancels its Prefill call, and the instance stops the
// forward pass at its next layer. The prefill is frozen (SIGSTOP) once its
// forward pass has started, so the cancel is certain to arrive mid-forward.
TEST(OperationsE2eTest, CancelDuringPrefillStopsThePrefillForwardPass) {
  TempDir dir;
  RandomCheckpointOptions heavy;
  heavy.architecture = "LlamaForCausalLM";
  heavy.num_layers = 8;
  heavy.hidden_size = 512;
  heavy.num_heads = 8;
  heavy.num_kv_heads = 8;
  heavy.intermediate_size = 1376;
  heavy.vocab_size = 32000;
  heavy.max_position_embeddings = 2048;
  heavy.tie_word_embeddings = true;
  heavy.dtype = DType::kBF16;
  ASSERT_TRUE(WriteRandomCheckpoint(dir.path(), heavy).ok());
  auto prefill = StartPrefill(dir.path());
  ASSERT_TRUE(prefill.ok()) << prefill.status();
  auto decode = StartDecode(dir.path(), prefill->process->address(),
                            {"--kv_cache_blocks", "128", "--block_size", "16"});
  ASSERT_TRUE(decode.ok()) << decode.status();
  auto stub = v1::GenerateService::NewStub(decode->process->NewChannel());

  std::string prompt;
  for (int i = 0; i < 60; ++i) prompt += "The quick brown fox jumps over the lazy dog. ";
  grpc::ClientContext context;
  CallResult result;
  std::thread client([&] { result = Call(*stub, Request(prompt, 4), -1, &context); });
  MetricsText p = WaitForMetrics(prefill->metrics_port, [](const MetricsText& m) {
    return V(m, "pdserve_prefill_forward_passes_total") == 1;
  });
  prefill->process->Signal(SIGSTOP);
  ASSERT_EQ(V(p, "pdserve_prefill_forward_passes_total"), 1);
  context.TryCancel();
  client.join();
  EXPECT_EQ(result.status.error_code(), grpc::StatusCode::CANCELLED);
  prefill->process->Signal(SIGCONT);

  p = WaitForMetrics(prefill->metrics_port, [](const MetricsText& m) {
    return V(m, "pdserve_prefill_streams_active") == 0;
  });
  EXPECT_EQ(V(p, "pdserve_prefill_requests_total"), 1);
  EXPECT_EQ(V(p, "pdserve_prefill_cancelled_total", {{"stage", "forward"}}), 1);
  EXPECT_EQ(V(p, "pdserve_prefill_errors_total", {{"code", "CANCELLED"}}), 1);
  // The forward pass never ran to its end.
  EXPECT_EQ(V(p, "pdserve_prefill_forward_ms_count"), 0);
  EXPECT_EQ(V(p, "pdserve_prefill_kv_sent_bytes_total") <
                static_cast<double>(PromptTokens(*stub, prompt)) *
                    WireKvBytesPerToken(prefill->process->NewChannel()),
            true);

  const MetricsText d = WaitForMetrics(decode->metrics_port, [](const MetricsText& m) {
    return V(m, "pdserve_decode_kv_blocks_free") == 128;
  });
  EXPECT_EQ(V(d, "pdserve_decode_kv_blocks_free"), 128);
  EXPECT_EQ(V(d, "pdserve_decode_errors_total", {{"code", "CANCELLED"}}), 1);
}

// --prefill_target as a name for gRPC's DNS resolver, "dns:///localhost:PORT"
// and the scheme-less "localhost:PORT" (which decode turns into the same
// URI): start-up's GetModelInfo check and a Generate both reach the prefill
// through the resolved address, and the tokens are the reference's greedy
// ones (tests/data/golden).
TEST(OperationsE2eTest, DnsPrefillTargetServesGenerate) {
  absl::StatusOr<GoldenForwardCase> golden = LoadGoldenForwardCase("once_upon");
  ASSERT_TRUE(golden.ok()) << golden.status();
  constexpr int kTokens = 16;
  const std::vector<int32_t> expected(golden->greedy_tokens.begin(),
                                      golden->greedy_tokens.begin() + kTokens);
  absl::StatusOr<Service> prefill = StartPrefill(kModelDir);
  ASSERT_TRUE(prefill.ok()) << prefill.status();
  const int port = prefill->process->port();

  int requests = 0;
  for (const std::string& target :
       {absl::StrCat("dns:///localhost:", port), absl::StrCat("localhost:", port)}) {
    SCOPED_TRACE(target);
    absl::StatusOr<Service> decode = StartDecode(kModelDir, target);
    ASSERT_TRUE(decode.ok()) << decode.status();
    {
      auto stub = v1::GenerateService::NewStub(decode->process->NewChannel());
      grpc::ClientContext context;
      context.set_deadline(absl::ToChronoTime(absl::Now() + absl::Seconds(120)));
      auto reader = stub->Generate(&context, Request("Once upon a time", kTokens));
      std::vector<int32_t> tokens;
      v1::GenerateResponse response;
      while (reader->Read(&response)) tokens.push_back(response.token_id());
      const grpc::Status status = reader->Finish();
      ASSERT_TRUE(status.ok()) << status.error_message();
      EXPECT_EQ(tokens, expected);
    }
    // The prefill instance behind the name served it.
    ++requests;
    const MetricsText metrics = WaitForMetrics(prefill->metrics_port, [&](const MetricsText& m) {
      return V(m, "pdserve_prefill_requests_total") >= requests;
    });
    EXPECT_EQ(V(metrics, "pdserve_prefill_requests_total"), requests);
    EXPECT_TRUE(decode->process->Stop().ok());
  }
}

}  // namespace
}  // namespace pdserve
