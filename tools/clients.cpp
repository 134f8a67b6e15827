// How each coding agent is pointed at trove (tools/clients.h; docs/agents.md has the same per client).
#include "tools/clients.h"

#include <httplib.h>
#include <nlohmann/json.hpp>

#include <algorithm>
#include <cstdlib>
#include <filesystem>

#include <fmt/format.h>

#include "engine/gguf/gguf.h"
#include "engine/gguf/model_info.h"
#include "tools/paths.h"

namespace trove::clients {

using nlohmann::json;

const std::vector<std::string>& client_names() {
  static const std::vector<std::string> v = {"pi", "claude", "codex", "opencode", "qwen"};
  return v;
}

Result<ClientSetup> client_setup(const std::string& client, const ServedModel& m, const std::string& config_dir) {
  ClientSetup s;
  s.client = client;
  const std::string v1 = m.url + "/v1";
  // Clients insist on some key; trove without --api-key accepts any.
  const std::string key = m.api_key.empty() ? "trove" : m.api_key;
  // The output limit clients are told: at most a quarter of the window. Clients reserve it out of the
  // window (opencode compacts once input > context - output; with output = context it compacted before
  // every turn and never ran the tool it was given), and a reply rarely needs more.
  const uint32_t out = std::max<uint32_t>(1, std::min(m.max_output, m.n_ctx / 4));
  if (client == "pi") {
    // Pi reads custom providers from models.json in its agent directory; trove's own directory keeps
    // the user's ~/.pi/agent untouched.
    s.program = "pi";
    s.npm_package = "@mariozechner/pi-coding-agent";
    json models = {{"providers",
                    {{"trove",
                      {{"baseUrl", v1},
                       {"api", "openai-completions"},
                       {"apiKey", key},
                       {"models", json::array({{{"id", m.id},
                                                {"name", m.id + " (trove)"},
                                                {"reasoning", m.reasoning},
                                                {"input", json::array({"text"})},
                                                {"cost", {{"input", 0}, {"output", 0}, {"cacheRead", 0}, {"cacheWrite", 0}}},
                                                {"contextWindow", m.n_ctx},
                                                {"maxTokens", out}}})}}}}}};
    json settings = {{"defaultProvider", "trove"}, {"defaultModel", m.id}};
    s.files.push_back({config_dir + "/models.json", models.dump(2) + "\n"});
    s.files.push_back({config_dir + "/settings.json", settings.dump(2) + "\n"});
    s.env.emplace_back("PI_CODING_AGENT_DIR", config_dir);
    s.args = {"--provider", "trove", "--model", m.id};
    s.note = "to use trove from your own Pi setup instead, add the \"trove\" provider of models.json above to "
             "~/.pi/agent/models.json and run: pi --provider trove --model " + m.id;
  } else if (client == "claude") {
    s.program = "claude";
    s.npm_package = "@anthropic-ai/claude-code";
    s.env = {{"ANTHROPIC_BASE_URL", m.url},
             {"ANTHROPIC_AUTH_TOKEN", key},
             {"ANTHROPIC_MODEL", m.id},
             {"ANTHROPIC_SMALL_FAST_MODEL", m.id},
             {"ANTHROPIC_DEFAULT_HAIKU_MODEL", m.id},
             {"ANTHROPIC_DEFAULT_SONNET_MODEL", m.id},
             {"ANTHROPIC_DEFAULT_OPUS_MODEL", m.id},
             {"CLAUDE_CODE_MAX_OUTPUT_TOKENS", std::to_string(std::min<uint32_t>(out, 32000))},
             // The window of a model id Claude Code does not know (2.1.332 assumes 1M tokens and says so):
             // it compacts before the conversation outgrows trove's context.
             {"CLAUDE_CODE_MAX_CONTEXT_TOKENS", std::to_string(m.n_ctx)},
             {"CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC", "1"}};
    s.note = fmt::format("CLAUDE_CODE_MAX_CONTEXT_TOKENS tells Claude Code trove's window ({} tokens); should a "
                         "conversation outgrow it anyway, trove answers \"prompt is too long\" and Claude Code compacts",
                         m.n_ctx);
  } else if (client == "codex") {
    // `-c` overrides layer over ~/.codex/config.toml without touching it.
    s.program = "codex";
    s.npm_package = "@openai/codex";
    s.env = {{"TROVE_CLIENT_KEY", key}};
    s.args = {"-c", "model_provider=\"trove\"",
              "-c", "model_providers.trove.name=\"trove\"",
              "-c", fmt::format("model_providers.trove.base_url=\"{}\"", v1),
              "-c", "model_providers.trove.wire_api=\"responses\"",
              "-c", "model_providers.trove.env_key=\"TROVE_CLIENT_KEY\"",
              "-c", fmt::format("model=\"{}\"", m.id),
              "-c", fmt::format("model_context_window={}", m.n_ctx),
              "-c", fmt::format("model_auto_compact_token_limit={}", m.n_ctx / 10 * 8),
              "-c", fmt::format("model_reasoning_summary=\"{}\"", m.reasoning ? "auto" : "none")};
    s.note = "the same settings can go in ~/.codex/config.toml as a [model_providers.trove] table";
  } else if (client == "opencode") {
    // OPENCODE_CONFIG names a config file merged over the user's own.
    s.program = "opencode";
    s.npm_package = "opencode-ai";
    json cfg = {{"$schema", "https://opencode.ai/config.json"},
                {"provider",
                 {{"trove",
                   {{"npm", "@ai-sdk/openai-compatible"},
                    {"name", "trove"},
                    {"options", {{"baseURL", v1}, {"apiKey", key}}},
                    {"models",
                     {{m.id,
                       {{"name", m.id + " (trove)"},
                        {"limit", {{"context", m.n_ctx}, {"output", out}}},
                        {"reasoning", m.reasoning},
                        {"tool_call", true}}}}}}}}},
                {"model", "trove/" + m.id},
                {"small_model", "trove/" + m.id}};
    s.files.push_back({config_dir + "/opencode.json", cfg.dump(2) + "\n"});
    s.env.emplace_back("OPENCODE_CONFIG", config_dir + "/opencode.json");
    s.note = "or merge the \"provider\" entry of opencode.json above into your opencode.json";
  } else if (client == "qwen") {
    s.program = "qwen";
    s.npm_package = "@qwen-code/qwen-code";
    s.env = {{"OPENAI_BASE_URL", v1}, {"OPENAI_API_KEY", key}, {"OPENAI_MODEL", m.id}};
    s.note = "Qwen Code speaks OpenAI Chat Completions; these three variables are all it needs";
  } else {
    std::string names;
    for (const auto& n : client_names()) names += (names.empty() ? "" : ", ") + n;
    return Status::InvalidArgument(fmt::format("unknown client \"{}\"; trove knows: {}", client, names));
  }
  return s;
}

// The model a client should be told about: from the server at `url` when it answers, else from the
// GGUF `model_path` (default: the one trove serve would pick). `running` says which.
Result<ServedModel> describe_served_model(const std::string& url, const std::string& model_path, bool& running) {
  ServedModel m;
  m.url = url;
  while (!m.url.empty() && m.url.back() == '/') m.url.pop_back();
  running = false;
  {
    httplib::Client c(m.url);
    c.set_connection_timeout(1, 0);
    c.set_read_timeout(5, 0);
    if (const char* k = std::getenv("TROVE_API_KEY"); k && *k) c.set_bearer_token_auth(k);
    if (auto r = c.Get("/v1/models"); r && r->status == 200) {
      try {
        auto j = nlohmann::json::parse(r->body)["data"][0];
        m.id = j.value("id", "");
        m.n_ctx = j.value("context_window", j.value("context_length", 0u));
        m.max_output = j.value("max_output_tokens", m.n_ctx);
        m.reasoning = j.value("reasoning", false);
        running = !m.id.empty() && m.n_ctx > 0;
      } catch (const nlohmann::json::exception&) {
      }
      if (running) return m;
    }
  }
  const std::string& path = model_path;
  if (path.empty()) return Status::NotFound(cli::no_model_message());
  auto f = gguf::GgufFile::open(path);
  if (!f.ok()) return f.status();
  auto info = gguf::describe_model(**f);
  if (!info.ok()) return info.status();
  m.id = std::filesystem::path(path).stem().string();
  m.n_ctx = std::min<uint32_t>(info->n_ctx ? info->n_ctx : 32768, 32768);  // trove serve's default --ctx
  m.max_output = std::min<uint32_t>(32768, m.n_ctx);
  m.reasoning = info->template_family == gguf::TemplateFamily::kQwen3;
  return m;
}


}  // namespace trove::clients
