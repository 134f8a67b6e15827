// Qwen3 (hybrid thinking) chat template, natively. Mirrors tokenizer_config.json's `chat_template`
// statement by statement; comments quote the template where the logic is subtle.
#include <fmt/format.h>

#include "engine/chat/render.h"
#include "engine/chat/render_pyformat.h"

namespace trove::chat {
namespace {

bool starts_with(std::string_view s, std::string_view p) { return s.substr(0, p.size()) == p; }
bool ends_with(std::string_view s, std::string_view p) {
  return s.size() >= p.size() && s.substr(s.size() - p.size()) == p;
}

class Qwen3Renderer final : public ChatRenderer {
 public:
  std::string_view name() const override { return "qwen3"; }

  Result<std::string> render(const Conversation& c) const override {
    const auto& msgs = c.messages;
    if (msgs.empty())
      return Status::InvalidArgument("qwen3 template: the conversation has no messages; add at least one user message");
    for (size_t i = 0; i < msgs.size(); ++i) {
      if (msgs[i].content_is_null && msgs[i].role != Role::kAssistant)
        return Status::InvalidArgument(fmt::format(
            "qwen3 template: messages[{}] ({}) has null content; give it a string", i, role_name(msgs[i].role)));
    }
    std::string out;
    if (!c.tools.empty()) {
      out += "<|im_start|>system\n";
      if (msgs[0].role == Role::kSystem) out += msgs[0].content + "\n\n";
      out += "# Tools\n\nYou may call one or more functions to assist with the user query.\n\n"
             "You are provided with function signatures within <tools></tools> XML tags:\n<tools>";
      for (const Tool& t : c.tools) {
        out += "\n";
        out += py_json(t.original);
      }
      out += "\n</tools>\n\nFor each function call, return a json object with function name and arguments "
             "within <tool_call></tool_call> XML tags:\n<tool_call>\n{\"name\": <function-name>, "
             "\"arguments\": <args-json-object>}\n</tool_call><|im_end|>\n";
    } else if (msgs[0].role == Role::kSystem) {
      out += "<|im_start|>system\n" + msgs[0].content + "<|im_end|>\n";
    }

    // The last "real" user query: a user message that is not just a wrapped tool response. Reasoning of
    // assistant turns at or before it is dropped from history.
    size_t last_query_index = msgs.size() - 1;
    for (size_t k = msgs.size(); k-- > 0;) {
      const Message& m = msgs[k];
      if (m.role == Role::kUser &&
          !(starts_with(m.content, "<tool_response>") && ends_with(m.content, "</tool_response>"))) {
        last_query_index = k;
        break;
      }
    }

    for (size_t i = 0; i < msgs.size(); ++i) {
      const Message& m = msgs[i];
      bool last = i + 1 == msgs.size();
      if (m.role == Role::kUser || (m.role == Role::kSystem && i != 0)) {
        out += fmt::format("<|im_start|>{}\n{}<|im_end|>\n", role_name(m.role), m.content);
      } else if (m.role == Role::kAssistant) {
        // Null content: the official template raises here ('</think>' in None); we treat it as "".
        std::string content = m.content;
        std::string reasoning;
        if (m.reasoning_content) {
          reasoning = *m.reasoning_content;
        } else if (content.find("</think>") != std::string::npos) {
          // content.split('</think>')[-1].lstrip('\n')
          std::string after = content.substr(content.rfind("</think>") + 8);
          // content.split('</think>')[0].rstrip('\n').split('<think>')[-1].lstrip('\n')
          std::string before = py_strip_chars(content.substr(0, content.find("</think>")), '\n', false, true);
          size_t open = before.rfind("<think>");
          if (open != std::string::npos) before = before.substr(open + 7);
          reasoning = py_strip_chars(before, '\n', true, false);
          content = py_strip_chars(after, '\n', true, false);
        }
        if (i > last_query_index && (last || !reasoning.empty())) {
          out += "<|im_start|>assistant\n<think>\n" + py_strip_chars(reasoning, '\n', true, true) +
                 "\n</think>\n\n" + py_strip_chars(content, '\n', true, false);
        } else {
          out += "<|im_start|>assistant\n" + content;
        }
        for (size_t k = 0; k < m.tool_calls.size(); ++k) {
          const ToolCall& tc = m.tool_calls[k];
          if ((k == 0 && !content.empty()) || k > 0) out += "\n";
          out += "<tool_call>\n{\"name\": \"" + tc.name + "\", \"arguments\": ";
          // A string is copied verbatim; anything else goes through tojson.
          out += tc.arguments_text ? *tc.arguments_text : py_json(tc.arguments);
          out += "}\n</tool_call>";
        }
        out += "<|im_end|>\n";
      } else if (m.role == Role::kTool) {
        if (i == 0 || msgs[i - 1].role != Role::kTool) out += "<|im_start|>user";
        out += "\n<tool_response>\n" + m.content + "\n</tool_response>";
        if (last || msgs[i + 1].role != Role::kTool) out += "<|im_end|>\n";
      }
    }
    if (c.options.add_generation_prompt) {
      out += "<|im_start|>assistant\n";
      if (c.options.enable_thinking_given && !c.options.enable_thinking) out += "<think>\n\n</think>\n\n";
    }
    return out;
  }
};

}  // namespace

std::unique_ptr<ChatRenderer> make_qwen3_renderer() { return std::make_unique<Qwen3Renderer>(); }

}  // namespace trove::chat
