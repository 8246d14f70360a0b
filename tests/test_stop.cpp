// StopMatcher: the streamed result equals a brute-force scan of the whole text, however the
// text is split into pushes; overlapping prefixes, several stop strings, UTF-8, flushing.
#include <gtest/gtest.h>

#include <string>
#include <vector>

#include "core/check.h"
#include "infer/sampler.h"
#include "infer/stop.h"

namespace dsv3 {
namespace {

struct Result {
  std::string text;  // everything emitted (pushes + finish)
  int matched;
  bool operator==(const Result&) const = default;
};

std::ostream& operator<<(std::ostream& os, const Result& r) {
  return os << '"' << r.text << "\" matched=" << r.matched;
}

// The definition in stop.h, directly: the first end position where some stop string ends,
// the longest of those ending there; emit what precedes it.
Result brute_force(const std::string& text, const std::vector<std::string>& stops) {
  for (size_t end = 1; end <= text.size(); ++end) {
    int best = -1;
    for (size_t s = 0; s < stops.size(); ++s) {
      const size_t len = stops[s].size();
      if (len <= end && text.compare(end - len, len, stops[s]) == 0 &&
          (best < 0 || len > stops[size_t(best)].size()))
        best = int(s);
    }
    if (best >= 0) return {text.substr(0, end - stops[size_t(best)].size()), best};
  }
  return {text, -1};
}

// Pushes text in pieces of the given sizes (cycled), then finishes.
Result stream(const std::string& text, const std::vector<std::string>& stops,
              const std::vector<size_t>& sizes, std::vector<std::string>* pieces = nullptr) {
  StopMatcher m(stops);
  Result r{"", -1};
  size_t pos = 0, j = 0;
  while (pos < text.size()) {
    const size_t n = std::min(sizes[j++ % sizes.size()], text.size() - pos);
    const std::string out = m.push(std::string_view(text).substr(pos, n));
    if (pieces) pieces->push_back(out);
    r.text += out;
    pos += n;
  }
  r.text += m.finish();
  r.matched = m.matched();
  EXPECT_EQ(m.stopped(), r.matched >= 0);
  return r;
}

TEST(Stop, EmptyListPassesEverythingThrough) {
  StopMatcher m;
  EXPECT_EQ(m.push("hello "), "hello ");
  EXPECT_EQ(m.push(""), "");
  EXPECT_EQ(m.push("world"), "world");
  EXPECT_EQ(m.held(), 0u);
  EXPECT_EQ(m.finish(), "");
  EXPECT_FALSE(m.stopped());
}

TEST(Stop, EmptyStopStringIsRefused) {
  EXPECT_THROW(StopMatcher({"a", ""}), Error);
}

TEST(Stop, SplitAcrossManyPushes) {
  const std::vector<std::string> stops = {"<|end|>"};
  StopMatcher m(stops);
  std::string out;
  for (char c : std::string("Hello<|end|>world")) {
    const std::string piece = m.push(std::string_view(&c, 1));
    out += piece;
    if (m.stopped()) break;
  }
  EXPECT_EQ(out, "Hello");
  EXPECT_EQ(m.matched(), 0);
  EXPECT_EQ(m.push("more"), "");  // ignored once stopped
  EXPECT_EQ(m.finish(), "");
  // Nothing after the stop string is emitted even when it arrives in the same push.
  EXPECT_EQ(stream("Hello<|end|>world", stops, {100}), (Result{"Hello", 0}));
}

TEST(Stop, HeldPrefixIsReleasedOrFlushed) {
  StopMatcher m({"<|end|>"});
  EXPECT_EQ(m.push("abc<|en"), "abc");
  EXPECT_EQ(m.held(), 4u);
  EXPECT_EQ(m.push("x"), "<|enx");  // not the stop string after all
  EXPECT_EQ(m.push("<"), "");
  EXPECT_EQ(m.finish(), "<");  // end of generation: the held prefix is text
  EXPECT_FALSE(m.stopped());
}

TEST(Stop, OverlappingPrefixes) {
  const std::vector<std::string> stops = {"abab"};
  EXPECT_EQ(stream("xababab", stops, {1}), (Result{"x", 0}));
  EXPECT_EQ(stream("xababab", stops, {7}), (Result{"x", 0}));
  // "aba" then "b": the held "abab" must restart matching from its suffix "ab".
  EXPECT_EQ(stream("ababac", {"abac"}, {1}), (Result{"ab", 0}));
  EXPECT_EQ(stream("aaab", {"aab"}, {1}), (Result{"a", 0}));
  StopMatcher m({"abac"});
  EXPECT_EQ(m.push("aba"), "");
  EXPECT_EQ(m.push("b"), "ab");  // "abab": only the suffix "ab" can still start "abac"
  EXPECT_EQ(m.held(), 2u);
}

TEST(Stop, MultipleStopsEarliestCompletedWins) {
  // "lo w" completes (at byte 8) before "world" (byte 11), though "world" is listed first.
  EXPECT_EQ(stream("hello world", {"world", "lo w"}, {1}), (Result{"hel", 1}));
  EXPECT_EQ(stream("hello world", {"world", "lo w"}, {11}), (Result{"hel", 1}));
  // Same end: the longer stop string is the one that matched.
  EXPECT_EQ(stream("xab", {"b", "ab"}, {3}), (Result{"x", 1}));
  EXPECT_EQ(stream("xab", {"b", "ab"}, {1}), (Result{"x", 1}));
  // "b" ends before "abc" does, so streaming and a single push both stop at "b".
  EXPECT_EQ(stream("abc", {"abc", "b"}, {3}), (Result{"a", 1}));
}

TEST(Stop, Utf8StopStringsAndText) {
  // "。" is E3 80 82 and "、" is E3 80 81: the first two bytes are held, then released.
  const std::string text = "日本語、テスト。残り";
  const std::vector<std::string> stops = {"。"};
  EXPECT_EQ(stream(text, stops, {1}), (Result{"日本語、テスト", 0}));
  // Pushing whole characters, every emitted piece is whole characters: held text is a
  // prefix of the stop string, which starts on a character boundary.
  std::vector<std::string> pieces;
  EXPECT_EQ(stream(text, stops, {3}, &pieces), (Result{"日本語、テスト", 0}));
  for (const std::string& p : pieces) {
    ASSERT_EQ(p.size() % 3, 0u) << p;
    for (size_t i = 0; i < p.size(); i += 3) EXPECT_EQ(uint8_t(p[i]) & 0xF0, 0xE0) << p;
  }
  EXPECT_EQ(stream("über → Ende", {"→"}, {2, 1}), (Result{"über ", 0}));
}

// Random texts over a small alphabet (so stop strings occur and overlap), random stop lists,
// random split sizes: streaming always equals the brute-force definition.
TEST(Stop, AnySplitEqualsBruteForce) {
  Rng rng(99);
  auto pick = [&](uint64_t n) { return size_t(rng.next() % n); };
  const std::string alphabet = "aab c";
  for (int trial = 0; trial < 2000; ++trial) {
    std::string text;
    for (size_t n = pick(30); n > 0; --n) text += alphabet[pick(alphabet.size())];
    std::vector<std::string> stops;
    for (size_t s = pick(4); s > 0; --s) {
      std::string stop;
      for (size_t n = 1 + pick(4); n > 0; --n) stop += alphabet[pick(alphabet.size())];
      stops.push_back(stop);
    }
    std::vector<size_t> sizes;
    for (int j = 0; j < 5; ++j) sizes.push_back(1 + pick(6));
    const Result expect = brute_force(text, stops);
    ASSERT_EQ(stream(text, stops, sizes), expect) << "text \"" << text << "\" trial " << trial;
    ASSERT_EQ(stream(text, stops, {text.size() + 1}), expect) << "text \"" << text << "\"";
  }
}

}  // namespace
}  // namespace dsv3
