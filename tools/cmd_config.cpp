// `trove config CLIENT`: the settings that point a coding agent (pi, claude, codex, opencode, qwen) at a
// trove server, for people who set things up by hand — the same ones `trove launch` applies
// (tools/clients.h). The model's id, context window and reasoning come from the running server
// (--url), or, when none answers, from the model `trove serve` would load.
#include <httplib.h>

#include <algorithm>
#include <cstdio>
#include <filesystem>
#include <string>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "engine/gguf/gguf.h"
#include "engine/gguf/model_info.h"
#include "tools/clients.h"
#include "tools/command.h"
#include "tools/paths.h"

namespace {

using namespace trove;

// Shell quoting for a value printed in an `export` line.
std::string sh_quote(const std::string& s) {
  if (!s.empty() && s.find_first_not_of("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_-./:=@,") == std::string::npos) {
    return s;
  }
  std::string out = "'";
  for (char c : s) out += c == '\'' ? std::string("'\\''") : std::string(1, c);
  return out + "'";
}

struct ConfigArgs {
  std::string client;
  std::string url = "http://127.0.0.1:8080";
  std::string model;
};

}  // namespace

namespace trove::cli {

// The model a client should be told about: from the server at `url` when it answers, else from the
// GGUF `model_path` (default: the one trove serve would pick). `running` says which.
Result<clients::ServedModel> describe_served_model(const std::string& url, const std::string& model_path, bool& running) {
  clients::ServedModel m;
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
  const std::string path = model_path.empty() ? default_model_path() : model_path;
  if (path.empty()) return Status::NotFound(no_model_message());
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

}  // namespace trove::cli

namespace {

void config(const ConfigArgs& a) {
  bool running = false;
  auto m = cli::describe_served_model(a.url, a.model, running);
  if (!m.ok()) cli::fail(m.status().message());
  if (const char* k = std::getenv("TROVE_API_KEY"); k && *k) m->api_key = k;
  const std::string dir = cli::trove_home() + "/clients/" + a.client;
  auto s = clients::client_setup(a.client, *m, dir);
  if (!s.ok()) cli::fail(s.status().message());
  std::printf("# %s → trove: model %s, context %u tokens, output up to %u, reasoning %s\n", a.client.c_str(),
              m->id.c_str(), m->n_ctx, m->max_output, m->reasoning ? "on" : "off");
  std::printf("# server %s (%s)\n", m->url.c_str(),
              running ? "running" : "not running: start it with `trove serve`, or let `trove launch` do it");
  std::printf("# %s comes from npm: npm install -g %s\n", s->program.c_str(), s->npm_package.c_str());
  for (const auto& f : s->files) {
    std::printf("\n# file %s (trove launch writes it; yours are never touched):\n%s", f.path.c_str(), f.content.c_str());
  }
  if (!s->env.empty()) std::printf("\n");
  for (const auto& [k, v] : s->env) std::printf("export %s=%s\n", k.c_str(), sh_quote(v).c_str());
  std::string cmd = s->program;
  for (const auto& arg : s->args) cmd += " " + sh_quote(arg);
  std::printf("%s\n", cmd.c_str());
  std::printf("\n# %s\n", s->note.c_str());
}

void add_config(CLI::App& sub) {
  auto a = std::make_shared<ConfigArgs>();
  std::string names;
  for (const auto& n : clients::client_names()) names += (names.empty() ? "" : ", ") + n;
  sub.add_option("client", a->client, "The coding agent: " + names)->required();
  sub.add_option("--url", a->url, "The trove server")->capture_default_str();
  sub.add_option("-m,--model", a->model, "Describe this GGUF when no server answers (default: the newest pulled)");
  sub.callback([a] { config(*a); });
}

cli::CommandRegistration reg{"config", "Print the settings that point a coding agent at trove", add_config};

}  // namespace
