// KV store benchmark: restore throughput against the disk's own sequential read speed, lookup latency
// by prompt length, and what LZ4 (with and without byte shuffling) does to f16 KV-like data.
//
//   build/bench/kvstore/bench_kvstore [--dir DIR] [--gib N] [--quick]
//
// DIR must be on the disk to measure (default: ./kv-bench under the working directory). As root the
// page cache is dropped before each cold read (echo 3 > /proc/sys/vm/drop_caches); otherwise the cold
// rows are marked as not cold. Prints one table; docs/performance.md records the results.
#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <random>
#include <string>
#include <utility>
#include <vector>

#include "kvstore/detail/record.h"
#include "kvstore/store.h"

using namespace trove::kv;
namespace fs = std::filesystem;
using Clock = std::chrono::steady_clock;

namespace {

double seconds_since(Clock::time_point t) { return std::chrono::duration<double>(Clock::now() - t).count(); }

bool drop_caches() {
  sync();
  std::ofstream f("/proc/sys/vm/drop_caches");
  if (!f) return false;
  f << "3\n";
  return static_cast<bool>(f.flush());
}

// Reads every file under `dir` buffered, so the page cache holds them (O_DIRECT reads do not fill it:
// after a cold O_DIRECT restore the files are still cold).
void warm_page_cache(const std::string& dir) {
  std::vector<char> buf(8 << 20);
  for (const auto& e : fs::recursive_directory_iterator(dir)) {
    if (!e.is_regular_file()) continue;
    std::ifstream f(e.path(), std::ios::binary);
    while (f.read(buf.data(), static_cast<std::streamsize>(buf.size())) || f.gcount() > 0) {
    }
  }
}

// f32 → f16 bits by truncation; values outside the normal f16 range become signed zero. Both
// payload generators below use it.
uint16_t f16_bits(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  const uint32_t sign = (u >> 16) & 0x8000;
  const int32_t exp = static_cast<int32_t>((u >> 23) & 0xff) - 112;
  uint16_t h = static_cast<uint16_t>(sign);
  if (exp > 0 && exp < 31) h = static_cast<uint16_t>(sign | (exp << 10) | ((u >> 13) & 0x3ff));
  return h;
}

// Random N(0,1) values as f16 — a pessimistic stand-in for KV until the engine writes real KV.
std::vector<uint8_t> kv_like(uint64_t seed, size_t bytes) {
  std::mt19937_64 rng(seed);
  std::normal_distribution<float> d(0.0f, 1.0f);
  std::vector<uint8_t> out(bytes);
  for (size_t i = 0; i + 1 < bytes; i += 2) {
    const uint16_t h = f16_bits(d(rng));
    std::memcpy(&out[i], &h, 2);
  }
  return out;
}

// A block laid out as the engine would: for each layer, K then V, each `tokens` rows of `channels`
// f16 values. Structure real KV is known to have, so that shuffling has something to find: each
// channel has its own magnitude (log-normal, sigma 1: a few outlier channels, as in K after RoPE),
// and each channel's value drifts smoothly from token to token (AR(1), rho 0.9). Still synthetic:
// mantissas stay random, which is why neither case should be read as a promise for real KV.
std::vector<uint8_t> kv_structured(uint64_t seed, size_t layers, size_t tokens, size_t channels) {
  std::mt19937_64 rng(seed);
  std::normal_distribution<float> d(0.0f, 1.0f);
  const float rho = 0.9f;
  const float innovation = std::sqrt(1.0f - rho * rho);
  std::vector<uint8_t> out(layers * 2 * tokens * channels * 2);
  std::vector<float> scale(channels), state(channels);
  size_t at = 0;
  for (size_t m = 0; m < layers * 2; ++m) {  // K and V of every layer
    for (size_t c = 0; c < channels; ++c) {
      scale[c] = std::exp(d(rng));
      state[c] = d(rng);
    }
    for (size_t t = 0; t < tokens; ++t) {
      for (size_t c = 0; c < channels; ++c) {
        state[c] = rho * state[c] + innovation * d(rng);
        const uint16_t h = f16_bits(scale[c] * state[c]);
        std::memcpy(&out[at], &h, 2);
        at += 2;
      }
    }
  }
  return out;
}

// The disk's sequential read speed, one stream of 8 MiB O_DIRECT reads — the same method as
// ../shared/docs/TARGETS.md.
double raw_read_gbps(const std::string& path, size_t bytes, bool cold) {
  {
    std::vector<uint8_t> chunk(8 << 20, 0x5a);
    int fd = ::open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0600);
    for (size_t done = 0; done < bytes; done += chunk.size()) {
      if (::write(fd, chunk.data(), chunk.size()) < 0) break;
    }
    fsync(fd);
    ::close(fd);
  }
  if (cold) drop_caches();
  int fd = ::open(path.c_str(), O_RDONLY | (cold ? O_DIRECT : 0));
  void* buf = std::aligned_alloc(4096, 8 << 20);
  if (!cold) {  // warm the page cache first
    while (::read(fd, buf, 8 << 20) > 0) {
    }
    ::lseek(fd, 0, SEEK_SET);
  }
  const auto t = Clock::now();
  size_t total = 0;
  for (ssize_t r; (r = ::read(fd, buf, 8 << 20)) > 0;) total += static_cast<size_t>(r);
  const double s = seconds_since(t);
  std::free(buf);
  ::close(fd);
  fs::remove(path);
  return static_cast<double>(total) / s / 1e9;
}

struct Row {
  std::string what;
  double value;
  std::string unit;
  std::string note;
};

}  // namespace

int main(int argc, char** argv) {
  std::string dir = "kv-bench";
  double gib = 2.0;
  bool quick = false;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    if (a == "--dir" && i + 1 < argc) dir = argv[++i];
    else if (a == "--gib" && i + 1 < argc) gib = std::stod(argv[++i]);
    else if (a == "--quick") quick = true;
    else {
      std::fprintf(stderr, "usage: %s [--dir DIR] [--gib N] [--quick]\n", argv[0]);
      return 2;
    }
  }
  if (quick) gib = std::min(gib, 0.25);
  fs::remove_all(dir);
  fs::create_directories(dir);
  const bool root = geteuid() == 0;
  const size_t total = static_cast<size_t>(gib * (1ull << 30));
  std::vector<Row> rows;

  const double raw_cold = raw_read_gbps(dir + "/raw.bin", total, true);
  const double raw_warm = raw_read_gbps(dir + "/raw.bin", total, false);
  rows.push_back({"disk sequential read, O_DIRECT 8 MiB, one stream", raw_cold, "GB/s", root ? "page cache dropped" : "NOT cold (not root)"});
  rows.push_back({"disk sequential read, page cache", raw_warm, "GB/s", ""});

  for (size_t block_mib : {6, 9}) {
    const size_t block = block_mib << 20;
    const size_t n = std::max<size_t>(4, total / block);
    const std::string sdir = dir + "/store-" + std::to_string(block_mib);
    std::vector<int32_t> tokens(n * 64);
    for (size_t i = 0; i < tokens.size(); ++i) tokens[i] = static_cast<int32_t>(i * 7919 % 151643);
    const auto keys = chain_keys("bench", "fp", tokens, 64);
    std::vector<std::vector<uint8_t>> payloads;
    for (int k = 0; k < 4; ++k) payloads.push_back(kv_like(static_cast<uint64_t>(k), block));
    {
      Options o;
      o.insert_queue_bytes = 4ull << 30;
      auto s = Store::open(sdir, o);
      if (!s.ok()) {
        std::fprintf(stderr, "%s\n", s.status().ToString().c_str());
        return 1;
      }
      const auto t = Clock::now();
      BlockKey parent;
      for (size_t i = 0; i < n; ++i) {
        auto p = payloads[i % 4];
        p[0] = static_cast<uint8_t>(i);  // distinct payloads
        (*s)->insert(keys[i], parent, "bench", "fp", 64, PayloadDtype::kF16, 48, std::move(p));
        parent = keys[i];
      }
      if (auto st = (*s)->flush(); !st.ok()) {
        std::fprintf(stderr, "%s\n", st.ToString().c_str());
        return 1;
      }
      rows.push_back({std::to_string(block_mib) + " MiB blocks: write (insert → durable)",
                      static_cast<double>(n * block) / seconds_since(t) / 1e9, "GB/s",
                      std::to_string(n) + " blocks, compression " +
                          std::to_string((*s)->stats().compression_ratio()).substr(0, 4) + "x"});
    }
    // Destination buffers are allocated and touched once, as the engine's staging buffers would be.
    std::vector<std::vector<uint8_t>> bufs(n, std::vector<uint8_t>(block, 1));
    std::vector<std::span<uint8_t>> spans(bufs.begin(), bufs.end());
    struct Mode {
      Options::Io io;
      bool direct;
      bool cold_direct;
      const char* name;
    };
    for (auto mode : {Mode{Options::Io::kIoUring, false, false, "io_uring buffered"},
                      Mode{Options::Io::kIoUring, true, false, "io_uring O_DIRECT"},
                      Mode{Options::Io::kPread, false, false, "pread buffered"},
                      Mode{Options::Io::kAuto, false, true, "default (cached: pread, cold: O_DIRECT io_uring)"}}) {
      const auto io = mode.io;
      for (bool cold : {true, false}) {
        if (cold) drop_caches();
        else warm_page_cache(sdir);
        Options o;
        o.io = io;
        o.direct_io = mode.direct;
        o.cold_reads_direct = mode.cold_direct;
        o.read_only = true;
        auto s = Store::open(sdir, o);
        const auto t = Clock::now();
        auto m = (*s)->lookup("bench", "fp", tokens);
        size_t ok = 0;
        for (const auto& st : (*s)->read(m.blocks, std::span(spans).first(m.blocks.size()))) ok += st.ok();
        const double gbps = static_cast<double>(ok * block) / seconds_since(t) / 1e9;
        const double base = cold ? raw_cold : raw_warm;
        rows.push_back({std::to_string(block_mib) + " MiB blocks: restore " + mode.name +
                            (cold ? ", cold" : ", page cache"),
                        gbps, "GB/s",
                        std::to_string(static_cast<int>(100 * gbps / base)) + "% of the disk's " +
                            (cold ? (root ? "cold" : "NOT cold") : "cached") + " read" +
                            (ok == m.blocks.size() ? "" : " — SOME BLOCKS FAILED")});
      }
    }
  }

  {  // lookup latency: chains of tiny blocks (payload size does not affect lookup)
    const std::string sdir = dir + "/store-lookup";
    Options o;
    auto s = Store::open(sdir, o);
    for (size_t len : {1024, 8192, 32768, 131072}) {
      std::vector<int32_t> tokens(len);
      for (size_t i = 0; i < len; ++i) tokens[i] = static_cast<int32_t>((i * 31 + len) % 151643);
      const auto keys = chain_keys("bench", "fp", tokens, 64);
      BlockKey parent;
      for (const auto& k : keys) {
        (*s)->insert(k, parent, "bench", "fp", 64, PayloadDtype::kF16, 1, std::vector<uint8_t>(64));
        parent = k;
      }
      (void)(*s)->flush();
      std::vector<double> times;
      for (int r = 0; r < 50; ++r) {
        const auto t = Clock::now();
        auto m = (*s)->lookup("bench", "fp", tokens);
        times.push_back(seconds_since(t) * 1e3);
        if (m.matched_tokens != len) std::fprintf(stderr, "lookup matched %zu of %zu\n", m.matched_tokens, len);
      }
      std::sort(times.begin(), times.end());
      rows.push_back({"lookup, " + std::to_string(len / 1024) + "k-token prompt (all cached)", times[times.size() / 2], "ms",
                      "median of 50; p99 " + std::to_string(times[times.size() * 99 / 100]).substr(0, 5) + " ms"});
    }
  }

  // Compression of f16 KV-like data: random N(0,1) values, and a structured block of the 30B model's
  // shape (48 layers, 64 tokens, 4 KV heads × 128 = 512 channels: 6 MiB).
  const std::pair<const char*, std::vector<uint8_t>> payloads[] = {
      {"N(0,1) f16", kv_like(99, 6 << 20)},
      {"structured f16 (channel scales, AR(1) over tokens)", kv_structured(99, 48, 64, 512)},
  };
  for (const auto& [name, payload] : payloads) {
    for (bool shuffle : {false, true}) {
      const auto t = Clock::now();
      auto rec = detail::encode_record(BlockKey{1, 1}, PayloadDtype::kF16, 48, 64, payload, shuffle);
      const double enc = seconds_since(t);
      std::vector<uint8_t> out(payload.size());
      const auto t2 = Clock::now();
      const trove::Status st = detail::decode_record(rec.bytes, BlockKey{1, 1}, rec.header.checksum, out);
      const double dec = seconds_since(t2);
      if (!st.ok() || out != payload) {
        std::fprintf(stderr, "bench_kvstore: %s did not round-trip through encode/decode_record\n", name);
        return 1;
      }
      rows.push_back({std::string("LZ4 on ") + name + ", " + (shuffle ? "byte-shuffled" : "plain"),
                      static_cast<double>(payload.size()) / static_cast<double>(rec.bytes.size()), "x",
                      "encode " + std::to_string(static_cast<int>(payload.size() / enc / 1e6)) + " MB/s, decode+verify " +
                          std::to_string(static_cast<int>(payload.size() / dec / 1e6)) + " MB/s"});
    }
  }

  std::printf("| measure | value | unit | note |\n|---|---|---|---|\n");
  for (const auto& r : rows) std::printf("| %s | %.3g | %s | %s |\n", r.what.c_str(), r.value, r.unit.c_str(), r.note.c_str());
  fs::remove_all(dir);
  return 0;
}
