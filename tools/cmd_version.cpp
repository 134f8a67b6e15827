// `trove version`: what this binary is and what it was built with.
#include <cstdio>

#include "tools/command.h"

namespace {
void add_version(CLI::App& sub) {
  sub.callback([] {
    std::printf("trove 0.1.0 (C++20, built %s)\n", __DATE__);
  });
}
trove::cli::CommandRegistration reg{"version", "Print trove's version", add_version};
}  // namespace
