// A script of forced replies for tests with real clients (server/force_script.h).
#include "server/force_script.h"

#include <fstream>
#include <sstream>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

namespace trove::server {

Result<std::vector<ForceRule>> load_force_script(const std::string& path) {
  std::ifstream in(path);
  if (!in) return Status::NotFound(fmt::format("--test-force-script {}: cannot open the file", path));
  std::stringstream ss;
  ss << in.rdbuf();
  nlohmann::json j;
  try {
    j = nlohmann::json::parse(ss.str());
  } catch (const nlohmann::json::exception& e) {
    return Status::InvalidArgument(fmt::format("--test-force-script {}: not JSON: {}", path, e.what()));
  }
  if (!j.is_object() || !j.contains("rules") || !j["rules"].is_array()) {
    return Status::InvalidArgument(
        fmt::format("--test-force-script {}: expected {{\"rules\": [{{\"last\"?, \"tool\"?, \"output\"}}, …]}}", path));
  }
  std::vector<ForceRule> rules;
  for (size_t i = 0; i < j["rules"].size(); ++i) {
    const auto& r = j["rules"][i];
    auto bad = [&](const std::string& what) {
      return Status::InvalidArgument(fmt::format("--test-force-script {}: rules[{}]: {}", path, i, what));
    };
    if (!r.is_object() || !r.contains("output") || !r["output"].is_string()) return bad("needs \"output\": a string");
    ForceRule rule;
    rule.output = r["output"].get<std::string>();
    if (r.contains("last")) {
      const std::string role = r["last"].is_string() ? r["last"].get<std::string>() : "";
      if (role == "tool") rule.last = chat::Role::kTool;
      else if (role == "user") rule.last = chat::Role::kUser;
      else if (role == "assistant") rule.last = chat::Role::kAssistant;
      else if (role == "system") rule.last = chat::Role::kSystem;
      else return bad("\"last\" must be one of \"tool\", \"user\", \"assistant\", \"system\"");
    }
    if (r.contains("tool")) {
      if (!r["tool"].is_string()) return bad("\"tool\" must be a tool name (a string)");
      rule.tool = r["tool"].get<std::string>();
    }
    rules.push_back(std::move(rule));
  }
  return rules;
}

std::optional<std::string> pick_forced_output(const std::vector<ForceRule>& rules, const chat::Conversation& c) {
  for (const auto& r : rules) {
    if (r.last && (c.messages.empty() || c.messages.back().role != *r.last)) continue;
    if (r.tool) {
      bool offered = false;
      for (const auto& t : c.tools) offered |= t.name == *r.tool;
      if (!offered) continue;
    }
    return r.output;
  }
  return std::nullopt;
}

}  // namespace trove::server
