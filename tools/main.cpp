// The `trove` binary: a CLI11 app whose subcommands register themselves (see tools/command.h).
#include <algorithm>
#include <cstdio>
#include <iostream>

#include "tools/command.h"

namespace trove::cli {

std::vector<CommandSpec>& command_registry() {
  static std::vector<CommandSpec> registry;
  return registry;
}

namespace {
struct ExitRequest {
  int code;
};
}  // namespace

void exit_with(int code) { throw ExitRequest{code}; }

void fail(const std::string& message) {
  std::fprintf(stderr, "trove: error: %s\n", message.c_str());
  throw ExitRequest{1};
}

int run_cli(int argc, char** argv) {
  CLI::App app{"trove — a local LLM inference server for coding agents (Qwen3 on Vulkan, "
               "with a prefix KV store on SSD)"};
  app.set_version_flag("--version", "trove 0.1.0");
  app.require_subcommand(1);
  auto& registry = command_registry();
  std::sort(registry.begin(), registry.end(),
            [](const CommandSpec& a, const CommandSpec& b) { return a.name < b.name; });
  for (auto& spec : registry) {
    CLI::App* sub = app.add_subcommand(spec.name, spec.description);
    spec.add(*sub);
  }
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    return app.exit(e);
  } catch (const ExitRequest& r) {
    return r.code;
  }
  return 0;
}

}  // namespace trove::cli

int main(int argc, char** argv) { return trove::cli::run_cli(argc, argv); }
