// The HTTP front (server/http_server.h) over the scripted fake engine: raw sockets, so the test
// controls exactly when the client reads and when it leaves. Covers what the SDK tests cannot time:
// keepalive comments during a slow prefill, a departed client's sequence freed after a few steps
// (streaming or not),
// auth, 413 and 404 shapes.
#include "server/http_server.h"

#include <sys/socket.h>
#include <unistd.h>

#include <gtest/gtest.h>

#include <chrono>
#include <cstring>
#include <string>
#include <thread>

#include "common/log.h"
#include "tests/server/fake_engine.h"
#include "tests/server/raw_http.h"

namespace {

using namespace std::chrono_literals;
using trove::server::HttpServer;
using trove::server::ServerOptions;
using trove::server::testing::FakeEngine;
using namespace trove::server::testing;

size_t count(const std::string& s, const std::string& what) {
  size_t n = 0;
  for (size_t p = s.find(what); p != std::string::npos; p = s.find(what, p + 1)) ++n;
  return n;
}

TEST(HttpServer, KeepaliveCommentsWhileAPromptIsPrefilled) {
  FakeEngine e(2, 64);
  e.script = e.tokenizer().encode("done", false);
  e.step_delay = 600ms;  // one slow prefill step
  ServerOptions o;
  o.keepalive_ms = 100;
  Served s(e, o);
  int fd = connect_to(s.port);
  send_request(fd, "POST", "/v1/chat/completions",
               R"({"stream":true,"max_tokens":1,"messages":[{"role":"user","content":"hi"}]})");
  const std::string got = read_until(fd, "[DONE]");
  ::close(fd);
  const size_t first_content = got.find("\"content\":\"done\"");
  ASSERT_NE(first_content, std::string::npos) << got;
  const size_t keepalive = got.find(": keepalive");
  ASSERT_NE(keepalive, std::string::npos) << got;
  EXPECT_LT(keepalive, first_content);
  EXPECT_GE(count(got, ": keepalive"), 2u);
}

TEST(HttpServer, ADepartedClientsSequenceIsFreed) {
  FakeEngine e(1, 64);
  e.script.assign(5000, e.tokenizer().encode(" tick", false)[0]);
  e.step_delay = 10ms;
  ServerOptions o;
  o.keepalive_ms = 100;
  Served s(e, o);
  int fd = connect_to(s.port);
  send_request(fd, "POST", "/v1/chat/completions",
               R"({"stream":true,"max_tokens":5000,"messages":[{"role":"user","content":"hi"}]})");
  const std::string got = read_until(fd, "tick\"}");
  ASSERT_NE(got.find("tick"), std::string::npos);
  ::close(fd);
  const uint64_t at_close = e.step_count();
  for (int i = 0; i < 200 && e.open_count() != 0; ++i) std::this_thread::sleep_for(10ms);
  EXPECT_EQ(e.open_count(), 0u) << "the sequence is still open";
  // The server notices on its next write or two (the first write after the peer closed may still
  // succeed), then the scheduler drops the sequence before its next step.
  EXPECT_LE(e.step_count() - at_close, 5u);
  // The slot serves the next request.
  e.script = e.tokenizer().encode("again", false);
  const std::string r = request(s.port, "POST", "/v1/chat/completions",
                                R"({"max_tokens":3,"messages":[{"role":"user","content":"hi"}]})");
  EXPECT_NE(r.find("\"content\":\"again\""), std::string::npos) << r;
  const std::string m = request(s.port, "GET", "/metrics", "");
  EXPECT_NE(m.find("trove_requests_cancelled_total 1"), std::string::npos) << m;
}

TEST(HttpServer, ADepartedNonStreamingClientsSequenceIsFreed) {
  FakeEngine e(1, 64);
  e.script.assign(5000, e.tokenizer().encode(" tick", false)[0]);
  e.step_delay = 20ms;
  Served s(e, ServerOptions{});
  int fd = connect_to(s.port);
  send_request(fd, "POST", "/v1/chat/completions",
               R"({"max_tokens":5000,"messages":[{"role":"user","content":"hi"}]})");
  for (int i = 0; i < 200 && e.step_count() < 5; ++i) std::this_thread::sleep_for(10ms);
  ASSERT_GE(e.step_count(), 5u) << "generation did not start";
  ::close(fd);  // nothing was written to this client yet: the server must look at the socket
  const uint64_t at_close = e.step_count();
  for (int i = 0; i < 200 && e.open_count() != 0; ++i) std::this_thread::sleep_for(10ms);
  EXPECT_EQ(e.open_count(), 0u) << "the sequence is still open";
  // Polled every 250 ms: at most ~13 steps of 20 ms, plus scheduling slack.
  EXPECT_LE(e.step_count() - at_close, 25u);
  const std::string m = request(s.port, "GET", "/metrics", "");
  EXPECT_NE(m.find("trove_requests_cancelled_total 1"), std::string::npos) << m;
}

TEST(HttpServer, AuthBodyLimitAndUnknownRoutes) {
  FakeEngine e(1, 64);
  ServerOptions o;
  o.api_key = "k";
  o.max_body_bytes = 1000;
  Served s(e, o);
  std::string r = request(s.port, "GET", "/v1/models", "");
  EXPECT_NE(r.find("401"), std::string::npos);
  EXPECT_NE(r.find("\"authentication_error\""), std::string::npos);
  r = request(s.port, "POST", "/v1/messages", "{}", "x-api-key: wrong\r\n");
  EXPECT_NE(r.find("\"type\":\"error\""), std::string::npos) << r;  // Anthropic's shape
  r = request(s.port, "GET", "/v1/models", "", "Authorization: Bearer k\r\n");
  EXPECT_NE(r.find("200 OK"), std::string::npos);
  EXPECT_NE(r.find("\"id\":\"fake\""), std::string::npos);
  r = request(s.port, "GET", "/health", "");
  EXPECT_NE(r.find("200 OK"), std::string::npos);
  r = request(s.port, "POST", "/v1/chat/completions", std::string(2000, ' '), "x-api-key: k\r\n");
  EXPECT_NE(r.find("413"), std::string::npos);
  EXPECT_NE(r.find("limit of 1000 bytes"), std::string::npos) << r;
  r = request(s.port, "GET", "/v2/nothing", "", "x-api-key: k\r\n");
  EXPECT_NE(r.find("404"), std::string::npos);
  EXPECT_NE(r.find("no route GET /v2/nothing"), std::string::npos) << r;
  r = request(s.port, "GET", "/metrics", "", "x-api-key: k\r\n");
  EXPECT_NE(r.find(R"(trove_requests_total{endpoint="other",status="404"} 1)"), std::string::npos) << r;
  EXPECT_NE(r.find(R"(trove_requests_total{endpoint="/v1/chat/completions",status="413"} 1)"), std::string::npos) << r;
  EXPECT_EQ(r.find("/v2/nothing"), std::string::npos);
}

TEST(HttpServer, ForceOutputNeedsTheServerFlag) {
  FakeEngine e(1, 64);
  Served s(e, ServerOptions{});
  const std::string r = request(s.port, "POST", "/v1/chat/completions",
                                R"({"trove_force_output":"x","messages":[{"role":"user","content":"hi"}]})");
  EXPECT_NE(r.find("400"), std::string::npos);
  EXPECT_NE(r.find("--test-force-output"), std::string::npos) << r;
}

// x-trove-speculative takes off|lookup|draft|auto; anything else is a 400 naming the header. /metrics
// always lists the speculative counters of both methods.
TEST(HttpServer, SpeculativeHeaderIsCheckedAndMetricsNameBothMethods) {
  FakeEngine e(1, 64);
  e.script = e.tokenizer().encode(" one two three", false);  // two tokens: the second from a decode step
  Served s(e, ServerOptions{});
  const std::string body = R"({"messages":[{"role":"user","content":"hi"}],"max_tokens":2})";
  std::string r = request(s.port, "POST", "/v1/chat/completions", body, "x-trove-speculative: sometimes\r\n");
  EXPECT_NE(r.find("400"), std::string::npos) << r;
  EXPECT_NE(r.find("x-trove-speculative"), std::string::npos) << r;
  r = request(s.port, "POST", "/v1/chat/completions", body, "x-trove-speculative: lookup\r\n");
  EXPECT_NE(r.find("200 OK"), std::string::npos) << r;
  const std::string m = request(s.port, "GET", "/metrics", "");
  for (const char* line : {"trove_speculative_drafted_tokens_total{method=\"lookup\"} 0",
                           "trove_speculative_accepted_tokens_total{method=\"draft\"} 0",
                           "trove_speculative_acceptance_rate{method=\"lookup\"} 0",
                           // What auto weighs the draft model by: no draft model here, so no draft step
                           // and -1; the decode steps of the request were timed.
                           "trove_speculative_draft_step_seconds 0\n", "trove_speculative_auto_draft_tokens -1\n",
                           "trove_speculative_target_step_seconds{tokens=\"8\"} "}) {
    EXPECT_NE(m.find(line), std::string::npos) << line << "\n" << m;
  }
  // The request's one-token decode step is timed (the scheduler publishes its stats after the reply
  // may have gone out: poll for a while).
  const char* one_line = "trove_speculative_target_step_seconds{tokens=\"1\"} ";
  double one_token_step = 0;
  std::string last;
  for (int i = 0; i < 100 && !(one_token_step > 0); ++i) {
    if (i) std::this_thread::sleep_for(std::chrono::milliseconds(20));
    last = request(s.port, "GET", "/metrics", "");
    const size_t at = last.find(one_line);
    ASSERT_NE(at, std::string::npos) << last;
    one_token_step = std::stod(last.substr(at + std::strlen(one_line)));
  }
  EXPECT_GT(one_token_step, 0.0) << "a one-token decode step was timed\n" << last;
}

// tool_choice required / named: the prompt ends inside a tool call, so the (forced) continuation only
// parses as the intended call if the server fed the parser the same opening.
TEST(HttpServer, ToolChoiceRequiredAndNamedStartTheReplyInsideACall) {
  FakeEngine e(2, 64);
  ServerOptions o;
  o.test_force_output = true;
  Served s(e, o);
  const std::string tools =
      R"("tools":[{"type":"function","function":{"name":"get_weather","parameters":{"type":"object","properties":{"city":{"type":"string"}}}}},
                  {"type":"function","function":{"name":"other","parameters":{"type":"object"}}}])";
  std::string r = request(s.port, "POST", "/v1/chat/completions",
                          R"({"messages":[{"role":"user","content":"hi"}],"tool_choice":"required",)" + tools +
                              R"(,"trove_force_output":"{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Paris\"}}\n</tool_call>"})");
  EXPECT_NE(r.find(R"("finish_reason":"tool_calls")"), std::string::npos) << r;
  EXPECT_NE(r.find(R"("arguments":"{\"city\": \"Paris\"}")"), std::string::npos) << r;
  r = request(s.port, "POST", "/v1/chat/completions",
              R"({"messages":[{"role":"user","content":"hi"}],"tool_choice":{"type":"function","function":{"name":"get_weather"}},)" +
                  tools + R"(,"trove_force_output":"{\"city\": \"Rome\"}}\n</tool_call>"})");
  EXPECT_NE(r.find(R"("name":"get_weather")"), std::string::npos) << r;
  EXPECT_NE(r.find(R"("arguments":"{\"city\": \"Rome\"}")"), std::string::npos) << r;
  // Streamed, the named call's header goes out before anything is generated.
  int fd = connect_to(s.port);
  send_request(fd, "POST", "/v1/chat/completions",
               R"({"stream":true,"messages":[{"role":"user","content":"hi"}],"tool_choice":{"type":"function","function":{"name":"get_weather"}},)" +
                   tools + R"(,"trove_force_output":"{\"city\": \"Oslo\"}}\n</tool_call>"})");
  const std::string got = read_until(fd, "[DONE]");
  ::close(fd);
  EXPECT_NE(got.find(R"("name":"get_weather","arguments":"")"), std::string::npos) << got;
  EXPECT_NE(got.find(R"("finish_reason":"tool_calls")"), std::string::npos) << got;
}

// A prompt past the context, in the words each client acts on, and logged.
TEST(HttpServer, ContextOverflowInEachClientsOwnWordsAndLogged) {
  FakeEngine e(1, 64, /*n_ctx=*/16);
  trove::log::ScopedLogCapture logs;
  Served s(e, ServerOptions{});
  const std::string long_text(400, 'x');
  std::string r = request(s.port, "POST", "/v1/messages",
                          R"({"max_tokens":5,"messages":[{"role":"user","content":")" + long_text + R"("}]})");
  EXPECT_NE(r.find("400 Bad Request"), std::string::npos) << r;
  EXPECT_NE(r.find(R"("type":"invalid_request_error")"), std::string::npos) << r;
  EXPECT_NE(r.find("prompt is too long: "), std::string::npos) << r;
  EXPECT_NE(r.find(" tokens > 15 maximum"), std::string::npos) << r;
  r = request(s.port, "POST", "/v1/chat/completions",
              R"({"messages":[{"role":"user","content":")" + long_text + R"("}]})");
  EXPECT_NE(r.find(R"("code":"context_length_exceeded")"), std::string::npos) << r;
  EXPECT_NE(r.find("maximum context length is 15 tokens"), std::string::npos) << r;
  r = request(s.port, "POST", "/v1/responses", R"({"input":")" + long_text + R"("})");
  EXPECT_NE(r.find(R"("code":"context_length_exceeded")"), std::string::npos) << r;
  EXPECT_TRUE(logs.contains("/v1/messages 400: request rejected: prompt is too long"));
  EXPECT_TRUE(logs.contains("/v1/responses 400: request rejected"));
  // Other rejections are logged too.
  request(s.port, "POST", "/v1/chat/completions", R"({"messages":5})");
  EXPECT_TRUE(logs.contains("/v1/chat/completions 400: request rejected: messages: must be an array"));
}

TEST(HttpServer, ModelsListTheContextWindowAndAnyIdIsTheOneModel) {
  FakeEngine e(1, 64, /*n_ctx=*/4096);
  Served s(e, ServerOptions{});
  std::string r = request(s.port, "GET", "/v1/models", "");
  EXPECT_NE(r.find(R"("id":"fake")"), std::string::npos) << r;
  EXPECT_NE(r.find(R"("context_length":4096)"), std::string::npos) << r;
  EXPECT_NE(r.find(R"("context_window":4096)"), std::string::npos) << r;
  EXPECT_NE(r.find(R"("max_model_len":4096)"), std::string::npos) << r;
  EXPECT_NE(r.find(R"("type":"model")"), std::string::npos) << r;  // Anthropic's shape too
  r = request(s.port, "GET", "/v1/models/claude-haiku-4-5", "");
  EXPECT_NE(r.find("200 OK"), std::string::npos) << r;
  EXPECT_NE(r.find(R"("id":"claude-haiku-4-5")"), std::string::npos) << r;
  EXPECT_NE(r.find(R"("context_window":4096)"), std::string::npos) << r;
  // A request naming any model is served by the one model (and the name is echoed).
  e.script = e.tokenizer().encode("hi", false);
  r = request(s.port, "POST", "/v1/messages",
              R"({"model":"claude-haiku-4-5","max_tokens":3,"messages":[{"role":"user","content":"x"}]})");
  EXPECT_NE(r.find("200 OK"), std::string::npos) << r;
  EXPECT_NE(r.find(R"("model":"claude-haiku-4-5")"), std::string::npos) << r;
}

// Without a limit the request gets the server's default; at the context end the Responses reply
// fails with context_length_exceeded instead of blaming max_output_tokens (Codex exits on that).
TEST(HttpServer, NoLimitGetsTheDefaultAndTheContextEndIsNamed) {
  FakeEngine e(1, 64, /*n_ctx=*/48);
  e.script.assign(100, e.tokenizer().encode(" tick", false)[0]);
  ServerOptions o;
  o.default_max_tokens = 5;
  Served s(e, o);
  std::string r = request(s.port, "POST", "/v1/responses", R"({"input":"hi"})");
  EXPECT_NE(r.find(R"("status":"incomplete")"), std::string::npos) << r;
  EXPECT_NE(r.find(R"("output_tokens":5)"), std::string::npos) << r;
  o.default_max_tokens = 1000;
  FakeEngine e2(1, 64, /*n_ctx=*/48);
  e2.script = e.script;
  Served s2(e2, o);
  int fd = connect_to(s2.port);
  send_request(fd, "POST", "/v1/responses", R"({"stream":true,"input":"hi"})");
  const std::string got = read_until(fd, "response.failed\n\n{never}");
  ::close(fd);
  EXPECT_NE(got.find("event: response.failed"), std::string::npos) << got;
  EXPECT_NE(got.find(R"("code":"context_length_exceeded")"), std::string::npos) << got;
  EXPECT_EQ(got.find("max_output_tokens"), std::string::npos) << got;
  r = request(s2.port, "POST", "/v1/messages", R"({"max_tokens":1000,"messages":[{"role":"user","content":"hi"}]})");
  EXPECT_NE(r.find(R"("stop_reason":"model_context_window_exceeded")"), std::string::npos) << r;
}

}  // namespace
