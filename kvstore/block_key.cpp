// Block keys: XXH3-128 over tagged fields. The exact byte encoding is a format promise (two processes,
// or two versions of trove, must compute the same key for the same prefix); it is specified with test
// vectors in docs/kv-store-format.md and tests/kvstore/test_block_key.cpp checks them.
#include <xxhash.h>

#include <cstring>
#include <string>

#include "kvstore/store.h"

namespace trove::kv {
namespace {

void put_u32(std::string& b, uint32_t v) {
  for (int i = 0; i < 4; ++i) b.push_back(static_cast<char>((v >> (8 * i)) & 0xff));
}
void put_u64(std::string& b, uint64_t v) {
  for (int i = 0; i < 8; ++i) b.push_back(static_cast<char>((v >> (8 * i)) & 0xff));
}

}  // namespace

std::string BlockKey::hex() const {
  static const char* digits = "0123456789abcdef";
  std::string s(32, '0');
  for (int i = 0; i < 16; ++i) {
    s[15 - i] = digits[(hi >> (4 * i)) & 0xf];
    s[31 - i] = digits[(lo >> (4 * i)) & 0xf];
  }
  return s;
}

std::optional<BlockKey> BlockKey::from_hex(std::string_view hex) {
  if (hex.size() != 32) return std::nullopt;
  BlockKey k;
  for (size_t i = 0; i < 32; ++i) {
    const char c = hex[i];
    uint64_t d;
    if (c >= '0' && c <= '9') d = static_cast<uint64_t>(c - '0');
    else if (c >= 'a' && c <= 'f') d = static_cast<uint64_t>(c - 'a' + 10);
    else if (c >= 'A' && c <= 'F') d = static_cast<uint64_t>(c - 'A' + 10);
    else return std::nullopt;
    uint64_t& part = i < 16 ? k.hi : k.lo;
    part = (part << 4) | d;
  }
  return k;
}

BlockKey block_key(const BlockKey& parent, std::string_view fingerprint, std::string_view name_space,
                   std::span<const int32_t> tokens) {
  // One buffer per thread: lookup() hashes ~2,000 blocks for a 128k-token prompt, and an allocation
  // per block would cost as much as the hashing.
  thread_local std::string b;
  b.clear();
  b.reserve(64 + fingerprint.size() + name_space.size() + tokens.size() * 4);
  b.push_back(0x01);  // parent key: hi then lo, little-endian
  put_u64(b, parent.hi);
  put_u64(b, parent.lo);
  b.push_back(0x02);  // model fingerprint
  put_u32(b, static_cast<uint32_t>(fingerprint.size()));
  b.append(fingerprint);
  b.push_back(0x03);  // cache namespace
  put_u32(b, static_cast<uint32_t>(name_space.size()));
  b.append(name_space);
  b.push_back(0x04);  // token ids, little-endian i32
  put_u32(b, static_cast<uint32_t>(tokens.size()));
  const size_t at = b.size();
  b.resize(at + tokens.size() * 4);
  for (size_t i = 0; i < tokens.size(); ++i) {  // little-endian i32 (the host is little-endian)
    std::memcpy(b.data() + at + 4 * i, &tokens[i], 4);
  }
  const XXH128_hash_t h = XXH3_128bits(b.data(), b.size());
  return BlockKey{h.high64, h.low64};
}

std::vector<BlockKey> chain_keys(std::string_view name_space, std::string_view fingerprint,
                                 std::span<const int32_t> tokens, uint32_t block_tokens) {
  std::vector<BlockKey> keys;
  if (block_tokens == 0) return keys;
  const size_t n = tokens.size() / block_tokens;
  keys.reserve(n);
  BlockKey parent;
  for (size_t i = 0; i < n; ++i) {
    parent = block_key(parent, fingerprint, name_space, tokens.subspan(i * block_tokens, block_tokens));
    keys.push_back(parent);
  }
  return keys;
}

}  // namespace trove::kv
