// Where trove keeps its files by default: $TROVE_HOME, else $XDG_CACHE_HOME/trove, else
// ~/.cache/trove. Models live in <home>/models, the KV store in <home>/store.
#pragma once

#include <cstdlib>
#include <filesystem>
#include <string>
#include <system_error>

namespace trove::cli {

inline std::string trove_home() {
  if (const char* h = std::getenv("TROVE_HOME"); h && *h) return h;
  if (const char* x = std::getenv("XDG_CACHE_HOME"); x && *x) return std::string(x) + "/trove";
  const char* home = std::getenv("HOME");
  return std::string(home && *home ? home : ".") + "/.cache/trove";
}

inline std::string default_store_dir() { return trove_home() + "/store"; }
inline std::string default_model_dir() { return trove_home() + "/models"; }

// The model a command uses when none is named: the most recently modified *.gguf in the model
// directory ("" when there is none).
inline std::string default_model_path() {
  namespace fs = std::filesystem;
  std::error_code ec;
  std::string best;
  fs::file_time_type best_time{};
  for (fs::directory_iterator it(default_model_dir(), ec), end; !ec && it != end; it.increment(ec)) {
    if (it->path().extension() != ".gguf" || !it->is_regular_file(ec)) continue;
    const auto t = it->last_write_time(ec);
    if (best.empty() || t > best_time) {
      best = it->path().string();
      best_time = t;
    }
  }
  return best;
}

// What to tell a user who has no model.
inline std::string no_model_message() {
  return "no model given and none in " + default_model_dir() +
         ". Download one with `trove pull` (Qwen3-Coder-30B-A3B; `trove pull --list` shows others), put a "
         "Qwen3 GGUF there or pass --model PATH; for a synthetic demo model run: trove mkmodel --preset "
         "qwen3-0.6b --type Q8_0 --out " +
         default_model_dir() + "/demo-qwen3-0.6b.gguf";
}

}  // namespace trove::cli
