// StopMatcher: hold back possible stop-string prefixes, cut at the first completed stop.
#include "infer/stop.h"

#include <algorithm>

#include "core/check.h"

namespace dsv3 {

StopMatcher::StopMatcher(std::vector<std::string> stops) : stops_(std::move(stops)) {
  for (size_t i = 0; i < stops_.size(); ++i)
    DSV3_CHECK(!stops_[i].empty(), "stop strings: entry ", i, " is empty");
}

std::string StopMatcher::push(std::string_view text) {
  if (stopped()) return {};
  held_.append(text);

  // held_ had no complete stop string before this push, so the first occurrence of each stop
  // string is also its earliest end (all its occurrences have the same length).
  size_t best_end = std::string::npos, best_len = 0;
  for (size_t s = 0; s < stops_.size(); ++s) {
    const size_t pos = held_.find(stops_[s]);
    if (pos == std::string::npos) continue;
    const size_t end = pos + stops_[s].size(), len = stops_[s].size();
    if (end < best_end || (end == best_end && len > best_len)) {
      best_end = end;
      best_len = len;
      matched_ = int(s);
    }
  }
  if (stopped()) {
    std::string out = held_.substr(0, best_end - best_len);
    held_.clear();
    return out;
  }

  // Hold the longest suffix of held_ that is a proper prefix of some stop string.
  size_t max_hold = 0;
  for (const std::string& s : stops_) max_hold = std::max(max_hold, s.size() - 1);
  size_t hold = std::min(max_hold, held_.size());
  for (; hold > 0; --hold) {
    const std::string_view tail = std::string_view(held_).substr(held_.size() - hold);
    const bool prefix = std::any_of(stops_.begin(), stops_.end(), [&](const std::string& s) {
      return s.size() > hold && std::string_view(s).substr(0, hold) == tail;
    });
    if (prefix) break;
  }
  std::string out = held_.substr(0, held_.size() - hold);
  held_.erase(0, held_.size() - hold);
  return out;
}

std::string StopMatcher::finish() {
  std::string out;
  out.swap(held_);
  return out;
}

}  // namespace dsv3
