// common/env.h — whole-number settings read from the environment (the TROVE_* knobs).
#pragma once

#include <cstdlib>
#include <string>
#include <utility>

#include "common/status.h"

namespace trove {

// NAME as a whole number in [lo, hi] into `out`, which keeps its value when NAME is unset or empty.
// Anything else is an InvalidArgument whose message is refusal(value): each caller words its own
// (what the knob counts, its range, its default).
template <class T, class Refusal>
Status env_count(const char* name, unsigned long lo, unsigned long hi, T& out, Refusal&& refusal) {
  const char* v = std::getenv(name);
  if (!v || !*v) return Status::Ok();
  char* end = nullptr;
  const unsigned long n = std::strtoul(v, &end, 10);
  if (end == v || *end != 0 || n < lo || n > hi) {
    return Status::InvalidArgument(std::forward<Refusal>(refusal)(std::string(v)));
  }
  out = static_cast<T>(n);
  return Status::Ok();
}

}  // namespace trove
