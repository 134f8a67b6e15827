#include "kvstore/detail/record.h"

#include <lz4.h>
#include <xxhash.h>

#include <algorithm>
#include <cstring>

#include <fmt/format.h>

namespace trove::kv::detail {
namespace {

template <class T>
void put(uint8_t* p, T v) {
  std::memcpy(p, &v, sizeof v);  // little-endian hosts only (x86-64, arm64): checked in open()
}
template <class T>
T get(const uint8_t* p) {
  T v;
  std::memcpy(&v, p, sizeof v);
  return v;
}

void write_header(uint8_t* h, const RecordHeader& r) {
  std::memset(h, 0, kRecordHeaderBytes);
  std::memcpy(h, kRecordMagic, 8);
  put<uint16_t>(h + 8, r.version);
  h[10] = static_cast<uint8_t>(r.dtype);
  h[11] = r.flags;
  put<uint16_t>(h + 12, r.layers);
  put<uint32_t>(h + 16, r.tokens);
  put<uint32_t>(h + 20, r.token_ids);
  put<uint64_t>(h + 24, r.raw_size);
  put<uint64_t>(h + 32, r.stored_size);
  put<uint64_t>(h + 40, r.key.hi);
  put<uint64_t>(h + 48, r.key.lo);
  put<uint64_t>(h + 56, r.checksum);
}

// XXH3-64 of header bytes 0..55 followed by the `n` bytes after the header (token ids + payload).
uint64_t checksum_of(const uint8_t* header, const uint8_t* payload, size_t n) {
  XXH3_state_t* st = XXH3_createState();
  XXH3_64bits_reset(st);
  XXH3_64bits_update(st, header, 56);
  XXH3_64bits_update(st, payload, n);
  const uint64_t h = XXH3_64bits_digest(st);
  XXH3_freeState(st);
  return h;
}

}  // namespace

void shuffle2(std::span<const uint8_t> in, std::span<uint8_t> out) {
  const size_t n = in.size() / 2;
  for (size_t i = 0; i < n; ++i) {
    out[i] = in[2 * i];
    out[n + i] = in[2 * i + 1];
  }
}

void unshuffle2(std::span<const uint8_t> in, std::span<uint8_t> out) {
  const size_t n = in.size() / 2;
  for (size_t i = 0; i < n; ++i) {
    out[2 * i] = in[i];
    out[2 * i + 1] = in[n + i];
  }
}

EncodedRecord encode_record(const BlockKey& key, PayloadDtype dtype, uint16_t layers, uint32_t tokens,
                            std::span<const uint8_t> payload, bool shuffle, std::span<const int32_t> token_ids) {
  EncodedRecord rec;
  RecordHeader& h = rec.header;
  h.dtype = dtype;
  h.layers = layers;
  h.tokens = tokens;
  h.token_ids = static_cast<uint32_t>(token_ids.size());
  const size_t ids_bytes = token_ids.size() * 4;
  const size_t body = kRecordHeaderBytes + ids_bytes;  // where the payload starts
  h.raw_size = payload.size();
  h.key = key;
  std::vector<uint8_t> shuffled;
  std::span<const uint8_t> src = payload;
  const bool is16 = dtype == PayloadDtype::kF16 || dtype == PayloadDtype::kBF16;
  if (shuffle && is16 && payload.size() % 2 == 0 && !payload.empty()) {
    shuffled.resize(payload.size());
    shuffle2(payload, shuffled);
    src = shuffled;
    h.flags |= kFlagShuffled;
  }
  const int bound = LZ4_compressBound(static_cast<int>(src.size()));
  rec.bytes.resize(body + static_cast<size_t>(std::max(bound, static_cast<int>(payload.size()))));
  if (ids_bytes) std::memcpy(rec.bytes.data() + kRecordHeaderBytes, token_ids.data(), ids_bytes);
  int stored = LZ4_compress_default(reinterpret_cast<const char*>(src.data()),
                                    reinterpret_cast<char*>(rec.bytes.data() + body),
                                    static_cast<int>(src.size()), bound);
  if (stored > 0 && static_cast<size_t>(stored) < src.size()) {
    h.flags |= kFlagLz4;
  } else {
    // Incompressible: store the original bytes, unshuffled, so reading them back is one copy.
    h.flags = 0;
    std::memcpy(rec.bytes.data() + body, payload.data(), payload.size());
    stored = static_cast<int>(payload.size());
  }
  if (ids_bytes) h.flags |= kFlagTokenIds;
  h.stored_size = static_cast<uint64_t>(stored);
  const size_t used = body + h.stored_size;
  rec.bytes.resize(align_up(used, kRecordAlign), 0);
  std::memset(rec.bytes.data() + used, 0, rec.bytes.size() - used);
  write_header(rec.bytes.data(), h);
  h.checksum = checksum_of(rec.bytes.data(), rec.bytes.data() + kRecordHeaderBytes, ids_bytes + h.stored_size);
  put<uint64_t>(rec.bytes.data() + 56, h.checksum);
  return rec;
}

Result<RecordHeader> parse_header(std::span<const uint8_t> r) {
  if (r.size() < kRecordHeaderBytes) return Status::Corruption("record shorter than its 64-byte header");
  if (std::memcmp(r.data(), kRecordMagic, 8) != 0) return Status::Corruption("record magic is not TRVKVBLK");
  RecordHeader h;
  h.version = get<uint16_t>(r.data() + 8);
  if (h.version != kRecordVersion) {
    return Status::Corruption(fmt::format("record format version {} (expected {})", h.version, kRecordVersion));
  }
  h.dtype = static_cast<PayloadDtype>(r[10]);
  h.flags = r[11];
  h.layers = get<uint16_t>(r.data() + 12);
  h.tokens = get<uint32_t>(r.data() + 16);
  h.token_ids = get<uint32_t>(r.data() + 20);
  if ((h.flags & kFlagTokenIds) == 0 && h.token_ids != 0) return Status::Corruption("token id count without its flag");
  h.raw_size = get<uint64_t>(r.data() + 24);
  h.stored_size = get<uint64_t>(r.data() + 32);
  h.key.hi = get<uint64_t>(r.data() + 40);
  h.key.lo = get<uint64_t>(r.data() + 48);
  h.checksum = get<uint64_t>(r.data() + 56);
  return h;
}

namespace {
// Checks header, key and checksum; returns the header and where the payload starts.
Result<std::pair<RecordHeader, size_t>> verify_record(std::span<const uint8_t> r, const BlockKey& expect_key,
                                                      uint64_t expect_checksum) {
  auto hr = parse_header(r);
  if (!hr.ok()) return hr.status();
  const RecordHeader& h = *hr;
  const uint64_t ids_bytes = uint64_t{h.token_ids} * 4;
  if (ids_bytes > r.size() - kRecordHeaderBytes || h.stored_size > r.size() - kRecordHeaderBytes - ids_bytes) {
    return Status::Corruption("stored size runs past the record");
  }
  if (!(h.key == expect_key)) return Status::Corruption("record holds another block's key");
  if (h.checksum != expect_checksum) return Status::Corruption("record checksum differs from the index's");
  if (checksum_of(r.data(), r.data() + kRecordHeaderBytes, ids_bytes + h.stored_size) != h.checksum) {
    return Status::Corruption("checksum mismatch (bytes changed on disk)");
  }
  return std::make_pair(h, static_cast<size_t>(kRecordHeaderBytes + ids_bytes));
}
}  // namespace

Result<std::vector<int32_t>> decode_token_ids(std::span<const uint8_t> r, const BlockKey& expect_key,
                                             uint64_t expect_checksum) {
  auto v = verify_record(r, expect_key, expect_checksum);
  if (!v.ok()) return v.status();
  std::vector<int32_t> ids(v->first.token_ids);
  if (!ids.empty()) std::memcpy(ids.data(), r.data() + kRecordHeaderBytes, ids.size() * 4);
  return ids;
}

Status decode_record(std::span<const uint8_t> r, const BlockKey& expect_key, uint64_t expect_checksum,
                     std::span<uint8_t> out) {
  auto v = verify_record(r, expect_key, expect_checksum);
  if (!v.ok()) return v.status();
  const RecordHeader& h = v->first;
  const uint8_t* payload = r.data() + v->second;
  if (h.raw_size != out.size()) {
    return Status::InvalidArgument(fmt::format("buffer of {} bytes for a {}-byte block", out.size(), h.raw_size));
  }
  std::vector<uint8_t> tmp;
  std::span<uint8_t> dst = out;
  if (h.flags & kFlagShuffled) {
    tmp.resize(h.raw_size);
    dst = tmp;
  }
  if (h.flags & kFlagLz4) {
    const int n = LZ4_decompress_safe(reinterpret_cast<const char*>(payload), reinterpret_cast<char*>(dst.data()),
                                      static_cast<int>(h.stored_size), static_cast<int>(dst.size()));
    if (n < 0 || static_cast<uint64_t>(n) != h.raw_size) return Status::Corruption("LZ4 payload does not decode");
  } else {
    if (h.stored_size != h.raw_size) return Status::Corruption("uncompressed payload has the wrong size");
    std::memcpy(dst.data(), payload, h.raw_size);
  }
  if (h.flags & kFlagShuffled) unshuffle2(tmp, out);
  return Status::Ok();
}

}  // namespace trove::kv::detail
