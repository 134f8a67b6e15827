// Writing GGUF (version 3) files, streamed.
//
// Declare the metadata and every tensor (name, shape, type) first, then begin(), then hand over each
// tensor's bytes in declaration order with write_tensor(), then finish(). Only the tensor being
// written is ever in memory, so a 20 GB file needs no more RAM than its largest tensor (and callers
// that produce a tensor in pieces can use write_tensor_part()).
//
// The file is written to "<path>.partial" and renamed to <path> by finish(), after an fsync, so a
// crash or an error never leaves a half-written file under the final name. Not thread-safe.
#pragma once

#include <cstdint>
#include <span>
#include <string>
#include <vector>

#include "common/status.h"
#include "kernels/quant/quant.h"

namespace trove::gguf {

class GgufWriter {
 public:
  explicit GgufWriter(uint32_t alignment = 32);
  ~GgufWriter();
  GgufWriter(const GgufWriter&) = delete;
  GgufWriter& operator=(const GgufWriter&) = delete;

  // Metadata, written in the order set. Setting a key twice is a programming error (checked).
  void set_u8(const std::string& key, uint8_t v);
  void set_u32(const std::string& key, uint32_t v);
  void set_i32(const std::string& key, int32_t v);
  void set_u64(const std::string& key, uint64_t v);
  void set_f32(const std::string& key, float v);
  void set_f64(const std::string& key, double v);
  void set_bool(const std::string& key, bool v);
  void set_string(const std::string& key, std::string_view v);
  void set_string_array(const std::string& key, const std::vector<std::string>& v);
  void set_i32_array(const std::string& key, const std::vector<int32_t>& v);
  void set_f32_array(const std::string& key, const std::vector<float>& v);
  // Raw access for tests that need every value type (nested arrays etc.): appends one key with an
  // already-encoded value (type id + payload, as GGUF lays it out).
  void set_raw(const std::string& key, uint32_t type_id, std::span<const uint8_t> encoded_payload);

  // Declares a tensor; ne[0] is the contiguous dimension. Returns its index.
  size_t add_tensor(const std::string& name, std::vector<uint64_t> ne, quant::GgmlType type);
  uint64_t tensor_bytes(size_t index) const { return tensors_.at(index).n_bytes; }
  size_t tensor_count() const { return tensors_.size(); }

  // Creates the file and writes header, metadata and tensor table.
  Status begin(const std::string& path);
  // Writes the whole data of the next tensor (must be tensor `index`, in declaration order).
  Status write_tensor(size_t index, std::span<const uint8_t> bytes);
  // Writes the next `bytes.size()` bytes of the current tensor; the tensor is complete once its
  // n_bytes have been written.
  Status write_tensor_part(size_t index, std::span<const uint8_t> bytes);
  // Checks every tensor was written, fsyncs, renames into place.
  Status finish();

 private:
  struct Tensor {
    std::string name;
    std::vector<uint64_t> ne;
    quant::GgmlType type;
    uint64_t n_bytes;
    uint64_t offset;
  };
  void key(const std::string& k, uint32_t type_id);
  Status write_all(const void* p, size_t n);
  Status pad_to_alignment();

  uint32_t alignment_;
  std::string meta_;      // encoded metadata entries
  uint64_t n_kv_ = 0;
  std::vector<std::string> keys_;
  std::vector<Tensor> tensors_;
  std::string path_, tmp_path_;
  int fd_ = -1;
  uint64_t written_ = 0;        // bytes written to the file
  size_t next_tensor_ = 0;      // the tensor being written
  uint64_t tensor_written_ = 0; // bytes of it written so far
};

}  // namespace trove::gguf
