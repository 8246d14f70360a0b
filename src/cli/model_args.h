// Helpers the model commands (score, generate, chat, bench decode/prefill) share.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

namespace dsv3::cli {

// "5,17,3" -> {5, 17, 3}; spaces allowed around commas. Throws dsv3::Error naming the bad
// entry (not an integer, negative, out of int32 range) or an empty list.
std::vector<int32_t> parse_id_list(const std::string& s, const std::string& flag = "--ids");

// Parses "naive" | "absorbed" | "auto".
int parse_attn_form(const std::string& s);

}  // namespace dsv3::cli
