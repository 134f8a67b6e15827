// `trove config CLIENT`: the settings that point a coding agent (pi, claude, codex, opencode, qwen) at a
// trove server, for people who set things up by hand — the same ones `trove launch` applies
// (tools/clients.h). The model's id, context window and reasoning come from the running server
// (--url), or, when none answers, from the model `trove serve` would load.
#include <algorithm>
#include <cstdio>
#include <filesystem>
#include <string>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

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


namespace {

void config(const ConfigArgs& a) {
  bool running = false;
  auto m = clients::describe_served_model(a.url, a.model.empty() ? cli::default_model_path() : a.model, running);
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
