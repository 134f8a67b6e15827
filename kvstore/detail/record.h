// Block records: how one block's payload is laid out in a segment file.
//
//   offset  size  field
//        0     8  magic "TRVKVBLK"
//        8     2  format version (1)
//       10     1  payload dtype (PayloadDtype)
//       11     1  flags: bit 0 byte-shuffled (2-byte elements), bit 1 LZ4-compressed
//       12     2  layer count
//       14     2  reserved (0)
//       16     4  token count
//       20     4  token ids stored (0, or the token count when flag bit 2 is set)
//       24     8  raw payload size (bytes after decompression)
//       32     8  stored payload size (bytes that follow the header)
//       40    16  block key (hi, lo; little-endian)
//       56     8  checksum: XXH3-64 of bytes 0..55 followed by the stored payload
//       64     …  the block's token ids (i32 each) when flag bit 2 is set, then the stored payload,
//                  then zero padding to a multiple of 4096 (so O_DIRECT can read it). The checksum
//                  covers bytes 0..55 and everything from byte 64 to the end of the payload.
//
// All integers little-endian. A human can read a header with `xxd -l 64`.
#pragma once

#include <cstdint>
#include <span>
#include <string>
#include <vector>

#include "common/status.h"
#include "kvstore/store.h"

namespace trove::kv::detail {

inline constexpr size_t kRecordHeaderBytes = 64;
inline constexpr size_t kRecordAlign = 4096;
inline constexpr uint16_t kRecordVersion = 1;
inline constexpr char kRecordMagic[8] = {'T', 'R', 'V', 'K', 'V', 'B', 'L', 'K'};
inline constexpr uint8_t kFlagShuffled = 1;
inline constexpr uint8_t kFlagLz4 = 2;
inline constexpr uint8_t kFlagTokenIds = 4;

struct RecordHeader {
  uint16_t version = kRecordVersion;
  PayloadDtype dtype = PayloadDtype::kOpaque;
  uint8_t flags = 0;
  uint16_t layers = 0;
  uint32_t tokens = 0;
  uint32_t token_ids = 0;  // ids stored after the header
  uint64_t raw_size = 0;
  uint64_t stored_size = 0;
  BlockKey key;
  uint64_t checksum = 0;
};

inline uint64_t align_up(uint64_t n, uint64_t a) { return (n + a - 1) / a * a; }

struct EncodedRecord {
  std::vector<uint8_t> bytes;  // header + payload + padding; size is a multiple of kRecordAlign
  RecordHeader header;
};

// Builds a record: shuffles 16-bit payloads when `shuffle` (and the size is even), compresses with LZ4
// when that makes it smaller, checksums header and payload.
EncodedRecord encode_record(const BlockKey& key, PayloadDtype dtype, uint16_t layers, uint32_t tokens,
                            std::span<const uint8_t> payload, bool shuffle,
                            std::span<const int32_t> token_ids = {});

// Parses and verifies a record read from disk (at least header + stored payload bytes), and decodes its
// payload into `out` (exactly raw_size bytes). `expect_key` and `expect_checksum` come from the index;
// a mismatch is Corruption.
Status decode_record(std::span<const uint8_t> record, const BlockKey& expect_key, uint64_t expect_checksum,
                     std::span<uint8_t> out);

// Parses only the header (for tools); checks magic and version, not the checksum.
Result<RecordHeader> parse_header(std::span<const uint8_t> record);

// Verifies a record and returns the token ids it carries (empty when it carries none).
Result<std::vector<int32_t>> decode_token_ids(std::span<const uint8_t> record, const BlockKey& expect_key,
                                             uint64_t expect_checksum);

// Byte shuffle for 2-byte elements: all first bytes, then all second bytes. f16 KV values share
// their high (sign/exponent) bytes far more than their low bytes, so LZ4 finds runs after shuffling.
void shuffle2(std::span<const uint8_t> in, std::span<uint8_t> out);
void unshuffle2(std::span<const uint8_t> in, std::span<uint8_t> out);

}  // namespace trove::kv::detail
