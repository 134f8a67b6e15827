// tests/chaos/undo_log.h — applies fault_shim.c's power-loss undo log after the process that wrote it
// was killed: every watched file is put back to what its last fsync/fdatasync covered.
//
// Contract: apply_undo_log(path) reads the log ('W' path offset old_size n bytes: what a write was about
// to overwrite; 'S' path: an fsync; 'R' from to: a rename), follows renames, and for each file restores,
// newest first, the bytes and the size of every write after its last sync. Files that no longer exist
// are skipped. Returns what it discarded (for the test's "faults injected" count), or an error message
// for a log that does not parse. Header-only: the power-loss test and tests/chaos/chaos_undo use it.
#pragma once

#include <fcntl.h>
#include <unistd.h>

#include <cstdint>
#include <cstring>
#include <fstream>
#include <iterator>
#include <map>
#include <string>
#include <vector>

namespace trove::chaos {

struct UndoResult {
  bool ok = true;
  std::string error;
  uint64_t files = 0;           // files with writes not covered by a sync
  uint64_t writes = 0;          // writes discarded
  uint64_t bytes_discarded = 0; // bytes past the synced size cut off, plus bytes restored
};

inline UndoResult apply_undo_log(const std::string& log_path) {
  UndoResult r;
  std::ifstream in(log_path, std::ios::binary);
  const std::string log((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  struct Write {
    uint64_t offset, old_size;
    std::string old;
  };
  std::map<std::string, std::vector<Write>> pending;
  size_t at = 0;
  auto str = [&](std::string& out) {
    const size_t end = log.find('\0', at);
    if (end == std::string::npos) return false;
    out = log.substr(at, end - at);
    at = end + 1;
    return true;
  };
  auto u64 = [&](uint64_t& v) {
    if (at + 8 > log.size()) return false;
    std::memcpy(&v, log.data() + at, 8);
    at += 8;
    return true;
  };
  while (at < log.size()) {
    const char op = log[at++];
    std::string path, to;
    if (op == 'W') {
      Write w;
      uint64_t n = 0;
      // A record cut short by the kill: its write never happened (the record comes first).
      if (!str(path) || !u64(w.offset) || !u64(w.old_size) || !u64(n) || at + n > log.size()) break;
      w.old = log.substr(at, n);
      at += n;
      pending[path].push_back(std::move(w));
    } else if (op == 'S') {
      if (!str(path)) break;
      pending.erase(path);
    } else if (op == 'R') {
      if (!str(path) || !str(to)) break;
      auto it = pending.find(path);
      std::vector<Write> moved;
      if (it != pending.end()) {
        moved = std::move(it->second);
        pending.erase(it);
      }
      pending.erase(to);  // the file that had this name is gone, unsynced writes and all
      if (!moved.empty()) pending[to] = std::move(moved);
    } else {
      r.ok = false;
      r.error = "undo log: unknown record '" + std::string(1, op) + "' at byte " + std::to_string(at - 1);
      return r;
    }
  }
  for (auto& [path, writes] : pending) {
    const int fd = ::open(path.c_str(), O_WRONLY | O_CLOEXEC);
    if (fd < 0) continue;
    ++r.files;
    const off_t before = ::lseek(fd, 0, SEEK_END);
    for (auto w = writes.rbegin(); w != writes.rend(); ++w) {
      ++r.writes;
      if (!w->old.empty() &&
          ::pwrite(fd, w->old.data(), w->old.size(), static_cast<off_t>(w->offset)) != static_cast<ssize_t>(w->old.size())) {
        r.ok = false;
        r.error = "undo: cannot write back '" + path + "'";
      }
      r.bytes_discarded += w->old.size();
      if (::ftruncate(fd, static_cast<off_t>(w->old_size)) != 0) {
        r.ok = false;
        r.error = "undo: cannot truncate '" + path + "'";
      }
    }
    const off_t after = ::lseek(fd, 0, SEEK_END);
    if (before > after) r.bytes_discarded += static_cast<uint64_t>(before - after);
    ::fsync(fd);
    ::close(fd);
  }
  return r;
}

}  // namespace trove::chaos
