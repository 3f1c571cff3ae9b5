// The GenerateRequest each numbered request of a run sends.
#ifndef PDSERVE_BENCH_LOAD_GENERATOR_REQUEST_SOURCE_H_
#define PDSERVE_BENCH_LOAD_GENERATOR_REQUEST_SOURCE_H_

#include <cstdint>
#include <string>
#include <vector>

#include "pdserve/v1/generate.pb.h"

namespace pdserve::bench {

struct RequestOptions {
  int max_new_tokens = 0;  // 0: the server's default
  bool ignore_eos = false;
  float temperature = 0;  // 0: greedy
  uint64_t seed = 0;
  std::string id_prefix = "bench";
};

class RequestSource {
 public:
  // `prompts` must not be empty.
  RequestSource(std::vector<std::string> prompts, RequestOptions options);

  // Request `index`: prompt index % prompts, sampling seed options.seed +
  // index (a rerun with the same seed repeats every request, while requests
  // of one run differ), request_id "<id_prefix>-<index>".
  v1::GenerateRequest Make(int64_t index) const;

  const std::vector<std::string>& prompts() const { return prompts_; }

 private:
  std::vector<std::string> prompts_;
  RequestOptions options_;
};

}  // namespace pdserve::bench

#endif  // PDSERVE_BENCH_LOAD_GENERATOR_REQUEST_SOURCE_H_
