#include "shared/stop_matcher.h"

#include <algorithm>
#include <cstdint>
#include <random>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/status.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace pdserve {
namespace {

using ::testing::HasSubstr;

struct Outcome {
  std::string emitted;  // every emit, concatenated (plus Flush when not stopped)
  bool stopped = false;
  std::string matched;
  int stop_delta = -1;  // index of the delta whose Push stopped
};

Outcome RunDeltas(const std::vector<std::string>& stops, const std::vector<std::string>& deltas) {
  StopMatcher matcher(stops);
  Outcome outcome;
  for (size_t i = 0; i < deltas.size(); ++i) {
    StopMatcher::Result r = matcher.Push(deltas[i]);
    outcome.emitted += r.emit;
    if (r.stopped) {
      outcome.stopped = true;
      outcome.matched = r.matched;
      outcome.stop_delta = static_cast<int>(i);
      break;
    }
  }
  if (!outcome.stopped) outcome.emitted += matcher.Flush();
  return outcome;
}

TEST(StopMatcherTest, StopInsideOneDelta) {
  const Outcome o = RunDeltas({"END"}, {"Hello ", "wor", "ld END and more", " ignored"});
  EXPECT_TRUE(o.stopped);
  EXPECT_EQ(o.emitted, "Hello world ");
  EXPECT_EQ(o.matched, "END");
  EXPECT_EQ(o.stop_delta, 2);
}

TEST(StopMatcherTest, StopSpanningTwoDeltasIsHeldThenDropped) {
  StopMatcher matcher({"###"});
  StopMatcher::Result r = matcher.Push("answer: 42 #");
  EXPECT_EQ(r.emit, "answer: 42 ");  // "#" might start "###"
  EXPECT_FALSE(r.stopped);
  r = matcher.Push("##tail");
  EXPECT_TRUE(r.stopped);
  EXPECT_EQ(r.emit, "");
  EXPECT_EQ(r.matched, "###");
}

TEST(StopMatcherTest, StopSpanningThreeDeltas) {
  StopMatcher matcher({"<stop>"});
  EXPECT_EQ(matcher.Push("abc<s").emit, "abc");
  StopMatcher::Result r = matcher.Push("to");
  EXPECT_EQ(r.emit, "");
  EXPECT_FALSE(r.stopped);
  r = matcher.Push("p>xyz");
  EXPECT_TRUE(r.stopped);
  EXPECT_EQ(r.emit, "");
  EXPECT_EQ(r.matched, "<stop>");
  // After a stop nothing more comes out.
  r = matcher.Push("more");
  EXPECT_TRUE(r.stopped);
  EXPECT_EQ(r.emit, "");
  EXPECT_EQ(matcher.Flush(), "");
}

TEST(StopMatcherTest, FalseStartIsReleasedWhenItDiverges) {
  StopMatcher matcher({"<stop>"});
  EXPECT_EQ(matcher.Push("a<st").emit, "a");
  // "<sto" then "x": no longer a prefix of "<stop>"; "<" alone is not held
  // either because the held text must be a suffix.
  EXPECT_EQ(matcher.Push("ox").emit, "<stox");
  EXPECT_EQ(matcher.Push("<").emit, "");
  EXPECT_EQ(matcher.Flush(), "<");
}

TEST(StopMatcherTest, HeldTextReleasedOnFlush) {
  StopMatcher matcher({"\n\nUser:"});
  EXPECT_EQ(matcher.Push("Sure.\n").emit, "Sure.");
  EXPECT_EQ(matcher.Push("\nUs").emit, "");
  EXPECT_EQ(matcher.Flush(), "\n\nUs");
  EXPECT_EQ(matcher.Flush(), "");
}

TEST(StopMatcherTest, StopAtStart) {
  const Outcome o = RunDeltas({"Q:"}, {"Q", ": what"});
  EXPECT_TRUE(o.stopped);
  EXPECT_EQ(o.emitted, "");
  EXPECT_EQ(o.matched, "Q:");
  EXPECT_EQ(RunDeltas({"Q:"}, {"Q: what"}).emitted, "");
}

TEST(StopMatcherTest, NoStopConcatenationEqualsInput) {
  const std::vector<std::string> deltas = {"The ", "quick", " brown", " fox", " jumps", "."};
  const Outcome o = RunDeltas({"zebra", "STOP", "x!"}, deltas);
  EXPECT_FALSE(o.stopped);
  EXPECT_EQ(o.emitted, "The quick brown fox jumps.");
  EXPECT_EQ(RunDeltas({}, deltas).emitted, "The quick brown fox jumps.");
}

TEST(StopMatcherTest, NoStopsEmitsImmediately) {
  StopMatcher matcher({});
  EXPECT_EQ(matcher.Push("abc").emit, "abc");
  EXPECT_EQ(matcher.Flush(), "");
}

TEST(StopMatcherTest, OverlappingStops) {
  // Earliest start wins.
  Outcome o = RunDeltas({"cd", "bcde"}, {"abcdef"});
  EXPECT_EQ(o.emitted, "a");
  EXPECT_EQ(o.matched, "bcde");
  // Same start: the shorter (which completes first) wins.
  o = RunDeltas({"abc", "ab"}, {"xxabcd"});
  EXPECT_EQ(o.emitted, "xx");
  EXPECT_EQ(o.matched, "ab");
  // Streamed, the first stop to complete ends the sequence, even if a longer
  // one started earlier and might have completed later.
  o = RunDeltas({"abcd", "bc"}, {"a", "b", "c", "d"});
  EXPECT_EQ(o.emitted, "a");
  EXPECT_EQ(o.matched, "bc");
  EXPECT_EQ(o.stop_delta, 2);
  // Self-overlapping stop: "aab" inside "aaab".
  o = RunDeltas({"aab"}, {"a", "a", "a", "b"});
  EXPECT_EQ(o.emitted, "a");
  EXPECT_EQ(o.matched, "aab");
}

TEST(StopMatcherTest, HoldsLongestSuffixAcrossStops) {
  StopMatcher matcher({"xyz", "yzw"});
  // "xy" is a prefix of "xyz"; "y" of "yzw": hold the longer "xy".
  EXPECT_EQ(matcher.Push("axy").emit, "a");
  StopMatcher::Result r = matcher.Push("zw");
  EXPECT_TRUE(r.stopped);
  EXPECT_EQ(r.matched, "xyz");
}

TEST(StopMatcherTest, KeepsUtf8Whole) {
  // "é" is C3 A9; a delta ending after C3 must not emit the lone lead byte.
  StopMatcher matcher({"STOP"});
  EXPECT_EQ(matcher.Push("caf\xC3").emit, "caf");
  EXPECT_EQ(matcher.Push("\xA9 ok").emit, "\xC3\xA9 ok");
  // A 4-byte emoji split 1 + 3.
  EXPECT_EQ(matcher.Push("\xF0").emit, "");
  EXPECT_EQ(matcher.Push("\x9F\x9A\x80!").emit, "\xF0\x9F\x9A\x80!");
  // A multi-byte stop string whose prefix is held.
  StopMatcher jp({"\xE3\x80\x82\xE3\x80\x82"});  // "。。"
  EXPECT_EQ(jp.Push("\xE6\x97\xA5\xE3\x80\x82").emit, "\xE6\x97\xA5");
  StopMatcher::Result r = jp.Push("\xE3\x80\x82");
  EXPECT_TRUE(r.stopped);
  EXPECT_EQ(r.emit, "");
}

TEST(StopMatcherTest, EmptyStopStringsAreIgnored) {
  const Outcome o = RunDeltas({"", "zz"}, {"abc"});
  EXPECT_FALSE(o.stopped);
  EXPECT_EQ(o.emitted, "abc");
}

// ---- randomized comparison against a naive reference --------------------

// Reference: after each delta, look for every stop in the whole text so far;
// stop at the first delta where one occurs, cutting at the earliest
// occurrence (shortest on a tie). Before that, the text emitted so far is
// the text minus its longest suffix that is a proper prefix of a stop,
// moved back so it never ends inside a UTF-8 character.
struct Reference {
  static bool IsCont(char c) { return (static_cast<unsigned char>(c) & 0xC0) == 0x80; }

  static size_t ExpectedEmittedLength(const std::string& text,
                                      const std::vector<std::string>& stops) {
    size_t cut = text.size();
    for (size_t k = text.size(); k > 0; --k) {  // longest suffix first
      const std::string_view suffix = std::string_view(text).substr(text.size() - k);
      bool is_prefix = false;
      for (const std::string& s : stops) {
        is_prefix |= s.size() > k && std::string_view(s).substr(0, k) == suffix;
      }
      if (is_prefix) {
        cut = text.size() - k;
        break;
      }
    }
    // Never end inside a character: find the start of the last character
    // before the cut and check that it is complete.
    if (cut > 0) {
      size_t start = cut - 1;
      while (start > 0 && IsCont(text[start])) --start;
      const auto lead = static_cast<unsigned char>(text[start]);
      const size_t need = lead >= 0xF0 ? 4 : lead >= 0xE0 ? 3 : lead >= 0xC0 ? 2 : 1;
      if (start + need > cut) cut = start;
    }
    return cut;
  }
};

TEST(StopMatcherTest, RandomAgainstNaiveReference) {
  std::mt19937_64 rng(20240611);
  // Small alphabets make stop strings (and near misses) frequent. Two-byte
  // "é" and three-byte "€" exercise UTF-8; deltas may split them.
  const std::vector<std::string> alphabet = {"a", "b", "c", " ", "\xC3\xA9", "\xE2\x82\xAC"};
  int stopped_runs = 0;
  for (int iteration = 0; iteration < 3000; ++iteration) {
    std::vector<std::string> stops(1 + rng() % 3);
    for (std::string& s : stops) {
      const int len = 1 + static_cast<int>(rng() % 4);
      for (int i = 0; i < len; ++i) s += alphabet[rng() % alphabet.size()];
    }
    std::string text;
    const int chars = static_cast<int>(rng() % 40);
    for (int i = 0; i < chars; ++i) text += alphabet[rng() % alphabet.size()];
    // Split into deltas at random byte positions (UTF-8 may be split).
    std::vector<std::string> deltas;
    for (size_t pos = 0; pos < text.size();) {
      const size_t len = std::min<size_t>(text.size() - pos, rng() % 5);  // 0-byte deltas too
      deltas.push_back(text.substr(pos, len));
      pos += len;
    }

    StopMatcher matcher(stops);
    std::string so_far, emitted;
    bool stopped = false;
    for (size_t d = 0; d < deltas.size() && !stopped; ++d) {
      so_far += deltas[d];
      const StopMatcher::Result r = matcher.Push(deltas[d]);
      emitted += r.emit;
      size_t best = std::string::npos;
      std::string best_stop;
      for (const std::string& s : stops) {
        const size_t pos = so_far.find(s);
        if (pos != std::string::npos &&
            (pos < best || (pos == best && s.size() < best_stop.size()))) {
          best = pos;
          best_stop = s;
        }
      }
      SCOPED_TRACE(testing::Message()
                   << "iteration " << iteration << " delta " << d << " text '" << so_far << "'");
      ASSERT_EQ(r.stopped, best != std::string::npos);
      if (r.stopped) {
        stopped = true;
        ++stopped_runs;
        ASSERT_EQ(emitted, so_far.substr(0, best));
        ASSERT_EQ(r.matched, best_stop);
      } else {
        ASSERT_EQ(emitted, so_far.substr(0, Reference::ExpectedEmittedLength(so_far, stops)));
      }
    }
    if (!stopped) {
      emitted += matcher.Flush();
      ASSERT_EQ(emitted, text) << "iteration " << iteration;
    }
  }
  // The generator must exercise both outcomes substantially.
  EXPECT_GT(stopped_runs, 500);
  EXPECT_LT(stopped_runs, 2900);
}

// ---- validation ------------------------------------------------------------

TEST(ValidateStopStringsTest, AcceptsWithinLimits) {
  EXPECT_TRUE(ValidateStopStrings({}, 4, 8).ok());
  EXPECT_TRUE(ValidateStopStrings({"a", "12345678", "\xE2\x82\xAC"}, 4, 8).ok());
}

TEST(ValidateStopStringsTest, RejectsWithFieldAndLimit) {
  absl::Status s = ValidateStopStrings({"a", "b", "c"}, 2, 8);
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(s.message(), HasSubstr("stop has 3 strings"));
  EXPECT_THAT(s.message(), HasSubstr("at most 2"));

  s = ValidateStopStrings({"ok", ""}, 4, 8);
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(s.message(), HasSubstr("stop[1] is empty"));

  s = ValidateStopStrings({"123456789"}, 4, 8);
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(s.message(), HasSubstr("stop[0] is 9 bytes"));
  EXPECT_THAT(s.message(), HasSubstr("limit is 8 bytes"));

  for (const char* bad : {"\xC3", "a\x80", "\xED\xA0\x80", "\xF4\x90\x80\x80", "\xE0\x80\x80"}) {
    s = ValidateStopStrings({"fine", bad}, 4, 8);
    EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument) << bad;
    EXPECT_THAT(s.message(), HasSubstr("stop[1] is not valid UTF-8"));
  }
}

}  // namespace
}  // namespace pdserve
