// What clients send that they should not, over real sockets against the HTTP front (FakeEngine, so
// each case takes milliseconds): every case gets a clear answer in its dialect's shape — never a 500,
// never a hang — and the server goes on serving. docs/reliability.md lists the cases.
#include <sys/socket.h>
#include <unistd.h>

#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>
#include <thread>
#include <tuple>
#include <vector>

#include "engine/chat/conversation.h"
#include "tests/server/fake_engine.h"
#include "tests/server/raw_http.h"

namespace {

using namespace std::chrono_literals;
using trove::chat::Json;
using trove::server::ServerOptions;
using namespace trove::server::testing;

const std::string kFffd = "\xEF\xBF\xBD";

// The three dialects with a request carrying TEXT (already JSON-escaped or raw bytes) as user content.
struct Dialect {
  const char* name;
  const char* path;
  bool anthropic;
  std::string body(const std::string& text) const {
    const std::string p(path);
    if (p == "/v1/responses") return R"({"max_output_tokens":2,"input":")" + text + R"("})";
    if (p == "/v1/messages/count_tokens") return R"({"messages":[{"role":"user","content":")" + text + R"("}]})";
    return R"({"max_tokens":2,"messages":[{"role":"user","content":")" + text + R"("}]})";
  }
};
const Dialect kDialects[] = {{"openai-chat", "/v1/chat/completions", false},
                             {"anthropic", "/v1/messages", true},
                             {"responses", "/v1/responses", false}};

// The error body of each dialect: OpenAI {"error":{message,type,...}}, Anthropic
// {"type":"error","error":{type,message}}.
void expect_error_shape(const Reply& r, bool anthropic, int status, const std::string& type) {
  EXPECT_EQ(r.status, status) << r.head << "\n" << r.body;
  Json j;
  ASSERT_NO_THROW(j = Json::parse(r.body)) << r.body;
  if (anthropic) {
    EXPECT_EQ(j["type"], "error") << r.body;
    EXPECT_EQ(j["error"]["type"], type) << r.body;
    EXPECT_TRUE(j["error"]["message"].is_string()) << r.body;
  } else {
    EXPECT_EQ(j["error"]["type"], type) << r.body;
    EXPECT_TRUE(j["error"]["message"].is_string()) << r.body;
    EXPECT_TRUE(j["error"].contains("param")) << r.body;
  }
}

class HostileRequests : public ::testing::Test {
 protected:
  HostileRequests() : engine_(4, 256) { engine_.script = engine_.tokenizer().encode("ok", false); }
  FakeEngine engine_;
};

TEST_F(HostileRequests, InvalidUtf8InContentIsReplacedInEveryDialect) {
  Served s(engine_, ServerOptions{});
  for (const Dialect& d : kDialects) {
    // Bytes no UTF-8 decoder accepts: a stray continuation byte, a truncated emoji, 0xFF.
    const Reply r = post(s.port, d.path, d.body("caf\xC3 \x80 \xF0\x9F\x98 \xFF end"));
    EXPECT_EQ(r.status, 200) << d.name << ": " << r.body;
    ASSERT_NO_THROW((void)Json::parse(r.body)) << d.name << ": " << r.body;
  }
}

TEST_F(HostileRequests, LoneSurrogateEscapesAreReplacedInEveryDialect) {
  Served s(engine_, ServerOptions{});
  for (const Dialect& d : kDialects) {
    // What a JavaScript client sends after cutting "😀" (\ud83d\ude00) in half.
    const Reply r = post(s.port, d.path, d.body(R"(tool output was cut here: \ud83d)"));
    EXPECT_EQ(r.status, 200) << d.name << ": " << r.body;
    const Reply low = post(s.port, d.path, d.body(R"(\ude00 and a pair \ud83d\ude00)"));
    EXPECT_EQ(low.status, 200) << d.name << ": " << low.body;
  }
}

// The repaired text is what the model sees: the same prompt as a client sending U+FFFD itself.
TEST_F(HostileRequests, RepairedTextIsWhatTheTemplateRenders) {
  Served s(engine_, ServerOptions{});
  const Dialect count{"count", "/v1/messages/count_tokens", true};
  auto tokens = [&](const std::string& text) {
    const Reply r = post(s.port, count.path, count.body(text));
    EXPECT_EQ(r.status, 200) << r.body;
    return Json::parse(r.body)["input_tokens"].get<int>();
  };
  const int expected = tokens(R"(a\ufffdb\ufffdc\ufffd)");
  EXPECT_EQ(tokens("a\xFF" "b\\ud83dc\xE2\x82"), expected);
  EXPECT_EQ(tokens("a" + kFffd + "b" + kFffd + "c" + kFffd), expected);
  EXPECT_NE(tokens("abc"), expected);
}

TEST_F(HostileRequests, InvalidUtf8InToolArgumentsAndResults) {
  Served s(engine_, ServerOptions{});
  const std::string bad = "x\xFF\\ud83d";
  Reply r = post(s.port, "/v1/chat/completions",
                 R"({"max_tokens":2,"messages":[{"role":"user","content":"hi"},
                     {"role":"assistant","tool_calls":[{"id":"c1","type":"function","function":{"name":"f","arguments":"{\"p\":\")" + bad + R"(\"}"}}]},
                     {"role":"tool","tool_call_id":"c1","content":")" + bad + R"("}]})");
  EXPECT_EQ(r.status, 200) << r.body;
  r = post(s.port, "/v1/messages",
           R"({"max_tokens":2,"messages":[{"role":"user","content":"hi"},
               {"role":"assistant","content":[{"type":"tool_use","id":"t1","name":"f","input":{"p":")" + bad + R"("}}]},
               {"role":"user","content":[{"type":"tool_result","tool_use_id":"t1","content":")" + bad + R"("}]}]})");
  EXPECT_EQ(r.status, 200) << r.body;
  r = post(s.port, "/v1/responses",
           R"({"max_output_tokens":2,"input":[{"role":"user","content":"hi"},
               {"type":"function_call","call_id":"c1","name":"f","arguments":"{\"p\":\")" + bad + R"(\"}"},
               {"type":"function_call_output","call_id":"c1","output":")" + bad + R"("}]})");
  EXPECT_EQ(r.status, 200) << r.body;
}

TEST_F(HostileRequests, ABodyThatIsNotJsonGetsA400InTheDialectsShape) {
  Served s(engine_, ServerOptions{});
  const std::vector<std::string> bodies = {"hello", "", "{\"messages\":", "\xFF\xFE\xFD", "{\"a\":\xC3\x28}",
                                           "[1,2,3]", "null", "\"just a string\"", "{\"max_tokens\":1e400}"};
  for (const Dialect& d : kDialects) {
    for (const std::string& body : bodies) {
      const Reply r = post(s.port, d.path, body);
      expect_error_shape(r, d.anthropic, 400, "invalid_request_error");
    }
  }
  // Still serving.
  EXPECT_EQ(post(s.port, "/v1/chat/completions", kDialects[0].body("hi")).status, 200);
}

// Every seed of the fuzz corpus (tests/server/corpus: hostile and ordinary bodies of all dialects) to
// every endpoint: a 200 or a 4xx in the endpoint's error shape, the reply valid JSON, never a 500.
TEST_F(HostileRequests, TheFuzzCorpusGetsOnly200Or4xxOnEveryEndpoint) {
  Served s(engine_, ServerOptions{});
  const char* src = std::getenv("TROVE_SOURCE_DIR");
  const std::filesystem::path dir = std::filesystem::path(src ? src : ".") / "tests/server/corpus";
  size_t files = 0;
  for (const auto& entry : std::filesystem::directory_iterator(dir)) {
    std::ifstream in(entry.path(), std::ios::binary);
    std::stringstream ss;
    ss << in.rdbuf();
    ++files;
    for (const char* path : {"/v1/chat/completions", "/v1/messages", "/v1/messages/count_tokens", "/v1/responses"}) {
      const Reply r = post(s.port, path, ss.str());
      SCOPED_TRACE(entry.path().filename().string() + " " + path);
      if (r.status == 200 && r.head.find("text/event-stream") != std::string::npos) {
        const auto events = sse_data(r.body);
        ASSERT_FALSE(events.empty()) << r.body;
        for (const auto& data : events) {
          if (data != "[DONE]") EXPECT_NO_THROW((void)Json::parse(data)) << data;
        }
        EXPECT_EQ(r.body.find("\"error\":{"), std::string::npos) << r.body;
      } else if (r.status == 200) {
        EXPECT_NO_THROW((void)Json::parse(r.body)) << r.body;
      } else {
        expect_error_shape(r, std::string(path).rfind("/v1/messages", 0) == 0, 400, "invalid_request_error");
      }
    }
  }
  EXPECT_GE(files, 30u);
  EXPECT_EQ(post(s.port, "/v1/chat/completions", kDialects[0].body("still here")).status, 200);
}

TEST_F(HostileRequests, TenThousandTools) {
  Served s(engine_, ServerOptions{});
  std::string tools;
  for (int i = 0; i < 10000; ++i) {
    if (i) tools += ",";
    tools += R"({"type":"function","function":{"name":"tool_)" + std::to_string(i) +
             R"(","parameters":{"type":"object","properties":{"a":{"type":"string"}}}}})";
  }
  // The prompt is far larger than the context (4096 here): a 400 naming both numbers.
  const Reply r = post(s.port, "/v1/chat/completions",
                       R"({"max_tokens":2,"messages":[{"role":"user","content":"hi"}],"tools":[)" + tools + "]}");
  expect_error_shape(r, false, 400, "invalid_request_error");
  EXPECT_NE(r.body.find("the context holds 4096 tokens"), std::string::npos) << r.body;
}

TEST_F(HostileRequests, HugeNumbersInFields) {
  Served s(engine_, ServerOptions{});
  for (const char* field : {R"("max_tokens":1e308)", R"("max_tokens":99999999999999999999999)",
                            R"("max_tokens":-1)", R"("temperature":1e308)", R"("seed":18446744073709551616)",
                            R"("seed":-1e300)", R"("seed":9223372036854775808.0)", R"("seed":-9.3e18)",
                            R"("top_k":1e30)", R"("max_tokens":1.5)"}) {
    const Reply r = post(s.port, "/v1/chat/completions",
                         std::string(R"({"messages":[{"role":"user","content":"hi"}],)") + field + "}");
    expect_error_shape(r, false, 400, "invalid_request_error");
    EXPECT_NE(r.body.find("\"param\":\""), std::string::npos) << field << ": " << r.body;
  }
  // Within range but large: accepted (max_tokens is capped by the context).
  EXPECT_EQ(post(s.port, "/v1/chat/completions",
                 R"({"messages":[{"role":"user","content":"hi"}],"max_tokens":1073741824,"seed":9223372036854775807})")
                .status,
            200);
}

TEST_F(HostileRequests, UnknownRolesAndPartTypes) {
  Served s(engine_, ServerOptions{});
  const std::vector<std::pair<std::string, std::string>> cases = {
      {"/v1/chat/completions", R"({"messages":[{"role":"wizard","content":"hi"}]})"},
      {"/v1/chat/completions", R"({"messages":[{"role":"user","content":[{"type":"image_url","image_url":{"url":"x"}}]}]})"},
      {"/v1/chat/completions", R"({"messages":[{"role":"user","content":[{"type":"text"}]}]})"},
      {"/v1/chat/completions", R"({"messages":[{"content":"no role"}]})"},
      {"/v1/chat/completions", R"({"messages":[]})"},
      {"/v1/messages", R"({"max_tokens":2,"messages":[{"role":"wizard","content":"hi"}]})"},
      {"/v1/messages", R"({"max_tokens":2,"messages":[{"role":"user","content":[{"type":"image","source":{}}]}]})"},
      {"/v1/messages", R"({"max_tokens":2,"messages":[{"role":"user","content":[{"type":"video"}]}]})"},
      {"/v1/messages", R"({"max_tokens":2,"messages":[{"role":"user","content":[42]}]})"},
      {"/v1/responses", R"({"input":[{"role":"user","content":[{"type":"input_image","image_url":"x"}]}]})"},
      {"/v1/responses", R"({"input":[{"role":"wizard","content":"hi"}]})"},
      {"/v1/responses", R"({"input":42})"},
  };
  for (const auto& [path, body] : cases) {
    SCOPED_TRACE(path + " " + body);
    expect_error_shape(post(s.port, path, body), path.rfind("/v1/messages", 0) == 0, 400, "invalid_request_error");
  }
}

// Duplicate keys: the last one wins, as in Python's json and JavaScript's JSON.parse.
TEST_F(HostileRequests, DuplicateKeysTakeTheLastValue) {
  Served s(engine_, ServerOptions{});
  const Dialect count{"count", "/v1/messages/count_tokens", true};
  const Reply twice = post(s.port, count.path,
                           R"({"messages":[{"role":"user","content":"a"}],"messages":[{"role":"user","content":"b b b b","content":"c"}]})");
  const Reply last = post(s.port, count.path, R"({"messages":[{"role":"user","content":"c"}]})");
  ASSERT_EQ(twice.status, 200) << twice.body;
  EXPECT_EQ(Json::parse(twice.body)["input_tokens"], Json::parse(last.body)["input_tokens"]);
}

TEST_F(HostileRequests, BodiesAtTheSizeLimit) {
  ServerOptions o;
  o.max_body_bytes = 4096;
  o.read_timeout_s = 1;
  Served s(engine_, o);
  const std::string head = R"({"max_tokens":2,"messages":[{"role":"user","content":")";
  const std::string tail = R"("}]})";
  const std::string at_limit = head + std::string(o.max_body_bytes - head.size() - tail.size(), 'a') + tail;
  ASSERT_EQ(at_limit.size(), o.max_body_bytes);
  for (const Dialect& d : kDialects) {
    SCOPED_TRACE(d.name);
    const std::string body = d.body(std::string(o.max_body_bytes - d.body("").size(), 'a'));
    ASSERT_EQ(body.size(), o.max_body_bytes);
    EXPECT_EQ(post(s.port, d.path, body).status, 200);
    expect_error_shape(post(s.port, d.path, body + " "), d.anthropic, 413, d.anthropic ? "request_too_large" : "request_too_large");
  }
  // A Content-Length that claims more than the limit is refused before any body byte is read.
  int fd = connect_to(s.port);
  send_all(fd, "POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Length: 99999999999\r\n\r\n");
  const Reply r = parse_reply(read_until(fd, "}}", 5s));
  ::close(fd);
  EXPECT_EQ(r.status, 413) << r.body;
}

TEST_F(HostileRequests, InvalidUtf8InHeaderValues) {
  ServerOptions o;
  o.api_key = "key";
  Served s(engine_, o);
  const Dialect& chat = kDialects[0];
  // In the cache namespace: a namespace like any other.
  EXPECT_EQ(post(s.port, chat.path, chat.body("hi"), "x-api-key: key\r\nx-trove-cache-namespace: t\xFF\xFE\r\n").status, 200);
  EXPECT_EQ(post(s.port, chat.path, chat.body("hi"), "Authorization: Bearer key\r\nx-trove-cache: \xC3\r\n").status, 200);
  // In the key: simply wrong.
  expect_error_shape(post(s.port, chat.path, chat.body("hi"), "x-api-key: k\xFF\r\n"), false, 401, "authentication_error");
  expect_error_shape(post(s.port, "/v1/messages", chat.body("hi"), "x-api-key: \xC3\x28\r\nanthropic-version: \xFF\r\n"),
                     true, 401, "authentication_error");
}

// Broken HTTP itself: each gets a 4xx with a JSON error body saying what is wrong, and the server goes
// on. (httplib answers these before any route runs; the server's error handler writes the body.)
TEST_F(HostileRequests, MalformedHttp) {
  ServerOptions o;
  o.read_timeout_s = 1;
  Served s(engine_, o);
  std::string many_headers;
  for (int i = 0; i < 5000; ++i) many_headers += "X-H" + std::to_string(i) + ": v\r\n";
  const std::vector<std::tuple<std::string, std::string, int>> cases = {
      {"garbage request line", "HELLO\r\n\r\n", 400},
      {"no version", "POST /v1/chat/completions\r\n\r\n", 400},
      {"unknown method", "BREW /v1/chat/completions HTTP/1.1\r\nHost: x\r\n\r\n", 400},
      {"GET on a POST route", "GET /v1/chat/completions HTTP/1.1\r\nHost: x\r\n\r\n", 404},
      {"header without colon", "POST /v1/chat/completions HTTP/1.1\r\nHost x\r\nContent-Length: 2\r\n\r\n{}", 400},
      {"content-length not a number", "POST /v1/chat/completions HTTP/1.1\r\nContent-Length: abc\r\n\r\n{}", 400},
      {"negative content-length", "POST /v1/chat/completions HTTP/1.1\r\nContent-Length: -5\r\n\r\n{}", 413},
      {"broken chunked body", "POST /v1/chat/completions HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n{}\r\n0\r\n\r\n", 400},
      {"POST without a body", "POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\n\r\n", 400},
      {"huge header line", "POST /v1/chat/completions HTTP/1.1\r\nX-Big: " + std::string(100000, 'a') + "\r\n\r\n", 400},
      {"huge URI", "GET /" + std::string(100000, 'a') + " HTTP/1.1\r\n\r\n", 414},
      {"5000 headers", "POST /v1/chat/completions HTTP/1.1\r\n" + many_headers + "Content-Length: 2\r\n\r\n{}", 400},
      {"NUL in a header", std::string("POST /v1/chat/completions HTTP/1.1\r\nX-A: a\0b\r\nContent-Length: 2\r\n\r\n{}", 68), 400},
      {"body shorter than its length", "POST /v1/chat/completions HTTP/1.1\r\nContent-Length: 100\r\n\r\n{\"a\":", 400},
  };
  for (const auto& [name, bytes, status] : cases) {
    SCOPED_TRACE(name);
    int fd = connect_to(s.port);
    send_all(fd, bytes);
    std::string carry;
    const Reply r = parse_reply(read_one_response(fd, carry, 5s));
    ::close(fd);
    EXPECT_EQ(r.status, status) << r.head;
    Json j;
    ASSERT_NO_THROW(j = Json::parse(r.body)) << r.body;
    const std::string message = j["error"]["message"];
    EXPECT_GT(message.size(), 30u) << "a message that says what is wrong: " << message;
  }
  EXPECT_EQ(post(s.port, kDialects[0].path, kDialects[0].body("hi")).status, 200);
}

// Requests written back to back on one connection before any reply is read (HTTP/1.1 pipelining, which
// no agent client uses): cpp-httplib 0.11 answers the first and loses what it had already read of the
// next ones. Documented (docs/reliability.md); what must hold is that the first is answered right, the
// lost ones never run, the connection ends instead of hanging, and the server goes on.
TEST_F(HostileRequests, PipelinedRequestsNeverHangTheServer) {
  Served s(engine_, ServerOptions{});
  int fd = connect_to(s.port);
  send_all(fd, http_request_bytes("POST", "/v1/chat/completions", kDialects[0].body("one"), "", /*close=*/false) +
                   http_request_bytes("POST", "/v1/messages", kDialects[1].body("two"), "", false) +
                   http_request_bytes("POST", "/v1/responses", "{not json", "", /*close=*/true));
  std::string carry;
  const auto t0 = std::chrono::steady_clock::now();
  const Reply first = parse_reply(read_one_response(fd, carry));
  EXPECT_EQ(first.status, 200);
  EXPECT_NE(first.body.find("\"chat.completion\""), std::string::npos) << first.body;
  // Whatever else comes is a whole reply or nothing, and the connection ends within the keep-alive time.
  const std::string rest = carry + read_until(fd, "\r\n\r\n{never}", 10s);
  ::close(fd);
  EXPECT_LT(std::chrono::steady_clock::now() - t0, 8s);
  EXPECT_TRUE(rest.empty() || rest.rfind("HTTP/1.1 ", 0) == 0) << rest;
  const std::string m = request(s.port, "GET", "/metrics", "");
  EXPECT_NE(m.find(R"(trove_requests_total{endpoint="/v1/chat/completions",status="200"} 1)"), std::string::npos) << m;
  if (rest.empty()) EXPECT_EQ(m.find(R"(endpoint="/v1/messages")"), std::string::npos) << m;
  EXPECT_EQ(post(s.port, kDialects[1].path, kDialects[1].body("after")).status, 200);
}

// Slow headers (slowloris): a client that stalls is dropped after the read timeout, and clients that
// trickle bytes do not keep others from being served (each holds one connection thread).
TEST_F(HostileRequests, SlowHeadersDoNotBlockOtherClients) {
  ServerOptions o;
  o.read_timeout_s = 1;
  o.http_threads = 16;
  Served s(engine_, o);
  const std::string partial = "POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nX-Slow: ";
  std::vector<int> trickling;
  for (int i = 0; i < 8; ++i) {
    trickling.push_back(connect_to(s.port));
    send_all(trickling.back(), partial);
  }
  const int stalled = connect_to(s.port);
  send_all(stalled, partial);
  const auto start = std::chrono::steady_clock::now();
  for (int round = 0; round < 8; ++round) {  // ~2.4 s: past the stalled client's timeout
    for (int fd : trickling) send_all(fd, "a");
    const auto t0 = std::chrono::steady_clock::now();
    EXPECT_EQ(post(s.port, kDialects[0].path, kDialects[0].body("hi")).status, 200);
    EXPECT_LT(std::chrono::steady_clock::now() - t0, 500ms) << "a trickling client delayed another";
    std::this_thread::sleep_for(300ms);
  }
  // The stalled client got its 400 once a read timeout passed without a byte (long before now).
  std::string carry;
  const auto t1 = std::chrono::steady_clock::now();
  const Reply r = parse_reply(read_one_response(stalled, carry, 3s));
  EXPECT_LT(std::chrono::steady_clock::now() - t1, 500ms) << "the stalled connection got no answer";
  EXPECT_EQ(r.status, 400) << r.head;
  EXPECT_LT(std::chrono::steady_clock::now() - start, 10s);
  ::close(stalled);
  for (int fd : trickling) ::close(fd);
}

// A client that shuts down its sending side after its request (a half-closed socket) reads as a client
// that left: its request is cancelled, its sequence freed and it is counted as 499 — streaming or not
// (cpp-httplib checks a stream's socket before each write; an end-of-file cannot be told apart from a
// close, and nginx and Go treat it the same way). A body cut short by a half-close ends the connection.
TEST_F(HostileRequests, HalfClosedSockets) {
  engine_.script.assign(50, engine_.tokenizer().encode(" tick", false)[0]);
  engine_.step_delay = 20ms;
  Served s(engine_, ServerOptions{});
  for (const char* body : {R"({"stream":true,"max_tokens":50,"messages":[{"role":"user","content":"hi"}]})",
                           R"({"max_tokens":50,"messages":[{"role":"user","content":"hi"}]})"}) {
    int fd = connect_to(s.port);
    send_request(fd, "POST", "/v1/chat/completions", body);
    ::shutdown(fd, SHUT_WR);
    read_until(fd, "\r\n\r\n{never}", 3s);
    ::close(fd);
  }
  for (int i = 0; i < 200 && engine_.open_count() != 0; ++i) std::this_thread::sleep_for(10ms);
  EXPECT_EQ(engine_.open_count(), 0u);
  const std::string m = request(s.port, "GET", "/metrics", "");
  EXPECT_NE(m.find(R"(trove_requests_total{endpoint="/v1/chat/completions",status="499"} 2)"), std::string::npos) << m;
  int fd = connect_to(s.port);
  send_all(fd, "POST /v1/chat/completions HTTP/1.1\r\nContent-Length: 100\r\n\r\n{\"a\":");
  ::shutdown(fd, SHUT_WR);
  const auto t0 = std::chrono::steady_clock::now();
  const std::string got = read_until(fd, "\r\n\r\n{never}", 5s);
  ::close(fd);
  EXPECT_LT(std::chrono::steady_clock::now() - t0, 2s);
  EXPECT_TRUE(got.empty() || got.rfind("HTTP/1.1 400", 0) == 0) << got;
  engine_.script = engine_.tokenizer().encode("ok", false);
  EXPECT_EQ(post(s.port, kDialects[0].path, kDialects[0].body("hi")).status, 200);
}

// More requests than --parallel runs and --max-queue holds: the rest get 503 with Retry-After in the
// dialect's shape at once (before anything is streamed); the queued ones still complete, the KV pool
// returns to empty, and /metrics counts the 503s and the queue wait.
TEST_F(HostileRequests, OverloadIsAnswered503WithRetryAfter) {
  FakeEngine e(/*max_sequences=*/1, 64);
  e.script.assign(6, e.tokenizer().encode(" tick", false)[0]);
  e.step_delay = 30ms;
  ServerOptions o;
  o.max_queue = 2;
  o.retry_after_s = 3;
  Served s(e, o);
  // One running, two queued: streaming requests, read at the end.
  std::vector<int> held;
  for (int i = 0; i < 3; ++i) {
    held.push_back(connect_to(s.port));
    send_request(held.back(), "POST", "/v1/chat/completions",
                 R"({"stream":true,"max_tokens":6,"messages":[{"role":"user","content":"hi"}]})");
    for (int k = 0; k < 200 && (i == 0 ? e.open_count() == 0 : false); ++k) std::this_thread::sleep_for(5ms);
  }
  std::this_thread::sleep_for(50ms);  // the two behind the first are queued by now
  for (const Dialect& d : kDialects) {
    const auto t0 = std::chrono::steady_clock::now();
    const Reply r = post(s.port, d.path, d.body("one too many"));
    EXPECT_LT(std::chrono::steady_clock::now() - t0, 1s) << "the refusal waited";
    expect_error_shape(r, d.anthropic, 503, d.anthropic ? "overloaded_error" : "server_error");
    EXPECT_NE(r.head.find("Retry-After: 3"), std::string::npos) << r.head;
    EXPECT_NE(r.body.find("--max-queue"), std::string::npos) << r.body;
  }
  // /health is not queued behind generation.
  EXPECT_NE(request(s.port, "GET", "/health", "").find("200 OK"), std::string::npos);
  for (int fd : held) {
    const std::string got = read_until(fd, "[DONE]");
    ::close(fd);
    EXPECT_NE(got.find("[DONE]"), std::string::npos) << got;
  }
  for (int i = 0; i < 200 && e.open_count() != 0; ++i) std::this_thread::sleep_for(10ms);
  EXPECT_EQ(e.pool_stats().used_blocks, 0u);
  e.script = e.tokenizer().encode("ok", false);
  EXPECT_EQ(post(s.port, kDialects[0].path, kDialects[0].body("after the rush")).status, 200);
  // The reply is on the wire before the sequence's blocks go back to the pool (a full run on the
  // 2-core machine once read /metrics in between: blocks_used 1).
  for (int i = 0; i < 200 && e.open_count() != 0; ++i) std::this_thread::sleep_for(10ms);
  for (int i = 0; i < 200 && e.pool_stats().used_blocks != 0; ++i) std::this_thread::sleep_for(10ms);
  const std::string m = request(s.port, "GET", "/metrics", "");
  EXPECT_NE(m.find(R"(trove_requests_total{endpoint="/v1/chat/completions",status="503"} 1)"), std::string::npos) << m;
  EXPECT_NE(m.find(R"(trove_requests_total{endpoint="/v1/messages",status="503"} 1)"), std::string::npos) << m;
  EXPECT_NE(m.find("trove_queue_wait_seconds_count 4"), std::string::npos) << m;
  EXPECT_NE(m.find("trove_kv_pool_blocks_used 0"), std::string::npos) << m;
}

}  // namespace
