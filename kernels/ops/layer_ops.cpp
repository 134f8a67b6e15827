#include "kernels/ops/layer_ops.h"

#include <algorithm>
#include <cmath>
#include <vector>

#include <fmt/format.h>

namespace trove::ops {
namespace {
constexpr uint32_t kLocal = 256;
constexpr uint32_t kMaxGroupsX = 65535;  // guaranteed minimum of maxComputeWorkGroupCount[0..2]

// 1-D work of `groups` workgroups spread over a 2-D grid (x ≤ 65535).
void grid(uint32_t groups, uint32_t* gx, uint32_t* gy) {
  *gx = std::max(1u, std::min(groups, kMaxGroupsX));
  *gy = (groups + *gx - 1) / *gx;
}

Status need(const char* op, const char* what, const vk::Buffer& b, uint64_t bytes) {
  if (b.size() >= bytes) return Status::Ok();
  return Status::InvalidArgument(fmt::format("{}: buffer '{}' has {} bytes; the shape needs {}", op, what, b.size(), bytes));
}

// turns_i = base^(-2i/d) / 2π as a 64-bit fraction {lo, hi} per RoPE pair, made once per (head_dim,
// base) and kept in `cache`: the shaders' angle is then frac(pos × turns_i) × 2π, exact whatever the
// position (a float32 pos × freq is off by ~pos × 6e-8 rad).
Result<const vk::Buffer*> rope_turns(vk::Device& dev, std::map<std::pair<uint32_t, float>, vk::Buffer>& cache,
                                     uint32_t head_dim, float base) {
  auto key = std::make_pair(head_dim, base);
  auto it = cache.find(key);
  if (it == cache.end()) {
    const uint32_t half = head_dim / 2;
    std::vector<uint32_t> words(2 * half);
    for (uint32_t i = 0; i < half; ++i) {
      const long double f = std::pow(static_cast<long double>(base), -2.0L * i / head_dim) /
                            (2.0L * 3.141592653589793238462643383279502884L);
      const long double scaled = std::ldexp(f - std::floor(f), 32);
      const long double hi = std::floor(scaled);
      words[2 * i + 1] = static_cast<uint32_t>(hi);
      words[2 * i] = static_cast<uint32_t>(std::floor(std::ldexp(scaled - hi, 32)));
    }
    auto buf = dev.buffer(words.size() * 4);
    if (!buf.ok()) return buf.status();
    TROVE_RETURN_IF_ERROR(buf->upload(words.data(), words.size() * 4));
    it = cache.emplace(key, std::move(*buf)).first;
  }
  return &it->second;
}

}  // namespace

// ---- QkNormRopeKv
Result<QkNormRopeKv> QkNormRopeKv::create(vk::Device& dev) {
  auto p = dev.pipeline({"qk_rope_kv", {}, 20, 10, 128});
  if (!p.ok()) return p.status();
  QkNormRopeKv op;
  op.dev_ = &dev;
  op.pipeline_ = std::move(*p);
  return op;
}
Status QkNormRopeKv::record(vk::CommandStream& s, const Call& c) const {
  const kv::KvLayout& L = c.layout;
  if (L.head_dim % 2 || L.head_dim > 256 || L.head_dim == 0) {
    return Status::InvalidArgument(fmt::format("qk_rope_kv: head_dim {} must be even and at most 256", L.head_dim));
  }
  if (c.n_heads == 0 || L.kv_heads == 0 || c.n_heads + L.kv_heads > kMaxGroupsX || c.tokens == 0 || c.tokens > kMaxGroupsX) {
    return Status::InvalidArgument(fmt::format("qk_rope_kv: {} query + {} KV heads x {} tokens is outside the grid",
                                               c.n_heads, L.kv_heads, c.tokens));
  }
  const uint64_t D = L.head_dim;
  TROVE_RETURN_IF_ERROR(need("qk_rope_kv", "q_raw", *c.q_raw, c.tokens * c.n_heads * D * 4));
  TROVE_RETURN_IF_ERROR(need("qk_rope_kv", "q_out", *c.q_out, c.tokens * c.n_heads * D * 4));
  TROVE_RETURN_IF_ERROR(need("qk_rope_kv", "k_raw", *c.k_raw, c.tokens * L.kv_heads * D * 4));
  TROVE_RETURN_IF_ERROR(need("qk_rope_kv", "v_raw", *c.v_raw, c.tokens * L.kv_heads * D * 4));
  TROVE_RETURN_IF_ERROR(need("qk_rope_kv", "q_norm", *c.q_w, D * 4));
  TROVE_RETURN_IF_ERROR(need("qk_rope_kv", "k_norm", *c.k_w, D * 4));
  TROVE_RETURN_IF_ERROR(need("qk_rope_kv", "positions", *c.positions, uint64_t{c.tokens} * 4));
  TROVE_RETURN_IF_ERROR(need("qk_rope_kv", "slots", *c.slots, uint64_t{c.tokens} * 4));
  TROVE_RETURN_IF_ERROR(need("qk_rope_kv", "pool", *c.pool, uint64_t{c.pool_blocks} * L.block_bytes()));
  auto turns = rope_turns(*dev_, turns_, L.head_dim, c.rope_base);
  if (!turns.ok()) return turns.status();
  struct { uint32_t head_dim, n_heads, n_kv_heads, block_tokens; float eps; } push{L.head_dim, c.n_heads, L.kv_heads,
                                                                                  L.block_tokens, c.eps};
  vk::BufferRange b[10] = {*c.q_raw, *c.k_raw, *c.v_raw, *c.q_w, *c.k_w, *c.positions, **turns, *c.slots, *c.pool, *c.q_out};
  return s.dispatch(pipeline_, b, &push, sizeof(push), c.n_heads + L.kv_heads, c.tokens);
}

// ---- RmsNorm
Result<RmsNorm> RmsNorm::create(vk::Device& dev) {
  auto p = dev.pipeline({"rms_norm_f32", {}, 8, 3, kLocal});
  if (!p.ok()) return p.status();
  RmsNorm op;
  op.pipeline_ = std::move(*p);
  return op;
}
Status RmsNorm::record(vk::CommandStream& s, const vk::Buffer& x, const vk::Buffer& w, const vk::Buffer& out,
                       uint32_t rows, uint32_t ncols, float eps) const {
  uint64_t n = uint64_t{rows} * ncols * 4;
  TROVE_RETURN_IF_ERROR(need("rms_norm", "x", x, n));
  TROVE_RETURN_IF_ERROR(need("rms_norm", "weight", w, uint64_t{ncols} * 4));
  TROVE_RETURN_IF_ERROR(need("rms_norm", "out", out, n));
  struct { uint32_t ncols; float eps; } push{ncols, eps};
  uint32_t gx, gy;
  grid(rows, &gx, &gy);
  if (uint64_t{gx} * gy != rows && gy > 1) {
    // why: the shader derives the row from (x, y) with x = NumWorkGroups.x, so rows must tile exactly.
    for (gx = kMaxGroupsX; gx > 1 && rows % gx; --gx) {}
    gy = rows / gx;
  }
  vk::BufferRange b[3] = {x, w, out};
  return s.dispatch(pipeline_, b, &push, sizeof(push), gx, gy);
}

// ---- SwiGlu
Result<SwiGlu> SwiGlu::create(vk::Device& dev) {
  auto p = dev.pipeline({"swiglu_f32", {}, 8, 3, kLocal});
  if (!p.ok()) return p.status();
  SwiGlu op;
  op.pipeline_ = std::move(*p);
  return op;
}
Status SwiGlu::record(vk::CommandStream& s, const vk::Buffer& gate, const vk::Buffer& up, const vk::Buffer& out,
                      uint32_t n) const {
  TROVE_RETURN_IF_ERROR(need("swiglu", "gate", gate, uint64_t{n} * 4));
  TROVE_RETURN_IF_ERROR(need("swiglu", "up", up, uint64_t{n} * 4));
  TROVE_RETURN_IF_ERROR(need("swiglu", "out", out, uint64_t{n} * 4));
  uint32_t gx, gy;
  grid((n + kLocal - 1) / kLocal, &gx, &gy);
  struct { uint32_t n, row_groups; } push{n, gx};
  vk::BufferRange b[3] = {gate, up, out};
  return s.dispatch(pipeline_, b, &push, sizeof(push), gx, gy);
}

// ---- RopeNeox
Result<RopeNeox> RopeNeox::create(vk::Device& dev) {
  auto p = dev.pipeline({"rope_neox_f32", {}, 20, 3, kLocal});
  if (!p.ok()) return p.status();
  RopeNeox op;
  op.dev_ = &dev;
  op.pipeline_ = std::move(*p);
  return op;
}
Status RopeNeox::record(vk::CommandStream& s, const vk::Buffer& x, const vk::Buffer& positions, uint32_t tokens,
                        uint32_t heads, uint32_t head_dim, float base) const {
  if (head_dim % 2) return Status::InvalidArgument(fmt::format("rope: head_dim {} must be even", head_dim));
  TROVE_RETURN_IF_ERROR(need("rope", "x", x, uint64_t{tokens} * heads * head_dim * 4));
  TROVE_RETURN_IF_ERROR(need("rope", "positions", positions, uint64_t{tokens} * 4));
  uint64_t pairs = uint64_t{tokens} * heads * (head_dim / 2);
  uint32_t gx, gy;
  grid(static_cast<uint32_t>((pairs + kLocal - 1) / kLocal), &gx, &gy);
  auto turns = rope_turns(*dev_, turns_, head_dim, base);
  if (!turns.ok()) return turns.status();
  struct { uint32_t head_dim, heads, tokens; float base; uint32_t row_groups; } push{head_dim, heads, tokens, base, gx};
  vk::BufferRange b[3] = {x, positions, **turns};
  return s.dispatch(pipeline_, b, &push, sizeof(push), gx, gy);
}

// ---- Argmax
Result<Argmax> Argmax::create(vk::Device& dev) {
  auto p = dev.pipeline({"argmax_f32", {}, 4, 2, kLocal});
  if (!p.ok()) return p.status();
  Argmax op;
  op.pipeline_ = std::move(*p);
  return op;
}
Status Argmax::record(vk::CommandStream& s, const vk::Buffer& logits, const vk::Buffer& out, uint32_t rows,
                      uint32_t ncols) const {
  TROVE_RETURN_IF_ERROR(need("argmax", "logits", logits, uint64_t{rows} * ncols * 4));
  TROVE_RETURN_IF_ERROR(need("argmax", "out", out, uint64_t{rows} * 4));
  if (rows > kMaxGroupsX) return Status::InvalidArgument(fmt::format("argmax: {} rows exceeds {}", rows, kMaxGroupsX));
  uint32_t push = ncols;
  vk::BufferRange b[2] = {logits, out};
  return s.dispatch(pipeline_, b, &push, sizeof(push), rows);
}

// ---- GetRows
Result<GetRows> GetRows::create(vk::Device& dev, quant::GgmlType type) {
  using quant::GgmlType;
  const char* shader = nullptr;
  if (type == GgmlType::F32) shader = "get_rows_f32";
  if (type == GgmlType::F16) shader = "get_rows_f16";
  if (type == GgmlType::BF16 || type == GgmlType::Q8_0 || type == GgmlType::Q4_K || type == GgmlType::Q5_K ||
      type == GgmlType::Q6_K) {
    shader = "get_rows_quant";
  }
  if (!shader) {
    return Status::Unsupported(fmt::format("get_rows: weight type {} is not supported (supported: {})",
                                           quant::ggml_type_name(static_cast<uint32_t>(type)),
                                           quant::supported_type_names()));
  }
  auto p = dev.pipeline({shader, {}, std::string_view(shader) == "get_rows_quant" ? 16u : 8u, 3, kLocal});
  if (!p.ok()) return p.status();
  GetRows op;
  op.pipeline_ = std::move(*p);
  op.type_ = type;
  return op;
}
Status GetRows::record(vk::CommandStream& s, const vk::Buffer& table, const vk::Buffer& ids, const vk::Buffer& out,
                       uint32_t nrows, uint32_t ncols, uint32_t ntokens) const {
  using quant::GgmlType;
  const bool plain = type_ == GgmlType::F32 || type_ == GgmlType::F16;
  const uint64_t rb = quant::row_bytes(type_, ncols);
  if (!plain && (ncols % 32 != 0 || ncols % quant::traits(type_)->block_values != 0)) {
    return Status::InvalidArgument(fmt::format("get_rows: {} columns is not a whole number of {} blocks", ncols,
                                               quant::traits(type_)->name));
  }
  const uint64_t tbytes = (rb * nrows + 3) / 4 * 4;  // read as 32-bit words
  TROVE_RETURN_IF_ERROR(need("get_rows", "table", table, tbytes));
  TROVE_RETURN_IF_ERROR(need("get_rows", "ids", ids, uint64_t{ntokens} * 4));
  TROVE_RETURN_IF_ERROR(need("get_rows", "out", out, uint64_t{ntokens} * ncols * 4));
  if (ntokens > kMaxGroupsX) return Status::InvalidArgument(fmt::format("get_rows: {} tokens exceeds {}", ntokens, kMaxGroupsX));
  vk::BufferRange b[3] = {table, ids, out};
  if (plain) {
    struct { uint32_t ncols, nrows; } push{ncols, nrows};
    uint32_t gx = std::min<uint32_t>(64, (ncols + kLocal - 1) / kLocal);
    return s.dispatch(pipeline_, b, &push, sizeof(push), gx, ntokens);
  }
  struct { uint32_t ncols, nrows, type, row_bytes; } push{ncols, nrows, static_cast<uint32_t>(type_), static_cast<uint32_t>(rb)};
  const uint32_t gx = (ncols / 32 + kLocal - 1) / kLocal;
  return s.dispatch(pipeline_, b, &push, sizeof(push), gx, ntokens);
}

// ---- f16-output variants (prefill)
Result<RmsNormF16> RmsNormF16::create(vk::Device& dev) {
  auto p = dev.pipeline({"rms_norm_f16out", {}, 8, 3, kLocal});
  if (!p.ok()) return p.status();
  RmsNormF16 op;
  op.pipeline_ = std::move(*p);
  return op;
}
Status RmsNormF16::record(vk::CommandStream& s, const vk::Buffer& x, const vk::Buffer& w, const vk::Buffer& out,
                          uint32_t rows, uint32_t ncols, float eps) const {
  if (ncols % 2 != 0) return Status::InvalidArgument(fmt::format("rms_norm f16: {} columns; the f16 output needs an even count", ncols));
  const uint64_t n = uint64_t{rows} * ncols;
  TROVE_RETURN_IF_ERROR(need("rms_norm f16", "x", x, n * 4));
  TROVE_RETURN_IF_ERROR(need("rms_norm f16", "weight", w, uint64_t{ncols} * 4));
  TROVE_RETURN_IF_ERROR(need("rms_norm f16", "out", out, n * 2));
  struct { uint32_t ncols; float eps; } push{ncols, eps};
  uint32_t gx, gy;
  grid(rows, &gx, &gy);
  if (uint64_t{gx} * gy != rows && gy > 1) {
    for (gx = kMaxGroupsX; gx > 1 && rows % gx; --gx) {}  // the row is x + y·NumWorkGroups.x: tile exactly
    gy = rows / gx;
  }
  vk::BufferRange b[3] = {x, w, out};
  return s.dispatch(pipeline_, b, &push, sizeof(push), gx, gy);
}

Result<DequantF16> DequantF16::create(vk::Device& dev) {
  auto p = dev.pipeline({"dequant_f16", {}, 20, 2, kLocal});
  if (!p.ok()) return p.status();
  DequantF16 op;
  op.pipeline_ = std::move(*p);
  return op;
}
Status DequantF16::record(vk::CommandStream& s, quant::GgmlType type, vk::BufferRange w, uint32_t rows,
                          uint32_t cols, vk::BufferRange out) const {
  const auto t = quant::traits(type);
  const bool readable = type == quant::GgmlType::F32 || type == quant::GgmlType::F16 ||
                        type == quant::GgmlType::BF16 || type == quant::GgmlType::Q8_0 ||
                        type == quant::GgmlType::Q4_K || type == quant::GgmlType::Q5_K ||
                        type == quant::GgmlType::Q6_K;
  if (!t || !readable) {
    return Status::Unsupported(
        fmt::format("dequant f16: weight type {} is not supported (F32, F16, BF16, Q8_0, Q4_K, Q5_K, Q6_K)",
                    quant::ggml_type_name(static_cast<uint32_t>(type))));
  }
  if (rows == 0 || cols == 0 || cols % 32 != 0 || cols % static_cast<uint32_t>(t->block_values) != 0) {
    return Status::InvalidArgument(
        fmt::format("dequant f16: {} rows of {} columns; the columns must be a positive multiple of 32 "
                    "and of the {} block ({})",
                    rows, cols, t->name, t->block_values));
  }
  const uint64_t rb = quant::row_bytes(type, cols), chunks = uint64_t{rows} * (cols / 32);
  if (rb * rows > 0xFFFFFFFCull || chunks * 4 > 0xFFFFFFFFull) {
    return Status::InvalidArgument(fmt::format(
        "dequant f16: {} rows of {} columns is over 4 GiB for one call; split the rows", rows, cols));
  }
  if (out.offset % 16 != 0) {
    return Status::InvalidArgument(fmt::format(
        "dequant f16: the output starts at byte {}, not a multiple of 16 (its stores are 16 bytes)",
        out.offset));
  }
  if (w.size < (rb * rows + 3) / 4 * 4 || out.size < uint64_t{rows} * cols * 2) {
    return Status::InvalidArgument(
        fmt::format("dequant f16: buffers too small: weights {} (need {}), out {} (need {})", w.size,
                    (rb * rows + 3) / 4 * 4, out.size, uint64_t{rows} * cols * 2));
  }
  const uint64_t groups = (chunks + kLocal - 1) / kLocal;
  const uint32_t gx = static_cast<uint32_t>(std::min<uint64_t>(groups, 32768)),
                 gy = static_cast<uint32_t>((groups + gx - 1) / gx);
  struct {
    uint32_t chunks_per_row, chunks, type, row_bytes, groups_x;
  } push{cols / 32, static_cast<uint32_t>(chunks), static_cast<uint32_t>(type), static_cast<uint32_t>(rb),
         gx};
  vk::BufferRange b[2] = {w, out};
  return s.dispatch(pipeline_, b, &push, sizeof(push), gx, gy);
}

Result<SwiGluF16> SwiGluF16::create(vk::Device& dev) {
  auto p = dev.pipeline({"swiglu_f16out", {}, 8, 3, kLocal});
  if (!p.ok()) return p.status();
  SwiGluF16 op;
  op.pipeline_ = std::move(*p);
  return op;
}
Status SwiGluF16::record(vk::CommandStream& s, const vk::Buffer& gate, const vk::Buffer& up, const vk::Buffer& out,
                         uint32_t n) const {
  if (n % 2 != 0) return Status::InvalidArgument(fmt::format("swiglu f16: {} values; the f16 output needs an even count", n));
  TROVE_RETURN_IF_ERROR(need("swiglu f16", "gate", gate, uint64_t{n} * 4));
  TROVE_RETURN_IF_ERROR(need("swiglu f16", "up", up, uint64_t{n} * 4));
  TROVE_RETURN_IF_ERROR(need("swiglu f16", "out", out, uint64_t{n} * 2));
  const uint32_t pairs = n / 2;
  uint32_t gx, gy;
  grid((pairs + kLocal - 1) / kLocal, &gx, &gy);
  struct { uint32_t n, row_groups; } push{pairs, gx};
  vk::BufferRange b[3] = {gate, up, out};
  return s.dispatch(pipeline_, b, &push, sizeof(push), gx, gy);
}

}  // namespace trove::ops
