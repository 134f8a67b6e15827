// server/request.h — the three API dialects' request bodies, checked and turned into one neutral job.
//
// Contract:
//  - parse_openai_chat / parse_anthropic_messages / parse_responses take the decoded JSON body and
//    return a ChatJob, or an ApiError (HTTP 400) whose message names the JSON path of the offending
//    field, what is wrong and what to send instead ("max_tokens: must be an integer >= 1, got a string").
//  - Unknown fields are ignored. Known fields are either honoured or documented as ignored in
//    docs/api.md. A field sent as null counts as absent.
//  - Every dialect is converted to the OpenAI-style conversation JSON that chat::from_openai_json reads
//    (Anthropic content blocks, Responses input items → messages with tool_calls / tool messages), so
//    the renderers see one shape.
//  - Sampling defaults (when the client sends none) are Qwen3's recommended ones: temperature 0.7,
//    top_p 0.8, top_k 20. top_k is capped at 64 (the engine's sampler limit).
//  - What agent clients send that is not for the model stays out of the prompt (docs/api.md):
//    Claude Code's `x-anthropic-billing-header: …` system block (it changes with every prompt, so
//    kept in it would stop every session from sharing the cached system prompt and tools) and
//    Anthropic tools marked `defer_loading: true`. Codex's `type: "namespace"` tools are offered as
//    their functions under flat names `NAMESPACE__NAME` (ChatJob::namespaced_tools maps them back).
#pragma once

#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "engine/chat/conversation.h"
#include "engine/runtime/engine.h"

namespace trove::server {

struct ApiError {
  int status = 400;
  std::string message;
  std::string param;                        // JSON path, when one field is at fault
  std::string type = "invalid_request_error";
  std::string code;                         // OpenAI `code` (e.g. context_length_exceeded); empty: null
};

struct ChatJob {
  chat::Conversation conversation;
  std::string model;                        // echoed back; trove serves one model whatever is asked
  std::optional<uint32_t> max_tokens;       // absent: until the context is full
  engine::Sampling sampling;
  std::vector<std::string> stop;
  bool stream = false;
  bool include_usage = false;               // OpenAI stream_options.include_usage
  std::optional<std::string> force_output;  // test hook field `trove_force_output`
  // tool_choice required / any / a named tool: the reply starts inside a tool call (of that tool).
  bool require_tool_call = false;
  std::string required_tool;
  // Responses `namespace` tools: the flat name the model sees → {namespace, function name}.
  std::map<std::string, std::pair<std::string, std::string>> namespaced_tools;
};

// The flat name of a function inside a Responses `namespace` tool, as Codex flattens it:
// "multi_agent_v1" + "spawn_agent" → "multi_agent_v1__spawn_agent".
std::string namespaced_tool_name(const std::string& ns, const std::string& name);

// Either a job or the error to send.
struct ParsedRequest {
  std::optional<ChatJob> job;
  ApiError error;
  bool ok() const { return job.has_value(); }
};

ParsedRequest parse_openai_chat(const chat::Json& body);
ParsedRequest parse_anthropic_messages(const chat::Json& body);
// count_tokens takes the same body minus max_tokens.
ParsedRequest parse_anthropic_count_tokens(const chat::Json& body);
ParsedRequest parse_responses(const chat::Json& body);

// The OpenAI `tools` array (the form OutputParserOptions::tools reads) for the conversation's tools.
nlohmann::json tools_for_parser(const chat::Conversation& conversation);

}  // namespace trove::server
