// Strict JSON for files users hand us (safetensors headers, config.json, the index):
// well-formed UTF-8, bounded nesting, and no duplicate keys in any object — nlohmann keeps
// one of two equal keys silently, which would hide a tensor or a config value.
#pragma once
#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

#include <nlohmann/json.hpp>

namespace dsv3 {

// Parses s[0, n). Errors read "<where>: <what> is not valid JSON (...)" etc.
nlohmann::json parse_json_strict(const uint8_t* s, size_t n, const std::string& where,
                                 const char* what, int max_depth);
inline nlohmann::json parse_json_strict(std::string_view text, const std::string& where,
                                        const char* what, int max_depth = 64) {
  return parse_json_strict(reinterpret_cast<const uint8_t*>(text.data()), text.size(), where,
                           what, max_depth);
}

// Offset of the first byte that is not well-formed UTF-8 (RFC 3629), or npos.
size_t utf8_invalid_at(const uint8_t* s, size_t n);

}  // namespace dsv3
