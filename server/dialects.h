// server/dialects.h — what each API dialect sends back: streamed SSE events and whole JSON responses.
//
// Contract:
//  - A DialectWriter serves one request. For a streaming request the server writes start(cached), then
//    on_events() for every batch of OutputParser events in generation order, then finish() once with
//    the final result and parsed message (or error_event() if generation failed). For a non-streaming
//    request only complete() is called. The strings returned are complete SSE events (sse.h).
//  - Tool-call arguments are forwarded as the parser emits them (OpenAI `function.arguments` deltas,
//    Anthropic `input_json_delta`, Responses `function_call_arguments.delta`): never buffered until the
//    call is complete. Reasoning goes to each dialect's reasoning channel.
//  - A malformed tool call (kToolCallError) is returned as plain text content (its raw text), so the
//    client sees what the model wrote instead of losing it.
//  - start(cached_tokens) is called once the prompt's cached prefix is known (the scheduler's kCached
//    event), so Anthropic's message_start reports the same cache_read_input_tokens as message_delta.
//  - Usage reports prompt, cached and generated tokens in the dialect's own field names. Anthropic's
//    thinking blocks carry a placeholder signature (trove does not sign).
//  - A reply cut by the context window (result.context_end) says so in each dialect's words: OpenAI
//    chat `finish_reason: "length"`, Anthropic `stop_reason: "model_context_window_exceeded"`,
//    Responses `status: "failed"` with `error.code: "context_length_exceeded"` (what Codex recognises;
//    `incomplete`/`max_output_tokens` would blame a limit the client never set).
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "engine/chat/conversation.h"
#include "engine/chat/output_parser.h"
#include "server/request.h"
#include "server/scheduler.h"

namespace trove::server {

struct ResponseContext {
  std::string id;       // chatcmpl-…, msg_…, resp_…
  std::string model;
  int64_t created = 0;  // unix seconds
  uint32_t prompt_tokens = 0;
  uint32_t n_ctx = 0;   // the context window, for messages
  // Responses: flat tool names of `namespace` tools → {namespace, name} (ChatJob::namespaced_tools).
  std::map<std::string, std::pair<std::string, std::string>> namespaced_tools;
};

class DialectWriter {
 public:
  virtual ~DialectWriter() = default;
  virtual std::string start(uint32_t cached_tokens) = 0;
  virtual std::string on_events(const std::vector<chat::OutputEvent>& events) = 0;
  virtual std::string finish(const GenerationResult& result, const chat::ParsedMessage& message) = 0;
  virtual std::string error_event(const ApiError& error) = 0;
  virtual chat::Json complete(const GenerationResult& result, const chat::ParsedMessage& message) = 0;
};

std::unique_ptr<DialectWriter> make_openai_chat_writer(ResponseContext ctx, bool include_usage);
std::unique_ptr<DialectWriter> make_anthropic_writer(ResponseContext ctx);
std::unique_ptr<DialectWriter> make_responses_writer(ResponseContext ctx);

// Error bodies in each dialect's shape.
chat::Json openai_error_body(const ApiError& e);
chat::Json anthropic_error_body(const ApiError& e);

// j as compact JSON text. Never throws: a string that is not valid UTF-8 (it cannot come from a request
// body, which is repaired on arrival, but a model file name or a bug could bring one) is written with
// U+FFFD in place of the bad bytes instead of failing the response.
std::string json_text(const chat::Json& j);

// A random id with a prefix: "chatcmpl-" + 24 base62 characters.
std::string random_id(const std::string& prefix);

}  // namespace trove::server
