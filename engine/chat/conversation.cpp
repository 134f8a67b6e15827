#include "engine/chat/conversation.h"

#include <fmt/format.h>

namespace trove::chat {

const char* role_name(Role role) {
  switch (role) {
    case Role::kSystem: return "system";
    case Role::kUser: return "user";
    case Role::kAssistant: return "assistant";
    case Role::kTool: return "tool";
  }
  return "?";
}

namespace {

Status bad(const std::string& path, const std::string& problem) {
  return Status::InvalidArgument(fmt::format("conversation: {}: {}", path, problem));
}

// content: a string, null, or a list of {"type":"text","text":...} parts (concatenated, as the
// OpenAI API defines). Other part types cannot be rendered by a text model: reject them by path.
Status read_content(const Json& m, const std::string& path, Message& out) {
  auto it = m.find("content");
  if (it == m.end() || it->is_null()) {
    out.content_is_null = true;
    return Status::Ok();
  }
  if (it->is_string()) {
    out.content = it->get<std::string>();
    return Status::Ok();
  }
  if (it->is_array()) {
    for (size_t i = 0; i < it->size(); ++i) {
      const Json& part = (*it)[i];
      std::string pp = fmt::format("{}.content[{}]", path, i);
      if (!part.is_object()) return bad(pp, "a content part must be an object {\"type\":\"text\",\"text\":...}");
      auto type = part.find("type");
      if (type == part.end() || !type->is_string() || *type != "text")
        return bad(pp + ".type", "only \"text\" content parts are supported by a text model");
      auto text = part.find("text");
      if (text == part.end() || !text->is_string()) return bad(pp + ".text", "must be a string");
      out.content += text->get<std::string>();
    }
    return Status::Ok();
  }
  return bad(path + ".content", "must be a string, null or a list of text parts");
}

Result<std::string> required_string(const Json& obj, const char* key, const std::string& path) {
  auto it = obj.find(key);
  if (it == obj.end()) return bad(fmt::format("{}.{}", path, key), "is missing; add it as a string");
  if (!it->is_string()) return bad(fmt::format("{}.{}", path, key), "must be a string");
  return it->get<std::string>();
}

Status read_tool_call(const Json& tc, const std::string& path, ToolCall& out) {
  if (!tc.is_object()) return bad(path, "a tool call must be an object {id, type, function:{name, arguments}}");
  if (auto id = tc.find("id"); id != tc.end()) {
    if (!id->is_string()) return bad(path + ".id", "must be a string");
    out.id = id->get<std::string>();
  }
  const Json* fn = &tc;
  std::string fpath = path;
  if (auto f = tc.find("function"); f != tc.end()) {
    if (!f->is_object()) return bad(path + ".function", "must be an object {name, arguments}");
    fn = &*f;
    fpath = path + ".function";
  }
  auto name = required_string(*fn, "name", fpath);
  if (!name.ok()) return name.status();
  out.name = *name;
  auto args = fn->find("arguments");
  if (args == fn->end() || args->is_null()) {
    out.arguments = Json::object();
  } else if (args->is_string()) {
    out.arguments_text = args->get<std::string>();
    Json parsed = Json::parse(*out.arguments_text, nullptr, /*allow_exceptions=*/false);
    if (parsed.is_discarded())
      return bad(fpath + ".arguments", "is a string but not valid JSON; send a JSON object or its JSON text");
    out.arguments = std::move(parsed);
  } else {
    out.arguments = *args;
  }
  return Status::Ok();
}

Status read_message(const Json& m, const std::string& path, Message& out) {
  if (!m.is_object()) return bad(path, "a message must be an object with a \"role\"");
  auto role = required_string(m, "role", path);
  if (!role.ok()) return role.status();
  const std::string& r = *role;
  if (r == "system" || r == "developer") {
    out.role = Role::kSystem;
  } else if (r == "user") {
    out.role = Role::kUser;
  } else if (r == "assistant") {
    out.role = Role::kAssistant;
  } else if (r == "tool") {
    out.role = Role::kTool;
  } else {
    return bad(path + ".role", fmt::format("unknown role \"{}\"; use system, developer, user, assistant or tool", r));
  }
  TROVE_RETURN_IF_ERROR(read_content(m, path, out));
  if (out.role == Role::kAssistant) {
    if (auto rc = m.find("reasoning_content"); rc != m.end() && !rc->is_null()) {
      if (!rc->is_string()) return bad(path + ".reasoning_content", "must be a string or null");
      out.reasoning_content = rc->get<std::string>();
    }
    if (auto tcs = m.find("tool_calls"); tcs != m.end() && !tcs->is_null()) {
      if (!tcs->is_array()) return bad(path + ".tool_calls", "must be a list of tool calls");
      for (size_t i = 0; i < tcs->size(); ++i) {
        ToolCall tc;
        TROVE_RETURN_IF_ERROR(read_tool_call((*tcs)[i], fmt::format("{}.tool_calls[{}]", path, i), tc));
        out.tool_calls.push_back(std::move(tc));
      }
    }
  }
  if (out.role == Role::kTool) {
    if (auto id = m.find("tool_call_id"); id != m.end() && !id->is_null()) {
      if (!id->is_string()) return bad(path + ".tool_call_id", "must be a string");
      out.tool_call_id = id->get<std::string>();
    }
    if (auto n = m.find("name"); n != m.end() && !n->is_null()) {
      if (!n->is_string()) return bad(path + ".name", "must be a string");
      out.name = n->get<std::string>();
    }
  }
  return Status::Ok();
}

Status read_tool(const Json& t, const std::string& path, Tool& out) {
  if (!t.is_object()) return bad(path, "a tool must be an object {\"type\":\"function\",\"function\":{...}}");
  out.original = t;
  const Json* fn = &t;
  std::string fpath = path;
  if (auto f = t.find("function"); f != t.end()) {
    if (!f->is_object()) return bad(path + ".function", "must be an object {name, description, parameters}");
    fn = &*f;
    fpath = path + ".function";
  }
  auto name = required_string(*fn, "name", fpath);
  if (!name.ok()) return name.status();
  out.name = *name;
  if (auto d = fn->find("description"); d != fn->end() && !d->is_null()) {
    if (!d->is_string()) return bad(fpath + ".description", "must be a string");
    out.description = d->get<std::string>();
  }
  if (auto p = fn->find("parameters"); p != fn->end() && !p->is_null()) {
    if (!p->is_object()) return bad(fpath + ".parameters", "must be a JSON Schema object");
    out.parameters = *p;
  }
  return Status::Ok();
}

}  // namespace

Result<Conversation> from_openai_json(const Json& request) {
  if (!request.is_object()) return bad("$", "the conversation must be a JSON object {\"messages\": [...]}");
  Conversation c;
  auto msgs = request.find("messages");
  if (msgs == request.end() || !msgs->is_array())
    return bad("messages", "is missing or not a list; add \"messages\": [{\"role\":\"user\",\"content\":\"...\"}]");
  for (size_t i = 0; i < msgs->size(); ++i) {
    Message m;
    TROVE_RETURN_IF_ERROR(read_message((*msgs)[i], fmt::format("messages[{}]", i), m));
    c.messages.push_back(std::move(m));
  }
  if (auto tools = request.find("tools"); tools != request.end() && !tools->is_null()) {
    if (!tools->is_array()) return bad("tools", "must be a list of tools");
    for (size_t i = 0; i < tools->size(); ++i) {
      Tool t;
      TROVE_RETURN_IF_ERROR(read_tool((*tools)[i], fmt::format("tools[{}]", i), t));
      c.tools.push_back(std::move(t));
    }
  }
  if (auto et = request.find("enable_thinking"); et != request.end() && !et->is_null()) {
    if (!et->is_boolean()) return bad("enable_thinking", "must be true or false");
    c.options.enable_thinking = et->get<bool>();
    c.options.enable_thinking_given = true;
  }
  if (auto gp = request.find("add_generation_prompt"); gp != request.end() && !gp->is_null()) {
    if (!gp->is_boolean()) return bad("add_generation_prompt", "must be true or false");
    c.options.add_generation_prompt = gp->get<bool>();
  }
  return c;
}

}  // namespace trove::chat
