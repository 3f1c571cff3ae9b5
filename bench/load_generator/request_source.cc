#include "bench/load_generator/request_source.h"

#include <utility>

#include "absl/strings/str_cat.h"

namespace pdserve::bench {

RequestSource::RequestSource(std::vector<std::string> prompts, RequestOptions options)
    : prompts_(std::move(prompts)), options_(std::move(options)) {}

v1::GenerateRequest RequestSource::Make(int64_t index) const {
  v1::GenerateRequest request;
  request.set_prompt(prompts_[static_cast<size_t>(index) % prompts_.size()]);
  request.mutable_sampling()->set_temperature(options_.temperature);
  request.mutable_sampling()->set_seed(options_.seed + static_cast<uint64_t>(index));
  request.mutable_stopping()->set_max_new_tokens(options_.max_new_tokens);
  request.mutable_stopping()->set_ignore_eos(options_.ignore_eos);
  request.set_request_id(absl::StrCat(options_.id_prefix, "-", index));
  return request;
}

}  // namespace pdserve::bench
