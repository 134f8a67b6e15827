// Conversation: the neutral, dialect-free form of a chat request that the renderers turn into a prompt.
//
// Contract:
// - A Conversation holds messages in order (system, user, assistant, tool), the tools offered (JSON
//   Schema, key order preserved) and the rendering options. It carries no template-specific state.
// - Tool-call arguments are kept both as a parsed JSON object (`arguments`) and, when the client sent
//   them as a JSON string, as that original text (`arguments_text`), because Qwen3's template copies a
//   string verbatim while Qwen3-Coder's walks the object.
// - Content that the client sent as null is recorded with `content_is_null` so renderers can reproduce
//   (or document deviations from) what the official templates do with it.
// - from_openai_json() accepts `{messages, tools?, enable_thinking?, add_generation_prompt?}` with
//   OpenAI-style messages (roles system/developer/user/assistant/tool; content a string, null, or a list
//   of text parts) and reports bad input with a JSON path ("messages[2].tool_calls[0].function.name").
#pragma once

#include <optional>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "common/status.h"

namespace trove::chat {

// ordered_json: templates print objects in the client's key order (tojson / dict iteration).
using Json = nlohmann::ordered_json;

enum class Role { kSystem, kUser, kAssistant, kTool };

struct ToolCall {
  std::string id;
  std::string name;
  Json arguments = Json::object();            // parsed arguments (any JSON value; normally an object)
  std::optional<std::string> arguments_text;  // original text when the client sent a JSON string
};

struct Message {
  Role role = Role::kUser;
  std::string content;
  bool content_is_null = false;
  std::optional<std::string> reasoning_content;  // assistant only
  std::vector<ToolCall> tool_calls;              // assistant only
  std::string tool_call_id;                      // tool only
  std::string name;                              // tool only (function name), optional
};

struct Tool {
  std::string name;
  std::string description;
  Json parameters = Json::object();
  // The whole tool entry exactly as the client sent it ({"type":"function","function":{...}} or a bare
  // function object); Qwen3 prints it with tojson, so it must keep the client's shape and key order.
  Json original;
};

struct RenderOptions {
  bool enable_thinking = true;
  bool enable_thinking_given = false;  // Qwen3 only writes the empty think block when it is explicitly false
  bool add_generation_prompt = true;
};

struct Conversation {
  std::vector<Message> messages;
  std::vector<Tool> tools;
  RenderOptions options;
};

const char* role_name(Role role);

// Parses the `trove render` / OpenAI chat-completions shape. Errors name the JSON path and the fix.
Result<Conversation> from_openai_json(const Json& request);

}  // namespace trove::chat
