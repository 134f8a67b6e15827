// Logging for every module: one line per event on stderr, "2026-11-22T11:50:01.123Z W kvstore: …".
//
// Thread-safe. The level comes from the environment variable TROVE_LOG (debug, info, warn, error;
// default info). Prompts and generated text are never logged unless the server's --log-prompts says
// so; callers are responsible for that.
//
// Tests that must see a log line (a corrupt block is "a miss, with a log line") install a capture
// sink with ScopedLogCapture; that sink is the one piece of global mutable state here, because the
// alternative — threading a logger through every call — buys nothing for a single-process server.
#pragma once

#include <fmt/format.h>

#include <functional>
#include <string>
#include <string_view>
#include <vector>

namespace trove::log {

enum class Level { kDebug = 0, kInfo = 1, kWarn = 2, kError = 3 };

bool enabled(Level level);
void write(Level level, std::string_view component, std::string_view message);

template <class... Args>
void debug(std::string_view component, fmt::format_string<Args...> f, Args&&... args) {
  if (enabled(Level::kDebug)) write(Level::kDebug, component, fmt::format(f, std::forward<Args>(args)...));
}
template <class... Args>
void info(std::string_view component, fmt::format_string<Args...> f, Args&&... args) {
  if (enabled(Level::kInfo)) write(Level::kInfo, component, fmt::format(f, std::forward<Args>(args)...));
}
template <class... Args>
void warn(std::string_view component, fmt::format_string<Args...> f, Args&&... args) {
  if (enabled(Level::kWarn)) write(Level::kWarn, component, fmt::format(f, std::forward<Args>(args)...));
}
template <class... Args>
void error(std::string_view component, fmt::format_string<Args...> f, Args&&... args) {
  if (enabled(Level::kError)) write(Level::kError, component, fmt::format(f, std::forward<Args>(args)...));
}

struct Record {
  Level level;
  std::string component;
  std::string message;
};

// While alive, every record (at any level) is also appended to records(); stderr output continues.
class ScopedLogCapture {
 public:
  ScopedLogCapture();
  ~ScopedLogCapture();
  ScopedLogCapture(const ScopedLogCapture&) = delete;
  ScopedLogCapture& operator=(const ScopedLogCapture&) = delete;
  std::vector<Record> records() const;
  // True when some captured record's message contains `needle`.
  bool contains(std::string_view needle) const;
};

}  // namespace trove::log
