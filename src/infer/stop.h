// Stop strings for streamed generation: decoded text arrives in pieces (one token's bytes at
// a time); a piece may end with the first bytes of a stop string, which must not reach the
// user until we know whether the stop string completes.
//
// Semantics (independent of how the text is split into pushes): generation stops at the
// first position where any stop string has been completed — the earliest match END; among
// stop strings ending there, the longest (earliest start) is the one reported. The emitted
// text is everything before that stop string's start; the stop string and anything after it
// are dropped. Without a match, everything is emitted eventually: push() holds back only the
// longest suffix that is a proper prefix of some stop string, and finish() flushes it.
//
// Matching is on bytes. Held-back text is a prefix of a stop string, so if the stop strings
// and the text are valid UTF-8 the cut between emitted and held text falls on a character
// boundary.
#pragma once
#include <string>
#include <string_view>
#include <vector>

namespace dsv3 {

class StopMatcher {
 public:
  // Empty stop strings are refused (they would match before any text).
  explicit StopMatcher(std::vector<std::string> stops = {});

  // Appends text; returns what is safe to emit now. Once stopped(), returns "" and ignores
  // further text.
  std::string push(std::string_view text);
  // End of generation: returns the held-back text ("" when stopped).
  std::string finish();

  bool stopped() const { return matched_ >= 0; }
  // Index into the stop list of the stop string that ended generation; −1 if none.
  int matched() const { return matched_; }
  // Bytes currently held back.
  size_t held() const { return held_.size(); }

 private:
  std::vector<std::string> stops_;
  std::string held_;  // text not yet emitted; never contains a complete stop string
  int matched_ = -1;
};

}  // namespace dsv3
