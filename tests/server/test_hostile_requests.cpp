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

}  // namespace
