// tests/chaos/chaos_undo.cpp — `chaos_undo LOG`: applies a fault_shim.c undo log (undo_log.h) after the
// process that wrote it was killed, and prints what was discarded as JSON.
#include <cstdio>

#include "tests/chaos/undo_log.h"

int main(int argc, char** argv) {
  if (argc != 2) {
    std::fprintf(stderr, "usage: chaos_undo UNDO_LOG\n");
    return 2;
  }
  const auto r = trove::chaos::apply_undo_log(argv[1]);
  if (!r.ok) {
    std::fprintf(stderr, "chaos_undo: %s\n", r.error.c_str());
    return 1;
  }
  std::printf("{\"files\": %llu, \"writes\": %llu, \"bytes\": %llu}\n", static_cast<unsigned long long>(r.files),
              static_cast<unsigned long long>(r.writes), static_cast<unsigned long long>(r.bytes_discarded));
  return 0;
}
