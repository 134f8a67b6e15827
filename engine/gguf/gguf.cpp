#include "engine/gguf/gguf.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

#include <fmt/format.h>

namespace trove::gguf {

std::string_view value_type_name(ValueType t) {
  switch (t) {
    case ValueType::kU8: return "u8";
    case ValueType::kI8: return "i8";
    case ValueType::kU16: return "u16";
    case ValueType::kI16: return "i16";
    case ValueType::kU32: return "u32";
    case ValueType::kI32: return "i32";
    case ValueType::kF32: return "f32";
    case ValueType::kBool: return "bool";
    case ValueType::kString: return "string";
    case ValueType::kArray: return "array";
    case ValueType::kU64: return "u64";
    case ValueType::kI64: return "i64";
    case ValueType::kF64: return "f64";
  }
  return "unknown";
}

bool Value::is_integer() const {
  switch (type) {
    case ValueType::kU8: case ValueType::kI8: case ValueType::kU16: case ValueType::kI16:
    case ValueType::kU32: case ValueType::kI32: case ValueType::kU64: case ValueType::kI64:
      return true;
    default:
      return false;
  }
}

namespace {

// Nested arrays deeper than this are refused: real files use depth 1, and unbounded recursion on a
// hostile file would overflow the stack.
constexpr int kMaxArrayDepth = 8;

// A bounds-checked little-endian reader over the file. Every read names what it reads, so an error
// says which field and at which byte offset the file went wrong.
class Cursor {
 public:
  Cursor(std::span<const uint8_t> bytes, const std::string& file) : bytes_(bytes), file_(file) {}

  uint64_t pos() const { return pos_; }
  uint64_t remaining() const { return bytes_.size() - pos_; }

  Status need(uint64_t n, std::string_view what) const {
    if (n > remaining()) {
      return Status::Corruption(fmt::format(
          "GGUF file '{}': {} needs {} bytes at byte {}, but the file ends at byte {} (truncated or corrupt file)",
          file_, what, n, pos_, bytes_.size()));
    }
    return Status::Ok();
  }

  template <class T>
  Status read(T* out, std::string_view what) {
    TROVE_RETURN_IF_ERROR(need(sizeof(T), what));
    std::memcpy(out, bytes_.data() + pos_, sizeof(T));
    pos_ += sizeof(T);
    return Status::Ok();
  }

  Status read_string(std::string_view* out, std::string_view what) {
    uint64_t len = 0;
    const uint64_t at = pos_;
    TROVE_RETURN_IF_ERROR(read(&len, what));
    if (len > remaining()) {
      return Status::Corruption(fmt::format(
          "GGUF file '{}': {}: string length {} at byte {} runs past the end of the file ({} bytes)", file_, what,
          len, at, bytes_.size()));
    }
    *out = std::string_view(reinterpret_cast<const char*>(bytes_.data() + pos_), len);
    pos_ += len;
    return Status::Ok();
  }

  Status error(std::string_view what, std::string_view problem, uint64_t at) const {
    return Status::Corruption(fmt::format("GGUF file '{}': {} at byte {}: {}", file_, what, at, problem));
  }

 private:
  std::span<const uint8_t> bytes_;
  const std::string& file_;
  uint64_t pos_ = 0;
};

// The smallest number of bytes one element of `t` takes in the file; used to reject array counts
// that could not possibly fit before allocating anything for them.
uint64_t min_element_bytes(ValueType t) {
  switch (t) {
    case ValueType::kU8: case ValueType::kI8: case ValueType::kBool: return 1;
    case ValueType::kU16: case ValueType::kI16: return 2;
    case ValueType::kU32: case ValueType::kI32: case ValueType::kF32: return 4;
    case ValueType::kU64: case ValueType::kI64: case ValueType::kF64: return 8;
    case ValueType::kString: return 8;   // the length prefix
    case ValueType::kArray: return 12;   // element type + count
  }
  return 1;
}

bool valid_value_type(uint32_t t) { return t <= static_cast<uint32_t>(ValueType::kF64); }

Status read_value(Cursor& c, ValueType type, Value* v, const std::string& what, int depth) {
  v->type = type;
  switch (type) {
    case ValueType::kU8: { uint8_t x; TROVE_RETURN_IF_ERROR(c.read(&x, what)); v->u = x; return Status::Ok(); }
    case ValueType::kI8: { int8_t x; TROVE_RETURN_IF_ERROR(c.read(&x, what)); v->i = x; return Status::Ok(); }
    case ValueType::kU16: { uint16_t x; TROVE_RETURN_IF_ERROR(c.read(&x, what)); v->u = x; return Status::Ok(); }
    case ValueType::kI16: { int16_t x; TROVE_RETURN_IF_ERROR(c.read(&x, what)); v->i = x; return Status::Ok(); }
    case ValueType::kU32: { uint32_t x; TROVE_RETURN_IF_ERROR(c.read(&x, what)); v->u = x; return Status::Ok(); }
    case ValueType::kI32: { int32_t x; TROVE_RETURN_IF_ERROR(c.read(&x, what)); v->i = x; return Status::Ok(); }
    case ValueType::kU64: { uint64_t x; TROVE_RETURN_IF_ERROR(c.read(&x, what)); v->u = x; return Status::Ok(); }
    case ValueType::kI64: { int64_t x; TROVE_RETURN_IF_ERROR(c.read(&x, what)); v->i = x; return Status::Ok(); }
    case ValueType::kF32: { float x; TROVE_RETURN_IF_ERROR(c.read(&x, what)); v->f = x; return Status::Ok(); }
    case ValueType::kF64: { double x; TROVE_RETURN_IF_ERROR(c.read(&x, what)); v->f = x; return Status::Ok(); }
    case ValueType::kBool: {
      const uint64_t at = c.pos();
      uint8_t x;
      TROVE_RETURN_IF_ERROR(c.read(&x, what));
      if (x > 1) return c.error(what, fmt::format("bool value {} is neither 0 nor 1", x), at);
      v->u = x;
      return Status::Ok();
    }
    case ValueType::kString: return c.read_string(&v->s, what);
    case ValueType::kArray: {
      const uint64_t at = c.pos();
      if (depth >= kMaxArrayDepth) {
        return c.error(what, fmt::format("arrays nested deeper than {} levels", kMaxArrayDepth), at);
      }
      uint32_t et = 0;
      TROVE_RETURN_IF_ERROR(c.read(&et, what));
      if (!valid_value_type(et)) return c.error(what, fmt::format("unknown array element type {}", et), at);
      uint64_t count = 0;
      const uint64_t count_at = c.pos();
      TROVE_RETURN_IF_ERROR(c.read(&count, what));
      v->elem_type = static_cast<ValueType>(et);
      const uint64_t min_bytes = min_element_bytes(v->elem_type);
      if (count > c.remaining() / min_bytes) {
        return c.error(what,
                       fmt::format("array of {} {} elements cannot fit in the {} bytes left in the file", count,
                                   value_type_name(v->elem_type), c.remaining()),
                       count_at);
      }
      v->items.resize(count);
      for (uint64_t k = 0; k < count; ++k) {
        TROVE_RETURN_IF_ERROR(read_value(c, v->elem_type, &v->items[k], what, depth + 1));
      }
      return Status::Ok();
    }
  }
  return Status::Internal("unreachable value type");
}

bool mul_overflows(uint64_t a, uint64_t b, uint64_t* out) { return __builtin_mul_overflow(a, b, out); }
bool add_overflows(uint64_t a, uint64_t b, uint64_t* out) { return __builtin_add_overflow(a, b, out); }

}  // namespace

Result<std::unique_ptr<GgufFile>> GgufFile::open(const std::string& path) {
  int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) {
    return Status::IoError(fmt::format("cannot open model file '{}': {}", path, std::strerror(errno)));
  }
  struct stat st {};
  if (fstat(fd, &st) != 0) {
    const int e = errno;
    ::close(fd);
    return Status::IoError(fmt::format("cannot stat model file '{}': {}", path, std::strerror(e)));
  }
  if (!S_ISREG(st.st_mode)) {
    ::close(fd);
    return Status::InvalidArgument(fmt::format("model file '{}' is not a regular file", path));
  }
  const size_t size = static_cast<size_t>(st.st_size);
  if (size == 0) {
    ::close(fd);
    return Status::Corruption(fmt::format("GGUF file '{}' is empty", path));
  }
  void* map = mmap(nullptr, size, PROT_READ, MAP_SHARED, fd, 0);
  const int e = errno;
  ::close(fd);
  if (map == MAP_FAILED) {
    return Status::IoError(fmt::format("cannot map model file '{}' ({} bytes): {}", path, size, std::strerror(e)));
  }
  std::unique_ptr<GgufFile> f(new GgufFile());
  f->path_ = path;
  f->map_ = map;
  f->map_size_ = size;
  f->bytes_ = std::span<const uint8_t>(static_cast<const uint8_t*>(map), size);
  TROVE_RETURN_IF_ERROR(f->parse_all());
  return f;
}

Result<std::unique_ptr<GgufFile>> GgufFile::parse(std::span<const uint8_t> bytes, std::string name) {
  std::unique_ptr<GgufFile> f(new GgufFile());
  f->path_ = std::move(name);
  f->bytes_ = bytes;
  TROVE_RETURN_IF_ERROR(f->parse_all());
  return f;
}

GgufFile::~GgufFile() { release_mapping(); }

void GgufFile::release_mapping() {
  if (map_) {
    munmap(map_, map_size_);
    map_ = nullptr;
  }
  bytes_ = {};
}

Status GgufFile::parse_all() {
  Cursor c(bytes_, path_);
  uint32_t magic = 0;
  TROVE_RETURN_IF_ERROR(c.read(&magic, "the magic number"));
  if (magic != kMagic) {
    return Status::Corruption(fmt::format(
        "'{}' is not a GGUF file: it starts with bytes {:02x} {:02x} {:02x} {:02x}, not 'GGUF'", path_,
        magic & 0xff, (magic >> 8) & 0xff, (magic >> 16) & 0xff, magic >> 24));
  }
  TROVE_RETURN_IF_ERROR(c.read(&version_, "the format version"));
  if (version_ != 2 && version_ != 3) {
    return Status::Unsupported(fmt::format(
        "GGUF file '{}' has format version {}; trove reads versions 2 and 3 (re-convert the model with a "
        "current llama.cpp)",
        path_, version_));
  }
  uint64_t n_tensors = 0, n_kv = 0;
  TROVE_RETURN_IF_ERROR(c.read(&n_tensors, "the tensor count"));
  TROVE_RETURN_IF_ERROR(c.read(&n_kv, "the metadata count"));
  // Each metadata entry takes at least 12 bytes (key length + type), each tensor info at least 28.
  if (n_kv > c.remaining() / 12) {
    return c.error("the metadata count", fmt::format("{} entries cannot fit in the file", n_kv), 16);
  }
  if (n_tensors > c.remaining() / 28) {
    return c.error("the tensor count", fmt::format("{} tensors cannot fit in the file", n_tensors), 8);
  }

  kv_.reserve(n_kv);
  for (uint64_t k = 0; k < n_kv; ++k) {
    const uint64_t at = c.pos();
    std::string_view key;
    TROVE_RETURN_IF_ERROR(c.read_string(&key, fmt::format("metadata #{} key", k)));
    const std::string what = fmt::format("metadata #{} '{}'", k, key);
    uint32_t type = 0;
    const uint64_t type_at = c.pos();
    TROVE_RETURN_IF_ERROR(c.read(&type, what));
    if (!valid_value_type(type)) return c.error(what, fmt::format("unknown value type {}", type), type_at);
    Value v;
    TROVE_RETURN_IF_ERROR(read_value(c, static_cast<ValueType>(type), &v, what, 0));
    if (kv_index_.count(key)) return c.error(what, "duplicate metadata key", at);
    kv_index_.emplace(key, kv_.size());
    kv_.emplace_back(key, std::move(v));
  }

  if (const Value* a = find("general.alignment")) {
    if (!a->is_integer() || a->u == 0 || a->u > (1u << 30) || (a->u & (a->u - 1)) != 0) {
      return Status::Corruption(fmt::format(
          "GGUF file '{}': general.alignment must be a power of two between 1 and 2^30", path_));
    }
    alignment_ = static_cast<uint32_t>(a->u);
  }

  tensors_.reserve(n_tensors);
  for (uint64_t k = 0; k < n_tensors; ++k) {
    TensorInfo t;
    TROVE_RETURN_IF_ERROR(c.read_string(&t.name, fmt::format("tensor #{} name", k)));
    const std::string what = fmt::format("tensor #{} '{}'", k, t.name);
    uint32_t n_dims = 0;
    const uint64_t dims_at = c.pos();
    TROVE_RETURN_IF_ERROR(c.read(&n_dims, what));
    if (n_dims == 0 || n_dims > kMaxDims) {
      return c.error(what, fmt::format("{} dimensions (must be 1 to {})", n_dims, kMaxDims), dims_at);
    }
    t.n_dims = static_cast<int>(n_dims);
    uint64_t n_el = 1;
    for (uint32_t d = 0; d < n_dims; ++d) {
      const uint64_t at = c.pos();
      TROVE_RETURN_IF_ERROR(c.read(&t.ne[d], what));
      if (t.ne[d] == 0 || t.ne[d] > (1ull << 40) || mul_overflows(n_el, t.ne[d], &n_el) || n_el > (1ull << 42)) {
        return c.error(what, fmt::format("dimension {} = {} is out of range", d, t.ne[d]), at);
      }
    }
    t.n_elements = n_el;
    uint32_t type_id = 0;
    TROVE_RETURN_IF_ERROR(c.read(&type_id, what));
    auto traits = quant::traits_of_id(type_id);
    if (!traits) {
      return Status::Unsupported(fmt::format(
          "GGUF file '{}': tensor {} has type {}, which trove does not support; supported: {}", path_, t.name,
          quant::ggml_type_name(type_id), quant::supported_type_names()));
    }
    t.type = traits->type;
    if (t.ne[0] % static_cast<uint64_t>(traits->block_values) != 0) {
      return c.error(what,
                     fmt::format("row length {} is not a multiple of the {} block size {}", t.ne[0], traits->name,
                                 traits->block_values),
                     dims_at);
    }
    t.n_bytes = n_el / static_cast<uint64_t>(traits->block_values) * static_cast<uint64_t>(traits->block_bytes);
    const uint64_t off_at = c.pos();
    TROVE_RETURN_IF_ERROR(c.read(&t.offset, what));
    if (t.offset % alignment_ != 0) {
      return c.error(what, fmt::format("data offset {} is not a multiple of the alignment {}", t.offset, alignment_),
                     off_at);
    }
    if (tensor_index_.count(t.name)) return c.error(what, "duplicate tensor name", off_at);
    tensor_index_.emplace(t.name, tensors_.size());
    tensors_.push_back(t);
  }

  // The data section starts at the next multiple of the alignment after the tensor table.
  uint64_t data = c.pos();
  if (data % alignment_ != 0) data += alignment_ - data % alignment_;
  data_offset_ = data;
  for (auto& t : tensors_) {
    uint64_t start = 0, end = 0;
    if (add_overflows(data_offset_, t.offset, &start) || add_overflows(start, t.n_bytes, &end) ||
        end > bytes_.size()) {
      return Status::Corruption(fmt::format(
          "GGUF file '{}': tensor '{}' ({} bytes at data offset {}, file byte {}) runs past the end of the file ({} "
          "bytes); the file is truncated — download or convert it again",
          path_, t.name, t.n_bytes, t.offset, start, bytes_.size()));
    }
    t.data = bytes_.data() + start;
  }
  return Status::Ok();
}

const Value* GgufFile::find(std::string_view key) const {
  auto it = kv_index_.find(key);
  return it == kv_index_.end() ? nullptr : &kv_[it->second].second;
}

const TensorInfo* GgufFile::find_tensor(std::string_view name) const {
  auto it = tensor_index_.find(name);
  return it == tensor_index_.end() ? nullptr : &tensors_[it->second];
}

namespace {
Status missing(const std::string& path, std::string_view key) {
  return Status::NotFound(fmt::format("GGUF file '{}' has no metadata key '{}'", path, key));
}
Status wrong_type(const std::string& path, std::string_view key, const Value& v, std::string_view wanted) {
  return Status::InvalidArgument(fmt::format("GGUF file '{}': metadata '{}' is {} where {} was expected", path, key,
                                             value_type_name(v.type), wanted));
}
bool is_signed(ValueType t) {
  return t == ValueType::kI8 || t == ValueType::kI16 || t == ValueType::kI32 || t == ValueType::kI64;
}
}  // namespace

Result<uint64_t> GgufFile::get_u64(std::string_view key) const {
  const Value* v = find(key);
  if (!v) return missing(path_, key);
  if (!v->is_integer()) return wrong_type(path_, key, *v, "an unsigned integer");
  if (is_signed(v->type)) {
    if (v->i < 0) return wrong_type(path_, key, *v, "a non-negative integer");
    return static_cast<uint64_t>(v->i);
  }
  return v->u;
}

Result<uint32_t> GgufFile::get_u32(std::string_view key) const {
  auto r = get_u64(key);
  if (!r.ok()) return r.status();
  if (*r > UINT32_MAX) {
    return Status::InvalidArgument(fmt::format("GGUF file '{}': metadata '{}' = {} does not fit in 32 bits", path_,
                                               key, *r));
  }
  return static_cast<uint32_t>(*r);
}

Result<uint32_t> GgufFile::get_u32_or(std::string_view key, uint32_t fallback) const {
  if (!find(key)) return fallback;
  return get_u32(key);
}

Result<int64_t> GgufFile::get_i64(std::string_view key) const {
  const Value* v = find(key);
  if (!v) return missing(path_, key);
  if (!v->is_integer()) return wrong_type(path_, key, *v, "an integer");
  if (is_signed(v->type)) return v->i;
  if (v->u > static_cast<uint64_t>(INT64_MAX)) return wrong_type(path_, key, *v, "an integer below 2^63");
  return static_cast<int64_t>(v->u);
}

Result<double> GgufFile::get_f64(std::string_view key) const {
  const Value* v = find(key);
  if (!v) return missing(path_, key);
  if (v->type == ValueType::kF32 || v->type == ValueType::kF64) return v->f;
  if (v->is_integer()) return is_signed(v->type) ? static_cast<double>(v->i) : static_cast<double>(v->u);
  return wrong_type(path_, key, *v, "a number");
}

Result<float> GgufFile::get_f32(std::string_view key) const {
  auto r = get_f64(key);
  if (!r.ok()) return r.status();
  return static_cast<float>(*r);
}

Result<bool> GgufFile::get_bool(std::string_view key) const {
  const Value* v = find(key);
  if (!v) return missing(path_, key);
  if (v->type != ValueType::kBool) return wrong_type(path_, key, *v, "a bool");
  return v->u != 0;
}

Result<std::string_view> GgufFile::get_string(std::string_view key) const {
  const Value* v = find(key);
  if (!v) return missing(path_, key);
  if (v->type != ValueType::kString) return wrong_type(path_, key, *v, "a string");
  return v->s;
}

Result<std::vector<std::string_view>> GgufFile::get_string_array(std::string_view key) const {
  const Value* v = find(key);
  if (!v) return missing(path_, key);
  if (v->type != ValueType::kArray || v->elem_type != ValueType::kString) {
    return wrong_type(path_, key, *v, "an array of strings");
  }
  std::vector<std::string_view> out;
  out.reserve(v->items.size());
  for (const auto& item : v->items) out.push_back(item.s);
  return out;
}

Result<std::vector<int64_t>> GgufFile::get_int_array(std::string_view key) const {
  const Value* v = find(key);
  if (!v) return missing(path_, key);
  Value probe;
  probe.type = v->elem_type;
  if (v->type != ValueType::kArray || !probe.is_integer()) return wrong_type(path_, key, *v, "an array of integers");
  std::vector<int64_t> out;
  out.reserve(v->items.size());
  for (const auto& item : v->items) {
    out.push_back(is_signed(item.type) ? item.i : static_cast<int64_t>(item.u));
  }
  return out;
}

}  // namespace trove::gguf
