#include "engine/gguf/gguf_writer.h"

#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstring>

#include <fmt/format.h>

#include "engine/gguf/gguf.h"

namespace trove::gguf {
namespace {

template <class T>
void put(std::string& out, T v) {
  out.append(reinterpret_cast<const char*>(&v), sizeof v);
}
void put_string(std::string& out, std::string_view s) {
  put<uint64_t>(out, s.size());
  out.append(s);
}
constexpr uint32_t id(ValueType t) { return static_cast<uint32_t>(t); }

}  // namespace

GgufWriter::GgufWriter(uint32_t alignment) : alignment_(alignment) {
  TROVE_CHECK(alignment > 0 && (alignment & (alignment - 1)) == 0);
  if (alignment != kDefaultAlignment) set_u32("general.alignment", alignment);
}

GgufWriter::~GgufWriter() {
  if (fd_ >= 0) {
    ::close(fd_);
    ::unlink(tmp_path_.c_str());  // not finished: leave nothing behind
  }
}

void GgufWriter::key(const std::string& k, uint32_t type_id) {
  TROVE_CHECK(fd_ < 0);  // metadata is fixed once begin() ran
  TROVE_CHECK(std::find(keys_.begin(), keys_.end(), k) == keys_.end());
  keys_.push_back(k);
  put_string(meta_, k);
  put<uint32_t>(meta_, type_id);
  ++n_kv_;
}

void GgufWriter::set_u8(const std::string& k, uint8_t v) { key(k, id(ValueType::kU8)); put(meta_, v); }
void GgufWriter::set_u32(const std::string& k, uint32_t v) { key(k, id(ValueType::kU32)); put(meta_, v); }
void GgufWriter::set_i32(const std::string& k, int32_t v) { key(k, id(ValueType::kI32)); put(meta_, v); }
void GgufWriter::set_u64(const std::string& k, uint64_t v) { key(k, id(ValueType::kU64)); put(meta_, v); }
void GgufWriter::set_f32(const std::string& k, float v) { key(k, id(ValueType::kF32)); put(meta_, v); }
void GgufWriter::set_f64(const std::string& k, double v) { key(k, id(ValueType::kF64)); put(meta_, v); }
void GgufWriter::set_bool(const std::string& k, bool v) {
  key(k, id(ValueType::kBool));
  put<uint8_t>(meta_, v ? 1 : 0);
}
void GgufWriter::set_string(const std::string& k, std::string_view v) {
  key(k, id(ValueType::kString));
  put_string(meta_, v);
}
void GgufWriter::set_string_array(const std::string& k, const std::vector<std::string>& v) {
  key(k, id(ValueType::kArray));
  put<uint32_t>(meta_, id(ValueType::kString));
  put<uint64_t>(meta_, v.size());
  for (const auto& s : v) put_string(meta_, s);
}
void GgufWriter::set_i32_array(const std::string& k, const std::vector<int32_t>& v) {
  key(k, id(ValueType::kArray));
  put<uint32_t>(meta_, id(ValueType::kI32));
  put<uint64_t>(meta_, v.size());
  meta_.append(reinterpret_cast<const char*>(v.data()), v.size() * sizeof(int32_t));
}
void GgufWriter::set_f32_array(const std::string& k, const std::vector<float>& v) {
  key(k, id(ValueType::kArray));
  put<uint32_t>(meta_, id(ValueType::kF32));
  put<uint64_t>(meta_, v.size());
  meta_.append(reinterpret_cast<const char*>(v.data()), v.size() * sizeof(float));
}
void GgufWriter::set_raw(const std::string& k, uint32_t type_id, std::span<const uint8_t> payload) {
  key(k, type_id);
  meta_.append(reinterpret_cast<const char*>(payload.data()), payload.size());
}

size_t GgufWriter::add_tensor(const std::string& name, std::vector<uint64_t> ne, quant::GgmlType type) {
  TROVE_CHECK(fd_ < 0);
  TROVE_CHECK(!ne.empty() && ne.size() <= static_cast<size_t>(kMaxDims));
  uint64_t n = 1;
  for (uint64_t d : ne) n *= d;
  const uint64_t bytes = quant::row_bytes(type, static_cast<int64_t>(n));
  uint64_t offset = 0;
  if (!tensors_.empty()) {
    const auto& prev = tensors_.back();
    offset = prev.offset + prev.n_bytes;
    offset = (offset + alignment_ - 1) / alignment_ * alignment_;
  }
  tensors_.push_back({name, std::move(ne), type, bytes, offset});
  return tensors_.size() - 1;
}

Status GgufWriter::write_all(const void* p, size_t n) {
  const auto* b = static_cast<const uint8_t*>(p);
  while (n > 0) {
    const ssize_t w = ::write(fd_, b, std::min<size_t>(n, 1u << 30));
    if (w < 0) {
      if (errno == EINTR) continue;
      return Status::IoError(fmt::format("writing '{}' failed at byte {}: {}", tmp_path_, written_, std::strerror(errno)));
    }
    b += w;
    n -= static_cast<size_t>(w);
    written_ += static_cast<uint64_t>(w);
  }
  return Status::Ok();
}

Status GgufWriter::pad_to_alignment() {
  static const uint8_t zeros[256] = {};
  while (written_ % alignment_ != 0) {
    const size_t n = std::min<uint64_t>(alignment_ - written_ % alignment_, sizeof zeros);
    TROVE_RETURN_IF_ERROR(write_all(zeros, n));
  }
  return Status::Ok();
}

Status GgufWriter::begin(const std::string& path) {
  TROVE_CHECK(fd_ < 0);
  path_ = path;
  tmp_path_ = path + ".partial";
  fd_ = ::open(tmp_path_.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (fd_ < 0) {
    return Status::IoError(fmt::format("cannot create '{}': {}", tmp_path_, std::strerror(errno)));
  }
  std::string head;
  put<uint32_t>(head, kMagic);
  put<uint32_t>(head, 3);
  put<uint64_t>(head, tensors_.size());
  put<uint64_t>(head, n_kv_);
  head += meta_;
  for (const auto& t : tensors_) {
    put_string(head, t.name);
    put<uint32_t>(head, static_cast<uint32_t>(t.ne.size()));
    for (uint64_t d : t.ne) put<uint64_t>(head, d);
    put<uint32_t>(head, static_cast<uint32_t>(t.type));
    put<uint64_t>(head, t.offset);
  }
  TROVE_RETURN_IF_ERROR(write_all(head.data(), head.size()));
  TROVE_RETURN_IF_ERROR(pad_to_alignment());
  return Status::Ok();
}

Status GgufWriter::write_tensor(size_t index, std::span<const uint8_t> bytes) {
  TROVE_CHECK(index < tensors_.size());
  if (bytes.size() != tensors_[index].n_bytes) {
    return Status::InvalidArgument(fmt::format("tensor '{}' needs {} bytes, got {}", tensors_[index].name,
                                               tensors_[index].n_bytes, bytes.size()));
  }
  return write_tensor_part(index, bytes);
}

Status GgufWriter::write_tensor_part(size_t index, std::span<const uint8_t> bytes) {
  TROVE_CHECK(fd_ >= 0);
  TROVE_CHECK(index == next_tensor_);  // tensors are written in declaration order
  const Tensor& t = tensors_[index];
  if (tensor_written_ + bytes.size() > t.n_bytes) {
    return Status::InvalidArgument(fmt::format("tensor '{}' overflows its {} bytes", t.name, t.n_bytes));
  }
  TROVE_RETURN_IF_ERROR(write_all(bytes.data(), bytes.size()));
  tensor_written_ += bytes.size();
  if (tensor_written_ == t.n_bytes) {
    TROVE_RETURN_IF_ERROR(pad_to_alignment());
    ++next_tensor_;
    tensor_written_ = 0;
  }
  return Status::Ok();
}

Status GgufWriter::finish() {
  TROVE_CHECK(fd_ >= 0);
  if (next_tensor_ != tensors_.size()) {
    return Status::FailedPrecondition(fmt::format("'{}': only {} of {} tensors were written", path_, next_tensor_,
                                                  tensors_.size()));
  }
  if (::fsync(fd_) != 0) return Status::IoError(fmt::format("fsync of '{}' failed: {}", tmp_path_, std::strerror(errno)));
  ::close(fd_);
  fd_ = -1;
  if (::rename(tmp_path_.c_str(), path_.c_str()) != 0) {
    return Status::IoError(fmt::format("cannot rename '{}' to '{}': {}", tmp_path_, path_, std::strerror(errno)));
  }
  return Status::Ok();
}

}  // namespace trove::gguf
