// Request parsing and validation of the three dialects (server/request.h).
#include "server/request.h"

#include <gtest/gtest.h>

namespace {

using trove::chat::Json;
using trove::chat::Role;
using namespace trove::server;

Json j(const char* s) { return Json::parse(s); }

TEST(OpenAiChat, MinimalRequestGetsQwenDefaults) {
  auto r = parse_openai_chat(j(R"({"model":"m","messages":[{"role":"user","content":"hi"}],"unknown_field":{"x":1}})"));
  ASSERT_TRUE(r.ok()) << r.error.message;
  EXPECT_EQ(r.job->model, "m");
  EXPECT_FALSE(r.job->stream);
  EXPECT_FALSE(r.job->max_tokens.has_value());
  EXPECT_FLOAT_EQ(r.job->sampling.temperature, 0.7f);
  EXPECT_EQ(r.job->sampling.top_k, 20u);
  ASSERT_EQ(r.job->conversation.messages.size(), 1u);
  EXPECT_EQ(r.job->conversation.messages[0].content, "hi");
}

TEST(OpenAiChat, HonouredFields) {
  auto r = parse_openai_chat(j(R"({"messages":[{"role":"developer","content":"sys"},{"role":"user","content":[{"type":"text","text":"a"},{"type":"text","text":"b"}]}],
    "stream":true,"stream_options":{"include_usage":true},"max_completion_tokens":7,"temperature":0,"top_p":0.5,
    "top_k":500,"min_p":0.1,"seed":3,"stop":["x","y"],"reasoning_effort":"none"})"));
  ASSERT_TRUE(r.ok()) << r.error.message;
  EXPECT_TRUE(r.job->stream);
  EXPECT_TRUE(r.job->include_usage);
  EXPECT_EQ(*r.job->max_tokens, 7u);
  EXPECT_FLOAT_EQ(r.job->sampling.temperature, 0.0f);
  EXPECT_FLOAT_EQ(r.job->sampling.top_p, 0.5f);
  EXPECT_EQ(r.job->sampling.top_k, 64u);  // capped
  EXPECT_EQ(r.job->sampling.seed, 3u);
  EXPECT_EQ(r.job->stop, (std::vector<std::string>{"x", "y"}));
  EXPECT_FALSE(r.job->conversation.options.enable_thinking);
  EXPECT_TRUE(r.job->conversation.options.enable_thinking_given);
  EXPECT_EQ(r.job->conversation.messages[0].role, Role::kSystem);
  EXPECT_EQ(r.job->conversation.messages[1].content, "ab");
}

TEST(OpenAiChat, ChatTemplateKwargsDecideThinking) {
  auto r = parse_openai_chat(j(R"({"messages":[{"role":"user","content":"x"}],"reasoning_effort":"high","chat_template_kwargs":{"enable_thinking":false}})"));
  ASSERT_TRUE(r.ok());
  EXPECT_FALSE(r.job->conversation.options.enable_thinking);
}

TEST(OpenAiChat, ToolChoiceNoneDropsToolsAndNamedKeepsOne) {
  const char* tools = R"([{"type":"function","function":{"name":"a","parameters":{"type":"object"}}},
                          {"type":"function","function":{"name":"b","parameters":{"type":"object"}}}])";
  auto none = parse_openai_chat(j((std::string(R"({"messages":[{"role":"user","content":"x"}],"tool_choice":"none","tools":)") + tools + "}").c_str()));
  ASSERT_TRUE(none.ok());
  EXPECT_TRUE(none.job->conversation.tools.empty());
  auto named = parse_openai_chat(j((std::string(R"({"messages":[{"role":"user","content":"x"}],"tool_choice":{"type":"function","function":{"name":"b"}},"tools":)") + tools + "}").c_str()));
  ASSERT_TRUE(named.ok());
  ASSERT_EQ(named.job->conversation.tools.size(), 1u);
  EXPECT_EQ(named.job->conversation.tools[0].name, "b");
  auto missing = parse_openai_chat(j((std::string(R"({"messages":[{"role":"user","content":"x"}],"tool_choice":{"type":"function","function":{"name":"zz"}},"tools":)") + tools + "}").c_str()));
  ASSERT_FALSE(missing.ok());
  EXPECT_EQ(missing.error.param, "tool_choice");
}

TEST(OpenAiChat, ToolChoiceRequiredNeedsToolsAndMarksTheJob) {
  auto no_tools = parse_openai_chat(j(R"({"messages":[{"role":"user","content":"x"}],"tool_choice":"required"})"));
  ASSERT_FALSE(no_tools.ok());
  EXPECT_EQ(no_tools.error.param, "tool_choice");
  auto req = parse_openai_chat(j(R"({"messages":[{"role":"user","content":"x"}],"tool_choice":"required",
    "tools":[{"type":"function","function":{"name":"a","parameters":{"type":"object"}}}]})"));
  ASSERT_TRUE(req.ok());
  EXPECT_TRUE(req.job->require_tool_call);
  EXPECT_EQ(req.job->required_tool, "");
  auto named = parse_anthropic_messages(j(R"({"max_tokens":1,"messages":[{"role":"user","content":"x"}],"tool_choice":{"type":"tool","name":"a"},
    "tools":[{"name":"a","input_schema":{"type":"object"}}]})"));
  ASSERT_TRUE(named.ok());
  EXPECT_EQ(named.job->required_tool, "a");
  auto auto_choice = parse_responses(j(R"({"input":"x","tool_choice":"auto","tools":[{"type":"function","name":"a"}]})"));
  ASSERT_TRUE(auto_choice.ok());
  EXPECT_FALSE(auto_choice.job->require_tool_call);
}

TEST(OpenAiChat, WrongTypesNameTheJsonPath) {
  struct Case { const char* body; const char* param; const char* words; };
  const Case cases[] = {
      {R"({"messages":[{"role":"user","content":"x"}],"max_tokens":"5"})", "max_tokens", "integer"},
      {R"({"messages":[{"role":"user","content":"x"}],"max_tokens":0})", "max_tokens", "between 1"},
      {R"({"messages":[{"role":"user","content":"x"}],"temperature":"hot"})", "temperature", "number"},
      {R"({"messages":[{"role":"user","content":"x"}],"stream":"yes"})", "stream", "true or false"},
      {R"({"messages":[{"role":"user","content":"x"}],"stop":[1]})", "stop[0]", "string"},
      {R"({"messages":[{"role":"user","content":"x"}],"stream_options":{"include_usage":1}})", "stream_options.include_usage", "true or false"},
      {R"({"messages":[{"role":"user","content":"x"},{"role":"robot","content":"y"}]})", "messages[1].role", "unknown role"},
      {R"({"messages":[{"role":"user","content":5}]})", "messages[0].content", "string"},
      {R"({"messages":"hi"})", "messages", "array"},
      {R"({"model":"m"})", "messages", "missing"},
  };
  for (const auto& c : cases) {
    auto r = parse_openai_chat(j(c.body));
    ASSERT_FALSE(r.ok()) << c.body;
    EXPECT_EQ(r.error.status, 400);
    EXPECT_EQ(r.error.param, c.param) << c.body << " → " << r.error.message;
    EXPECT_NE(r.error.message.find(c.words), std::string::npos) << r.error.message;
    EXPECT_NE(r.error.message.find(c.param), std::string::npos) << r.error.message;
  }
}

TEST(Anthropic, BlocksBecomeTheNeutralConversation) {
  auto r = parse_anthropic_messages(j(R"({"model":"c","max_tokens":10,"system":[{"type":"text","text":"S1"},{"type":"text","text":"S2","cache_control":{"type":"ephemeral"}}],
    "thinking":{"type":"disabled"},"stop_sequences":["END"],
    "tools":[{"name":"t","description":"d","input_schema":{"type":"object"}},{"type":"web_search_20250305","name":"web_search"}],
    "messages":[{"role":"user","content":"q"},
                {"role":"assistant","content":[{"type":"thinking","thinking":"hmm","signature":"s"},{"type":"text","text":"let me"},{"type":"tool_use","id":"toolu_1","name":"t","input":{"k":1}}]},
                {"role":"user","content":[{"type":"tool_result","tool_use_id":"toolu_1","content":[{"type":"text","text":"R"}]},{"type":"text","text":"thanks"}]}]})"));
  ASSERT_TRUE(r.ok()) << r.error.message;
  const auto& c = r.job->conversation;
  ASSERT_EQ(c.messages.size(), 5u);
  EXPECT_EQ(c.messages[0].role, Role::kSystem);
  EXPECT_EQ(c.messages[0].content, "S1\nS2");
  EXPECT_EQ(c.messages[2].role, Role::kAssistant);
  EXPECT_EQ(*c.messages[2].reasoning_content, "hmm");
  ASSERT_EQ(c.messages[2].tool_calls.size(), 1u);
  EXPECT_EQ(c.messages[2].tool_calls[0].name, "t");
  EXPECT_EQ(c.messages[2].tool_calls[0].arguments["k"], 1);
  EXPECT_EQ(c.messages[3].role, Role::kTool);
  EXPECT_EQ(c.messages[3].tool_call_id, "toolu_1");
  EXPECT_EQ(c.messages[3].content, "R");
  EXPECT_EQ(c.messages[4].content, "thanks");
  ASSERT_EQ(c.tools.size(), 1u);  // the server tool is not offered to the model
  EXPECT_FALSE(c.options.enable_thinking);
  EXPECT_EQ(r.job->stop, (std::vector<std::string>{"END"}));
  EXPECT_EQ(*r.job->max_tokens, 10u);
}

TEST(Anthropic, Errors) {
  auto no_max = parse_anthropic_messages(j(R"({"messages":[{"role":"user","content":"q"}]})"));
  ASSERT_FALSE(no_max.ok());
  EXPECT_EQ(no_max.error.param, "max_tokens");
  EXPECT_TRUE(parse_anthropic_count_tokens(j(R"({"messages":[{"role":"user","content":"q"}]})")).ok());
  auto image = parse_anthropic_messages(j(R"({"max_tokens":1,"messages":[{"role":"user","content":[{"type":"image","source":{}}]}]})"));
  ASSERT_FALSE(image.ok());
  EXPECT_EQ(image.error.param, "messages[0].content[0].type");
  auto sys = parse_anthropic_messages(j(R"({"max_tokens":1,"system":5,"messages":[{"role":"user","content":"q"}]})"));
  ASSERT_FALSE(sys.ok());
  EXPECT_EQ(sys.error.param, "system");
  auto tool = parse_anthropic_messages(j(R"({"max_tokens":1,"tools":[{"name":"t"}],"messages":[{"role":"user","content":"q"}]})"));
  ASSERT_FALSE(tool.ok());
  EXPECT_EQ(tool.error.param, "tools[0].input_schema");
}

TEST(Responses, InputItemsBecomeMessagesWithToolCalls) {
  auto r = parse_responses(j(R"({"model":"codex","instructions":"I","max_output_tokens":9,"reasoning":{"effort":"low","summary":"auto"},
    "tools":[{"type":"function","name":"exec","parameters":{"type":"object"}},{"type":"web_search"}],
    "input":[{"type":"message","role":"developer","content":[{"type":"input_text","text":"D"}]},
             {"role":"user","content":"U"},
             {"type":"reasoning","summary":[{"type":"summary_text","text":"think"}]},
             {"type":"function_call","call_id":"c1","name":"exec","arguments":"{\"cmd\":\"ls\"}"},
             {"type":"function_call_output","call_id":"c1","output":"a.txt"}]})"));
  ASSERT_TRUE(r.ok()) << r.error.message;
  const auto& c = r.job->conversation;
  ASSERT_EQ(c.messages.size(), 5u);
  EXPECT_EQ(c.messages[0].content, "I");
  EXPECT_EQ(c.messages[1].role, Role::kSystem);  // developer
  EXPECT_EQ(c.messages[3].role, Role::kAssistant);
  EXPECT_EQ(*c.messages[3].reasoning_content, "think");
  ASSERT_EQ(c.messages[3].tool_calls.size(), 1u);
  EXPECT_EQ(c.messages[3].tool_calls[0].arguments["cmd"], "ls");
  EXPECT_EQ(c.messages[4].role, Role::kTool);
  EXPECT_EQ(c.messages[4].content, "a.txt");
  ASSERT_EQ(c.tools.size(), 1u);
  EXPECT_EQ(*r.job->max_tokens, 9u);
  EXPECT_TRUE(parse_responses(j(R"({"input":"hello"})")).ok());
  auto bad = parse_responses(j(R"({"input":[{"type":"message","role":"user","content":[{"type":"input_image"}]}]})"));
  ASSERT_FALSE(bad.ok());
  EXPECT_EQ(bad.error.param, "input[0].content[0].type");
  EXPECT_EQ(parse_responses(j(R"({"model":"m"})")).error.param, "input");
}

// Claude Code's first system block changes with every prompt; it must not reach the prompt, or no
// two sessions share the cached system prompt and tools.
TEST(Anthropic, ClaudeCodesBillingHeaderBlockIsNotRendered) {
  auto with_header = [](const char* hex) {
    return parse_anthropic_messages(j((std::string(R"({"max_tokens":1,"system":[
      {"type":"text","text":"x-anthropic-billing-header: cc_version=2.1.332.)") + hex + R"(; cc_entrypoint=cli;"},
      {"type":"text","text":"You are Claude Code.","cache_control":{"type":"ephemeral"}},
      {"type":"text","text":"Be careful."}],
      "messages":[{"role":"user","content":"q"}]})").c_str()));
  };
  auto a = with_header("a1f"), b = with_header("9c2");
  ASSERT_TRUE(a.ok()) << a.error.message;
  ASSERT_TRUE(b.ok());
  EXPECT_EQ(a.job->conversation.messages[0].content, "You are Claude Code.\nBe careful.");
  EXPECT_EQ(b.job->conversation.messages[0].content, a.job->conversation.messages[0].content);
  // A system made of the header alone leaves no system message at all.
  auto only = parse_anthropic_messages(j(R"({"max_tokens":1,"system":[{"type":"text","text":"x-anthropic-billing-header: cc_version=1"}],
    "messages":[{"role":"user","content":"q"}]})"));
  ASSERT_TRUE(only.ok());
  ASSERT_EQ(only.job->conversation.messages.size(), 1u);
  EXPECT_EQ(only.job->conversation.messages[0].role, Role::kUser);
  // The same words in a user message are the user's.
  auto user = parse_anthropic_messages(j(R"({"max_tokens":1,"messages":[{"role":"user","content":"x-anthropic-billing-header: hi"}]})"));
  EXPECT_EQ(user.job->conversation.messages[0].content, "x-anthropic-billing-header: hi");
}

TEST(Anthropic, DeferredToolsAreNotOfferedToTheModel) {
  auto r = parse_anthropic_messages(j(R"({"max_tokens":1,"messages":[{"role":"user","content":"q"}],
    "tools":[{"name":"Read","input_schema":{"type":"object"}},
             {"name":"mcp__x__y","input_schema":{"type":"object"},"defer_loading":true},
             {"name":"Other","input_schema":{"type":"object"},"defer_loading":false}]})"));
  ASSERT_TRUE(r.ok()) << r.error.message;
  ASSERT_EQ(r.job->conversation.tools.size(), 2u);
  EXPECT_EQ(r.job->conversation.tools[0].name, "Read");
  EXPECT_EQ(r.job->conversation.tools[1].name, "Other");
}

TEST(Responses, NamespaceToolsAreOfferedAsTheirFunctions) {
  auto r = parse_responses(j(R"({"input":[
      {"type":"message","role":"user","content":"go"},
      {"type":"function_call","call_id":"c1","name":"spawn_agent","namespace":"multi_agent_v1","arguments":"{}"},
      {"type":"function_call_output","call_id":"c1","output":"ok"}],
    "tools":[{"type":"function","name":"exec_command","parameters":{"type":"object"}},
             {"type":"namespace","name":"multi_agent_v1","description":"Sub-agents.","tools":[
               {"type":"function","name":"spawn_agent","description":"Spawn one.","parameters":{"type":"object","properties":{"prompt":{"type":"string"}}}},
               {"type":"function","name":"wait_agent","parameters":{"type":"object"}}]},
             {"type":"web_search"}]})"));
  ASSERT_TRUE(r.ok()) << r.error.message;
  const auto& c = r.job->conversation;
  ASSERT_EQ(c.tools.size(), 3u);
  EXPECT_EQ(c.tools[0].name, "exec_command");
  EXPECT_EQ(c.tools[1].name, "multi_agent_v1__spawn_agent");
  EXPECT_EQ(c.tools[1].description, "Spawn one.");
  EXPECT_EQ(c.tools[2].name, "multi_agent_v1__wait_agent");
  EXPECT_EQ(r.job->namespaced_tools.at("multi_agent_v1__spawn_agent"),
            (std::pair<std::string, std::string>{"multi_agent_v1", "spawn_agent"}));
  // History: the earlier call is rendered under the flat name the model wrote.
  EXPECT_EQ(c.messages[1].tool_calls[0].name, "multi_agent_v1__spawn_agent");
  EXPECT_EQ(namespaced_tool_name("ns_", "_f"), "ns__f");
  auto bad = parse_responses(j(R"({"input":"x","tools":[{"type":"namespace","name":"n","tools":[{"type":"function"}]}]})"));
  ASSERT_FALSE(bad.ok());
  EXPECT_EQ(bad.error.param, "tools[0].tools[0].name");
}

}  // namespace
