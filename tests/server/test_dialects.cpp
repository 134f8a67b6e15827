// The dialect writers (server/dialects.h): event order, ids, usage and the non-streamed shapes, fed
// with OutputParser events as the server does.
#include "server/dialects.h"

#include <gtest/gtest.h>

namespace {

using trove::chat::Json;
using namespace trove::server;
using trove::chat::OutputEvent;
using K = OutputEvent::Kind;

struct Sse {
  std::string event;
  std::string data;
};

std::vector<Sse> split(const std::string& s) {
  std::vector<Sse> out;
  size_t at = 0;
  while (at < s.size()) {
    size_t end = s.find("\n\n", at);
    std::string block = s.substr(at, end - at);
    at = end + 2;
    Sse e;
    size_t p = 0;
    while (p < block.size()) {
      size_t nl = block.find('\n', p);
      std::string line = block.substr(p, nl == std::string::npos ? std::string::npos : nl - p);
      if (line.rfind("event: ", 0) == 0) e.event = line.substr(7);
      if (line.rfind("data: ", 0) == 0) e.data += line.substr(6);
      p = nl == std::string::npos ? block.size() : nl + 1;
    }
    out.push_back(e);
  }
  return out;
}

std::vector<OutputEvent> script() {
  std::vector<OutputEvent> evs(6);
  evs[0].kind = K::kReasoningDelta, evs[0].text = "hm";
  evs[1].kind = K::kContentDelta, evs[1].text = "OK";
  evs[2].kind = K::kToolCallBegin, evs[2].index = 0, evs[2].id = "call_abc", evs[2].name = "f";
  evs[3].kind = K::kToolCallArgumentsDelta, evs[3].index = 0, evs[3].text = "{\"a\":";
  evs[4].kind = K::kToolCallArgumentsDelta, evs[4].index = 0, evs[4].text = "1}";
  evs[5].kind = K::kToolCallEnd, evs[5].index = 0;
  return evs;
}

trove::chat::ParsedMessage message() {
  trove::chat::ParsedMessage m;
  m.reasoning = "hm";
  m.content = "OK";
  m.tool_calls.push_back({0, "call_abc", "f", "{\"a\":1}", Json::parse("{\"a\":1}")});
  return m;
}

GenerationResult result() {
  GenerationResult r;
  r.prompt_tokens = 10;
  r.generated_tokens = 12;
  return r;
}

ResponseContext ctx(const char* id) { return {id, "model", 1700000000, 10}; }

TEST(OpenAiWriter, StreamsDeltasFinishReasonUsageAndDone) {
  auto w = make_openai_chat_writer(ctx("chatcmpl-1"), true);
  auto evs = split(w->start(0) + w->on_events(script()) + w->finish(result(), message()));
  ASSERT_EQ(evs.size(), 9u);  // role, reasoning, content, call begin, 2 argument deltas, finish, usage, [DONE]
  EXPECT_EQ(Json::parse(evs[0].data)["choices"][0]["delta"]["role"], "assistant");
  EXPECT_EQ(Json::parse(evs[1].data)["choices"][0]["delta"]["reasoning_content"], "hm");
  EXPECT_EQ(Json::parse(evs[2].data)["choices"][0]["delta"]["content"], "OK");
  auto begin = Json::parse(evs[3].data)["choices"][0]["delta"]["tool_calls"][0];
  EXPECT_EQ(begin["id"], "call_abc");
  EXPECT_EQ(begin["function"]["name"], "f");
  EXPECT_EQ(Json::parse(evs[4].data)["choices"][0]["delta"]["tool_calls"][0]["function"]["arguments"], "{\"a\":");
  EXPECT_EQ(Json::parse(evs[6].data)["choices"][0]["finish_reason"], "tool_calls");
  auto usage = Json::parse(evs[7].data);
  EXPECT_TRUE(usage["choices"].empty());
  EXPECT_EQ(usage["usage"]["completion_tokens"], 12);
  EXPECT_EQ(usage["usage"]["total_tokens"], 22);
  EXPECT_EQ(evs[8].data, "[DONE]");
  // Without include_usage there is no usage chunk.
  auto plain = make_openai_chat_writer(ctx("chatcmpl-2"), false);
  EXPECT_EQ(plain->finish(result(), message()).find("usage"), std::string::npos);
}

TEST(OpenAiWriter, CompleteResponseShape) {
  auto w = make_openai_chat_writer(ctx("chatcmpl-1"), false);
  auto r = result();
  r.finish = FinishReason::kLength;
  trove::chat::ParsedMessage plain;
  plain.content = "text";
  Json j = w->complete(r, plain);
  EXPECT_EQ(j["object"], "chat.completion");
  EXPECT_EQ(j["choices"][0]["finish_reason"], "length");
  EXPECT_EQ(j["usage"]["prompt_tokens_details"]["cached_tokens"], 0);
  Json t = w->complete(result(), message());
  EXPECT_EQ(t["choices"][0]["finish_reason"], "tool_calls");
  EXPECT_EQ(t["choices"][0]["message"]["tool_calls"][0]["function"]["arguments"], "{\"a\":1}");
  EXPECT_EQ(t["choices"][0]["message"]["reasoning_content"], "hm");
}

TEST(AnthropicWriter, ExactEventSequence) {
  auto w = make_anthropic_writer(ctx("msg_1"));
  auto evs = split(w->start(0) + w->on_events(script()) + w->finish(result(), message()));
  std::vector<std::string> names;
  for (const auto& e : evs) {
    std::string n = e.event;
    auto d = Json::parse(e.data);
    EXPECT_EQ(d["type"], e.event);
    if (n == "content_block_delta") n += ":" + d["delta"]["type"].get<std::string>();
    if (n == "content_block_start") n += ":" + d["content_block"]["type"].get<std::string>();
    names.push_back(n);
  }
  const std::vector<std::string> want = {
      "message_start", "ping",
      "content_block_start:thinking", "content_block_delta:thinking_delta", "content_block_delta:signature_delta", "content_block_stop",
      "content_block_start:text", "content_block_delta:text_delta", "content_block_stop",
      "content_block_start:tool_use", "content_block_delta:input_json_delta", "content_block_delta:input_json_delta", "content_block_stop",
      "message_delta", "message_stop"};
  EXPECT_EQ(names, want);
  auto delta = Json::parse(evs[13].data);
  EXPECT_EQ(delta["delta"]["stop_reason"], "tool_use");
  EXPECT_EQ(delta["usage"]["output_tokens"], 12);
  EXPECT_EQ(delta["usage"]["cache_read_input_tokens"], 0);
  EXPECT_EQ(Json::parse(evs[9].data)["content_block"]["id"], "toolu_abc");
  EXPECT_EQ(Json::parse(evs[9].data)["index"], 2);
}

TEST(ResponsesWriter, ItemsAndSequenceNumbers) {
  auto w = make_responses_writer(ctx("resp_1"));
  auto evs = split(w->start(0) + w->on_events(script()) + w->finish(result(), message()));
  std::vector<std::string> names;
  int seq = 0;
  for (const auto& e : evs) {
    auto d = Json::parse(e.data);
    EXPECT_EQ(d["sequence_number"], seq++);
    names.push_back(e.event);
  }
  const std::vector<std::string> want = {
      "response.created", "response.in_progress",
      "response.output_item.added", "response.reasoning_text.delta", "response.reasoning_text.done", "response.output_item.done",
      "response.output_item.added", "response.content_part.added", "response.output_text.delta", "response.output_text.done",
      "response.content_part.done", "response.output_item.done",
      "response.output_item.added", "response.function_call_arguments.delta", "response.function_call_arguments.delta",
      "response.function_call_arguments.done", "response.output_item.done", "response.completed"};
  EXPECT_EQ(names, want);
  auto done = Json::parse(evs.back().data)["response"];
  EXPECT_EQ(done["status"], "completed");
  ASSERT_EQ(done["output"].size(), 3u);
  EXPECT_EQ(done["output"][2]["arguments"], "{\"a\":1}");
  EXPECT_EQ(done["output"][2]["call_id"], "call_abc");
  EXPECT_EQ(done["usage"]["output_tokens"], 12);
}

TEST(AnthropicWriter, MessageStartReportsTheCachedTokens) {
  auto w = make_anthropic_writer(ctx("msg_1"));
  auto evs = split(w->start(8));
  auto start = Json::parse(evs[0].data);
  EXPECT_EQ(start["message"]["usage"]["cache_read_input_tokens"], 8);
  EXPECT_EQ(start["message"]["usage"]["input_tokens"], 2);  // the uncached part of 10
}

TEST(AnthropicWriter, TheContextEndIsNotCalledMaxTokens) {
  GenerationResult r = result();
  r.finish = FinishReason::kLength;
  auto w = make_anthropic_writer(ctx("msg_1"));
  EXPECT_EQ(w->complete(r, {})["stop_reason"], "max_tokens");
  r.context_end = true;
  EXPECT_EQ(w->complete(r, {})["stop_reason"], "model_context_window_exceeded");
  auto evs = split(w->start(0) + w->finish(r, {}));
  EXPECT_EQ(Json::parse(evs[evs.size() - 2].data)["delta"]["stop_reason"], "model_context_window_exceeded");
}

TEST(ResponsesWriter, TheContextEndFailsWithContextLengthExceeded) {
  GenerationResult r = result();
  r.finish = FinishReason::kLength;
  r.context_end = true;
  ResponseContext c = ctx("resp_1");
  c.n_ctx = 512;
  auto w = make_responses_writer(c);
  auto evs = split(w->start(0) + w->finish(r, {}));
  EXPECT_EQ(evs.back().event, "response.failed");
  auto resp = Json::parse(evs.back().data)["response"];
  EXPECT_EQ(resp["status"], "failed");
  EXPECT_EQ(resp["error"]["code"], "context_length_exceeded");
  EXPECT_NE(resp["error"]["message"].get<std::string>().find("512"), std::string::npos);
  auto whole = make_responses_writer(c)->complete(r, {});
  EXPECT_EQ(whole["status"], "failed");
  EXPECT_EQ(whole["error"]["code"], "context_length_exceeded");
  // A limit the client set is still reported as max_output_tokens.
  r.context_end = false;
  auto limited = make_responses_writer(c)->complete(r, {});
  EXPECT_EQ(limited["status"], "incomplete");
  EXPECT_EQ(limited["incomplete_details"]["reason"], "max_output_tokens");
  auto evs2 = split(make_responses_writer(c)->finish(r, {}));
  EXPECT_EQ(evs2.back().event, "response.incomplete");
}

TEST(ResponsesWriter, ANamespaceToolsCallIsNamedBackWithItsNamespace) {
  ResponseContext c = ctx("resp_1");
  c.namespaced_tools["multi_agent_v1__spawn_agent"] = {"multi_agent_v1", "spawn_agent"};
  std::vector<OutputEvent> evs(3);
  evs[0].kind = K::kToolCallBegin, evs[0].id = "call_x", evs[0].name = "multi_agent_v1__spawn_agent";
  evs[1].kind = K::kToolCallArgumentsDelta, evs[1].text = "{}";
  evs[2].kind = K::kToolCallEnd;
  trove::chat::ParsedMessage m;
  m.tool_calls.push_back({0, "call_x", "multi_agent_v1__spawn_agent", "{}", Json::object()});
  auto w = make_responses_writer(c);
  auto out = split(w->start(0) + w->on_events(evs) + w->finish(result(), m));
  auto added = Json::parse(out[2].data)["item"];
  EXPECT_EQ(added["name"], "spawn_agent");
  EXPECT_EQ(added["namespace"], "multi_agent_v1");
  auto item = Json::parse(out.back().data)["response"]["output"][0];
  EXPECT_EQ(item["name"], "spawn_agent");
  EXPECT_EQ(item["namespace"], "multi_agent_v1");
  auto whole = make_responses_writer(c)->complete(result(), m);
  EXPECT_EQ(whole["output"][0]["namespace"], "multi_agent_v1");
  EXPECT_EQ(whole["output"][0]["name"], "spawn_agent");
}

TEST(ErrorBodies, EachDialectsShape) {
  ApiError e;
  e.message = "max_tokens: must be an integer";
  e.param = "max_tokens";
  auto o = openai_error_body(e);
  EXPECT_EQ(o["error"]["param"], "max_tokens");
  EXPECT_EQ(o["error"]["type"], "invalid_request_error");
  auto a = anthropic_error_body(e);
  EXPECT_EQ(a["type"], "error");
  EXPECT_EQ(a["error"]["message"], e.message);
  EXPECT_TRUE(o["error"]["code"].is_null());
  e.code = "context_length_exceeded";
  EXPECT_EQ(openai_error_body(e)["error"]["code"], "context_length_exceeded");
  e.status = 413;
  EXPECT_EQ(anthropic_error_body(e)["error"]["type"], "request_too_large");
}

}  // namespace
