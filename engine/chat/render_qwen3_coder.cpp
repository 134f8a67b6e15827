// Qwen3-Coder chat template (fixtures/qwen3-coder/chat_template.jinja), natively. Tool schemas are
// printed as XML-ish tags; tool-call argument values that are not strings are printed with Python's
// str() (True, None, {'k': 1}), which is why py_str() exists.
#include <fmt/format.h>

#include "engine/chat/render.h"
#include "engine/chat/render_pyformat.h"

namespace trove::chat {
namespace {

const char kDefaultSystem[] = "You are Qwen, a helpful AI assistant that can interact with a computer to solve tasks.";
const char kToolInstructions[] =
    "\n\nIf you choose to call a function ONLY reply in the following format with NO suffix:\n\n<tool_call>\n"
    "<function=example_function_name>\n<parameter=example_parameter_1>\nvalue_1\n</parameter>\n"
    "<parameter=example_parameter_2>\nThis is the value for the second parameter\nthat can span\nmultiple "
    "lines\n</parameter>\n</function>\n</tool_call>\n\n<IMPORTANT>\nReminder:\n- Function calls MUST follow "
    "the specified format: an inner <function=...></function> block must be nested within "
    "<tool_call></tool_call> XML tags\n- Required parameters MUST be specified\n- You may provide optional "
    "reasoning for your function call in natural language BEFORE the function call, but NOT after\n- If "
    "there is no function call available, answer the question like normal with your current knowledge and "
    "do not tell the user about function calls\n</IMPORTANT>";

// The template's render_item_list macro: "\n<tag>[`a`, 1, True]</tag>" for a non-empty iterable.
// Jinja iterates a string by characters and a mapping by keys, so those are handled too.
std::string render_item_list(const Json* list, const char* tag) {
  if (list == nullptr || list->is_null() || list->is_number() || list->is_boolean()) return "";
  std::vector<Json> items;
  if (list->is_array()) {
    for (const auto& v : *list) items.push_back(v);
  } else if (list->is_object()) {
    for (auto it = list->begin(); it != list->end(); ++it) items.emplace_back(it.key());
  } else if (list->is_string()) {
    const std::string& s = list->get_ref<const std::string&>();
    for (size_t i = 0; i < s.size();) {
      size_t n = 1;
      auto b = static_cast<unsigned char>(s[i]);
      if (b >= 0xf0) n = 4; else if (b >= 0xe0) n = 3; else if (b >= 0xc0) n = 2;
      items.emplace_back(s.substr(i, n));
      i += n;
    }
  }
  if (items.empty()) return "";
  std::string out = fmt::format("\n<{}>[", tag);
  for (size_t i = 0; i < items.size(); ++i) {
    if (i) out += ", ";
    out += items[i].is_string() ? "`" + items[i].get<std::string>() + "`" : py_str(items[i]);
  }
  return out + fmt::format("]</{}>", tag);
}

const Json* field(const Json& obj, const char* key) {
  if (!obj.is_object()) return nullptr;
  auto it = obj.find(key);
  return it == obj.end() ? nullptr : &*it;
}

std::string normed_key(const std::string& key) {
  std::string out;
  for (char ch : key) {
    if (ch == '-' || ch == ' ') out += '_';
    else if (ch != '$') out += ch;
  }
  return out;
}

Status render_tool(const Tool& tool, size_t index, std::string& out) {
  const Json* fnp = field(tool.original, "function");
  const Json& fn = fnp ? *fnp : tool.original;
  out += "\n<function>\n<name>" + tool.name + "</name>";
  out += "\n<description>" + py_strip(tool.description) + "</description>";
  out += "\n<parameters>";
  const Json* params = field(fn, "parameters");
  if (params == nullptr || params->is_null())
    return Status::InvalidArgument(fmt::format(
        "qwen3-coder template: tools[{}] (\"{}\") has no parameters; the template requires a parameters "
        "object (use {{\"type\":\"object\",\"properties\":{{}}}})", index, tool.name));
  const Json* props = field(*params, "properties");
  if (props && !props->is_null()) {
    if (!props->is_object())
      return Status::InvalidArgument(fmt::format(
          "qwen3-coder template: tools[{}].parameters.properties must be an object", index));
    for (auto it = props->begin(); it != props->end(); ++it) {
      const Json& pf = it.value();
      if (!pf.is_object())
        return Status::InvalidArgument(fmt::format(
            "qwen3-coder template: tools[{}].parameters.properties.{} must be an object", index, it.key()));
      out += "\n<parameter>\n<name>" + it.key() + "</name>";
      if (const Json* t = field(pf, "type")) out += "\n<type>" + py_str(*t) + "</type>";
      if (const Json* d = field(pf, "description")) out += "\n<description>" + py_strip(py_str(*d)) + "</description>";
      out += render_item_list(field(pf, "enum"), "enum");
      for (auto k = pf.begin(); k != pf.end(); ++k) {
        const std::string& key = k.key();
        if (key == "type" || key == "description" || key == "enum" || key == "required") continue;
        std::string nk = normed_key(key);
        std::string value = k.value().is_object() ? py_json(k.value()) : py_str(k.value());
        out += "\n<" + nk + ">" + value + "</" + nk + ">";
      }
      out += render_item_list(field(pf, "required"), "required");
      out += "\n</parameter>";
    }
  }
  out += render_item_list(field(*params, "required"), "required");
  out += "\n</parameters>";
  if (const Json* r = field(fn, "return")) {
    out += "\n<return>" + (r->is_object() ? py_json(*r) : py_str(*r)) + "</return>";
  }
  out += "\n</function>";
  return Status::Ok();
}

class Qwen3CoderRenderer final : public ChatRenderer {
 public:
  std::string_view name() const override { return "qwen3-coder"; }

  Result<std::string> render(const Conversation& c) const override {
    const auto& msgs = c.messages;
    if (msgs.empty())
      return Status::InvalidArgument(
          "qwen3-coder template: the conversation has no messages; add at least one user message");
    std::string out;
    size_t first = 0;
    bool has_system = msgs[0].role == Role::kSystem;
    if (has_system) {
      first = 1;
      if (msgs[0].content_is_null)
        return Status::InvalidArgument("qwen3-coder template: messages[0] (system) has null content; give it a string");
      out += "<|im_start|>system\n" + msgs[0].content;
    } else if (!c.tools.empty()) {
      out += std::string("<|im_start|>system\n") + kDefaultSystem;
    }
    if (!c.tools.empty()) {
      out += "\n\nYou have access to the following functions:\n\n<tools>";
      for (size_t i = 0; i < c.tools.size(); ++i) TROVE_RETURN_IF_ERROR(render_tool(c.tools[i], i, out));
      out += "\n</tools>";
      out += kToolInstructions;
    }
    if (has_system || !c.tools.empty()) out += "<|im_end|>\n";

    for (size_t i = first; i < msgs.size(); ++i) {
      const Message& m = msgs[i];
      bool last = i + 1 == msgs.size();
      if (m.role == Role::kAssistant && !m.tool_calls.empty()) {
        out += "<|im_start|>assistant";
        std::string trimmed = py_strip(m.content);
        if (!m.content_is_null && !trimmed.empty()) out += "\n" + trimmed + "\n";
        for (size_t k = 0; k < m.tool_calls.size(); ++k) {
          const ToolCall& tc = m.tool_calls[k];
          out += "\n<tool_call>\n<function=" + tc.name + ">\n";
          if (!tc.arguments.is_object())
            return Status::InvalidArgument(fmt::format(
                "qwen3-coder template: messages[{}].tool_calls[{}].arguments must be a JSON object", i, k));
          for (auto it = tc.arguments.begin(); it != tc.arguments.end(); ++it) {
            out += "<parameter=" + it.key() + ">\n" + py_str(it.value()) + "\n</parameter>\n";
          }
          out += "</function>\n</tool_call>";
        }
        out += "<|im_end|>\n";
        continue;
      }
      if (m.content_is_null)
        return Status::InvalidArgument(fmt::format(
            "qwen3-coder template: messages[{}] ({}) has null content; give it a string", i, role_name(m.role)));
      if (m.role == Role::kTool) {
        // loop.previtem is undefined for the first loop message, so no "user" header there.
        if (i > first && msgs[i - 1].role != Role::kTool) out += "<|im_start|>user\n";
        out += "<tool_response>\n" + m.content + "\n</tool_response>\n";
        if (last || msgs[i + 1].role != Role::kTool) out += "<|im_end|>\n";
      } else {
        out += fmt::format("<|im_start|>{}\n{}<|im_end|>\n", role_name(m.role), m.content);
      }
    }
    if (c.options.add_generation_prompt) out += "<|im_start|>assistant\n";
    return out;
  }
};

}  // namespace

std::unique_ptr<ChatRenderer> make_qwen3_coder_renderer() { return std::make_unique<Qwen3CoderRenderer>(); }

}  // namespace trove::chat
