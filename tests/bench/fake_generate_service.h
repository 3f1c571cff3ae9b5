// An in-process stand-in for the decode service, for testing the load
// generator's client side without a model: deterministic token streams,
// chosen failures, a word-counting Tokenize, and a record of how many
// streams were open at once.
#ifndef PDSERVE_TESTS_BENCH_FAKE_GENERATE_SERVICE_H_
#define PDSERVE_TESTS_BENCH_FAKE_GENERATE_SERVICE_H_

#include <grpcpp/grpcpp.h>

#include <algorithm>
#include <atomic>
#include <memory>
#include <string>
#include <vector>

#include "absl/strings/str_split.h"
#include "absl/synchronization/mutex.h"
#include "pdserve/v1/generate.grpc.pb.h"

namespace pdserve::bench::testing {

// Behaviour by prompt:
//   "fail:N ..."  fails with gRPC code N (e.g. 8 RESOURCE_EXHAUSTED) after
//                 sending no token;
//   "drift ..."   like the default, but token k has id k whatever the
//                 prompt, so recomputing from the text disagrees with one
//                 long stream;
//   anything else streams max_new_tokens tokens (kDefaultNewTokens when 0):
//   token k has id (k + number of words) % 512 and text " w<k>"; the last
//   carries FINISH_REASON_LENGTH, usage and timings.
// Tokenize returns one id per space-separated word plus one for BOS.
class FakeGenerateService final : public v1::GenerateService::Service {
 public:
  static constexpr int kDefaultNewTokens = 5;

  grpc::Status Generate(grpc::ServerContext* context, const v1::GenerateRequest* request,
                        grpc::ServerWriter<v1::GenerateResponse>* writer) override {
    StreamOpened();
    grpc::Status status = Stream(*request, writer);
    open_streams_.fetch_sub(1);
    {
      absl::MutexLock lock(&mu_);
      seen_request_ids_.push_back(request->request_id());
      seen_prompts_.push_back(request->prompt());
    }
    return status;
  }

  grpc::Status Tokenize(grpc::ServerContext*, const v1::TokenizeRequest* request,
                        v1::TokenizeResponse* response) override {
    response->add_token_ids(1);  // BOS
    for (absl::string_view word : absl::StrSplit(request->text(), ' ', absl::SkipEmpty())) {
      response->add_token_ids(static_cast<int32_t>(word.size()));
      response->add_pieces(std::string(word));
    }
    return grpc::Status::OK;
  }

  int max_open_streams() const { return max_open_streams_.load(); }
  int open_streams() const { return open_streams_.load(); }
  std::vector<std::string> seen_request_ids() const {
    absl::MutexLock lock(&mu_);
    return seen_request_ids_;
  }
  std::vector<std::string> seen_prompts() const {
    absl::MutexLock lock(&mu_);
    return seen_prompts_;
  }

 private:
  void StreamOpened() {
    const int now_open = open_streams_.fetch_add(1) + 1;
    int seen = max_open_streams_.load();
    while (now_open > seen && !max_open_streams_.compare_exchange_weak(seen, now_open)) {
    }
  }

  static grpc::Status Stream(const v1::GenerateRequest& request,
                             grpc::ServerWriter<v1::GenerateResponse>* writer) {
    if (request.prompt().starts_with("fail:")) {
      const int code = std::stoi(request.prompt().substr(5));
      return grpc::Status(static_cast<grpc::StatusCode>(code), "fake failure");
    }
    const int words =
        static_cast<int>(std::count(request.prompt().begin(), request.prompt().end(), ' ') + 1);
    const int new_tokens = request.stopping().max_new_tokens() > 0
                               ? request.stopping().max_new_tokens()
                               : kDefaultNewTokens;
    for (int k = 0; k < new_tokens; ++k) {
      v1::GenerateResponse response;
      response.set_token_id(request.prompt().starts_with("drift") ? k : (k + words) % 512);
      response.set_text(" w" + std::to_string(k));
      response.set_index(k);
      if (k + 1 == new_tokens) {
        response.set_finish_reason(v1::FINISH_REASON_LENGTH);
        response.mutable_usage()->set_prompt_tokens(words + 1);
        response.mutable_usage()->set_generated_tokens(new_tokens);
        response.mutable_timings()->set_queue_ms(1);
        response.mutable_timings()->set_prefill_ms(2);
        response.mutable_timings()->set_ttft_ms(3);
      }
      if (!writer->Write(response))
        return grpc::Status(grpc::StatusCode::CANCELLED, "write failed");
    }
    return grpc::Status::OK;
  }

  std::atomic<int> open_streams_{0};
  std::atomic<int> max_open_streams_{0};
  mutable absl::Mutex mu_;
  std::vector<std::string> seen_request_ids_ ABSL_GUARDED_BY(mu_);
  std::vector<std::string> seen_prompts_ ABSL_GUARDED_BY(mu_);
};

// The fake served on an ephemeral loopback port for the test's lifetime.
class FakeServer {
 public:
  FakeServer() {
    grpc::ServerBuilder builder;
    builder.AddListeningPort("127.0.0.1:0", grpc::InsecureServerCredentials(), &port_);
    builder.RegisterService(&service_);
    server_ = builder.BuildAndStart();
  }
  ~FakeServer() { server_->Shutdown(); }

  std::string address() const { return "127.0.0.1:" + std::to_string(port_); }
  std::unique_ptr<v1::GenerateService::Stub> NewStub() const {
    return v1::GenerateService::NewStub(
        grpc::CreateChannel(address(), grpc::InsecureChannelCredentials()));
  }
  FakeGenerateService& service() { return service_; }

 private:
  FakeGenerateService service_;
  int port_ = 0;
  std::unique_ptr<grpc::Server> server_;
};

}  // namespace pdserve::bench::testing

#endif  // PDSERVE_TESTS_BENCH_FAKE_GENERATE_SERVICE_H_
