// pdserve-cli: a command-line client for pdserve.v1.GenerateService and
// InspectService.
//
//   pdserve-cli generate --target ADDR --prompt TEXT [--max_new_tokens N]
//               [--temperature T] [--top_k K] [--top_p P] [--min_p P] [--seed S]
//               [--repetition_penalty R] [--presence_penalty P] [--frequency_penalty F]
//               [--stop STRING]... [--ignore_eos] [--logprobs N] [--prompt_logprobs N]
//               [--n N] [--chat]
//   pdserve-cli tokenize --target ADDR --text TEXT
//   pdserve-cli info     --target ADDR
//   pdserve-cli inspect  --target ADDR --prompt TEXT [--top_k 5] [--layers 0,3]
//               [--positions -1]
//
// generate prints the prompt, then the text as it streams, then a line
//   [ttft 12.3 ms | 16 tokens | 512.0 tokens/s | finish: length]
// with the time to first token as this client saw it (call start to first
// message) and the decode rate (tokens after the first over the time from
// the first to the last). --logprobs adds one line per token after the text
// (its logprob and N alternatives); --prompt_logprobs N a block with each
// prompt token's logprob given the tokens before it, N alternatives, their
// sum and the prompt's perplexity; --n N > 1 prints each sample as its own
// block once the stream ends, and the finish reasons of all samples. --chat
// sends --prompt (or stdin) as messages: [{"role":"user","content":"..."}]. On an RPC error it
// prints the gRPC status code name and message on stderr and exits 1; 2 for a usage error.
#include <google/protobuf/text_format.h>
#include <grpcpp/client_context.h>
#include <grpcpp/create_channel.h>
#include <grpcpp/security/credentials.h>
#include <grpcpp/support/channel_arguments.h>

#include <algorithm>
#include <cctype>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <map>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/flags/usage.h"
#include "absl/status/status.h"
#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "absl/strings/strip.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "cli/generate_command.h"
#include "cli/inspect_format.h"
#include "pdserve/v1/generate.grpc.pb.h"
#include "pdserve/v1/inspect.grpc.pb.h"
#include "shared/flags_help.h"

ABSL_FLAG(std::string, target, "127.0.0.1:50052", "Decode service address, HOST:PORT");
ABSL_FLAG(std::string, prompt, "", "generate: the prompt text");
ABSL_FLAG(std::string, text, "", "tokenize: the text to tokenize");
ABSL_FLAG(int32_t, max_new_tokens, 0, "generate: tokens to generate; 0 = the server default");
ABSL_FLAG(float, temperature, 0.0f, "generate: sampling temperature; 0 = greedy");
ABSL_FLAG(int32_t, top_k, 0, "generate: keep the k most likely tokens; 0 = off");
ABSL_FLAG(float, top_p, 1.0f, "generate: nucleus sampling mass in (0, 1]; 1 = off");
ABSL_FLAG(float, repetition_penalty, 1.0f, "generate: > 0; 1 = off");
ABSL_FLAG(float, min_p, 0.0f, "generate: keep tokens with p >= min_p * p_max, in [0, 1]; 0 = off");
ABSL_FLAG(float, presence_penalty, 0.0f,
          "generate: subtracted once from each generated token's logit, in [-2, 2]; 0 = off");
ABSL_FLAG(float, frequency_penalty, 0.0f,
          "generate: subtracted per occurrence among the generated tokens, in [-2, 2]; 0 = off");
ABSL_FLAG(int64_t, seed, -1, "generate: sampling seed (same seed, same tokens); -1 = random");
ABSL_FLAG(bool, ignore_eos, false, "generate: keep going past the end-of-sequence token");
ABSL_FLAG(int32_t, logprobs, -1,
          "generate: print each token's logprob and this many alternatives (0..20); -1 = off");
ABSL_FLAG(int32_t, prompt_logprobs, -1,
          "generate: print each prompt token's logprob given the tokens before it and this many "
          "alternatives (0..20), their sum and the perplexity; -1 = off");
ABSL_FLAG(int32_t, n, 1, "generate: samples of the prompt, printed separately");
ABSL_FLAG(bool, chat, false,
          "generate: --prompt (or stdin when empty) is a JSON list of messages "
          "[{\"role\":\"user\",\"content\":\"...\"}]");
ABSL_FLAG(bool, echo_prompt, true, "generate: print the prompt before the continuation");
ABSL_FLAG(std::string, layers, "",
          "inspect: hidden states after these decoder layers, e.g. 0,3 (-1: embeddings output)");
ABSL_FLAG(std::string, positions, "-1",
          "inspect: prompt positions whose values to print, e.g. 0,-1 (negative from the end)");
ABSL_FLAG(absl::Duration, timeout, absl::ZeroDuration(), "RPC deadline; 0 = none");

namespace pdserve {
namespace {

constexpr char kUsage[] =
    "pdserve-cli SUBCOMMAND [flags]\n"
    "  generate --target ADDR --prompt TEXT [--max_new_tokens N --temperature T --seed S\n"
    "           --top_k K --top_p P --min_p P --repetition_penalty R --presence_penalty P\n"
    "           --frequency_penalty F --stop STRING (repeatable) --ignore_eos --logprobs N\n"
    "           --prompt_logprobs N --n N --chat]\n"
    "  tokenize --target ADDR --text TEXT\n"
    "  info     --target ADDR\n"
    "  inspect  --target ADDR --prompt TEXT [--top_k 5 --layers 0,3 --positions -1]";

std::shared_ptr<grpc::Channel> NewChannel() {
  grpc::ChannelArguments args;
  args.SetMaxReceiveMessageSize(64 << 20);
  args.SetMaxSendMessageSize(64 << 20);
  return grpc::CreateCustomChannel(absl::GetFlag(FLAGS_target), grpc::InsecureChannelCredentials(),
                                   args);
}

std::unique_ptr<v1::GenerateService::Stub> NewStub() {
  return v1::GenerateService::NewStub(NewChannel());
}

void ApplyTimeout(grpc::ClientContext* context) {
  const absl::Duration timeout = absl::GetFlag(FLAGS_timeout);
  if (timeout > absl::ZeroDuration()) {
    context->set_deadline(absl::ToChronoTime(absl::Now() + timeout));
  }
}

// Prints "pdserve-cli: CODE_NAME: message" and returns the exit code.
int ReportError(const grpc::Status& status) {
  // absl and gRPC share the canonical code numbering and names.
  const std::string code =
      absl::StatusCodeToString(static_cast<absl::StatusCode>(status.error_code()));
  std::fprintf(stderr, "pdserve-cli: %s: %s\n", code.c_str(), status.error_message().c_str());
  return 1;
}

// All of stdin (the --chat messages when --prompt is empty).
std::string ReadStdin() {
  std::string text;
  char buffer[4096];
  size_t n;
  while ((n = std::fread(buffer, 1, sizeof(buffer), stdin)) > 0) text.append(buffer, n);
  return text;
}

int Generate(std::vector<std::string> stops) {
  GenerateOptions options;
  options.prompt = absl::GetFlag(FLAGS_prompt);
  options.chat = absl::GetFlag(FLAGS_chat);
  if (options.chat && options.prompt.empty()) options.prompt = ReadStdin();
  options.max_new_tokens = absl::GetFlag(FLAGS_max_new_tokens);
  options.temperature = absl::GetFlag(FLAGS_temperature);
  options.top_k = absl::GetFlag(FLAGS_top_k);
  options.top_p = absl::GetFlag(FLAGS_top_p);
  options.min_p = absl::GetFlag(FLAGS_min_p);
  options.repetition_penalty = absl::GetFlag(FLAGS_repetition_penalty);
  options.presence_penalty = absl::GetFlag(FLAGS_presence_penalty);
  options.frequency_penalty = absl::GetFlag(FLAGS_frequency_penalty);
  options.seed = absl::GetFlag(FLAGS_seed);
  options.ignore_eos = absl::GetFlag(FLAGS_ignore_eos);
  options.stop = std::move(stops);
  options.logprobs = absl::GetFlag(FLAGS_logprobs);
  options.prompt_logprobs = absl::GetFlag(FLAGS_prompt_logprobs);
  options.n = absl::GetFlag(FLAGS_n);
  if (options.prompt.empty()) {
    std::fprintf(stderr,
                 "pdserve-cli generate: --prompt is required (or --chat with messages as "
                 "JSON on stdin)\n");
    return 2;
  }
  absl::StatusOr<v1::GenerateRequest> request = BuildGenerateRequest(options);
  if (!request.ok()) {
    std::fprintf(stderr, "pdserve-cli: %s\n", std::string(request.status().message()).c_str());
    return 2;
  }

  auto stub = NewStub();
  grpc::ClientContext context;
  ApplyTimeout(&context);
  // A chat's "prompt" is JSON: not worth echoing.
  const bool echo = absl::GetFlag(FLAGS_echo_prompt) && !options.chat;
  // One sample streams as it comes; several would interleave, so they are
  // printed one after the other at the end.
  const bool streaming = options.n <= 1;
  if (echo) {
    std::fputs(request->prompt().c_str(), stdout);
    std::fflush(stdout);
  }
  const absl::Time start = absl::Now();
  std::unique_ptr<grpc::ClientReader<v1::GenerateResponse>> reader =
      stub->Generate(&context, *request);
  std::vector<v1::GenerateResponse> responses;
  v1::GenerateResponse response;
  absl::Time first_at;
  absl::Time last_at;
  while (reader->Read(&response)) {
    last_at = absl::Now();
    if (responses.empty()) first_at = last_at;
    if (streaming) {
      std::fwrite(response.text().data(), 1, response.text().size(), stdout);
      std::fflush(stdout);
    }
    responses.push_back(std::move(response));
    response.Clear();
  }
  const grpc::Status status = reader->Finish();
  const int messages = static_cast<int>(responses.size());
  if ((streaming && messages > 0) || echo) std::fputc('\n', stdout);
  std::fflush(stdout);
  if (!status.ok()) return ReportError(status);

  if (messages > 0 && responses.front().prompt_logprobs_size() > 0) {
    // Names position 0 and every piece; a chat has no plain prompt to ask about.
    v1::TokenizeResponse prompt_tokens;
    if (!options.chat) {
      v1::TokenizeRequest tokenize;
      tokenize.set_text(request->prompt());
      grpc::ClientContext tokenize_context;
      ApplyTimeout(&tokenize_context);
      if (!stub->Tokenize(&tokenize_context, tokenize, &prompt_tokens).ok()) prompt_tokens.Clear();
    }
    std::fputs(FormatPromptLogprobs(responses.front(), prompt_tokens).c_str(), stdout);
  }
  const std::map<int, SampleOutput> samples = GroupBySample(responses);
  if (!streaming) {
    std::fputs(FormatSamples(samples, options.logprobs).c_str(), stdout);
  } else if (options.logprobs >= 0) {
    for (const v1::GenerateResponse& r : responses)
      std::fputs(FormatLogprobLine(r).c_str(), stdout);
  }
  const v1::GenerateResponse last = messages > 0 ? responses.back() : v1::GenerateResponse();
  const int tokens = last.usage().total_generated_tokens() > 0
                         ? last.usage().total_generated_tokens()
                         : (last.has_usage() ? last.usage().generated_tokens() : messages);
  std::string ttft = "-";
  std::string rate = "-";
  if (messages > 0) ttft = absl::StrFormat("%.1f", absl::ToDoubleMilliseconds(first_at - start));
  // The first token's time is the prefill; the rate covers the decode steps,
  // timed by the server (first to last token): tokens that reach this client
  // in one read arrive at the same instant, so its own clock can show
  // absurd rates for short runs. The client's clock is the fallback.
  if (tokens > 1 && last.has_timings() && last.timings().decode_ms() > 0) {
    rate = absl::StrFormat("%.1f", (tokens - 1) / (last.timings().decode_ms() / 1e3));
  } else if (messages > 1 && last_at > first_at) {
    rate = absl::StrFormat("%.1f", (messages - 1) / absl::ToDoubleSeconds(last_at - first_at));
  }
  std::vector<std::string> finishes;
  for (const auto& [index, sample] : samples) finishes.push_back(sample.finish());
  const std::string finish =
      samples.size() > 1 ? absl::StrJoin(finishes, ",") : FinishName(last.finish_reason());
  std::printf("[ttft %s ms | %d tokens | %s tokens/s | finish: %s]\n", ttft.c_str(), tokens,
              rate.c_str(), finish.c_str());
  std::fflush(stdout);
  return 0;
}

int Tokenize() {
  v1::TokenizeRequest request;
  request.set_text(absl::GetFlag(FLAGS_text));
  v1::TokenizeResponse response;
  grpc::ClientContext context;
  ApplyTimeout(&context);
  const grpc::Status status = NewStub()->Tokenize(&context, request, &response);
  if (!status.ok()) return ReportError(status);
  std::printf("ids: [%s]\n", absl::StrJoin(response.token_ids(), ", ").c_str());
  for (int i = 0; i < response.token_ids_size(); ++i) {
    const std::string piece = i < response.pieces_size() ? response.pieces(i) : "";
    std::printf("%6d  %s\n", response.token_ids(i), piece.c_str());
  }
  return 0;
}

int Info() {
  v1::ModelInfo response;
  grpc::ClientContext context;
  ApplyTimeout(&context);
  const grpc::Status status =
      NewStub()->GetModelInfo(&context, v1::GetModelInfoRequest(), &response);
  if (!status.ok()) return ReportError(status);
  std::string text;
  google::protobuf::TextFormat::PrintToString(response, &text);
  std::fputs(text.c_str(), stdout);
  return 0;
}

// Inspect: one call, printed by FormatInspectResponse; --top_k 0 (the
// flag's default for generate) leaves the server's default of 5.
int Inspect() {
  v1::InspectRequest request;
  request.set_prompt(absl::GetFlag(FLAGS_prompt));
  if (absl::GetFlag(FLAGS_top_k) > 0) request.set_top_k(absl::GetFlag(FLAGS_top_k));
  absl::StatusOr<std::vector<int32_t>> layers = ParseIntList(absl::GetFlag(FLAGS_layers), "layers");
  absl::StatusOr<std::vector<int32_t>> positions =
      ParseIntList(absl::GetFlag(FLAGS_positions), "positions");
  for (const absl::Status& status : {layers.status(), positions.status()}) {
    if (!status.ok()) {
      std::fprintf(stderr, "pdserve-cli: %s\nusage: %s\n", std::string(status.message()).c_str(),
                   kUsage);
      return 2;
    }
  }
  request.mutable_hidden_state_layers()->Add(layers->begin(), layers->end());
  request.mutable_hidden_positions()->Add(positions->begin(), positions->end());
  request.set_include_values(!positions->empty());
  v1::InspectResponse response;
  grpc::ClientContext context;
  ApplyTimeout(&context);
  const grpc::Status status =
      v1::InspectService::NewStub(NewChannel())->Inspect(&context, request, &response);
  if (!status.ok()) return ReportError(status);
  const std::string text = FormatInspectResponse(response);
  std::fwrite(text.data(), 1, text.size(), stdout);
  return 0;
}

}  // namespace
}  // namespace pdserve

int main(int argc, char** argv) {
  absl::SetProgramUsageMessage(pdserve::kUsage);
  if (argc < 2 || argv[1][0] == '-') {
    std::fprintf(stderr, "usage: %s\n", pdserve::kUsage);
    return 2;
  }
  const std::string command = argv[1];
  // The flags follow the subcommand: parse them as if it were not there.
  std::vector<char*> args = {argv[0]};
  args.insert(args.end(), argv + 2, argv + argc);
  // absl keeps only the last of a repeated flag: --stop is collected here.
  absl::StatusOr<std::vector<std::string>> stops = pdserve::TakeRepeatedFlag(args, "stop");
  if (!stops.ok()) {
    std::fprintf(stderr, "pdserve-cli: %s\nusage: %s\n",
                 std::string(stops.status().message()).c_str(), pdserve::kUsage);
    return 2;
  }
  pdserve::ShowMainFlagsInHelp();
  const std::vector<char*> positional =
      absl::ParseCommandLine(static_cast<int>(args.size()), args.data());
  if (positional.size() > 1) {
    std::fprintf(stderr, "pdserve-cli: unexpected argument '%s'\nusage: %s\n", positional[1],
                 pdserve::kUsage);
    return 2;
  }
  if (command == "generate") return pdserve::Generate(std::move(*stops));
  if (command == "tokenize") return pdserve::Tokenize();
  if (command == "info") return pdserve::Info();
  if (command == "inspect") return pdserve::Inspect();
  std::fprintf(stderr, "pdserve-cli: unknown subcommand '%s'\nusage: %s\n", command.c_str(),
               pdserve::kUsage);
  return 2;
}
