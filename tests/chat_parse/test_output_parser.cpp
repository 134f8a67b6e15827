// Table tests for the streaming output parser (every rule in docs/chat-formats.md "Streaming output
// parser") plus a chunking property test. Time budget: < 5 s sanitized.
#include <random>

#include <gtest/gtest.h>

#include "tests/chat_parse/parser_invariants.h"

using namespace trove::chat;
using trove::chat::testing::describe;
using trove::chat::testing::run_chunks;
using nlohmann::json;

namespace {

const json kTools = json::parse(R"([{"type":"function","function":{"name":"edit","parameters":{"type":"object",
  "properties":{"path":{"type":"string"},"count":{"type":"integer"},"ratio":{"type":"number"},
  "force":{"type":"boolean"},"opts":{"type":"object"},"items":{"type":"array"},"maybe":{"type":["string","null"]}}}}}])");

OutputParserOptions opts(OutputFormat f, bool in_reasoning = false) {
  OutputParserOptions o;
  o.format = f;
  o.starts_in_reasoning = in_reasoning;
  o.tools = kTools;
  return o;
}

trove::chat::testing::RunResult run_whole(const OutputParserOptions& o, const std::string& text) {
  auto r = run_chunks(o, {text});
  EXPECT_EQ(r.violation, "") << text;
  return r;
}

std::vector<std::string> split_random(const std::string& text, std::mt19937& rng, size_t max_len) {
  std::vector<std::string> chunks;
  for (size_t i = 0; i < text.size();) {
    size_t n = 1 + rng() % max_len;
    chunks.push_back(text.substr(i, n));
    i += n;
  }
  return chunks;
}

// Checks that every chunking gives the same message and consistent events.
void expect_chunking_invariant(const OutputParserOptions& o, const std::string& text) {
  std::string expected = describe(run_chunks(o, {text}).message);
  std::vector<std::vector<std::string>> chunkings;
  std::vector<std::string> bytes;
  for (char c : text) bytes.emplace_back(1, c);
  chunkings.push_back(bytes);
  for (unsigned seed = 0; seed < 60; ++seed) {
    std::mt19937 rng(seed);
    chunkings.push_back(split_random(text, rng, 1 + seed % 13));
  }
  for (const auto& ch : chunkings) {
    auto r = run_chunks(o, ch);
    ASSERT_EQ(r.violation, "") << text;
    ASSERT_EQ(describe(r.message), expected) << text;
  }
}

TEST(OutputParser, PlainContentAndReasoning) {
  auto r = run_whole(opts(OutputFormat::kQwen3), "<think>\nLet me think.\n</think>\n\nHello <b>world</b> a < b");
  EXPECT_EQ(r.message.reasoning, "Let me think.");
  EXPECT_EQ(r.message.content, "Hello <b>world</b> a < b");
  EXPECT_TRUE(r.message.tool_calls.empty());
}

TEST(OutputParser, StartsInsideReasoning) {
  auto r = run_whole(opts(OutputFormat::kQwen3, true), "plan it\n</think>\n\nanswer");
  EXPECT_EQ(r.message.reasoning, "plan it");
  EXPECT_EQ(r.message.content, "answer");
  auto u = run_whole(opts(OutputFormat::kQwen3, true), "still thinking <tool_call>");
  EXPECT_EQ(u.message.reasoning, "still thinking <tool_call>");  // unterminated reasoning stays reasoning
}

TEST(OutputParser, ThinkOnlyOpensBeforeContent) {
  // Thinking disabled (empty think block in the prompt) but the model still writes <think>: reasoning.
  auto r = run_whole(opts(OutputFormat::kQwen3), "\n<think>x</think>y");
  EXPECT_EQ(r.message.reasoning, "x");
  EXPECT_EQ(r.message.content, "y");
  auto c = run_whole(opts(OutputFormat::kQwen3), "Use <think> tags</think>.");
  EXPECT_EQ(c.message.content, "Use <think> tags</think>.");
  EXPECT_EQ(c.message.reasoning, "");
}

TEST(OutputParser, Qwen3ToolCallStreamsArguments) {
  std::string text = "Checking.\n<tool_call>\n{\"name\": \"read\", \"arguments\": {\"path\": \"a{b}\\\"c\\u00e9\", \"n\": [1, {\"x\": null}]}}\n</tool_call>";
  auto r = run_whole(opts(OutputFormat::kQwen3), text);
  EXPECT_EQ(r.message.content, "Checking.");
  ASSERT_EQ(r.message.tool_calls.size(), 1u);
  const auto& c = r.message.tool_calls[0];
  EXPECT_EQ(c.name, "read");
  EXPECT_EQ(c.id, "call_0");
  EXPECT_EQ(c.arguments, "{\"path\": \"a{b}\\\"c\\u00e9\", \"n\": [1, {\"x\": null}]}");  // verbatim
  EXPECT_EQ(c.arguments_json, json::parse(R"({"path":"a{b}\"cé","n":[1,{"x":null}]})"));
  expect_chunking_invariant(opts(OutputFormat::kQwen3), text);
}

TEST(OutputParser, Qwen3NameAfterArgumentsAndMultipleCalls) {
  std::string text =
      "<tool_call>\n{\"arguments\": {\"q\": \"</tool_call>\"}, \"name\": \"search\"}\n</tool_call>\nthen\n"
      "<tool_call>\n{\"name\": \"ls\"}\n</tool_call>";
  auto r = run_whole(opts(OutputFormat::kQwen3), text);
  ASSERT_EQ(r.message.tool_calls.size(), 2u) << describe(r.message);
  EXPECT_EQ(r.message.tool_calls[0].name, "search");
  EXPECT_EQ(r.message.tool_calls[0].arguments_json, json::parse(R"({"q":"</tool_call>"})"));
  EXPECT_EQ(r.message.tool_calls[1].name, "ls");
  EXPECT_EQ(r.message.tool_calls[1].arguments, "{}");
  EXPECT_EQ(r.message.tool_calls[1].index, 1);
  EXPECT_NE(r.message.tool_calls[0].id, r.message.tool_calls[1].id);
  EXPECT_EQ(r.message.content, "then");
  expect_chunking_invariant(opts(OutputFormat::kQwen3), text);
}

TEST(OutputParser, Qwen3ToolCallInsideReasoningStaysReasoning) {
  auto r = run_whole(opts(OutputFormat::kQwen3), "<think><tool_call>{\"name\":\"x\"}</tool_call></think>ok");
  EXPECT_TRUE(r.message.tool_calls.empty());
  EXPECT_EQ(r.message.reasoning, "<tool_call>{\"name\":\"x\"}</tool_call>");
}

TEST(OutputParser, Qwen3ErrorsCarryWhatWasParsed) {
  auto r = run_whole(opts(OutputFormat::kQwen3), "<tool_call>\n{\"name\": \"w\", \"arguments\": {\"a\": 1");
  ASSERT_EQ(r.message.errors.size(), 1u);
  EXPECT_EQ(r.message.errors[0].name, "w");
  EXPECT_EQ(r.message.errors[0].arguments, "{\"a\": 1");
  EXPECT_NE(r.message.errors[0].raw.find("<tool_call>"), std::string::npos);
  auto bad = run_whole(opts(OutputFormat::kQwen3), "<tool_call>not json</tool_call>after");
  ASSERT_EQ(bad.message.errors.size(), 1u);
  EXPECT_EQ(bad.message.content, "after");
  // An empty object is a call without a name; the character after its '}' is not swallowed (a fuzz
  // finding: it was, and only when the next chunk had arrived, so chunking changed the result).
  auto empty = run_whole(opts(OutputFormat::kQwen3), "<tool_call>{}z");
  ASSERT_EQ(empty.message.errors.size(), 1u);
  EXPECT_EQ(empty.message.content, "z");
  auto str_args = run_whole(opts(OutputFormat::kQwen3), "<tool_call>{\"name\":\"f\",\"arguments\":\"{}\"}</tool_call>");
  EXPECT_EQ(str_args.message.errors.size(), 1u);
  EXPECT_TRUE(str_args.message.tool_calls.empty());
}

TEST(OutputParser, NoPartialTagReachesContent) {
  auto texts = [](const std::vector<OutputEvent>& ev) {
    std::string s;
    for (const auto& e : ev) s += e.text;
    return s;
  };
  OutputParser p(opts(OutputFormat::kQwen3Coder));
  EXPECT_EQ(texts(p.feed("Hi <tool_")), "Hi");  // "<tool_" held back
  EXPECT_EQ(texts(p.feed("x <function")), " <tool_x");  // decided: not a tag; "<function" held
  EXPECT_EQ(texts(p.feed("al")), " <functional");
  // In reasoning, a trailing "</thi" waits; in content it is released (</think> only closes reasoning).
  OutputParser q(opts(OutputFormat::kQwen3, true));
  EXPECT_EQ(texts(q.feed("a </thi")), "a");
  EXPECT_EQ(texts(q.feed("n")), "");
  EXPECT_EQ(texts(q.feed("k>b <")), "b");  // reasoning "a", content "b", "<" held
  EXPECT_EQ(q.message().reasoning, "a");
  EXPECT_EQ(texts(q.finish()), " <");  // finish releases a held prefix as text
  EXPECT_EQ(q.message().content, "b <");
}

TEST(OutputParser, CoderTypedParameters) {
  std::string text =
      "I'll edit.\n<tool_call>\n<function=edit>\n<parameter=path>\nsrc/a \"b\".cc\n</parameter>\n"
      "<parameter=count>\n42\n</parameter>\n<parameter=ratio>\n0.5\n</parameter>\n"
      "<parameter=force>\nTrue\n</parameter>\n<parameter=opts>\n{'k': None, \"j\": [False]}\n</parameter>\n"
      "<parameter=items>\n[1, 2\n</parameter>\n<parameter=other>\n7\n</parameter>\n"
      "<parameter=maybe>\nnull\n</parameter>\n</function>\n</tool_call>";
  auto r = run_whole(opts(OutputFormat::kQwen3Coder), text);
  ASSERT_EQ(r.message.tool_calls.size(), 1u) << describe(r.message);
  EXPECT_EQ(r.message.content, "I'll edit.");
  EXPECT_EQ(r.message.tool_calls[0].arguments_json,
            json::parse(R"({"path":"src/a \"b\".cc","count":42,"ratio":0.5,"force":true,
                "opts":{"k":null,"j":[false]},"items":"[1, 2","other":"7","maybe":"null"})"));
  expect_chunking_invariant(opts(OutputFormat::kQwen3Coder), text);
}

TEST(OutputParser, CoderValueKeepsLookalikeTags) {
  std::string text =
      "<tool_call>\n<function=edit>\n<parameter=path>\nif (a < b) x = \"</parameter\";\n</parameter> not end\n"
      "\n\nline\n</parameter>\n</function>\n</tool_call>";
  auto r = run_whole(opts(OutputFormat::kQwen3Coder), text);
  ASSERT_EQ(r.message.tool_calls.size(), 1u) << describe(r.message);
  EXPECT_EQ(r.message.tool_calls[0].arguments_json["path"],
            "if (a < b) x = \"</parameter\";\n</parameter> not end\n\n\nline");
  expect_chunking_invariant(opts(OutputFormat::kQwen3Coder), text);
}

TEST(OutputParser, CoderOnlyOneNewlineStripped) {
  auto r = run_whole(opts(OutputFormat::kQwen3Coder),
                     "<tool_call><function=edit><parameter=path>\n\nx\n\n</parameter></function></tool_call>");
  ASSERT_EQ(r.message.tool_calls.size(), 1u) << describe(r.message);
  EXPECT_EQ(r.message.tool_calls[0].arguments_json["path"], "\nx\n");
}

TEST(OutputParser, CoderRecoversMissingToolCallAndParallelCalls) {
  std::string text =
      "<function=edit>\n<parameter=path>\na\n</parameter>\n</function>\n"
      "<tool_call>\n<function=run>\n<parameter=cmd>\nls\n</parameter>\n</function>\n</tool_call>";
  auto r = run_whole(opts(OutputFormat::kQwen3Coder), text);
  ASSERT_EQ(r.message.tool_calls.size(), 2u) << describe(r.message);
  EXPECT_EQ(r.message.tool_calls[0].arguments, "{\"path\":\"a\"}");
  EXPECT_EQ(r.message.tool_calls[1].name, "run");
  EXPECT_EQ(r.message.tool_calls[1].arguments_json["cmd"], "ls");  // unknown tool: strings
  EXPECT_EQ(r.message.content, "");
  expect_chunking_invariant(opts(OutputFormat::kQwen3Coder), text);
}

TEST(OutputParser, CoderStringStreamsBeforeCallCompletes) {
  std::string head = "<tool_call>\n<function=edit>\n<parameter=path>\n";
  std::string value = "h\xC3\xA9llo \"w\"\\\n";
  std::string text = head + value + "tail\n</parameter>\n</function>\n</tool_call>";
  OutputParser p(opts(OutputFormat::kQwen3Coder));
  std::string args;
  size_t fed = 0;
  for (char c : head + value) {
    for (auto& e : p.feed(std::string(1, c))) {
      EXPECT_NE(e.kind, OutputEvent::Kind::kToolCallEnd);
      if (e.kind == OutputEvent::Kind::kToolCallArgumentsDelta) args += e.text;
    }
    ++fed;
  }
  // Everything except the held trailing newline is already out, escaped, before the call closes.
  EXPECT_EQ(args, "{\"path\":\"h\xC3\xA9llo \\\"w\\\"\\\\");
  expect_chunking_invariant(opts(OutputFormat::kQwen3Coder), text);
}

TEST(OutputParser, CoderUnterminatedAndInvalidUtf8) {
  auto r = run_whole(opts(OutputFormat::kQwen3Coder), "<tool_call>\n<function=edit>\n<parameter=path>\nab");
  ASSERT_EQ(r.message.errors.size(), 1u);
  EXPECT_EQ(r.message.errors[0].index, 0);
  EXPECT_EQ(r.message.errors[0].arguments, "{\"path\":\"ab");
  auto u = run_whole(opts(OutputFormat::kQwen3Coder),
                     "<function=edit><parameter=path>a\xFF\xE2\x82</parameter></function>");
  ASSERT_EQ(u.message.tool_calls.size(), 1u);
  EXPECT_EQ(u.message.tool_calls[0].arguments_json["path"], "a\xEF\xBF\xBD\xEF\xBF\xBD\xEF\xBF\xBD");
}

TEST(OutputParser, DefaultIdsAreUniqueAndPrefixed) {
  OutputParserOptions o = opts(OutputFormat::kQwen3);
  OutputParser p(o);
  p.feed("<tool_call>{\"name\":\"a\"}</tool_call><tool_call>{\"name\":\"b\"}</tool_call>");
  p.finish();
  ASSERT_EQ(p.message().tool_calls.size(), 2u);
  EXPECT_EQ(p.message().tool_calls[0].id.rfind("call_", 0), 0u);
  EXPECT_EQ(p.message().tool_calls[0].id.size(), 29u);
  EXPECT_NE(p.message().tool_calls[0].id, p.message().tool_calls[1].id);
}

TEST(OutputParser, ChunkingPropertyOnMixedTexts) {
  const std::vector<std::pair<OutputFormat, std::string>> cases = {
      {OutputFormat::kQwen3, "<think>\nhm \xE4\xB8\xAD </thin </think>\n\nA <tool_ b\n<tool_call>\n{\"name\":\"f\",\"arguments\":{\"s\":\"\\\\\\\"}\"}}\n</tool_call>"},
      {OutputFormat::kQwen3, "<tool_call>{\"arguments\":{\"a\":[true,false,-1.5e3]},\"x\":1,\"name\":\"n\"}</tool_call>"},
      {OutputFormat::kQwen3Coder, "text <function=edit><parameter=count>12</parameter><parameter=path>\xF0\x9F\x98\x80</parameter> \n</function>"},
      {OutputFormat::kQwen3Coder, "<tool_call><function=edit><parameter=opts>\n{\"a\": \"</parameter>\"}\n</parameter></function></tool_call> after"},
  };
  for (const auto& [f, text] : cases) expect_chunking_invariant(opts(f), text);
}

}  // namespace
