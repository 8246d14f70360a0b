// DeepSeek-V3's chat format: the logic of the Jinja chat_template in its
// tokenizer_config.json, written out in C++ (not a general Jinja engine). Tested against
// the real template rendered by @huggingface/jinja (tests/data/tokenizer/chat_cases.jsonl).
#pragma once
#include <optional>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

namespace dsv3::tok {

struct ToolCall {
  std::string type = "function";
  std::string name;
  std::string arguments;  // JSON text, pasted verbatim into the ```json block
};

struct ChatMessage {
  std::string role;                    // system | user | assistant | tool (others ignored)
  std::optional<std::string> content;  // null for an assistant turn that only calls tools
  std::vector<ToolCall> tool_calls;
};

// OpenAI-style messages: [{"role", "content" (string or null), "tool_calls":
// [{"type", "function": {"name", "arguments" (string)}}]}]. Errors name the field.
std::vector<ChatMessage> parse_chat_messages(const nlohmann::json& messages);

// The prompt text the template renders. bos_token: tokenizer_config's (DeepSeek-V3:
// "<｜begin▁of▁sentence｜>"); tokenize the result without adding special tokens.
std::string render_chat_deepseek_v3(const std::vector<ChatMessage>& messages,
                                    bool add_generation_prompt,
                                    const std::string& bos_token = "<｜begin▁of▁sentence｜>");

}  // namespace dsv3::tok
