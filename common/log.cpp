#include "common/log.h"
#include "common/log_problems.h"

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <deque>
#include <ctime>
#include <mutex>
#include <string>

namespace trove::log {
namespace {

Level level_from_env() {
  const char* v = std::getenv("TROVE_LOG");
  if (!v) return Level::kInfo;
  std::string s(v);
  if (s == "debug") return Level::kDebug;
  if (s == "warn") return Level::kWarn;
  if (s == "error") return Level::kError;
  return Level::kInfo;
}

struct Sink {
  std::mutex mu;
  bool capturing = false;
  std::vector<Record> captured;
  std::deque<TimedRecord> problems;  // the last kRecentProblems warnings and errors
};

Sink& sink() {
  static Sink s;
  return s;
}

char level_letter(Level l) {
  switch (l) {
    case Level::kDebug: return 'D';
    case Level::kInfo: return 'I';
    case Level::kWarn: return 'W';
    case Level::kError: return 'E';
  }
  return '?';
}

}  // namespace

bool enabled(Level level) {
  static const Level threshold = level_from_env();
  return level >= threshold || sink().capturing;
}

void write(Level level, std::string_view component, std::string_view message) {
  using namespace std::chrono;
  auto now = system_clock::now();
  std::time_t t = system_clock::to_time_t(now);
  auto ms = duration_cast<milliseconds>(now.time_since_epoch()).count() % 1000;
  std::tm tm{};
  gmtime_r(&t, &tm);
  char ts[32];
  std::strftime(ts, sizeof ts, "%Y-%m-%dT%H:%M:%S", &tm);
  static const Level threshold = level_from_env();
  Sink& s = sink();
  std::lock_guard lock(s.mu);
  if (s.capturing) s.captured.push_back({level, std::string(component), std::string(message)});
  if (level >= Level::kWarn) {
    s.problems.push_back({duration_cast<milliseconds>(now.time_since_epoch()).count(), level, std::string(component),
                          std::string(message)});
    if (s.problems.size() > kRecentProblems) s.problems.pop_front();
  }
  if (level >= threshold) {
    std::fprintf(stderr, "%s.%03dZ %c %.*s: %.*s\n", ts, static_cast<int>(ms), level_letter(level),
                 static_cast<int>(component.size()), component.data(), static_cast<int>(message.size()),
                 message.data());
  }
}

std::vector<TimedRecord> recent_problems() {
  std::lock_guard lock(sink().mu);
  return {sink().problems.begin(), sink().problems.end()};
}

ScopedLogCapture::ScopedLogCapture() {
  std::lock_guard lock(sink().mu);
  sink().capturing = true;
  sink().captured.clear();
}

ScopedLogCapture::~ScopedLogCapture() {
  std::lock_guard lock(sink().mu);
  sink().capturing = false;
  sink().captured.clear();
}

std::vector<Record> ScopedLogCapture::records() const {
  std::lock_guard lock(sink().mu);
  return sink().captured;
}

bool ScopedLogCapture::contains(std::string_view needle) const {
  std::lock_guard lock(sink().mu);
  for (const auto& r : sink().captured) {
    if (r.message.find(needle) != std::string::npos) return true;
  }
  return false;
}

}  // namespace trove::log
