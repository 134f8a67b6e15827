// How a `trove` subcommand joins the binary.
//
// Each subcommand lives in its own tools/cmd_<name>.cpp and registers itself with one line at
// namespace scope:
//
//   static trove::cli::CommandRegistration reg{"info", "Describe a GGUF model file", add_info};
//
// where add_info(CLI::App& sub) declares the flags and sets the callback. The callback returns the
// process exit code through trove::cli::exit_with(). Registration runs during static initialisation
// of the executable (these files are linked into the executable itself, never into a static library,
// so the linker keeps them); the registry is the one global list of subcommands, which is why a global
// is acceptable here. Subcommands appear in `trove --help` sorted by name.
#pragma once

#include <CLI/CLI.hpp>

#include <functional>
#include <string>
#include <vector>

namespace trove::cli {

using AddCommand = std::function<void(CLI::App& sub)>;

struct CommandSpec {
  std::string name;
  std::string description;
  AddCommand add;
};

std::vector<CommandSpec>& command_registry();

struct CommandRegistration {
  CommandRegistration(std::string name, std::string description, AddCommand add) {
    command_registry().push_back({std::move(name), std::move(description), std::move(add)});
  }
};

// Ends the current subcommand with a process exit code (0 success, 1 runtime error, 2 usage error).
// Implemented by throwing a type that main() catches, so destructors (files, devices) run.
[[noreturn]] void exit_with(int code);

// Prints "trove: error: <message>" to stderr and exits with code 1.
[[noreturn]] void fail(const std::string& message);

}  // namespace trove::cli
