// UTF-8 helpers and the GPT-2 byte-level alphabet (bytes <-> printable code points) that
// Hugging Face's ByteLevel pre-tokenizer and decoder use.
#pragma once
#include <cstdint>
#include <string>
#include <string_view>

namespace dsv3::tok {

// Appends the UTF-8 encoding of code point cp (must be a valid scalar value).
void append_utf8(std::string& out, uint32_t cp);

// Length of the valid UTF-8 sequence starting at s[i], or 0 when the bytes there are not
// a complete, well-formed sequence (overlong, surrogate, > U+10FFFF, truncated).
int utf8_seq_len(std::string_view s, size_t i);

// Decodes the code point of a sequence already known to be valid (utf8_seq_len > 0).
uint32_t decode_utf8_at(std::string_view s, size_t i, int len);

// True when s is entirely well-formed UTF-8.
bool is_valid_utf8(std::string_view s);

// Replaces each maximal ill-formed subpart with U+FFFD — the Unicode "best practice"
// (§3.9, U+FFFD substitution of maximal subparts) used by Rust's String::from_utf8_lossy,
// WHATWG TextDecoder and Python's errors="replace". Valid input is returned unchanged.
std::string utf8_lossy(std::string_view s);

// Number of bytes at the end of s that form an incomplete (but so far well-formed) prefix
// of a UTF-8 sequence: what a streaming decoder must hold back. 0..3.
int utf8_incomplete_tail(std::string_view s);

// The byte-level alphabet: byte b is shown as code point byte_to_cp(b) (printable bytes map
// to themselves, the others to U+0100 + n), the inverse returns -1 for code points outside it.
uint32_t byte_to_cp(uint8_t b);
int cp_to_byte(uint32_t cp);

// Raw bytes -> byte-level string (each byte as its alphabet code point in UTF-8).
std::string bytes_to_bytelevel(std::string_view bytes);
// Byte-level string -> raw bytes; false when a code point is outside the alphabet
// (out is then unspecified).
bool bytelevel_to_bytes(std::string_view s, std::string& out);

}  // namespace dsv3::tok
