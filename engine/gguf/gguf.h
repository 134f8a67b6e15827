// Reading GGUF model files (versions 2 and 3).
//
// GgufFile maps a file read-only and parses its header, metadata and tensor table up front; tensor
// data stays in the mapping and is reached through TensorInfo::data. Every count, length, offset and
// size read from the file is checked against the mapping with overflow-safe arithmetic before use, so
// a truncated, corrupt or hostile file yields a Status naming the field and the byte offset — never a
// read past the mapping. Tensor types outside kernels/quant's supported set are refused with the
// type's name and the tensor that uses it.
//
// Ownership: Values and TensorInfos hold string_views and pointers into the mapping; they are valid
// while the GgufFile lives. A GgufFile is immutable after open and safe to read from many threads.
//
// Format reference: docs/gguf.md.
#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include "common/status.h"
#include "kernels/quant/quant.h"

namespace trove::gguf {

inline constexpr uint32_t kMagic = 0x46554747;  // "GGUF" read as a little-endian u32
inline constexpr uint32_t kDefaultAlignment = 32;
inline constexpr int kMaxDims = 4;

// GGUF metadata value types, with their on-disk ids.
enum class ValueType : uint32_t {
  kU8 = 0, kI8 = 1, kU16 = 2, kI16 = 3, kU32 = 4, kI32 = 5, kF32 = 6, kBool = 7,
  kString = 8, kArray = 9, kU64 = 10, kI64 = 11, kF64 = 12,
};
std::string_view value_type_name(ValueType t);

// One metadata value. Scalars are widened (integers keep exact values in u64/i64 by signedness);
// strings are views into the mapping; arrays hold their elements (possibly arrays themselves).
struct Value {
  ValueType type = ValueType::kU8;
  uint64_t u = 0;          // kU8 kU16 kU32 kU64 kBool
  int64_t i = 0;           // kI8 kI16 kI32 kI64
  double f = 0.0;          // kF32 kF64
  std::string_view s;      // kString
  ValueType elem_type = ValueType::kU8;  // kArray
  std::vector<Value> items;              // kArray

  bool is_integer() const;
};

struct TensorInfo {
  std::string_view name;
  int n_dims = 0;
  uint64_t ne[kMaxDims] = {1, 1, 1, 1};  // ne[0] is the contiguous (innermost) dimension
  quant::GgmlType type = quant::GgmlType::F32;
  uint64_t offset = 0;        // relative to the start of the data section
  uint64_t n_elements = 0;
  uint64_t n_bytes = 0;
  const uint8_t* data = nullptr;  // into the mapping
};

class GgufFile {
 public:
  // Maps and parses `path`. The error names the file.
  static Result<std::unique_ptr<GgufFile>> open(const std::string& path);
  // Parses bytes already in memory (the caller keeps them alive as long as the GgufFile). Used by
  // the fuzz target and tests; `name` is used in error messages.
  static Result<std::unique_ptr<GgufFile>> parse(std::span<const uint8_t> bytes, std::string name = "<memory>");

  ~GgufFile();
  GgufFile(const GgufFile&) = delete;
  GgufFile& operator=(const GgufFile&) = delete;

  const std::string& path() const { return path_; }
  uint32_t version() const { return version_; }
  uint32_t alignment() const { return alignment_; }
  uint64_t file_size() const { return bytes_.size(); }
  uint64_t data_offset() const { return data_offset_; }

  // Metadata in file order, and by key.
  const std::vector<std::pair<std::string_view, Value>>& metadata() const { return kv_; }
  const Value* find(std::string_view key) const;

  // Typed accessors: NotFound when the key is absent, InvalidArgument when the stored type does not
  // convert exactly (e.g. a negative i32 read as u32, or a string read as a number).
  Result<uint64_t> get_u64(std::string_view key) const;
  Result<uint32_t> get_u32(std::string_view key) const;
  Result<int64_t> get_i64(std::string_view key) const;
  Result<double> get_f64(std::string_view key) const;
  Result<float> get_f32(std::string_view key) const;
  Result<bool> get_bool(std::string_view key) const;
  Result<std::string_view> get_string(std::string_view key) const;
  Result<std::vector<std::string_view>> get_string_array(std::string_view key) const;
  Result<std::vector<int64_t>> get_int_array(std::string_view key) const;
  // Convenience: the value or `fallback` when absent (errors on a wrong type still propagate).
  Result<uint32_t> get_u32_or(std::string_view key, uint32_t fallback) const;

  const std::vector<TensorInfo>& tensors() const { return tensors_; }
  const TensorInfo* find_tensor(std::string_view name) const;

  // Drops the mapping (after weights were uploaded to the device). Tensor data pointers and string
  // views become invalid; metadata() and tensors() must not be used afterwards.
  void release_mapping();

 private:
  GgufFile() = default;
  Status parse_all();

  std::string path_;
  void* map_ = nullptr;  // non-null when this object owns an mmap
  size_t map_size_ = 0;
  std::span<const uint8_t> bytes_;
  uint32_t version_ = 0;
  uint32_t alignment_ = kDefaultAlignment;
  uint64_t data_offset_ = 0;
  std::vector<std::pair<std::string_view, Value>> kv_;
  std::unordered_map<std::string_view, size_t> kv_index_;
  std::vector<TensorInfo> tensors_;
  std::unordered_map<std::string_view, size_t> tensor_index_;
};

}  // namespace trove::gguf
