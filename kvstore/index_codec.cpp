#include "kvstore/detail/index_codec.h"

#include <cstring>

namespace trove::kv::detail {
namespace {

template <class T>
void put(std::string& s, T v) {
  s.append(reinterpret_cast<const char*>(&v), sizeof v);
}

class Reader {
 public:
  explicit Reader(std::string_view s) : s_(s) {}
  template <class T>
  bool get(T* v) {
    if (s_.size() - pos_ < sizeof(T)) return false;
    std::memcpy(v, s_.data() + pos_, sizeof(T));
    pos_ += sizeof(T);
    return true;
  }
  bool get_string(std::string* out) {
    uint16_t n;
    if (!get(&n) || s_.size() - pos_ < n) return false;
    out->assign(s_.data() + pos_, n);
    pos_ += n;
    return true;
  }
  bool done() const { return pos_ == s_.size(); }

 private:
  std::string_view s_;
  size_t pos_ = 0;
};

void put_be64(std::string& s, uint64_t v) {
  for (int i = 7; i >= 0; --i) s.push_back(static_cast<char>((v >> (8 * i)) & 0xff));
}

}  // namespace

std::string index_key(const BlockKey& k) {
  std::string s = "b";
  put_be64(s, k.hi);
  put_be64(s, k.lo);
  return s;
}

std::optional<BlockKey> parse_index_key(std::string_view s) {
  if (s.size() != 17 || s[0] != 'b') return std::nullopt;
  BlockKey k;
  for (int i = 0; i < 8; ++i) k.hi = (k.hi << 8) | static_cast<uint8_t>(s[1 + i]);
  for (int i = 0; i < 8; ++i) k.lo = (k.lo << 8) | static_cast<uint8_t>(s[9 + i]);
  return k;
}

std::string encode_entry(const BlockEntry& e) {
  std::string s;
  s.reserve(128 + e.name_space.size() + e.fingerprint.size());
  put<uint8_t>(s, 1);
  put(s, e.ref.parent.hi);
  put(s, e.ref.parent.lo);
  put(s, e.ref.tokens);
  put(s, e.ref.raw_size);
  put(s, e.ref.segment);
  put(s, e.ref.offset);
  put(s, e.ref.length);
  put(s, e.ref.checksum);
  put<uint8_t>(s, static_cast<uint8_t>(e.dtype));
  put(s, e.layers);
  put(s, e.children);
  put(s, e.created);
  put(s, e.last_access);
  put(s, e.hits);
  put<uint16_t>(s, static_cast<uint16_t>(e.name_space.size()));
  s += e.name_space.substr(0, 65535);
  put<uint16_t>(s, static_cast<uint16_t>(e.fingerprint.size()));
  s += e.fingerprint.substr(0, 65535);
  return s;
}

std::optional<BlockEntry> decode_entry(const BlockKey& key, std::string_view v) {
  Reader r(v);
  BlockEntry e;
  e.ref.key = key;
  uint8_t version, dtype;
  if (!r.get(&version) || version != 1) return std::nullopt;
  if (!r.get(&e.ref.parent.hi) || !r.get(&e.ref.parent.lo) || !r.get(&e.ref.tokens) || !r.get(&e.ref.raw_size) ||
      !r.get(&e.ref.segment) || !r.get(&e.ref.offset) || !r.get(&e.ref.length) || !r.get(&e.ref.checksum) ||
      !r.get(&dtype) || !r.get(&e.layers) || !r.get(&e.children) || !r.get(&e.created) ||
      !r.get(&e.last_access) || !r.get(&e.hits) || !r.get_string(&e.name_space) || !r.get_string(&e.fingerprint) ||
      !r.done()) {
    return std::nullopt;
  }
  e.dtype = static_cast<PayloadDtype>(dtype);
  return e;
}

}  // namespace trove::kv::detail
