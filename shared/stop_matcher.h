// Stop strings over streamed text: finds a stop string even when it spans
// several text deltas (one per generated token), and keeps it, and anything
// after it, out of the text returned to the client.
#ifndef PDSERVE_SHARED_STOP_MATCHER_H_
#define PDSERVE_SHARED_STOP_MATCHER_H_

#include <string>
#include <string_view>
#include <vector>

#include "absl/status/status.h"

namespace pdserve {

// INVALID_ARGUMENT when `stops` has more than `max_count` entries, or an entry
// is empty, longer than `max_bytes` bytes, or not valid UTF-8; the message
// names the entry as `stop[i]` and the limit. OK for an empty list.
absl::Status ValidateStopStrings(const std::vector<std::string>& stops, int max_count,
                                 int max_bytes);

// One per sequence. Feed it each text delta as the detokenizer produces it
// (IncrementalDetokenizer::Push); send what Push returns in `emit`.
//
// Guarantees, for any split of a text T into deltas:
//  * Push stops (stopped = true) at the first delta after which T-so-far
//    contains a stop string. `matched` is the occurrence that starts
//    earliest in T-so-far (the shortest one on a tie) and everything
//    emitted, over all calls, is exactly T-so-far before it. Stopping at
//    the first completion is what a decode loop does anyway: the sequence
//    ends there, so no later text exists to prefer a longer stop.
//  * Until then, text is held back while it could be the start of a stop
//    string: the longest suffix of T-so-far that is a proper prefix of some
//    stop string. Everything before it is emitted at once.
//  * Emitted text never ends inside a multi-byte UTF-8 character: an
//    incomplete trailing sequence is held too (only possible when a delta
//    splits a character; IncrementalDetokenizer never does).
//  * Without a stop, the concatenation of every `emit` and Flush() is T.
// Matching is on bytes, exactly (no case folding or normalisation). Cost per
// Push: O((held + delta) * total stop bytes) at worst; the held text is
// shorter than the longest stop string.
class StopMatcher {
 public:
  struct Result {
    std::string emit;      // text to send now; may be empty
    bool stopped = false;  // a stop string completed; send no more text
    std::string matched;   // the stop string found, when stopped
  };

  // Empty strings in `stops` are ignored (ValidateStopStrings rejects them
  // at the API edge). An empty list never stops and holds nothing back.
  explicit StopMatcher(std::vector<std::string> stops);

  // Adds the next piece of generated text. After a stop, returns
  // {"", true, matched} again and ignores `delta`.
  Result Push(std::string_view delta);

  // At the end of generation without a stop (EOS, length, ...): the held
  // text, verbatim, which is now known not to start a stop string; "" after
  // a stop. Leaves the matcher empty.
  std::string Flush();

  bool stopped() const { return stopped_; }

 private:
  // Where the text that must stay held begins in `pending_`.
  size_t HoldStart() const;

  std::vector<std::string> stops_;
  std::string pending_;  // received but not yet emitted
  bool stopped_ = false;
  std::string matched_;
};

}  // namespace pdserve

#endif  // PDSERVE_SHARED_STOP_MATCHER_H_
