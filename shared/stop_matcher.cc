#include "shared/stop_matcher.h"

#include <algorithm>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"

namespace pdserve {
namespace {

bool IsContinuationByte(char c) { return (static_cast<unsigned char>(c) & 0xC0) == 0x80; }

// Bytes in the UTF-8 sequence a lead byte starts; 1 for a byte that cannot
// start one (so malformed input never stalls the stream).
size_t SequenceLength(char c) {
  const auto b = static_cast<unsigned char>(c);
  if (b >= 0xC2 && b <= 0xDF) return 2;
  if ((b & 0xF0) == 0xE0) return 3;
  if (b >= 0xF0 && b <= 0xF4) return 4;
  return 1;
}

// The largest cut <= `cut` such that text[0, cut) does not end inside a
// UTF-8 character: when the character holding byte cut-1 is not complete
// within [start, cut), cut back to its start.
size_t CutAtCharBoundary(std::string_view text, size_t cut) {
  if (cut == 0) return 0;
  size_t start = cut - 1;
  while (start > 0 && cut - start < 4 && IsContinuationByte(text[start])) --start;
  if (IsContinuationByte(text[start])) return cut;  // stray continuation bytes: not ours to fix
  return start + SequenceLength(text[start]) > cut ? start : cut;
}

bool IsValidUtf8(std::string_view text) {
  size_t i = 0;
  while (i < text.size()) {
    const auto b = static_cast<unsigned char>(text[i]);
    const size_t n = b < 0x80 ? 1 : SequenceLength(text[i]);
    if (n == 1 && b >= 0x80) return false;  // stray continuation or invalid lead
    if (i + n > text.size()) return false;
    for (size_t k = 1; k < n; ++k) {
      if (!IsContinuationByte(text[i + k])) return false;
    }
    if (n >= 3) {
      // Overlong 3/4-byte forms, UTF-16 surrogates and code points > U+10FFFF.
      const auto b1 = static_cast<unsigned char>(text[i + 1]);
      if (b == 0xE0 && b1 < 0xA0) return false;
      if (b == 0xED && b1 >= 0xA0) return false;
      if (b == 0xF0 && b1 < 0x90) return false;
      if (b == 0xF4 && b1 >= 0x90) return false;
    }
    i += n;
  }
  return true;
}

}  // namespace

absl::Status ValidateStopStrings(const std::vector<std::string>& stops, int max_count,
                                 int max_bytes) {
  if (stops.size() > static_cast<size_t>(std::max(max_count, 0))) {
    return absl::InvalidArgumentError(
        absl::StrCat("stop has ", stops.size(), " strings; at most ", max_count, " are allowed"));
  }
  for (size_t i = 0; i < stops.size(); ++i) {
    const std::string& stop = stops[i];
    if (stop.empty()) {
      return absl::InvalidArgumentError(
          absl::StrCat("stop[", i, "] is empty; stop strings need at least 1 byte"));
    }
    if (stop.size() > static_cast<size_t>(std::max(max_bytes, 0))) {
      return absl::InvalidArgumentError(absl::StrCat(
          "stop[", i, "] is ", stop.size(), " bytes long; the limit is ", max_bytes, " bytes"));
    }
    if (!IsValidUtf8(stop)) {
      return absl::InvalidArgumentError(absl::StrCat("stop[", i, "] is not valid UTF-8"));
    }
  }
  return absl::OkStatus();
}

StopMatcher::StopMatcher(std::vector<std::string> stops) {
  for (std::string& stop : stops) {
    if (!stop.empty()) stops_.push_back(std::move(stop));
  }
}

size_t StopMatcher::HoldStart() const {
  // The earliest position from which the rest of pending_ is a proper prefix
  // of some stop string; only the last (length - 1) bytes of each can be.
  size_t hold = pending_.size();
  const std::string_view text = pending_;
  for (const std::string& stop : stops_) {
    const size_t window = std::min(stop.size() - 1, text.size());
    for (size_t start = text.size() - window; start < hold; ++start) {
      if (text.compare(start, std::string_view::npos, stop, 0, text.size() - start) == 0) {
        hold = start;
        break;
      }
    }
  }
  return CutAtCharBoundary(text, hold);
}

StopMatcher::Result StopMatcher::Push(std::string_view delta) {
  if (stopped_) return Result{std::string(), true, matched_};
  pending_.append(delta);

  // The held text before this delta cannot contain a whole stop string (we
  // would have stopped), and the emitted text cannot contain the start of
  // one (it was held), so searching pending_ finds every occurrence.
  size_t best_pos = std::string::npos;
  const std::string* best = nullptr;
  for (const std::string& stop : stops_) {
    const size_t pos = pending_.find(stop);
    if (pos == std::string::npos) continue;
    if (pos < best_pos || (pos == best_pos && stop.size() < best->size())) {
      best_pos = pos;
      best = &stop;
    }
  }
  if (best != nullptr) {
    stopped_ = true;
    matched_ = *best;
    Result result{pending_.substr(0, best_pos), true, matched_};
    pending_.clear();
    return result;
  }

  const size_t hold = HoldStart();
  Result result{pending_.substr(0, hold), false, std::string()};
  pending_.erase(0, hold);
  return result;
}

std::string StopMatcher::Flush() {
  std::string rest = std::move(pending_);
  pending_.clear();
  return rest;
}

}  // namespace pdserve
