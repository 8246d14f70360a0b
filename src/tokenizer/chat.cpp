#include "tokenizer/chat.h"

#include "core/check.h"

namespace dsv3::tok {

using nlohmann::json;

std::vector<ChatMessage> parse_chat_messages(const json& messages) {
  DSV3_CHECK(messages.is_array(), "messages: expected an array of {role, content} objects");
  std::vector<ChatMessage> out;
  for (size_t i = 0; i < messages.size(); ++i) {
    const json& m = messages[i];
    const std::string where = str_cat("messages[", i, "]");
    DSV3_CHECK(m.is_object(), where, ": expected an object");
    DSV3_CHECK(m.contains("role") && m["role"].is_string(), where, ".role: missing or not a string");
    ChatMessage msg;
    msg.role = m["role"].get<std::string>();
    if (m.contains("content") && !m["content"].is_null()) {
      DSV3_CHECK(m["content"].is_string(), where, ".content: expected a string or null");
      msg.content = m["content"].get<std::string>();
    }
    // The template concatenates content for these roles: a missing one is an error there.
    DSV3_CHECK(msg.content || msg.role == "assistant", where, ".content: required for role '",
               msg.role, "'");
    if (m.contains("tool_calls") && !m["tool_calls"].is_null()) {
      DSV3_CHECK(m["tool_calls"].is_array(), where, ".tool_calls: expected an array");
      for (size_t k = 0; k < m["tool_calls"].size(); ++k) {
        const json& t = m["tool_calls"][k];
        const std::string tw = str_cat(where, ".tool_calls[", k, "]");
        DSV3_CHECK(t.is_object() && t.contains("function") && t["function"].is_object(), tw,
                   ".function: missing");
        ToolCall c;
        if (t.contains("type")) {
          DSV3_CHECK(t["type"].is_string(), tw, ".type: expected a string");
          c.type = t["type"].get<std::string>();
        }
        const json& f = t["function"];
        DSV3_CHECK(f.contains("name") && f["name"].is_string(), tw, ".function.name: missing");
        DSV3_CHECK(f.contains("arguments") && f["arguments"].is_string(), tw,
                   ".function.arguments: expected a JSON string");
        c.name = f["name"].get<std::string>();
        c.arguments = f["arguments"].get<std::string>();
        msg.tool_calls.push_back(std::move(c));
      }
    }
    DSV3_CHECK(msg.content || !msg.tool_calls.empty(), where,
               ": an assistant message needs content or tool_calls");
    out.push_back(std::move(msg));
  }
  return out;
}

std::string render_chat_deepseek_v3(const std::vector<ChatMessage>& messages,
                                    bool add_generation_prompt, const std::string& bos_token) {
  // The template's namespace. Note its quirks, kept on purpose: is_first and
  // is_output_first are never reset, so only the first tool call of the conversation opens
  // <｜tool▁calls▁begin｜>, and <｜tool▁calls▁end｜> follows every later call, not the last.
  bool is_first = false, is_tool = false, is_output_first = true, is_first_sp = true;
  std::string system_prompt;
  for (const ChatMessage& m : messages) {
    if (m.role != "system") continue;
    if (!is_first_sp) system_prompt += "\n\n";
    system_prompt += *m.content;
    is_first_sp = false;
  }
  std::string out = bos_token + system_prompt;
  for (const ChatMessage& m : messages) {
    if (m.role == "user") {
      is_tool = false;
      out += "<｜User｜>" + *m.content;
    } else if (m.role == "assistant" && !m.content) {
      is_tool = false;
      for (const ToolCall& t : m.tool_calls) {
        const std::string call = t.type + "<｜tool▁sep｜>" + t.name + "\n```json\n" + t.arguments +
                                 "\n```<｜tool▁call▁end｜>";
        if (!is_first) {
          out += "<｜Assistant｜><｜tool▁calls▁begin｜><｜tool▁call▁begin｜>" + call;
          is_first = true;
        } else {
          out += "\n<｜tool▁call▁begin｜>" + call + "<｜tool▁calls▁end｜><｜end▁of▁sentence｜>";
        }
      }
    } else if (m.role == "assistant") {
      if (is_tool) {
        out += "<｜tool▁outputs▁end｜>" + *m.content + "<｜end▁of▁sentence｜>";
        is_tool = false;
      } else {
        out += "<｜Assistant｜>" + *m.content + "<｜end▁of▁sentence｜>";
      }
    } else if (m.role == "tool") {
      is_tool = true;
      if (is_output_first) {
        out += "<｜tool▁outputs▁begin｜><｜tool▁output▁begin｜>" + *m.content + "<｜tool▁output▁end｜>";
        is_output_first = false;
      } else {
        out += "\n<｜tool▁output▁begin｜>" + *m.content + "<｜tool▁output▁end｜>";
      }
    }
  }
  if (is_tool) out += "<｜tool▁outputs▁end｜>";
  if (add_generation_prompt && !is_tool) out += "<｜Assistant｜>";
  return out;
}

}  // namespace dsv3::tok
