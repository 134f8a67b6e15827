// Where trove keeps its files by default: $TROVE_HOME, else $XDG_CACHE_HOME/trove, else
// ~/.cache/trove. Models live in <home>/models, the KV store in <home>/store.
#pragma once

#include <cstdlib>
#include <string>

namespace trove::cli {

inline std::string trove_home() {
  if (const char* h = std::getenv("TROVE_HOME"); h && *h) return h;
  if (const char* x = std::getenv("XDG_CACHE_HOME"); x && *x) return std::string(x) + "/trove";
  const char* home = std::getenv("HOME");
  return std::string(home && *home ? home : ".") + "/.cache/trove";
}

inline std::string default_store_dir() { return trove_home() + "/store"; }
inline std::string default_model_dir() { return trove_home() + "/models"; }

}  // namespace trove::cli
