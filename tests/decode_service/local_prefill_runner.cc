#include "tests/decode_service/local_prefill_runner.h"

#include <atomic>
#include <utility>

#include "absl/strings/str_cat.h"

namespace pdserve {

struct LocalPrefillRunner::Job final : public PrefillCall {
  Job(LocalPrefillRunner* runner_in, PrefillJob job_in, PrefillDone done_in)
      : runner(runner_in), job(std::move(job_in)), done(std::move(done_in)) {}
  void Cancel() override {
    std::lock_guard<std::mutex> lock(runner->mu_);
    cancelled = true;
    runner->cv_.notify_all();
  }
  LocalPrefillRunner* runner;
  PrefillJob job;
  PrefillDone done;
  bool cancelled = false;  // guarded by runner->mu_
};

absl::StatusOr<std::unique_ptr<LocalPrefillRunner>> LocalPrefillRunner::Create(
    const std::string& model_dir) {
  absl::StatusOr<std::unique_ptr<ServingModel>> model = ServingModel::Load(model_dir, "cpu");
  if (!model.ok()) return model.status();
  return std::unique_ptr<LocalPrefillRunner>(new LocalPrefillRunner(std::move(model).value()));
}

LocalPrefillRunner::~LocalPrefillRunner() {
  ReleaseAll();
  std::vector<std::thread> threads;
  {
    std::lock_guard<std::mutex> lock(mu_);
    threads.swap(threads_);
  }
  for (std::thread& thread : threads) thread.join();
}

std::shared_ptr<PrefillCall> LocalPrefillRunner::Start(PrefillJob job, PrefillDone done) {
  auto call = std::make_shared<Job>(this, std::move(job), std::move(done));
  std::lock_guard<std::mutex> lock(mu_);
  ++started_;
  threads_.emplace_back([this, call] { Run(call); });
  return call;
}

void LocalPrefillRunner::Run(std::shared_ptr<Job> call) {
  absl::Status failure;
  {
    std::unique_lock<std::mutex> lock(mu_);
    if (hold_) {
      ++held_;
      cv_.notify_all();
      cv_.wait(lock, [&] { return !hold_ || call->cancelled; });
      --held_;
    }
    if (call->cancelled) {
      lock.unlock();
      call->done(absl::CancelledError("local prefill cancelled"));
      return;
    }
    failure = failure_;
  }
  const ModelConfig& config = model_->config();
  const int kv_width = config.num_kv_heads * config.head_dim;
  Backend& backend = model_->backend();
  LayerKvSink sink = [&](int layer, const DeviceBuffer& k, const DeviceBuffer& v,
                         int num_tokens) -> absl::Status {
    if (!failure.ok() && layer == config.num_layers / 2) return failure;
    std::vector<float> host_k(static_cast<size_t>(num_tokens) * kv_width);
    std::vector<float> host_v(host_k.size());
    absl::Status copied = backend.CopyToHost(k, 0, host_k.size(), host_k.data(), DType::kF32);
    if (copied.ok()) copied = backend.CopyToHost(v, 0, host_v.size(), host_v.data(), DType::kF32);
    if (!copied.ok()) return copied;
    // Two ranges per layer, like a chunked stream.
    const int split = num_tokens / 2;
    for (auto [first, count] : {std::pair<int, int>{0, split}, {split, num_tokens - split}}) {
      if (count == 0) continue;
      const size_t offset = static_cast<size_t>(first) * kv_width;
      absl::Status written = call->job.write_kv(layer, first, count, host_k.data() + offset,
                                                host_v.data() + offset, DType::kF32);
      if (!written.ok()) return written;
    }
    return absl::OkStatus();
  };
  absl::StatusOr<std::vector<float>> hidden;
  {
    std::lock_guard<std::mutex> lock(model_mu_);
    hidden = model_->transformer().Prefill(call->job.token_ids, sink);
  }
  if (!hidden.ok()) {
    call->done(hidden.status());
    return;
  }
  PrefillResult result;
  result.final_hidden = std::move(hidden).value();
  result.kv_complete = absl::Now();
  call->done(std::move(result));
}

void LocalPrefillRunner::set_hold(bool hold) {
  std::lock_guard<std::mutex> lock(mu_);
  hold_ = hold;
  cv_.notify_all();
}

void LocalPrefillRunner::ReleaseAll() { set_hold(false); }

bool LocalPrefillRunner::WaitForHeld(int n, absl::Duration timeout) {
  std::unique_lock<std::mutex> lock(mu_);
  return cv_.wait_for(lock, absl::ToChronoMilliseconds(timeout), [&] { return held_ >= n; });
}

void LocalPrefillRunner::set_failure(absl::Status failure) {
  std::lock_guard<std::mutex> lock(mu_);
  failure_ = std::move(failure);
}

int LocalPrefillRunner::jobs_started() const {
  std::lock_guard<std::mutex> lock(mu_);
  return started_;
}

}  // namespace pdserve
