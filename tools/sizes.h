// Byte sizes on the command line: parse_size() reads "64G", "512M", "1.5T", "4096" (bytes; K/M/G/T are
// powers of 1024, "GiB" etc. also accepted); human_bytes() prints "1.5 GiB". Shared by the commands
// that take or show store sizes (trove kv, trove serve).
#pragma once

#include <cstdint>
#include <cstdlib>
#include <optional>
#include <string>

#include <fmt/format.h>

namespace trove::cli {

inline std::string human_bytes(double b) {
  const char* units[] = {"B", "KiB", "MiB", "GiB", "TiB"};
  int u = 0;
  while (b >= 1024 && u < 4) {
    b /= 1024;
    ++u;
  }
  return u == 0 ? fmt::format("{:.0f} B", b) : fmt::format("{:.1f} {}", b, units[u]);
}

inline std::optional<uint64_t> parse_size(const std::string& s) {
  char* end = nullptr;
  const double v = std::strtod(s.c_str(), &end);
  if (end == s.c_str() || v < 0) return std::nullopt;
  const std::string unit(end);
  double mult = 1;
  if (unit == "" || unit == "B") mult = 1;
  else if (unit == "K" || unit == "KiB" || unit == "k") mult = 1024.0;
  else if (unit == "M" || unit == "MiB") mult = 1024.0 * 1024;
  else if (unit == "G" || unit == "GiB") mult = 1024.0 * 1024 * 1024;
  else if (unit == "T" || unit == "TiB") mult = 1024.0 * 1024 * 1024 * 1024;
  else return std::nullopt;
  return static_cast<uint64_t>(v * mult);
}

}  // namespace trove::cli
