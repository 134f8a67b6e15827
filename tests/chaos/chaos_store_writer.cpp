// tests/chaos/chaos_store_writer.cpp — the process the power-loss test kills: it writes a KV store
// (tests/kvstore's deterministic payloads, chained prompts) until SIGKILL, run under fault_shim.c.
//
//   chaos_store_writer STORE_DIR ACK_FILE SEED
//
// Each round inserts a few prompts of 2–4 blocks in namespace "acked" and one in "scratch", then
// flush()es; after an OK flush it appends the "acked" keys (hex, one a line) to ACK_FILE with
// write + fsync (ACK_FILE lies outside the watched directory: the acknowledgement itself is never
// lost). Every few rounds it evicts the "scratch" blocks and compacts (small segments roll often), so
// index deletes, segment rewrites and unlinks happen under the shim too.
#include <fcntl.h>
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <string>
#include <vector>

#include "kvstore/store.h"
#include "tests/kvstore/store_test_util.h"

using namespace trove;

int main(int argc, char** argv) {
  if (argc != 4) {
    std::fprintf(stderr, "usage: chaos_store_writer STORE_DIR ACK_FILE SEED\n");
    return 2;
  }
  kv::Options o;
  o.block_tokens = 16;
  o.segment_bytes = 256 << 10;
  o.compact_below_live_share = 0.6;
  auto opened = kv::Store::open(argv[1], o);
  if (!opened.ok()) {
    std::fprintf(stderr, "chaos_store_writer: %s\n", opened.status().ToString().c_str());
    return 1;
  }
  kv::Store& s = **opened;
  const int ack = ::open(argv[2], O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0600);
  if (ack < 0) return 1;
  uint64_t seed = std::strtoull(argv[3], nullptr, 10) * 1000003;
  for (int round = 0;; ++round) {
    std::vector<kv::BlockKey> acked;
    for (int p = 0; p < 3; ++p) {
      ++seed;
      const auto tokens = kv::testing::tokens_for(seed, 16 * (2 + seed % 3));
      kv::testing::insert_prompt(s, "acked", "fp", tokens, 4096 + (seed % 7) * 3000);
      for (const auto& k : kv::chain_keys("acked", "fp", tokens, 16)) acked.push_back(k);
    }
    kv::testing::insert_prompt(s, "scratch", "fp", kv::testing::tokens_for(++seed, 48), 20000);
    if (!s.flush().ok()) continue;
    std::string lines;
    for (const auto& k : acked) lines += k.hex() + "\n";
    if (::write(ack, lines.data(), lines.size()) != static_cast<ssize_t>(lines.size()) || ::fsync(ack) != 0) return 1;
    if (round % 3 == 2) {
      (void)s.evict_if([](const kv::BlockEntry& e) { return e.name_space == "scratch"; });
    }
  }
}
