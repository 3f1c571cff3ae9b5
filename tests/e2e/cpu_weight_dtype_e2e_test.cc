// --cpu_weight_dtype on pdserve-prefill and pdserve-decode as processes:
// with bfloat16 weights both services still serve stories260K's greedy
// continuation (the float64 reference's tokens, tests/data/golden, and the
// float32 services' tokens), a bf16 prefill feeds an f32 decode, and a value
// the flag does not know stops either binary at start-up naming the flag.
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "pdserve/v1/generate.grpc.pb.h"
#include "tests/decode_service/in_process_decode.h"
#include "tests/e2e/service_process.h"
#include "tests/testing/golden_forward.h"

namespace pdserve {
namespace {

using ::testing::HasSubstr;

const std::string kModelDir = std::string(PDSERVE_SOURCE_DIR) + "/models/stories260K";
// Greedy steps compared; the reference has 64.
constexpr int kSteps = 32;

absl::StatusOr<std::unique_ptr<e2e::ServiceProcess>> Start(const char* binary,
                                                           std::vector<std::string> args) {
  e2e::ServiceProcessOptions options;
  options.binary = binary;
  options.args = std::move(args);
  options.args.insert(options.args.end(), {"--model_dir", kModelDir, "--device", "cpu"});
  return e2e::ServiceProcess::Start(options);
}

struct Deployment {
  std::unique_ptr<e2e::ServiceProcess> prefill;
  std::unique_ptr<e2e::ServiceProcess> decode;
};

// A prefill and a decode with the given weight dtypes ("f32", "bf16").
absl::StatusOr<Deployment> StartDeployment(const std::string& prefill_dtype,
                                           const std::string& decode_dtype) {
  Deployment deployment;
  absl::StatusOr<std::unique_ptr<e2e::ServiceProcess>> prefill =
      Start(PDSERVE_PREFILL_BIN, {"--cpu_weight_dtype", prefill_dtype});
  if (!prefill.ok()) return prefill.status();
  deployment.prefill = std::move(*prefill);
  absl::StatusOr<std::unique_ptr<e2e::ServiceProcess>> decode =
      Start(PDSERVE_DECODE_BIN, {"--cpu_weight_dtype", decode_dtype, "--prefill_target",
                                 deployment.prefill->address(), "--kv_cache_blocks", "64"});
  if (!decode.ok()) return decode.status();
  deployment.decode = std::move(*decode);
  return deployment;
}

// kSteps greedy tokens after the reference prompt (BOS "Once upon a time"),
// each with its logprob.
GenerateOutcome Greedy(const Deployment& deployment) {
  auto stub = v1::GenerateService::NewStub(deployment.decode->NewChannel());
  v1::GenerateRequest request;
  request.set_prompt("Once upon a time");
  request.mutable_sampling()->set_temperature(0.0f);
  request.mutable_stopping()->set_max_new_tokens(kSteps);
  request.mutable_stopping()->set_ignore_eos(true);
  request.mutable_output()->set_logprobs(true);
  return RunGenerate(*stub, request);
}

// The bf16 services' tokens against the reference's greedy ones (which the
// f32 services reproduce exactly). bfloat16 weights move a logit by up to a
// few percent of the largest one (tests/kernels bounds it at 5% for
// stories260K; 0.9% observed), so a step whose reference top-2 are closer
// than that may flip. Such a step must pick the reference's second choice,
// and the comparison ends there: later reference rows follow the other
// token. Returns the number of steps that matched exactly.
int ExpectGreedyUpToATieBreak(const std::vector<int32_t>& ids, const GoldenForwardCase& golden) {
  for (int step = 0; step < static_cast<int>(ids.size()); ++step) {
    if (ids[step] == golden.greedy_tokens[step]) continue;
    const std::span<const float> row = golden.StepRow(step);
    std::vector<float> sorted(row.begin(), row.end());
    std::sort(sorted.rbegin(), sorted.rend());
    const float largest = std::max(std::abs(sorted.front()), std::abs(sorted.back()));
    EXPECT_EQ(row[ids[step]], sorted[1])
        << "step " << step << ": token " << ids[step] << " is not the reference's second choice";
    EXPECT_LT(sorted[0] - sorted[1], 0.05f * largest)
        << "step " << step << ": the reference's margin is beyond bf16's error";
    return step;
  }
  return static_cast<int>(ids.size());
}

TEST(CpuWeightDtypeE2eTest, Bf16ServicesServeTheFloat32ServicesGreedyTokens) {
  absl::StatusOr<GoldenForwardCase> golden = LoadGoldenForwardCase("once_upon");
  ASSERT_TRUE(golden.ok()) << golden.status();
  ASSERT_GE(golden->greedy_tokens.size(), static_cast<size_t>(kSteps));
  const std::vector<int32_t> reference(golden->greedy_tokens.begin(),
                                       golden->greedy_tokens.begin() + kSteps);

  absl::StatusOr<Deployment> f32 = StartDeployment("f32", "f32");
  ASSERT_TRUE(f32.ok()) << f32.status();
  const GenerateOutcome f32_outcome = Greedy(*f32);
  ASSERT_TRUE(f32_outcome.status.ok()) << f32_outcome.status.error_message();
  EXPECT_EQ(f32_outcome.token_ids(), reference);

  absl::StatusOr<Deployment> bf16 = StartDeployment("bf16", "bf16");
  ASSERT_TRUE(bf16.ok()) << bf16.status();
  EXPECT_THAT(bf16->prefill->StderrTail(), HasSubstr("(weights bf16)"));
  EXPECT_THAT(bf16->decode->StderrTail(), HasSubstr("(weights bf16)"));
  const GenerateOutcome bf16_outcome = Greedy(*bf16);
  ASSERT_TRUE(bf16_outcome.status.ok()) << bf16_outcome.status.error_message();
  ASSERT_EQ(bf16_outcome.responses.size(), static_cast<size_t>(kSteps));
  const int matched = ExpectGreedyUpToATieBreak(bf16_outcome.token_ids(), *golden);
  // On this machine all 32 match (the closest reference margin among them
  // is 0.13 at step 16, largest logit 22); a flip is reported, not failed.
  if (matched < kSteps) {
    std::printf("bf16 picked the reference's second choice at step %d\n", matched);
  }
  // The weights really are bfloat16: logprobs move by more than float32
  // rounding (the f32 services match the reference to ~1e-5).
  double largest_difference = 0.0;
  for (int step = 0; step < matched; ++step) {
    largest_difference = std::max(
        largest_difference, std::abs(static_cast<double>(bf16_outcome.responses[step].logprob()) -
                                     f32_outcome.responses[step].logprob()));
  }
  EXPECT_GT(largest_difference, 1e-4);

  // A bf16 prefill's KV is float32 as always: an f32 decode takes it.
  absl::StatusOr<Deployment> mixed = StartDeployment("bf16", "f32");
  ASSERT_TRUE(mixed.ok()) << mixed.status();
  const GenerateOutcome mixed_outcome = Greedy(*mixed);
  ASSERT_TRUE(mixed_outcome.status.ok()) << mixed_outcome.status.error_message();
  ExpectGreedyUpToATieBreak(mixed_outcome.token_ids(), *golden);
}

TEST(CpuWeightDtypeE2eTest, UnknownDtypeStopsEitherServiceAtStartupNamingTheFlag) {
  absl::StatusOr<std::unique_ptr<e2e::ServiceProcess>> prefill =
      Start(PDSERVE_PREFILL_BIN, {"--cpu_weight_dtype", "f16"});
  EXPECT_FALSE(prefill.ok());
  EXPECT_THAT(prefill.status().message(), HasSubstr("--cpu_weight_dtype: unknown dtype 'f16'"));

  // Refused before the decode looks for a prefill (none at this address).
  absl::StatusOr<std::unique_ptr<e2e::ServiceProcess>> decode =
      Start(PDSERVE_DECODE_BIN, {"--cpu_weight_dtype", "BF16", "--prefill_target", "127.0.0.1:1"});
  EXPECT_FALSE(decode.ok());
  EXPECT_THAT(decode.status().message(), HasSubstr("--cpu_weight_dtype: unknown dtype 'BF16'"));
  EXPECT_THAT(decode.status().message(), HasSubstr("expected f32 or bf16"));
}

}  // namespace
}  // namespace pdserve
