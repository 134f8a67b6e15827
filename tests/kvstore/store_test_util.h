// Helpers for the KV store tests: temporary store directories and deterministic payloads.
#pragma once

#include <unistd.h>

#include <atomic>
#include <cstdint>
#include <cstring>
#include <filesystem>
#include <random>
#include <string>
#include <vector>

#include "kvstore/store.h"

namespace trove::kv::testing {

class TempDir {
 public:
  TempDir() {
    static std::atomic<int> counter{0};
    path_ = std::filesystem::temp_directory_path() /
            ("trove-kv-test-" + std::to_string(getpid()) + "-" + std::to_string(counter++));
    std::filesystem::remove_all(path_);
    std::filesystem::create_directories(path_);
  }
  ~TempDir() {
    std::error_code ec;
    std::filesystem::remove_all(path_, ec);
  }
  std::string str() const { return path_.string(); }
  std::string sub(const std::string& name) const { return (path_ / name).string(); }

 private:
  std::filesystem::path path_;
};

// KV-like f16 payload: values ~N(0, 1) as halves, so it compresses like real KV rows would (partly).
inline std::vector<uint8_t> kv_like_payload(uint64_t seed, size_t bytes) {
  std::mt19937_64 rng(seed);
  std::normal_distribution<float> d(0.0f, 1.0f);
  std::vector<uint8_t> out(bytes);
  for (size_t i = 0; i + 1 < bytes; i += 2) {
    // A cheap f32 → f16 (truncating): sign, exponent rebias, 10 mantissa bits.
    float f = d(rng);
    uint32_t u;
    std::memcpy(&u, &f, 4);
    const uint32_t sign = (u >> 16) & 0x8000;
    int32_t exp = static_cast<int32_t>((u >> 23) & 0xff) - 127 + 15;
    uint16_t h = static_cast<uint16_t>(sign);
    if (exp > 0 && exp < 31) h = static_cast<uint16_t>(sign | (exp << 10) | ((u >> 13) & 0x3ff));
    out[i] = static_cast<uint8_t>(h & 0xff);
    out[i + 1] = static_cast<uint8_t>(h >> 8);
  }
  return out;
}

inline std::vector<int32_t> tokens_for(uint64_t seed, size_t n) {
  std::mt19937_64 rng(seed);
  std::vector<int32_t> t(n);
  for (auto& x : t) x = static_cast<int32_t>(rng() % 151643);
  return t;
}

// Inserts every full block of `tokens` with a payload derived from its key.
inline void insert_prompt(Store& s, std::string_view ns, std::string_view fp, const std::vector<int32_t>& tokens,
                          size_t payload_bytes) {
  const auto keys = chain_keys(ns, fp, tokens, s.block_tokens());
  BlockKey parent;
  for (size_t i = 0; i < keys.size(); ++i) {
    const auto ids = std::span<const int32_t>(tokens).subspan(i * s.block_tokens(), s.block_tokens());
    s.insert(keys[i], parent, ns, fp, s.block_tokens(), PayloadDtype::kF16, 2,
             kv_like_payload(keys[i].lo, payload_bytes), ids);
    parent = keys[i];
  }
}

}  // namespace trove::kv::testing
