// The force-script test hook (server/force_script.h): loading, its errors, and which rule a request gets.
#include <gtest/gtest.h>

#include <unistd.h>

#include <cstdio>
#include <filesystem>
#include <fstream>

#include "server/force_script.h"

namespace trove::server {
namespace {

std::string write_script(const std::string& text) {
  const auto p = std::filesystem::temp_directory_path() / ("force_script_" + std::to_string(::getpid()) + ".json");
  std::ofstream(p) << text;
  return p.string();
}

chat::Conversation conversation(std::vector<chat::Role> roles, std::vector<std::string> tools) {
  chat::Conversation c;
  for (auto r : roles) c.messages.push_back({.role = r});
  for (auto& t : tools) c.tools.push_back({.name = t});
  return c;
}

TEST(ForceScript, FirstMatchingRuleWins) {
  const std::string path = write_script(R"({"rules": [
    {"last": "tool", "output": "done"},
    {"tool": "write", "output": "<tool_call>call</tool_call>"},
    {"output": "title"}]})");
  auto rules = load_force_script(path);
  std::remove(path.c_str());
  ASSERT_TRUE(rules.ok()) << rules.status().message();
  using R = chat::Role;
  // The client offers the tool and has not called it yet: the call.
  EXPECT_EQ(pick_forced_output(*rules, conversation({R::kSystem, R::kUser}, {"read", "write"})), "<tool_call>call</tool_call>");
  // It sent the tool result: the final answer, tools or not.
  EXPECT_EQ(pick_forced_output(*rules, conversation({R::kUser, R::kAssistant, R::kTool}, {"write"})), "done");
  // A side request (a title) offers no tools: the rule without conditions.
  EXPECT_EQ(pick_forced_output(*rules, conversation({R::kUser}, {})), "title");
}

TEST(ForceScript, NoRuleMatchesNoOutput) {
  const std::string path = write_script(R"({"rules": [{"last": "tool", "output": "done"}]})");
  auto rules = load_force_script(path);
  std::remove(path.c_str());
  ASSERT_TRUE(rules.ok());
  EXPECT_FALSE(pick_forced_output(*rules, conversation({chat::Role::kUser}, {"write"})).has_value());
  EXPECT_FALSE(pick_forced_output(*rules, chat::Conversation{}).has_value());
}

TEST(ForceScript, BadScriptsSayWhatIsWrong) {
  auto load = [](const std::string& text) {
    const std::string path = write_script(text);
    auto r = load_force_script(path);
    std::remove(path.c_str());
    return r.ok() ? std::string("ok") : r.status().message();
  };
  EXPECT_NE(load("not json").find("not JSON"), std::string::npos);
  EXPECT_NE(load(R"({"rule": []})").find("expected {\"rules\""), std::string::npos);
  EXPECT_NE(load(R"({"rules": [{"last": "tool"}]})").find("rules[0]: needs \"output\""), std::string::npos);
  EXPECT_NE(load(R"({"rules": [{"output": "x", "last": "bot"}]})").find("\"last\" must be one of"), std::string::npos);
  EXPECT_NE(load(R"({"rules": [{"output": "x", "tool": 3}]})").find("\"tool\" must be a tool name"), std::string::npos);
  auto missing = load_force_script("/nonexistent/script.json");
  ASSERT_FALSE(missing.ok());
  EXPECT_NE(missing.status().message().find("cannot open"), std::string::npos);
}

}  // namespace
}  // namespace trove::server
