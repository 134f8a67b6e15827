#include "server/dialects.h"

#include <random>

#include <fmt/format.h>

#include "server/sse.h"

namespace trove::server {

using chat::Json;
using Kind = chat::OutputEvent::Kind;

std::string json_text(const Json& j) {
  return j.dump(-1, ' ', false, Json::error_handler_t::replace);
}

std::string random_id(const std::string& prefix) {
  static const char kAlphabet[] = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";
  thread_local std::mt19937_64 rng{std::random_device{}()};
  std::string id = prefix;
  for (int i = 0; i < 24; ++i) id += kAlphabet[rng() % 62];
  return id;
}

Json openai_error_body(const ApiError& e) {
  Json err = {{"message", e.message}, {"type", e.type}, {"param", nullptr}, {"code", nullptr}};
  if (!e.param.empty()) err["param"] = e.param;
  if (!e.code.empty()) err["code"] = e.code;
  return {{"error", err}};
}

Json anthropic_error_body(const ApiError& e) {
  std::string type = e.type;
  if (e.status == 401) type = "authentication_error";
  if (e.status == 413) type = "request_too_large";
  if (e.status == 404) type = "not_found_error";
  if (e.status >= 500) type = e.status == 503 ? "overloaded_error" : "api_error";
  return {{"type", "error"}, {"error", {{"type", type}, {"message", e.message}}}};
}

namespace {

// Text of malformed tool calls, returned as content.
std::string content_with_errors(const chat::ParsedMessage& m) {
  std::string c = m.content;
  for (const auto& e : m.errors) c += e.raw;
  return c;
}

// ---------------------------------------------------------------- OpenAI chat completions

class OpenAiChatWriter : public DialectWriter {
 public:
  OpenAiChatWriter(ResponseContext ctx, bool include_usage) : ctx_(std::move(ctx)), include_usage_(include_usage) {}

  std::string start(uint32_t) override { return chunk({{"role", "assistant"}, {"content", ""}}); }

  std::string on_events(const std::vector<chat::OutputEvent>& events) override {
    std::string out;
    for (const auto& ev : events) {
      switch (ev.kind) {
        case Kind::kReasoningDelta: out += chunk({{"reasoning_content", ev.text}}); break;
        case Kind::kContentDelta: out += chunk({{"content", ev.text}}); break;
        case Kind::kToolCallBegin:
          out += chunk({{"tool_calls", Json::array({{{"index", ev.index}, {"id", ev.id}, {"type", "function"},
                                                     {"function", {{"name", ev.name}, {"arguments", ""}}}}})}});
          break;
        case Kind::kToolCallArgumentsDelta:
          out += chunk({{"tool_calls", Json::array({{{"index", ev.index}, {"function", {{"arguments", ev.text}}}}})}});
          break;
        case Kind::kToolCallEnd: break;
        case Kind::kToolCallError: out += chunk({{"content", ev.raw}}); break;
      }
    }
    return out;
  }

  std::string finish(const GenerationResult& r, const chat::ParsedMessage& m) override {
    std::string out = chunk(Json::object(), finish_reason(r, m));
    if (include_usage_) {
      Json c = base("chat.completion.chunk");
      c["choices"] = Json::array();
      c["usage"] = usage(r);
      out += sse_event("", json_text(c));
    }
    return out + sse_done();
  }

  std::string error_event(const ApiError& e) override { return sse_event("", json_text(openai_error_body(e))) + sse_done(); }

  Json complete(const GenerationResult& r, const chat::ParsedMessage& m) override {
    Json msg = {{"role", "assistant"}, {"content", content_with_errors(m)}};
    if (!m.reasoning.empty()) msg["reasoning_content"] = m.reasoning;
    if (!m.tool_calls.empty()) {
      Json calls = Json::array();
      for (const auto& c : m.tool_calls) {
        calls.push_back({{"id", c.id}, {"type", "function"}, {"function", {{"name", c.name}, {"arguments", c.arguments}}}});
      }
      msg["tool_calls"] = calls;
      if (m.content.empty() && m.errors.empty()) msg["content"] = nullptr;
    }
    Json j = base("chat.completion");
    j["choices"] = Json::array({{{"index", 0}, {"message", msg}, {"logprobs", nullptr},
                                 {"finish_reason", finish_reason(r, m)}}});
    j["usage"] = usage(r);
    return j;
  }

 private:
  static const char* finish_reason(const GenerationResult& r, const chat::ParsedMessage& m) {
    if (!m.tool_calls.empty()) return "tool_calls";
    return r.finish == FinishReason::kLength ? "length" : "stop";
  }
  Json base(const char* object) const {
    return {{"id", ctx_.id}, {"object", object}, {"created", ctx_.created}, {"model", ctx_.model},
            {"system_fingerprint", "trove"}};
  }
  Json usage(const GenerationResult& r) const {
    return {{"prompt_tokens", r.prompt_tokens},
            {"completion_tokens", r.generated_tokens},
            {"total_tokens", r.prompt_tokens + r.generated_tokens},
            {"prompt_tokens_details", {{"cached_tokens", r.cached_tokens}}}};
  }
  std::string chunk(Json delta, const char* finish = nullptr) const {
    Json c = base("chat.completion.chunk");
    Json choice = {{"index", 0}, {"delta", std::move(delta)}, {"logprobs", nullptr}, {"finish_reason", nullptr}};
    if (finish) choice["finish_reason"] = finish;
    c["choices"] = Json::array({choice});
    return sse_event("", json_text(c));
  }

  ResponseContext ctx_;
  bool include_usage_;
};

// ---------------------------------------------------------------- Anthropic messages

constexpr const char* kThinkingSignature = "trove-unsigned";

class AnthropicWriter : public DialectWriter {
 public:
  explicit AnthropicWriter(ResponseContext ctx) : ctx_(std::move(ctx)) {}

  std::string start(uint32_t cached_tokens) override {
    Json msg = message_shell();
    msg["usage"] = usage_json(ctx_.prompt_tokens, cached_tokens, 0);
    return ev("message_start", {{"type", "message_start"}, {"message", msg}}) + ev("ping", {{"type", "ping"}});
  }

  std::string on_events(const std::vector<chat::OutputEvent>& events) override {
    std::string out;
    for (const auto& e : events) {
      switch (e.kind) {
        case Kind::kReasoningDelta:
          out += open(Block::kThinking, {{"type", "thinking"}, {"thinking", ""}, {"signature", ""}});
          out += delta({{"type", "thinking_delta"}, {"thinking", e.text}});
          break;
        case Kind::kContentDelta:
          out += open(Block::kText, {{"type", "text"}, {"text", ""}});
          out += delta({{"type", "text_delta"}, {"text", e.text}});
          break;
        case Kind::kToolCallError:
          out += open(Block::kText, {{"type", "text"}, {"text", ""}});
          out += delta({{"type", "text_delta"}, {"text", e.raw}});
          break;
        case Kind::kToolCallBegin:
          out += close();
          out += open(Block::kTool, {{"type", "tool_use"}, {"id", tool_id(e.id)}, {"name", e.name}, {"input", Json::object()}});
          break;
        case Kind::kToolCallArgumentsDelta:
          out += delta({{"type", "input_json_delta"}, {"partial_json", e.text}});
          break;
        case Kind::kToolCallEnd: out += close(); break;
      }
    }
    return out;
  }

  std::string finish(const GenerationResult& r, const chat::ParsedMessage& m) override {
    std::string out = close();
    Json d = {{"type", "message_delta"}, {"delta", {{"stop_reason", stop_reason(r, m)}, {"stop_sequence", stop_sequence(r)}}},
              {"usage", usage_json(r.prompt_tokens, r.cached_tokens, r.generated_tokens)}};
    out += ev("message_delta", d);
    out += ev("message_stop", {{"type", "message_stop"}});
    return out;
  }

  std::string error_event(const ApiError& e) override { return ev("error", anthropic_error_body(e)); }

  Json complete(const GenerationResult& r, const chat::ParsedMessage& m) override {
    Json msg = message_shell();
    Json content = Json::array();
    if (!m.reasoning.empty()) content.push_back({{"type", "thinking"}, {"thinking", m.reasoning}, {"signature", kThinkingSignature}});
    const std::string text = content_with_errors(m);
    if (!text.empty()) content.push_back({{"type", "text"}, {"text", text}});
    for (const auto& c : m.tool_calls) {
      content.push_back({{"type", "tool_use"}, {"id", tool_id(c.id)}, {"name", c.name},
                         {"input", Json::parse(c.arguments)}});
    }
    msg["content"] = content;
    msg["stop_reason"] = stop_reason(r, m);
    msg["stop_sequence"] = stop_sequence(r);
    msg["usage"] = usage_json(r.prompt_tokens, r.cached_tokens, r.generated_tokens);
    return msg;
  }

 private:
  enum class Block { kNone, kThinking, kText, kTool };

  static std::string tool_id(const std::string& call_id) {
    return call_id.rfind("call_", 0) == 0 ? "toolu_" + call_id.substr(5) : call_id;
  }
  static const char* stop_reason(const GenerationResult& r, const chat::ParsedMessage& m) {
    if (!m.tool_calls.empty()) return "tool_use";
    if (!r.stop_sequence.empty()) return "stop_sequence";
    if (r.finish == FinishReason::kLength) return r.context_end ? "model_context_window_exceeded" : "max_tokens";
    return "end_turn";
  }
  static Json stop_sequence(const GenerationResult& r) {
    return r.stop_sequence.empty() ? Json(nullptr) : Json(r.stop_sequence);
  }
  Json message_shell() const {
    return {{"id", ctx_.id}, {"type", "message"}, {"role", "assistant"}, {"model", ctx_.model},
            {"content", Json::array()}, {"stop_reason", nullptr}, {"stop_sequence", nullptr}};
  }
  static Json usage_json(uint32_t prompt, uint32_t cached, uint32_t generated) {
    // Anthropic counts input_tokens as the uncached part of the prompt.
    return {{"input_tokens", prompt - cached}, {"cache_creation_input_tokens", 0},
            {"cache_read_input_tokens", cached}, {"output_tokens", generated}};
  }
  static std::string ev(const char* name, const Json& data) { return sse_event(name, json_text(data)); }
  std::string open(Block b, Json content_block) {
    if (block_ == b && b != Block::kTool) return "";
    std::string out = close();
    block_ = b;
    out += ev("content_block_start", {{"type", "content_block_start"}, {"index", index_}, {"content_block", content_block}});
    return out;
  }
  std::string delta(Json d) {
    return ev("content_block_delta", {{"type", "content_block_delta"}, {"index", index_}, {"delta", std::move(d)}});
  }
  std::string close() {
    if (block_ == Block::kNone) return "";
    std::string out;
    if (block_ == Block::kThinking) out += delta({{"type", "signature_delta"}, {"signature", kThinkingSignature}});
    out += ev("content_block_stop", {{"type", "content_block_stop"}, {"index", index_}});
    block_ = Block::kNone;
    ++index_;
    return out;
  }

  ResponseContext ctx_;
  Block block_ = Block::kNone;
  int index_ = 0;
};

// ---------------------------------------------------------------- OpenAI Responses

class ResponsesWriter : public DialectWriter {
 public:
  explicit ResponsesWriter(ResponseContext ctx) : ctx_(std::move(ctx)) {}

  std::string start(uint32_t) override {
    Json r = response_shell("in_progress");
    return ev("response.created", {{"response", r}}) + ev("response.in_progress", {{"response", r}});
  }

  std::string on_events(const std::vector<chat::OutputEvent>& events) override {
    std::string out;
    for (const auto& e : events) {
      switch (e.kind) {
        case Kind::kReasoningDelta:
          out += open(Item::kReasoning, "");
          text_ += e.text;
          out += ev("response.reasoning_text.delta", {{"item_id", item_id_}, {"output_index", output_index_},
                                                       {"content_index", 0}, {"delta", e.text}});
          break;
        case Kind::kContentDelta:
        case Kind::kToolCallError: {
          const std::string& t = e.kind == Kind::kContentDelta ? e.text : e.raw;
          out += open(Item::kMessage, "");
          text_ += t;
          out += ev("response.output_text.delta", {{"item_id", item_id_}, {"output_index", output_index_},
                                                   {"content_index", 0}, {"delta", t}, {"logprobs", Json::array()}});
          break;
        }
        case Kind::kToolCallBegin:
          out += close();
          call_id_ = e.id;
          name_ = e.name;
          out += open(Item::kCall, e.id);
          break;
        case Kind::kToolCallArgumentsDelta:
          text_ += e.text;
          out += ev("response.function_call_arguments.delta",
                    {{"item_id", item_id_}, {"output_index", output_index_}, {"delta", e.text}});
          break;
        case Kind::kToolCallEnd: out += close(); break;
      }
    }
    return out;
  }

  std::string finish(const GenerationResult& r, const chat::ParsedMessage& m) override {
    std::string out = close();
    (void)m;
    Json resp = response_shell(status(r));
    resp["output"] = output_;
    resp["usage"] = usage(r);
    if (r.finish == FinishReason::kLength && r.context_end) {
      resp["error"] = context_error();
      return out + ev("response.failed", {{"response", resp}});
    }
    if (r.finish == FinishReason::kLength) {
      resp["incomplete_details"] = {{"reason", "max_output_tokens"}};
      return out + ev("response.incomplete", {{"response", resp}});
    }
    return out + ev("response.completed", {{"response", resp}});
  }

  std::string error_event(const ApiError& e) override {
    Json resp = response_shell("failed");
    resp["error"] = {{"code", "server_error"}, {"message", e.message}};
    return ev("response.failed", {{"response", resp}});
  }

  Json complete(const GenerationResult& r, const chat::ParsedMessage& m) override {
    Json resp = response_shell(status(r));
    Json output = Json::array();
    if (!m.reasoning.empty()) {
      output.push_back({{"id", random_id("rs_")}, {"type", "reasoning"}, {"summary", Json::array()},
                        {"content", Json::array({{{"type", "reasoning_text"}, {"text", m.reasoning}}})}});
    }
    const std::string text = content_with_errors(m);
    if (!text.empty()) output.push_back(message_item(random_id("msg_"), text, "completed"));
    for (const auto& c : m.tool_calls) {
      output.push_back(call_item("fc_" + c.id, "completed", c.id, c.name, c.arguments));
    }
    resp["output"] = output;
    resp["usage"] = usage(r);
    if (r.finish == FinishReason::kLength && r.context_end) resp["error"] = context_error();
    else if (r.finish == FinishReason::kLength) resp["incomplete_details"] = {{"reason", "max_output_tokens"}};
    return resp;
  }

 private:
  enum class Item { kNone, kReasoning, kMessage, kCall };

  static const char* status(const GenerationResult& r) {
    if (r.finish != FinishReason::kLength) return "completed";
    return r.context_end ? "failed" : "incomplete";
  }
  Json context_error() const {
    return {{"code", "context_length_exceeded"},
            {"message", fmt::format("the reply reached the end of the model's context window ({} tokens); compact "
                                    "or shorten the conversation, or restart trove serve with a larger --ctx",
                                    ctx_.n_ctx)}};
  }
  // A function_call item; a function of a `namespace` tool is named back as {namespace, name}.
  Json call_item(const std::string& id, const char* status, const std::string& call_id, const std::string& name,
                 const std::string& arguments) const {
    Json item = {{"id", id}, {"type", "function_call"}, {"status", status}, {"call_id", call_id},
                 {"name", name}, {"arguments", arguments}};
    if (auto it = ctx_.namespaced_tools.find(name); it != ctx_.namespaced_tools.end()) {
      item["namespace"] = it->second.first;
      item["name"] = it->second.second;
    }
    return item;
  }

  Json response_shell(const char* status) const {
    return {{"id", ctx_.id}, {"object", "response"}, {"created_at", ctx_.created}, {"status", status},
            {"model", ctx_.model}, {"output", Json::array()}, {"parallel_tool_calls", true},
            {"tool_choice", "auto"}, {"tools", Json::array()}, {"usage", nullptr}, {"error", nullptr},
            {"incomplete_details", nullptr}};
  }
  static Json message_item(const std::string& id, const std::string& text, const char* status) {
    Json content = Json::array();
    if (std::string(status) == "completed") {
      content.push_back({{"type", "output_text"}, {"text", text}, {"annotations", Json::array()}});
    }
    return {{"id", id}, {"type", "message"}, {"status", status}, {"role", "assistant"}, {"content", content}};
  }
  static Json usage(const GenerationResult& r) {
    return {{"input_tokens", r.prompt_tokens},
            {"input_tokens_details", {{"cached_tokens", r.cached_tokens}}},
            {"output_tokens", r.generated_tokens},
            {"output_tokens_details", {{"reasoning_tokens", 0}}},
            {"total_tokens", r.prompt_tokens + r.generated_tokens}};
  }
  std::string ev(const char* type, Json data) {
    Json j = {{"type", type}, {"sequence_number", seq_++}};
    for (auto& [k, v] : data.items()) j[k] = v;
    return sse_event(type, json_text(j));
  }
  Json item_json(bool done) const {
    const char* status = done ? "completed" : "in_progress";
    switch (item_) {
      case Item::kReasoning: {
        Json content = Json::array();
        if (done) content.push_back({{"type", "reasoning_text"}, {"text", text_}});
        return {{"id", item_id_}, {"type", "reasoning"}, {"summary", Json::array()}, {"content", content}};
      }
      case Item::kMessage: return message_item(item_id_, text_, status);
      case Item::kCall: return call_item(item_id_, status, call_id_, name_, done ? text_ : "");
      case Item::kNone: break;
    }
    return Json::object();
  }
  std::string open(Item it, const std::string& call_id) {
    if (item_ == it && it != Item::kCall) return "";
    std::string out = close();
    item_ = it;
    text_.clear();
    item_id_ = it == Item::kCall ? "fc_" + call_id : random_id(it == Item::kReasoning ? "rs_" : "msg_");
    out += ev("response.output_item.added", {{"output_index", output_index_}, {"item", item_json(false)}});
    if (it == Item::kMessage) {
      out += ev("response.content_part.added",
                {{"item_id", item_id_}, {"output_index", output_index_}, {"content_index", 0},
                 {"part", {{"type", "output_text"}, {"text", ""}, {"annotations", Json::array()}}}});
    }
    return out;
  }
  std::string close() {
    if (item_ == Item::kNone) return "";
    std::string out;
    const Json base = {{"item_id", item_id_}, {"output_index", output_index_}};
    if (item_ == Item::kReasoning) {
      Json d = base;
      d["content_index"] = 0;
      d["text"] = text_;
      out += ev("response.reasoning_text.done", d);
    } else if (item_ == Item::kMessage) {
      Json d = base;
      d["content_index"] = 0;
      d["text"] = text_;
      d["logprobs"] = Json::array();
      out += ev("response.output_text.done", d);
      Json p = base;
      p["content_index"] = 0;
      p["part"] = {{"type", "output_text"}, {"text", text_}, {"annotations", Json::array()}};
      out += ev("response.content_part.done", p);
    } else if (item_ == Item::kCall) {
      Json d = base;
      d["arguments"] = text_;
      out += ev("response.function_call_arguments.done", d);
    }
    Json item = item_json(true);
    output_.push_back(item);
    out += ev("response.output_item.done", {{"output_index", output_index_}, {"item", item}});
    item_ = Item::kNone;
    ++output_index_;
    return out;
  }

  ResponseContext ctx_;
  int seq_ = 0;
  Item item_ = Item::kNone;
  int output_index_ = 0;
  std::string item_id_, text_, call_id_, name_;
  Json output_ = Json::array();
};

}  // namespace

std::unique_ptr<DialectWriter> make_openai_chat_writer(ResponseContext ctx, bool include_usage) {
  return std::make_unique<OpenAiChatWriter>(std::move(ctx), include_usage);
}
std::unique_ptr<DialectWriter> make_anthropic_writer(ResponseContext ctx) {
  return std::make_unique<AnthropicWriter>(std::move(ctx));
}
std::unique_ptr<DialectWriter> make_responses_writer(ResponseContext ctx) {
  return std::make_unique<ResponsesWriter>(std::move(ctx));
}

}  // namespace trove::server
