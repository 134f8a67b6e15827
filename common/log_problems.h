// common/log_problems.h — the last warnings and errors trove logged, for the server's dashboard
// (GET /v1/trove/status `problems`): a user sees "store block corrupt" or "KV pool full" without
// reading stderr.
//
// Contract: every record written at warn or error level (common/log.h; one that TROVE_LOG filters out
// is never written, so not kept either) is also kept in memory, the last kRecentProblems of them.
// Thread-safe. It lives in log.cpp's global sink, for the reason log.h gives for that sink. A separate
// header so that the many files including log.h do not depend on it.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include "common/log.h"

namespace trove::log {

struct TimedRecord {
  int64_t unix_ms = 0;
  Level level = Level::kWarn;
  std::string component;
  std::string message;
};

inline constexpr size_t kRecentProblems = 32;

// Oldest first.
std::vector<TimedRecord> recent_problems();

}  // namespace trove::log
