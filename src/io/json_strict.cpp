// Strict JSON parsing (json_strict.h).
#include "io/json_strict.h"

#include <algorithm>
#include <set>
#include <vector>

#include "core/check.h"

namespace dsv3 {

namespace {

using json = nlohmann::json;

// Maximum nesting of [ and { outside strings (stops counting past `limit`). Checked
// before parsing so that no recursive code ever sees a pathological nesting.
int json_depth(const uint8_t* s, size_t n, int limit) {
  int depth = 0, max_depth = 0;
  bool in_string = false;
  for (size_t i = 0; i < n; ++i) {
    const uint8_t c = s[i];
    if (in_string) {
      if (c == '\\') ++i;
      else if (c == '"') in_string = false;
    } else if (c == '"') {
      in_string = true;
    } else if (c == '{' || c == '[') {
      max_depth = std::max(max_depth, ++depth);
      if (max_depth > limit) return max_depth;
    } else if (c == '}' || c == ']') {
      --depth;
    }
  }
  return max_depth;
}

}  // namespace

size_t utf8_invalid_at(const uint8_t* s, size_t n) {
  size_t i = 0;
  while (i < n) {
    const uint8_t c = s[i];
    if (c < 0x80) { ++i; continue; }
    int len;
    uint32_t cp;
    if ((c & 0xe0) == 0xc0) { len = 2; cp = c & 0x1f; }
    else if ((c & 0xf0) == 0xe0) { len = 3; cp = c & 0x0f; }
    else if ((c & 0xf8) == 0xf0) { len = 4; cp = c & 0x07; }
    else return i;
    if (i + size_t(len) > n) return i;
    for (int k = 1; k < len; ++k) {
      if ((s[i + k] & 0xc0) != 0x80) return i;
      cp = cp << 6 | (s[i + k] & 0x3f);
    }
    static constexpr uint32_t kMin[5] = {0, 0, 0x80, 0x800, 0x10000};
    if (cp < kMin[len] || cp > 0x10ffff || (cp >= 0xd800 && cp <= 0xdfff)) return i;
    i += size_t(len);
  }
  return std::string::npos;
}

json parse_json_strict(const uint8_t* s, size_t n, const std::string& where, const char* what,
                       int max_depth) {
  const size_t bad = utf8_invalid_at(s, n);
  DSV3_CHECK(bad == std::string::npos, where, ": ", what, " is not valid UTF-8 (byte ", bad,
             ")");
  DSV3_CHECK(json_depth(s, n, max_depth) <= max_depth, where, ": ", what,
             " nests deeper than ", max_depth, " levels");
  std::vector<std::set<std::string>> keys;  // one set per open object
  std::string duplicate;
  auto cb = [&](int /*depth*/, json::parse_event_t ev, json& parsed) {
    switch (ev) {
      case json::parse_event_t::object_start: keys.emplace_back(); break;
      case json::parse_event_t::object_end: if (!keys.empty()) keys.pop_back(); break;
      case json::parse_event_t::key:
        if (!keys.empty() && !keys.back().insert(parsed.get<std::string>()).second &&
            duplicate.empty())
          duplicate = parsed.get<std::string>();
        break;
      default: break;
    }
    return true;
  };
  json j;
  try {
    j = json::parse(s, s + n, cb, /*allow_exceptions=*/true);
  } catch (const json::exception& e) {
    DSV3_FAIL(where, ": ", what, " is not valid JSON (", e.what(), ")");
  }
  DSV3_CHECK(duplicate.empty(), where, ": ", what, " names '", duplicate,
             "' twice (each key must appear once)");
  return j;
}

}  // namespace dsv3
