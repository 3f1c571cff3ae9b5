#include "tests/testing/deferred_copy_backend.h"

#include <cstring>
#include <mutex>
#include <set>
#include <utility>
#include <vector>

#include "shared/status_macros.h"

namespace pdserve {

struct DeferredCopyBackend::State {
  mutable std::mutex mutex;
  std::set<const char*> live_blocks;  // data() of every block not yet destroyed
  int live_copies = 0;
  int copies_started = 0;
  int copies_outliving_destination = 0;
  int fail_ordinal = 0;
  bool end_at_once = false;
};

namespace {

using State = DeferredCopyBackend::State;

class PoisonedBlock final : public HostBlock {
 public:
  PoisonedBlock(size_t bytes, std::shared_ptr<State> state)
      : HostBlock(new char[bytes], bytes), state_(std::move(state)) {
    std::memset(data(), DeferredCopyBackend::kPoison, bytes);
    std::lock_guard<std::mutex> lock(state_->mutex);
    state_->live_blocks.insert(data());
  }
  ~PoisonedBlock() override {
    {
      std::lock_guard<std::mutex> lock(state_->mutex);
      state_->live_blocks.erase(data());
    }
    delete[] data();
  }

 private:
  std::shared_ptr<State> state_;
};

class DeferredCopy final : public HostCopy {
 public:
  DeferredCopy(std::vector<char> snapshot, char* dst, bool fails, std::shared_ptr<State> state)
      : snapshot_(std::move(snapshot)), dst_(dst), fails_(fails), state_(std::move(state)) {
    std::lock_guard<std::mutex> lock(state_->mutex);
    ++state_->live_copies;
    dst_is_block_ = state_->live_blocks.count(dst_) > 0;
  }
  ~DeferredCopy() override {
    std::lock_guard<std::mutex> lock(state_->mutex);
    --state_->live_copies;
    if (dst_is_block_ && state_->live_blocks.count(dst_) == 0) {
      ++state_->copies_outliving_destination;
    }
  }

  bool Ready() override { return ended_; }
  absl::Status Wait() override {
    End();
    return fails_ ? absl::InternalError("DeferredCopyBackend: injected copy failure")
                  : absl::OkStatus();
  }

  void End() {
    if (ended_) return;
    ended_ = true;
    if (!fails_) std::memcpy(dst_, snapshot_.data(), snapshot_.size());
  }

 private:
  std::vector<char> snapshot_;
  char* dst_;
  bool fails_;
  bool dst_is_block_ = false;
  bool ended_ = false;
  std::shared_ptr<State> state_;
};

}  // namespace

DeferredCopyBackend::DeferredCopyBackend(std::unique_ptr<Backend> inner)
    : ForwardingBackend(std::move(inner)), state_(std::make_shared<State>()) {}

DeferredCopyBackend::~DeferredCopyBackend() = default;

absl::StatusOr<HostBlockPtr> DeferredCopyBackend::AllocateHostBlock(size_t bytes) {
  return std::make_unique<PoisonedBlock>(bytes, state_);
}

absl::StatusOr<std::unique_ptr<HostCopy>> DeferredCopyBackend::CopyToHostAsync(
    const DeviceBuffer& src, size_t src_offset, size_t n, void* dst) {
  std::vector<char> snapshot(n * DTypeSize(src.dtype()));
  PDSERVE_RETURN_IF_ERROR(inner().CopyToHost(src, src_offset, n, snapshot.data(), src.dtype()));
  bool fails = false;
  bool at_once = false;
  {
    std::lock_guard<std::mutex> lock(state_->mutex);
    fails = ++state_->copies_started == state_->fail_ordinal;
    at_once = state_->end_at_once;
  }
  auto copy =
      std::make_unique<DeferredCopy>(std::move(snapshot), static_cast<char*>(dst), fails, state_);
  if (at_once) copy->End();
  return copy;
}

void DeferredCopyBackend::FailCopy(int ordinal) {
  std::lock_guard<std::mutex> lock(state_->mutex);
  state_->fail_ordinal = ordinal;
}

void DeferredCopyBackend::set_copies_end_at_once(bool at_once) {
  std::lock_guard<std::mutex> lock(state_->mutex);
  state_->end_at_once = at_once;
}

int DeferredCopyBackend::live_blocks() const {
  std::lock_guard<std::mutex> lock(state_->mutex);
  return static_cast<int>(state_->live_blocks.size());
}

int DeferredCopyBackend::live_copies() const {
  std::lock_guard<std::mutex> lock(state_->mutex);
  return state_->live_copies;
}

int DeferredCopyBackend::copies_started() const {
  std::lock_guard<std::mutex> lock(state_->mutex);
  return state_->copies_started;
}

int DeferredCopyBackend::copies_outliving_destination() const {
  std::lock_guard<std::mutex> lock(state_->mutex);
  return state_->copies_outliving_destination;
}

}  // namespace pdserve
