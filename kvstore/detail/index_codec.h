// The RocksDB index: one entry per stored block.
//   key:   'b' + block key (hi, lo; big-endian, so keys sort by hash)
//   value: version u8 (1), then the fields of BlockEntry, little-endian:
//          parent(16) tokens u32 raw_size u64 segment u32 offset u64 length u64 checksum u64 dtype u8
//          layers u16 children u32 created i64 last_access i64 hits u64 ns_len u16 ns fp_len u16 fp
#pragma once

#include <optional>
#include <string>
#include <string_view>

#include "kvstore/store.h"

namespace trove::kv::detail {

std::string index_key(const BlockKey& k);
std::optional<BlockKey> parse_index_key(std::string_view s);
std::string encode_entry(const BlockEntry& e);
std::optional<BlockEntry> decode_entry(const BlockKey& key, std::string_view v);

}  // namespace trove::kv::detail
