#include "tokenizer/utf8.h"

#include <array>

namespace dsv3::tok {

void append_utf8(std::string& out, uint32_t cp) {
  if (cp < 0x80) {
    out.push_back(char(cp));
  } else if (cp < 0x800) {
    out.push_back(char(0xC0 | (cp >> 6)));
    out.push_back(char(0x80 | (cp & 0x3F)));
  } else if (cp < 0x10000) {
    out.push_back(char(0xE0 | (cp >> 12)));
    out.push_back(char(0x80 | ((cp >> 6) & 0x3F)));
    out.push_back(char(0x80 | (cp & 0x3F)));
  } else {
    out.push_back(char(0xF0 | (cp >> 18)));
    out.push_back(char(0x80 | ((cp >> 12) & 0x3F)));
    out.push_back(char(0x80 | ((cp >> 6) & 0x3F)));
    out.push_back(char(0x80 | (cp & 0x3F)));
  }
}

namespace {

// Well-formed byte sequences, Unicode Table 3-7: the allowed range of the second byte
// depends on the lead byte (this excludes overlongs, surrogates and > U+10FFFF).
struct Lead {
  int len;
  uint8_t lo, hi;  // range of the second byte
};

Lead lead_of(uint8_t b) {
  if (b < 0x80) return {1, 0, 0};
  if (b >= 0xC2 && b <= 0xDF) return {2, 0x80, 0xBF};
  if (b == 0xE0) return {3, 0xA0, 0xBF};
  if ((b >= 0xE1 && b <= 0xEC) || b == 0xEE || b == 0xEF) return {3, 0x80, 0xBF};
  if (b == 0xED) return {3, 0x80, 0x9F};
  if (b == 0xF0) return {4, 0x90, 0xBF};
  if (b >= 0xF1 && b <= 0xF3) return {4, 0x80, 0xBF};
  if (b == 0xF4) return {4, 0x80, 0x8F};
  return {0, 0, 0};
}

// How many bytes from i form a well-formed prefix (possibly complete) of one sequence.
// Returns {prefix_len, full_len}; prefix_len == 0 means s[i] cannot start a sequence.
std::pair<int, int> valid_prefix(std::string_view s, size_t i) {
  const Lead l = lead_of(uint8_t(s[i]));
  if (l.len <= 1) return {l.len, l.len};
  int n = 1;
  for (; n < l.len && i + n < s.size(); ++n) {
    const uint8_t c = uint8_t(s[i + n]);
    const bool ok = n == 1 ? (c >= l.lo && c <= l.hi) : (c >= 0x80 && c <= 0xBF);
    if (!ok) break;
  }
  return {n, l.len};
}

}  // namespace

int utf8_seq_len(std::string_view s, size_t i) {
  if (i >= s.size()) return 0;
  const auto [n, full] = valid_prefix(s, i);
  return n == full ? full : 0;
}

uint32_t decode_utf8_at(std::string_view s, size_t i, int len) {
  const auto b = [&](int k) { return uint32_t(uint8_t(s[i + k])); };
  switch (len) {
    case 1: return b(0);
    case 2: return ((b(0) & 0x1F) << 6) | (b(1) & 0x3F);
    case 3: return ((b(0) & 0x0F) << 12) | ((b(1) & 0x3F) << 6) | (b(2) & 0x3F);
    default: return ((b(0) & 0x07) << 18) | ((b(1) & 0x3F) << 12) | ((b(2) & 0x3F) << 6) |
                    (b(3) & 0x3F);
  }
}

bool is_valid_utf8(std::string_view s) {
  for (size_t i = 0; i < s.size();) {
    if (uint8_t(s[i]) < 0x80) { ++i; continue; }
    const int n = utf8_seq_len(s, i);
    if (n == 0) return false;
    i += size_t(n);
  }
  return true;
}

std::string utf8_lossy(std::string_view s) {
  if (is_valid_utf8(s)) return std::string(s);
  std::string out;
  out.reserve(s.size() + 8);
  for (size_t i = 0; i < s.size();) {
    const auto [n, full] = valid_prefix(s, i);
    if (n > 0 && n == full) {
      out.append(s.data() + i, size_t(n));
      i += size_t(n);
    } else {
      // A maximal ill-formed subpart: the well-formed prefix seen so far (at least the
      // offending byte itself) becomes one U+FFFD.
      out += "\xEF\xBF\xBD";
      i += size_t(n > 0 ? n : 1);
    }
  }
  return out;
}

int utf8_incomplete_tail(std::string_view s) {
  // A sequence is at most 4 bytes, so only a lead byte among the last 3 can be unfinished.
  const size_t start = s.size() > 3 ? s.size() - 3 : 0;
  for (size_t i = s.size(); i-- > start;) {
    const uint8_t c = uint8_t(s[i]);
    if ((c & 0xC0) == 0x80) continue;  // continuation byte: keep looking for the lead
    const auto [n, full] = valid_prefix(s, i);
    if (full > 1 && n == int(s.size() - i) && n < full) return n;
    return 0;
  }
  return 0;
}

namespace {

struct ByteTables {
  std::array<uint32_t, 256> to_cp{};
  std::array<int16_t, 324> to_byte{};  // code points < 0x144 cover the whole alphabet
  ByteTables() {
    to_byte.fill(-1);
    // GPT-2's bytes_to_unicode: printable Latin-1 bytes keep their code point, the 68
    // others are numbered from U+0100 in byte order.
    int next = 0;
    for (int b = 0; b < 256; ++b) {
      const bool printable = (b >= 0x21 && b <= 0x7E) || (b >= 0xA1 && b <= 0xAC) ||
                             (b >= 0xAE && b <= 0xFF);
      to_cp[size_t(b)] = printable ? uint32_t(b) : uint32_t(256 + next++);
      to_byte[to_cp[size_t(b)]] = int16_t(b);
    }
  }
};

const ByteTables& tables() {
  static const ByteTables t;
  return t;
}

}  // namespace

uint32_t byte_to_cp(uint8_t b) { return tables().to_cp[b]; }

int cp_to_byte(uint32_t cp) { return cp < 324 ? tables().to_byte[cp] : -1; }

std::string bytes_to_bytelevel(std::string_view bytes) {
  std::string out;
  out.reserve(bytes.size() * 2);
  for (char c : bytes) append_utf8(out, byte_to_cp(uint8_t(c)));
  return out;
}

bool bytelevel_to_bytes(std::string_view s, std::string& out) {
  out.clear();
  for (size_t i = 0; i < s.size();) {
    const int n = utf8_seq_len(s, i);
    if (n == 0) return false;
    const int b = cp_to_byte(decode_utf8_at(s, i, n));
    if (b < 0) return false;
    out.push_back(char(b));
    i += size_t(n);
  }
  return true;
}

}  // namespace dsv3::tok
