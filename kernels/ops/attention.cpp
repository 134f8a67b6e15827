#include "kernels/ops/attention.h"

#include <algorithm>
#include <cstdlib>
#include <initializer_list>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include <fmt/format.h>

namespace trove::ops {
namespace {
struct Push {
  uint32_t block_size, n_kv_heads, head_dim, n_heads, start_pos, n_tokens;
  float scale;
  uint32_t n_splits, split_len;
};
// Decode v2's push block: Push and the kRows form's index of the rows' block table offsets in binding 5.
struct PushV2 {
  Push p;
  uint32_t rows_at;
  uint32_t row0;  // the call's first row among the combine counters' rows (fused combine)
};
struct CombinePush { uint32_t head_dim, n_heads, n_splits; };
// record_decode_rows places each pass's partials at an offset of the scratch that is a multiple of this
// (the most minStorageBufferOffsetAlignment may be).
constexpr uint64_t kScratchAlign = 256;
struct PrefillPush {
  uint32_t block_size, n_kv_heads, n_heads, start_pos, n_tokens;
  float scale;
  uint32_t group, n_splits, split_len;
};
constexpr uint32_t kPrefillDim = 128;            // the head_dim both prefill kernels are written for
constexpr uint32_t kTiledRows = 32, kCoopmatRows = 64;  // query rows per workgroup (BQ in the shaders)
constexpr uint32_t kCm2Keys = 64;  // the cm2 kernel's key tile: block sizes must be a multiple of it
constexpr uint32_t kTiledShared = 29 * 1024 + 512, kCoopmatShared = 44032;  // their shared memory, bytes

// TROVE_ATTENTION_* switches that take one of a few words: the value when `name` is set and in
// `allowed`, nothing when unset, else an error naming the variable, its value and `what` it takes.
Result<std::optional<std::string_view>> env_choice(const char* name, std::initializer_list<std::string_view> allowed,
                                                   std::string_view what) {
  const char* v = std::getenv(name);
  if (!v || !*v) return std::optional<std::string_view>();
  const std::string_view r(v);
  if (std::find(allowed.begin(), allowed.end(), r) == allowed.end()) {
    return Status::InvalidArgument(fmt::format("{}='{}' is not {}", name, r, what));
  }
  return std::optional<std::string_view>(r);
}

uint32_t max_shared_bytes(const vk::Device& dev) {
  VkPhysicalDeviceProperties props{};
  vkGetPhysicalDeviceProperties(dev.physical(), &props);
  return props.limits.maxComputeSharedMemorySize;
}

// The matrix-unit kernel needs a 16x16x16 f16 x f16 -> f32 subgroup shape (VkComponentTypeKHR FLOAT16 = 0,
// FLOAT32 = 1; VkScopeKHR SUBGROUP = 3), 32-wide subgroups (4 per workgroup of 128) with shuffles, the
// shader (only a glslang >= 14 build embeds it) and its shared memory.
bool prefill_coopmat_usable(const vk::Device& dev) {
  const auto& f = dev.features();
  if (f.subgroup_size != 32 || !f.subgroup_shuffle || !vk::find_shader("attention_prefill_coopmat").words ||
      max_shared_bytes(dev) < kCoopmatShared) {
    return false;
  }
  for (const auto& c : f.coopmat_shapes) {
    if (c.m == 16 && c.n == 16 && c.k == 16 && c.a == 0 && c.b == 0 && c.c == 1 && c.result == 1 && c.scope == 3) {
      return true;
    }
  }
  return false;
}

// The NV cooperative matrix 2 kernel: the extension with the features it uses (reductions for the row
// max, conversions for P to an A matrix, per-element operations for exp, the mask and the stores), a
// workgroup-scope f16 x f16 -> f32 shape for its invocations (128 for 64-row tiles, 256 for 128) whose
// granularities divide 64 (VkScopeKHR WORKGROUP = 2), flexible dimensions up to 128 and the shader
// (glslang >= 15 builds it).
bool prefill_cm2_usable(const vk::Device& dev, uint32_t rows, std::string* why) {
  const auto& f = dev.features();
  auto no = [&](const char* s) {
    if (why) *why = s;
    return false;
  };
  if (!vk::find_shader(rows == 128 ? "attention_prefill_cm2_r128" : "attention_prefill_cm2").words) {
    return no("this build has no NV cooperative matrix 2 shaders (glslang < 15)");
  }
  const uint32_t invocations = rows == 128 ? 256 : 128;
  if (!f.cooperative_matrix2) return no("VK_NV_cooperative_matrix2 is not enabled on this device (not offered, validation on or TROVE_VK_NO_CM2=1)");
  if (!f.coopmat2_per_element || !f.coopmat2_reductions || !f.coopmat2_conversions) {
    return no("VK_NV_cooperative_matrix2 lacks per-element operations, reductions or conversions here");
  }
  if (f.coopmat2_max_dimension < 128) return no("VK_NV_cooperative_matrix2's flexible dimensions stop below 128");
  if (f.coopmat2_reserved_shared > f.max_compute_shared_memory) return no("the driver reserves more shared memory than there is");
  for (const auto& sh : f.coopmat2_flexible) {
    if (sh.scope == 2 && sh.a == 0 && sh.b == 0 && sh.c == 1 && sh.result == 1 && sh.invocations == invocations &&
        sh.m_granularity && sh.n_granularity && sh.k_granularity && 64 % sh.m_granularity == 0 &&
        64 % sh.n_granularity == 0 && 64 % sh.k_granularity == 0) {
      return true;
    }
  }
  return no(rows == 128 ? "VK_NV_cooperative_matrix2 offers no 256-invocation f16 x f16 -> f32 workgroup shape with 64-divisible granularity"
                        : "VK_NV_cooperative_matrix2 offers no 128-invocation f16 x f16 -> f32 workgroup shape with 64-divisible granularity");
}

const char* path_name(AttentionPath p) {
  switch (p) {
    case AttentionPath::kAuto: return "auto";
    case AttentionPath::kPerToken: return "per-token";
    case AttentionPath::kPrefillTiled: return "prefill tiled";
    case AttentionPath::kPrefillCoopmat: return "prefill cooperative-matrix";
    case AttentionPath::kDecode: return "decode";
    case AttentionPath::kPrefillCpu: return "prefill CPU";
    case AttentionPath::kPrefillCm2: return "prefill cm2";
    case AttentionPath::kDecodeV2: return "decode v2";
  }
  return "?";
}
}  // namespace

Result<PagedAttention> PagedAttention::create(vk::Device& dev, uint64_t scratch_bytes) {
  auto p = dev.pipeline({"attention_paged", {}, sizeof(Push), 5, 64});
  if (!p.ok()) return p.status();
  auto c = dev.pipeline({"attention_combine", {}, sizeof(CombinePush), 2, 64});
  if (!c.ok()) return c.status();
  auto c2 = dev.pipeline({"attention_combine_v2", {}, sizeof(CombinePush), 2, 128});
  if (!c2.ok()) return c2.status();
  auto scratch = dev.buffer(scratch_bytes ? scratch_bytes
                                          : std::max<uint64_t>(uint64_t{kMaxSplitTokens} * kMaxSplitHeads * kMaxSplits * (256 + 2) * 4,
                                                               kPrefillScratchBytes));
  if (!scratch.ok()) return scratch.status();
  PagedAttention op;
  op.pipeline_ = std::move(*p);
  op.combine_ = std::move(*c);
  op.combine_v2_ = std::move(*c2);
  op.has_shuffle_ = dev.features().subgroup_shuffle;
  op.subgroup_size_ = dev.features().subgroup_size;
  // v2 by default on GPUs: measured on the H200 (2026-12-02, bench_kernels) 126 -> 35 us for one token at
  // depth 16384 (8B), and bench_engine tg64 at depth 16384 93.6 -> 133.9 tok/s. CPU devices keep v1.
  op.decode_v2_default_ = !dev.features().is_cpu;
  if (const char* e = std::getenv("TROVE_ATTENTION_DECODE")) {
    const std::string v = e;
    if (v == "v2") op.decode_v2_default_ = true;
    else if (v == "v1") op.decode_v2_default_ = false;
    else if (v != "v1" && !v.empty()) {
      return Status::InvalidArgument(fmt::format("attention: TROVE_ATTENTION_DECODE={} is not v1 or v2 (docs/kernels.md)", v));
    }
  }
  if (const char* e = std::getenv("TROVE_ATTENTION_DECODE_TOKENS"); e && *e) {
    char* end = nullptr;
    const unsigned long n = std::strtoul(e, &end, 10);
    if (*end != '\0' || n < 1 || n > 64) {
      return Status::InvalidArgument(fmt::format(
          "attention: TROVE_ATTENTION_DECODE_TOKENS={} is not a number of tokens in 1..64 (steps of at most that many "
          "tokens take the decode kernel where a matrix-unit prefill kernel would run; default {})", e,
          kDecodeMaxTokens));
    }
    op.decode_max_tokens_ = static_cast<uint32_t>(n);
  }
  // TROVE_ATTENTION_SPLIT_KEYS=N: decode v2's slices N keys long at every depth (a multiple of 32 in
  // 32..4096; longer where the pool needs it), for A/B against the default lengths that grow with the
  // depth (decode_v2_slice_keys). Either keeps a token's numbers independent of its step.
  if (const char* e = std::getenv("TROVE_ATTENTION_SPLIT_KEYS"); e && *e) {
    char* end = nullptr;
    const unsigned long n = std::strtoul(e, &end, 10);
    if (*end != '\0' || n < 32 || n > 4096 || n % 32 != 0) {
      return Status::InvalidArgument(fmt::format(
          "attention: TROVE_ATTENTION_SPLIT_KEYS={} is not a multiple of 32 in 32..4096 (keys per decode v2 slice at "
          "every depth; unset: {} keys, doubled while a token's keys make more than {} slices)", e, kDecodeV2SplitKeys,
          kDecodeV2MostSlices));
    }
    op.decode_v2_fixed_keys_ = static_cast<uint32_t>(n);
  }
  // TROVE_ATTENTION_PIPELINE=0|1|auto: decode v2 issues a round's K/V loads during the round before
  // (1), at the round's start (0), or the first where a token's grid is small (auto, the default).
  if (const char* e = std::getenv("TROVE_ATTENTION_PIPELINE"); e && *e) {
    const std::string_view v = e;
    if (v != "0" && v != "1" && v != "auto") {
      return Status::InvalidArgument(fmt::format(
          "attention: TROVE_ATTENTION_PIPELINE={} is not 0, 1 or auto (decode v2's K/V loads a round ahead: never, "
          "always, or where a token's grid has at most {} workgroups, the default)", v, kDecodeV2PipelineGroups));
    }
    op.decode_v2_pipeline_ = v == "0" ? Pipelining::kNever : v == "1" ? Pipelining::kAlways : Pipelining::kAuto;
  }
  op.scratch_ = std::move(*scratch);
  op.decode_ = std::make_unique<DecodePipelines>();
  op.decode_->dev = &dev;
  if (!vk::find_shader("attention_decode").words) return Status::NotFound("attention: shader attention_decode is not embedded (rebuild trove_kernels)");
  if (max_shared_bytes(dev) >= kTiledShared) {
    auto t = dev.pipeline({"attention_prefill_tiled", {}, sizeof(PrefillPush), 5, 64});
    if (!t.ok()) return t.status();
    op.prefill_tiled_ = std::move(*t);
    op.has_prefill_tiled_ = true;
  }
  op.is_cpu_ = dev.features().is_cpu;
  if (const uint32_t sg = dev.features().subgroup_size; sg >= 4 && sg <= 64 && (sg & (sg - 1)) == 0) op.cpu_lanes_ = sg;
  if (prefill_coopmat_usable(dev) && !std::getenv("TROVE_NO_COOPMAT")) {
    auto m = dev.pipeline({"attention_prefill_coopmat", {}, sizeof(PrefillPush), 5, 128});
    if (!m.ok()) return m.status();
    op.prefill_coopmat_ = std::move(*m);
    op.has_prefill_coopmat_ = true;
  }
  // The cm2 pipeline is built on first use (or now, when TROVE_ATTENTION asks for it), so that runs
  // which never take it do not compile it.
  // A/B switches (docs/kernels.md): TROVE_ATTENTION_CM2_ROWS=128, 128-row cm2 prefill tiles (256
  // invocations) instead of 64; decode v2's TROVE_ATTENTION_MERGE and _HEAD_GROUPS (attention.h).
  auto rows = env_choice("TROVE_ATTENTION_CM2_ROWS", {"64", "128"}, "a cm2 query tile; use 64 or 128 (or unset it)");
  auto merge = env_choice("TROVE_ATTENTION_MERGE", {"serial", "parallel"},
                          "serial or parallel (how decode v2's subgroups merge their sums: in turn, a barrier each, or each "
                          "into its own copy)");
  auto groups = env_choice("TROVE_ATTENTION_HEAD_GROUPS", {"auto", "1", "2", "4"},
                           "a number of decode workgroups per KV head; use 1, 2, 4 or auto (or unset it)");
  auto fuse = env_choice("TROVE_ATTENTION_COMBINE", {"separate", "fused"},
                         "separate or fused (decode v2's slices merged by a combine dispatch, or by each call's last "
                         "workgroup)");
  for (const auto* r : {&rows, &merge, &groups, &fuse}) {
    if (!r->ok()) return r->status();
  }
  if (*fuse) op.decode_v2_fused_ = **fuse == "fused";
  {
    auto counts = dev.buffer(uint64_t{kCombineCounters} * 4);
    if (!counts.ok()) return counts.status();
    if (Status st = counts->fill(0); !st.ok()) return st;
    op.combine_counts_ = std::move(*counts);
  }
  if (*rows) op.cm2_rows_ = **rows == "128" ? 128 : 64;
  if (*merge) op.decode_v2_merge_parallel_ = **merge == "parallel";
  if (*groups) op.decode_v2_head_groups_ = **groups == "auto" ? 0 : static_cast<uint32_t>((**groups)[0] - '0');
  std::string why;
  op.has_prefill_cm2_ = prefill_cm2_usable(dev, op.cm2_rows_, &why);
  // TROVE_ATTENTION: the prefill kernel kAuto takes (where the call fits it).
  if (const char* v = std::getenv("TROVE_ATTENTION"); v && *v) {
    const std::string_view want(v);
    if (want == "cm2") {
      if (!op.has_prefill_cm2_) {
        return Status::Unsupported(fmt::format("TROVE_ATTENTION=cm2 but this device cannot run the cm2 prefill kernel: "
                                               "{}; use khr or tiled, or unset TROVE_ATTENTION", why));
      }
      op.prefill_pick_ = AttentionPath::kPrefillCm2;
      if (auto m = op.prefill_cm2_pipeline(); !m.ok()) return m.status();
    } else if (want == "khr") {
      if (!op.has_prefill_coopmat_) {
        return Status::Unsupported("TROVE_ATTENTION=khr but this device has no usable KHR cooperative-matrix prefill "
                                   "kernel (16x16x16 f16 subgroup matrices, subgroups of 32, 44 KiB shared memory; "
                                   "TROVE_NO_COOPMAT unset); use tiled, or unset TROVE_ATTENTION");
      }
      op.prefill_pick_ = AttentionPath::kPrefillCoopmat;
    } else if (want == "tiled") {
      if (!op.has_prefill_tiled_) {
        return Status::Unsupported("TROVE_ATTENTION=tiled but the device's shared memory is below the tiled kernel's "
                                   "30 KiB; unset TROVE_ATTENTION");
      }
      op.prefill_pick_ = AttentionPath::kPrefillTiled;
    } else {
      return Status::InvalidArgument(fmt::format("TROVE_ATTENTION='{}' is not a prefill attention path; use cm2, khr or "
                                                 "tiled (or unset it)", v));
    }
  }
  return op;
}

bool PagedAttention::decode_usable(const AttentionCall& c) const {
  const uint32_t d = static_cast<uint32_t>(c.shape.head_dim);
  const uint32_t g = c.shape.n_kv_heads > 0 ? c.n_heads / static_cast<uint32_t>(c.shape.n_kv_heads) : 0;
  return (g == 1 || g == 2 || g == 4 || g == 8 || g == 16) && d >= 8 && d <= 256 && (d & (d - 1)) == 0 &&
         g * d <= kDecodeScores && g * kDecodeMinSplitKeys <= kDecodeScores;
}

uint32_t PagedAttention::decode_v2_lanes(uint32_t head_dim) const {
  return std::min<uint32_t>({head_dim / 8, subgroup_size_, 16});
}

bool PagedAttention::decode_v2_usable(const AttentionCall& c) const {
  const uint32_t d = static_cast<uint32_t>(c.shape.head_dim);
  const uint32_t g = c.shape.n_kv_heads > 0 ? c.n_heads / static_cast<uint32_t>(c.shape.n_kv_heads) : 0;
  const uint32_t sg = subgroup_size_;
  if (!has_shuffle_ || sg == 0 || (sg & (sg - 1)) != 0 || sg > 128) return false;
  if (!(g == 1 || g == 2 || g == 4 || g == 8 || g == 16) || d < 8 || d > 256 || (d & (d - 1)) != 0) return false;
  return g * d / decode_v2_lanes(d) <= 128;
}

bool PagedAttention::prefill_cpu_usable(const AttentionCall& c) const {
  const uint32_t d = static_cast<uint32_t>(c.shape.head_dim);
  const uint32_t g = c.shape.n_kv_heads > 0 ? c.n_heads / static_cast<uint32_t>(c.shape.n_kv_heads) : 0;
  return d % 16 == 0 && d >= 16 && d <= 256 && g >= 1;
}

Result<const vk::Pipeline*> PagedAttention::prefill_cpu_pipeline(uint32_t head_dim, uint32_t group, uint32_t tokens) const {
  std::lock_guard<std::mutex> lock(decode_->mu);
  const std::array<uint32_t, 3> key{head_dim, group, tokens};
  auto it = decode_->cpu.find(key);
  if (it != decode_->cpu.end()) return &it->second;
  auto p = decode_->dev->pipeline({"attention_prefill_cpu", {head_dim, group, tokens, cpu_lanes_}, sizeof(PrefillPush), 5, cpu_lanes_});
  if (!p.ok()) return p.status();
  return &decode_->cpu.emplace(key, std::move(*p)).first->second;
}

Result<const vk::Pipeline*> PagedAttention::prefill_cm2_pipeline() const {
  std::lock_guard<std::mutex> lock(decode_->mu);
  if (decode_->cm2) return decode_->cm2.get();
  auto p = decode_->dev->pipeline({cm2_rows_ == 128 ? "attention_prefill_cm2_r128" : "attention_prefill_cm2", {},
                                   sizeof(PrefillPush), 5, cm2_rows_ * 2});
  if (!p.ok()) return p.status();
  decode_->cm2 = std::make_unique<vk::Pipeline>(std::move(*p));
  return decode_->cm2.get();
}

Result<const vk::Pipeline*> PagedAttention::decode_pipeline(uint32_t group, uint32_t head_dim, bool from_buffer) const {
  std::lock_guard<std::mutex> lock(decode_->mu);
  const std::array<uint32_t, 3> key{group, head_dim, from_buffer ? 1u : 0u};
  auto it = decode_->by_shape.find(key);
  if (it != decode_->by_shape.end()) return &it->second;
  auto p = decode_->dev->pipeline({"attention_decode", {group, head_dim, key[2]}, sizeof(Push), 6, 128});
  if (!p.ok()) return p.status();
  return &decode_->by_shape.emplace(key, std::move(*p)).first->second;
}

// After a split walk: merges the n_splits partials in the scratch into out (nothing to do for one
// slice, whose kernel wrote out itself), then a barrier, because the next record() reuses the scratch.
Status PagedAttention::combine(vk::CommandStream& s, uint32_t head_dim, const AttentionCall& c, uint32_t n_splits,
                               vk::BufferRange out) const {
  if (n_splits == 1) return Status::Ok();
  s.barrier();
  CombinePush cp{head_dim, c.n_heads, n_splits};
  vk::BufferRange cb[2] = {scratch_, out};
  TROVE_RETURN_IF_ERROR(s.dispatch(combine_, cb, &cp, sizeof(cp), c.n_heads, c.n_tokens));
  s.barrier();
  return Status::Ok();
}

AttentionPath PagedAttention::choose(const AttentionCall& c) const {
  const bool matrix = prefill_pick_ == AttentionPath::kAuto ? has_prefill_coopmat_ || (kPrefillCm2Auto && has_prefill_cm2_)
                                                              : prefill_pick_ != AttentionPath::kPrefillTiled;
  const bool few = matrix ? c.n_tokens <= decode_max_tokens_ : c.n_tokens < kPrefillTiledMinTokens;
  if (few && decode_v2_default_ && decode_v2_usable(c)) return AttentionPath::kDecodeV2;
  if (few && decode_usable(c)) return AttentionPath::kDecode;
  if (is_cpu_ && prefill_pick_ == AttentionPath::kAuto && c.n_tokens >= kPrefillTiledMinTokens && prefill_cpu_usable(c)) {
    return AttentionPath::kPrefillCpu;
  }
  if (c.shape.head_dim != kPrefillDim) return AttentionPath::kPerToken;
  if (has_prefill_cm2_ && (prefill_pick_ == AttentionPath::kPrefillCm2 || (kPrefillCm2Auto && prefill_pick_ == AttentionPath::kAuto)) &&
      c.shape.block_size % kCm2Keys == 0 && c.n_tokens >= kPrefillMinTokens) {
    return AttentionPath::kPrefillCm2;
  }
  if (prefill_pick_ == AttentionPath::kPrefillTiled) {
    return c.n_tokens >= kPrefillTiledMinTokens ? AttentionPath::kPrefillTiled : AttentionPath::kPerToken;
  }
  if (has_prefill_coopmat_ && c.shape.block_size % 16 == 0 && c.n_tokens >= kPrefillMinTokens) {
    return AttentionPath::kPrefillCoopmat;
  }
  if (has_prefill_tiled_ && c.n_tokens >= kPrefillTiledMinTokens) return AttentionPath::kPrefillTiled;
  return AttentionPath::kPerToken;
}

Status PagedAttention::record(vk::CommandStream& s, const AttentionCall& c, vk::BufferRange pool,
                              vk::BufferRange block_table, vk::BufferRange q, vk::BufferRange out,
                              const AttentionPositions& positions) const {
  const auto& sh = c.shape;
  if (sh.n_blocks <= 0 || sh.block_size <= 0 || sh.n_kv_heads <= 0 || sh.head_dim <= 0 ||
      sh.head_dim % 2 != 0 || sh.head_dim > 256) {
    return Status::InvalidArgument(fmt::format(
        "attention: pool shape blocks {} block_size {} kv_heads {} head_dim {} invalid (positive, head_dim "
        "even and <= 256)", sh.n_blocks, sh.block_size, sh.n_kv_heads, sh.head_dim));
  }
  if (c.n_heads == 0 || c.n_heads % sh.n_kv_heads != 0 || c.n_tokens == 0 || c.n_tokens > 65535 ||
      c.n_heads > 65535) {
    return Status::InvalidArgument(fmt::format(
        "attention: {} query heads over {} KV heads, {} tokens: heads must be a positive multiple of the KV "
        "heads and tokens in 1..65535", c.n_heads, sh.n_kv_heads, c.n_tokens));
  }
  const uint64_t pool_bytes = static_cast<uint64_t>(sh.elements()) * 2;
  const uint64_t blocks = (uint64_t{c.start_pos} + c.n_tokens + sh.block_size - 1) / sh.block_size;
  const uint64_t qbytes = uint64_t{c.n_tokens} * c.n_heads * sh.head_dim * 4;
  if (pool.size < pool_bytes || block_table.size < blocks * 4 ||
      q.size < qbytes || out.size < qbytes) {
    return Status::InvalidArgument(fmt::format(
        "attention: buffers too small: KV pool {} (need {}), block table {} (need {} entries), q {} out {} "
        "(need {})", pool.size, pool_bytes, block_table.size, blocks, q.size,
        out.size, qbytes));
  }
  const AttentionPath path = c.path == AttentionPath::kAuto ? choose(c) : c.path;
  const bool from_buffer = positions.buffer.buffer != VK_NULL_HANDLE;
  if (from_buffer) {
    if (path != AttentionPath::kDecode && path != AttentionPath::kDecodeV2) {
      return Status::InvalidArgument(fmt::format(
          "attention: positions from a buffer (AttentionPositions) are read by the decode kernels only; this call "
          "takes the {} path (ask replay_key() first, or pass no positions buffer)", path_name(path)));
    }
    if (positions.buffer.size < (uint64_t{positions.index} + c.n_tokens) * 4) {
      return Status::InvalidArgument(fmt::format("attention: positions buffer of {} bytes has no entry {} (+{} tokens)",
                                                 positions.buffer.size, positions.index, c.n_tokens));
    }
  }
  if (path == AttentionPath::kPrefillTiled || path == AttentionPath::kPrefillCoopmat || path == AttentionPath::kPrefillCm2) {
    const bool coop = path == AttentionPath::kPrefillCoopmat, cm2 = path == AttentionPath::kPrefillCm2;
    const uint32_t block_multiple = cm2 ? kCm2Keys : coop ? 16 : 1;
    const bool runs = cm2 ? has_prefill_cm2_ : coop ? has_prefill_coopmat_ : has_prefill_tiled_;
    if (sh.head_dim != kPrefillDim || sh.block_size % block_multiple != 0 || !runs) {
      return Status::InvalidArgument(fmt::format(
          "attention: the {} path needs head_dim 128 (got {}){} and a device that runs it (this one {}); "
          "leave AttentionCall::path at kAuto to get a kernel that fits", path_name(path), sh.head_dim,
          block_multiple > 1 ? fmt::format(", a block size that is a multiple of {} (got {})", block_multiple, sh.block_size) : "",
          runs ? "does" : "does not"));
    }
    const uint32_t group = c.n_heads / static_cast<uint32_t>(sh.n_kv_heads);
    const uint64_t rows = uint64_t{c.n_tokens} * group, per = cm2 ? cm2_rows_ : coop ? kCoopmatRows : kTiledRows;
    if ((rows + per - 1) / per > 65535) {
      return Status::InvalidArgument(fmt::format(
          "attention: {} tokens × {} query heads per KV head is more than the prefill grid holds; record "
          "the chunk in parts of at most {} tokens", c.n_tokens, group, 65535 * per / group));
    }
    const uint32_t tiles = static_cast<uint32_t>((rows + per - 1) / per), kvh = static_cast<uint32_t>(sh.n_kv_heads);
    // Split the key walk when there are few workgroups for a long KV (a short chunk deep in the
    // context: 8 workgroups for 8 tokens of Qwen3-8B): up to kPrefillMaxSplits slices of >=
    // kPrefillMinSplitKeys keys, as many as bring the grid to kPrefillTargetGroups, as far as the
    // scratch holds them.
    const uint32_t keys = c.start_pos + c.n_tokens;
    const uint64_t split_bytes = uint64_t{c.n_tokens} * c.n_heads * (kPrefillDim + 2) * 4;
    uint32_t n_splits = std::min<uint64_t>({kPrefillMaxSplits, (keys + kPrefillMinSplitKeys - 1) / kPrefillMinSplitKeys,
                                            (kPrefillTargetGroups + tiles * kvh - 1) / (tiles * kvh),
                                            scratch_.size() / split_bytes});
    n_splits = std::max<uint32_t>(n_splits, 1);
    uint32_t split_len = (keys + n_splits - 1) / n_splits;
    split_len = (split_len + 63) / 64 * 64;  // whole 64-key tiles (both kernels' key tile divides 64)
    n_splits = (keys + split_len - 1) / split_len;
    PrefillPush push{static_cast<uint32_t>(sh.block_size), kvh, c.n_heads, c.start_pos, c.n_tokens, c.scale, group,
                     n_splits, split_len};
    vk::BufferRange bufs[5] = {pool, block_table, q, out, scratch_};
    const vk::Pipeline* pipe = coop ? &prefill_coopmat_ : &prefill_tiled_;
    if (cm2) {
      auto m = prefill_cm2_pipeline();
      if (!m.ok()) return m.status();
      pipe = *m;
    }
    TROVE_RETURN_IF_ERROR(s.dispatch(*pipe, bufs, &push, sizeof(push), tiles, kvh, n_splits));
    return combine(s, kPrefillDim, c, n_splits, out);
  }
  if (path == AttentionPath::kPrefillCpu) {
    if (!prefill_cpu_usable(c)) {
      return Status::InvalidArgument(fmt::format(
          "attention: the prefill CPU path needs head_dim a multiple of 16 from 16 to 256 (got {}); leave "
          "AttentionCall::path at kAuto", sh.head_dim));
    }
    // Queries per invocation: kH heads (2 when G is even, else 1) x kT tokens, kCpuQueries in all:
    // each K/V row loaded serves them all, but the state is unrolled code (compile time, docs/kernels.md).
    const uint32_t group = c.n_heads / static_cast<uint32_t>(sh.n_kv_heads), d = static_cast<uint32_t>(sh.head_dim);
    const uint32_t heads = group % 2 == 0 ? 2 : 1, tokens = std::max<uint32_t>(1, kCpuQueries / heads);
    const uint32_t groups_x = (c.n_tokens + cpu_lanes_ * tokens - 1) / (cpu_lanes_ * tokens);
    auto pipe = prefill_cpu_pipeline(d, heads, tokens);
    if (!pipe.ok()) return pipe.status();
    PrefillPush push{static_cast<uint32_t>(sh.block_size), static_cast<uint32_t>(sh.n_kv_heads), c.n_heads, c.start_pos,
                     c.n_tokens, c.scale, group, 1, 0};
    vk::BufferRange bufs[5] = {pool, block_table, q, out, scratch_};
    return s.dispatch(**pipe, bufs, &push, sizeof(push), groups_x, c.n_heads / heads);
  }
  if (path == AttentionPath::kDecodeV2) {
    if (!decode_v2_usable(c)) {
      return Status::InvalidArgument(fmt::format(
          "attention: the decode v2 path needs subgroup shuffles (this device {}), n_heads / n_kv_heads in 1, 2, 4, "
          "8, 16 and head_dim a power of two from 8 to 256 with group x head_dim / {} <= 128 (got {} / {}, "
          "head_dim {}); leave AttentionCall::path at kAuto", has_shuffle_ ? "has them" : "has none",
          sh.head_dim >= 8 ? decode_v2_lanes(static_cast<uint32_t>(sh.head_dim)) : 1, c.n_heads, sh.n_kv_heads, sh.head_dim));
    }
    return record_decode_v2(s, c, pool, block_table, q, out, positions);
  }
  if (path == AttentionPath::kDecode) {
    if (!decode_usable(c)) {
      return Status::InvalidArgument(fmt::format(
          "attention: the decode path needs n_heads / n_kv_heads in 1, 2, 4, 8, 16 and head_dim a power of two "
          "from 8 to 256 with group x head_dim <= {} (got {} / {}, head_dim {}); leave AttentionCall::path at kAuto",
          kDecodeScores, c.n_heads, sh.n_kv_heads, sh.head_dim));
    }
    const uint32_t group = c.n_heads / static_cast<uint32_t>(sh.n_kv_heads), d = static_cast<uint32_t>(sh.head_dim);
    const uint32_t kvh = static_cast<uint32_t>(sh.n_kv_heads), keys = c.start_pos + c.n_tokens;
    const uint32_t max_len = kDecodeScores / group / kDecodeMinSplitKeys * kDecodeMinSplitKeys;
    const uint32_t want = std::max<uint32_t>(1, (kDecodeTargetGroups + kvh * c.n_tokens - 1) / (kvh * c.n_tokens));
    uint32_t split_len = (keys + want - 1) / want;
    split_len = std::clamp<uint32_t>((split_len + kDecodeMinSplitKeys - 1) / kDecodeMinSplitKeys * kDecodeMinSplitKeys,
                                     kDecodeMinSplitKeys, max_len);
    const uint32_t n_splits = (keys + split_len - 1) / split_len;
    const uint64_t part_bytes = uint64_t{c.n_tokens} * c.n_heads * n_splits * (d + 2) * 4;
    if (n_splits > 65535 || (n_splits > 1 && part_bytes > scratch_.size())) {
      return Status::InvalidArgument(fmt::format("attention: {} tokens over {} keys need {} key slices, more than the "
                                                 "decode path's scratch holds; record fewer tokens per call", c.n_tokens,
                                                 keys, n_splits));
    }
    auto pipe = decode_pipeline(group, d, from_buffer);
    if (!pipe.ok()) return pipe.status();
    Push push{static_cast<uint32_t>(sh.block_size), kvh, d, c.n_heads, from_buffer ? positions.index : c.start_pos,
              c.n_tokens, c.scale, n_splits, split_len};
    vk::BufferRange bufs[6] = {pool, block_table, q, out, scratch_, from_buffer ? positions.buffer : vk::BufferRange(scratch_)};
    TROVE_RETURN_IF_ERROR(s.dispatch(**pipe, bufs, &push, sizeof(push), n_splits, kvh, c.n_tokens));
    return combine(s, d, c, n_splits, out);
  }
  // Split-K for short queries over a long KV: slices of >= 256 keys (multiples of the 64-key tile).
  const uint32_t keys = c.start_pos + c.n_tokens;
  uint32_t n_splits = 1, split_len = (keys + 63) / 64 * 64;
  if (c.n_tokens <= kMaxSplitTokens && c.n_heads <= kMaxSplitHeads && keys > 512) {
    split_len = std::max<uint32_t>(256, ((keys + kMaxSplits - 1) / kMaxSplits + 63) / 64 * 64);
    n_splits = (keys + split_len - 1) / split_len;
  }
  Push push{static_cast<uint32_t>(sh.block_size), static_cast<uint32_t>(sh.n_kv_heads),
            static_cast<uint32_t>(sh.head_dim), c.n_heads, c.start_pos, c.n_tokens, c.scale, n_splits, split_len};
  vk::BufferRange bufs[5] = {pool, block_table, q, out, scratch_};
  TROVE_RETURN_IF_ERROR(s.dispatch(pipeline_, bufs, &push, sizeof(push), c.n_heads, c.n_tokens, n_splits));
  return combine(s, static_cast<uint32_t>(sh.head_dim), c, n_splits, out);
}

std::optional<uint64_t> PagedAttention::replay_key(const AttentionCall& c) const {
  const AttentionPath path = c.path == AttentionPath::kAuto ? choose(c) : c.path;
  if (path != AttentionPath::kDecode && path != AttentionPath::kDecodeV2) return std::nullopt;
  uint64_t h = 0xcbf29ce484222325ull;
  auto mix = [&h](uint64_t v) { h = (h ^ v) * 0x100000001b3ull; };
  mix(static_cast<uint64_t>(path));
  mix(c.n_tokens);
  const auto& sh = c.shape;
  const uint32_t kvh = static_cast<uint32_t>(sh.n_kv_heads);
  if (path == AttentionPath::kDecode) {  // the split rule of record()'s kDecode branch
    const uint32_t group = c.n_heads / kvh, keys = c.start_pos + c.n_tokens;
    const uint32_t max_len = kDecodeScores / group / kDecodeMinSplitKeys * kDecodeMinSplitKeys;
    const uint32_t want = std::max<uint32_t>(1, (kDecodeTargetGroups + kvh * c.n_tokens - 1) / (kvh * c.n_tokens));
    uint32_t split_len = (keys + want - 1) / want;
    split_len = std::clamp<uint32_t>((split_len + kDecodeMinSplitKeys - 1) / kDecodeMinSplitKeys * kDecodeMinSplitKeys,
                                     kDecodeMinSplitKeys, max_len);
    mix(split_len);
    mix((keys + split_len - 1) / split_len);
    return h;
  }
  for (uint32_t t = 0; t < c.n_tokens; ++t) {  // record_decode_v2's slice length, slices and form per token
    const uint32_t keys = c.start_pos + t + 1;
    const uint32_t len = decode_v2_fixed_keys_ ? decode_v2_split_keys(sh, decode_v2_fixed_keys_) : decode_v2_slice_keys(sh, keys);
    const uint32_t n_splits = (keys + len - 1) / len;
    mix(len);
    mix(n_splits);
    mix(decode_v2_pipelined(n_splits * kvh) ? 1 : 0);
  }
  return h;
}

uint32_t PagedAttention::decode_v2_head_groups(uint32_t group) const {
  // auto: at most 4 query heads a workgroup (H100, 2026-12-05: the 30B-A3B's G 8 in 2 groups +11% tg128,
  // +6% tg64 at 16384; the 8B's G 4 in 2 groups −9% at 16384). At least 2 heads a workgroup where the
  // KV head has 2+: NVIDIA's compiler gave a one-head workgroup other bits (G 4 in 4 groups, H100).
  const uint32_t want = decode_v2_head_groups_ != 0 ? decode_v2_head_groups_ : std::max<uint32_t>(1, group / 4);
  return std::clamp<uint32_t>(want, 1, std::max<uint32_t>(1, group / 2));
}

uint32_t PagedAttention::decode_v2_split_keys(const kernels::ref::PagedKvShape& sh, uint32_t min_keys) {
  const uint64_t pool_tokens = uint64_t(std::max<int64_t>(sh.n_blocks, 0)) * uint64_t(std::max<int64_t>(sh.block_size, 0));
  const uint64_t need = (pool_tokens + kDecodeV2MaxSplits - 1) / kDecodeV2MaxSplits;  // slices of the whole pool
  return static_cast<uint32_t>(std::max<uint64_t>(min_keys, (need + 31) / 32 * 32));
}

uint32_t PagedAttention::decode_v2_slice_keys(const kernels::ref::PagedKvShape& sh, uint32_t keys, uint32_t min_keys) {
  uint32_t len = decode_v2_split_keys(sh, min_keys);
  // Powers of two from the floor up while the token's keys make more than kDecodeV2MostSlices slices.
  while (uint64_t{len} * kDecodeV2MostSlices < keys && len < (1u << 30)) len *= 2;
  return len;
}

uint32_t PagedAttention::decode_v2_token_slice(const kernels::ref::PagedKvShape& sh, uint32_t keys) const {
  return decode_v2_fixed_keys_ ? decode_v2_split_keys(sh, decode_v2_fixed_keys_) : decode_v2_slice_keys(sh, keys);
}

bool PagedAttention::decode_v2_token_pipelined(const kernels::ref::PagedKvShape& sh, uint32_t keys) const {
  const uint32_t len = decode_v2_token_slice(sh, keys);
  return decode_v2_pipelined((keys + len - 1) / len * static_cast<uint32_t>(sh.n_kv_heads));
}

Result<const vk::Pipeline*> PagedAttention::decode_v2_pipeline(uint32_t group, uint32_t d, bool pipe, bool from_buffer,
                                                              bool rows, bool fused) const {
  const uint32_t lanes = decode_v2_lanes(d), unroll = group * d / lanes <= 32 ? 4 : 2;
  // Head groups (TROVE_ATTENTION_HEAD_GROUPS): kU stays the whole group's (above), so a head's
  // arithmetic — and its bits — are those of one workgroup per KV head.
  const uint32_t hg = decode_v2_head_groups(group), wg_heads = group / hg;
  // TROVE_ATTENTION_MERGE=parallel: one copy of the sums per subgroup where shared memory holds them
  // (the same bits either way, so the serial merge is a safe fallback).
  uint32_t merge_sg = 0;
  if (decode_v2_merge_parallel_ && subgroup_size_ > 0) {
    const uint32_t sgs = 128 / std::min<uint32_t>(subgroup_size_, 128);
    const uint64_t bytes = uint64_t{128 / lanes} * wg_heads * 8 + uint64_t{sgs} * wg_heads * d * 4 + wg_heads * 8;
    if (bytes <= decode_->dev->features().max_compute_shared_memory) merge_sg = sgs;
  }
  // Both kPipe forms are built together (auto), so the first step past the bound does not compile one
  // mid-decode (a pipeline build cost a 64-token decode at depth 16384 40% of its speed on the H200).
  const uint32_t fb = from_buffer ? 1u : 0u, rw = rows ? 1u : 0u, fu = fused ? 1u : 0u;
  std::lock_guard<std::mutex> lock(decode_->mu);
  const bool both = decode_v2_pipeline_ == Pipelining::kAuto;
  for (uint32_t form : {0u, 1u}) {
    const std::array<uint32_t, 7> key{group, d, form, fb, hg, rw, fu};
    if ((!both && form != (pipe ? 1u : 0u)) || decode_->v2.count(key)) continue;
    auto p = decode_->dev->pipeline(
        {"attention_decode_v2", {wg_heads, d, lanes, unroll, form, fb, hg, merge_sg, rw, fu}, sizeof(PushV2), 7, 128});
    if (!p.ok()) return p.status();
    decode_->v2.emplace(key, std::move(*p));
  }
  return &decode_->v2.at({group, d, pipe ? 1u : 0u, fb, hg, rw, fu});
}

Status PagedAttention::record_decode_v2(vk::CommandStream& s, const AttentionCall& c, vk::BufferRange pool,
                                        vk::BufferRange block_table, vk::BufferRange q, vk::BufferRange out,
                                        const AttentionPositions& positions) const {
  const auto& sh = c.shape;
  const uint32_t group = c.n_heads / static_cast<uint32_t>(sh.n_kv_heads), d = static_cast<uint32_t>(sh.head_dim);
  const uint32_t kvh = static_cast<uint32_t>(sh.n_kv_heads), hg = decode_v2_head_groups(group);
  // Key slices of a length that is a function of the pool's size and of the token's own key count
  // alone (decode_v2_slice_keys; TROVE_ATTENTION_SPLIT_KEYS fixes it): slice j is keys [j·L, (j+1)·L)
  // whatever the step, so a token's partial sums, and the combine's order over them, do not depend on
  // how many tokens share its step or where the step starts. A verification step of k tokens gives each
  // token the numbers of a one-token step (greedy speculative decoding is exact; a slice count chosen
  // from the step's tokens made 6- and 7-token steps differ on the H200). Tokens of a step whose
  // lengths differ (the step crosses a power-of-two boundary) run in separate passes.
  // K/V loads a round ahead (kPipe) where the token's grid is small (latency-bound), by the token's own
  // key count, so a token takes the same kernel alone and in a step.
  auto slice_len = [&](uint32_t t) { return decode_v2_token_slice(sh, c.start_pos + t + 1); };
  auto pipelined = [&](uint32_t t) { return decode_v2_token_pipelined(sh, c.start_pos + t + 1); };
  const bool from_buffer = positions.buffer.buffer != VK_NULL_HANDLE;
  // Groups of tokens sharing a slice length and kPipe (one, or two where the step crosses a doubling
  // or the pipelining bound), all checked and their pipelines built before anything is recorded.
  struct Group {
    uint32_t t0, t1, split_len, n_splits, per_pass;
    const vk::Pipeline* pipeline;
    bool fused;  // the slices merged by the call's own last workgroups (TROVE_ATTENTION_COMBINE=fused)
  };
  std::vector<Group> groups;
  for (uint32_t g0 = 0; g0 < c.n_tokens;) {
    const uint32_t split_len = slice_len(g0);
    const bool pipe = pipelined(g0);
    uint32_t g1 = g0 + 1;
    while (g1 < c.n_tokens && slice_len(g1) == split_len && pipelined(g1) == pipe) ++g1;
    const uint32_t keys = c.start_pos + g1;  // the group's last token has the most keys
    const uint32_t n_splits = (keys + split_len - 1) / split_len;
    if (n_splits > kDecodeV2MaxSplits) {
      return Status::InvalidArgument(fmt::format("attention: {} keys need {} slices of {} keys, more than the combine's {}",
                                                 keys, n_splits, split_len, kDecodeV2MaxSplits));
    }
    // Tokens per pass: as many as the scratch holds the partials of (all of them, but for very long
    // pools with many heads).
    const uint64_t row_bytes = uint64_t{c.n_heads} * n_splits * (d + 2) * 4;
    const uint32_t per_pass =
        n_splits == 1 ? g1 - g0 : static_cast<uint32_t>(std::min<uint64_t>(g1 - g0, scratch_.size() / row_bytes));
    if (per_pass == 0) {
      return Status::InvalidArgument(fmt::format("attention: one token over {} keys needs {} key slices of {} keys, more "
                                                 "than the decode v2 scratch ({} bytes) holds",
                                                 keys, n_splits, split_len, scratch_.size()));
    }
    const bool fused = decode_v2_fused_ && n_splits > 1 && uint64_t{per_pass} * kvh * hg <= kCombineCounters;
    auto pipe_of_group = decode_v2_pipeline(group, d, pipe, from_buffer, false, fused);
    if (!pipe_of_group.ok()) return pipe_of_group.status();
    groups.push_back({g0, g1, split_len, n_splits, per_pass, *pipe_of_group, fused});
    g0 = g1;
  }
  const uint64_t tok_bytes = uint64_t{c.n_heads} * d * 4;  // one token's rows of q and out
  for (const Group& g : groups) {
    for (uint32_t t0 = g.t0; t0 < g.t1; t0 += g.per_pass) {
      // A pass over tokens t0 .. t0 + n: their q and out rows, and the causal window from start_pos + t0.
      const uint32_t n = std::min(g.per_pass, g.t1 - t0);
      vk::BufferRange qp = q, op = out;
      qp.offset += t0 * tok_bytes;
      qp.size = n * tok_bytes;
      op.offset += t0 * tok_bytes;
      op.size = n * tok_bytes;
      PushV2 push{{static_cast<uint32_t>(sh.block_size), kvh, d, c.n_heads, (from_buffer ? positions.index : c.start_pos) + t0,
                   n, c.scale, g.n_splits, g.split_len}, 0, 0};
      vk::BufferRange bufs[7] = {pool, block_table, qp, op, scratch_, from_buffer ? positions.buffer : vk::BufferRange(scratch_),
                                 combine_counts_};
      TROVE_RETURN_IF_ERROR(s.dispatch(*g.pipeline, bufs, &push, sizeof(push), g.n_splits, kvh * hg, n));
      if (g.n_splits == 1) continue;
      s.barrier();  // fused: the next pass (or record) reuses the scratch and the counters
      if (g.fused) continue;
      CombinePush cp{d, c.n_heads, g.n_splits};
      vk::BufferRange cb[2] = {scratch_, op};
      TROVE_RETURN_IF_ERROR(s.dispatch(combine_v2_, cb, &cp, sizeof(cp), c.n_heads, n));
      s.barrier();
    }
  }
  return Status::Ok();
}

Status PagedAttention::record_decode_rows(vk::CommandStream& s, const kernels::ref::PagedKvShape& sh, uint32_t n_heads,
                                          float scale, std::span<const AttentionSeq> seqs, vk::BufferRange pool,
                                          vk::BufferRange tables, vk::BufferRange q, vk::BufferRange out,
                                          const AttentionRows& rows) const {
  if (seqs.empty()) return Status::InvalidArgument("attention: record_decode_rows needs at least one sequence");
  uint32_t n_rows = 0;
  for (size_t i = 0; i < seqs.size(); ++i) {
    const AttentionCall c{sh, n_heads, seqs[i].start_pos, seqs[i].n_tokens, scale, AttentionPath::kDecodeV2};
    if (seqs[i].n_tokens == 0 || seqs[i].first_row != n_rows) {
      return Status::InvalidArgument(fmt::format(
          "attention: record_decode_rows takes sequences of 1+ tokens whose rows follow each other from row 0 "
          "(sequence {} has {} tokens from row {}, where row {} was next)", i, seqs[i].n_tokens, seqs[i].first_row, n_rows));
    }
    if (!decode_v2_usable(c)) {
      return Status::InvalidArgument(fmt::format(
          "attention: record_decode_rows runs decode v2, which this call does not fit (subgroup shuffles: {}; "
          "{} query heads over {} KV heads, head_dim {}); record each sequence with record() instead",
          has_shuffle_ ? "yes" : "no", n_heads, sh.n_kv_heads, sh.head_dim));
    }
    n_rows += seqs[i].n_tokens;
  }
  const uint32_t group = n_heads / static_cast<uint32_t>(sh.n_kv_heads), d = static_cast<uint32_t>(sh.head_dim);
  const uint32_t kvh = static_cast<uint32_t>(sh.n_kv_heads), hg = decode_v2_head_groups(group);
  const uint64_t tok_bytes = uint64_t{n_heads} * d * 4;  // one row of q and out
  const uint64_t pool_bytes = static_cast<uint64_t>(sh.elements()) * 2;
  if (pool.size < pool_bytes || q.size < n_rows * tok_bytes || out.size < n_rows * tok_bytes ||
      rows.buffer.size < (uint64_t{std::max(rows.positions_at, rows.tables_at)} + n_rows) * 4) {
    return Status::InvalidArgument(fmt::format(
        "attention: buffers too small for {} rows: KV pool {} (need {}), q {} out {} (need {}), rows {} (need entries "
        "{}.. and {}.. for {} rows)", n_rows, pool.size, pool_bytes, q.size, out.size, n_rows * tok_bytes,
        rows.buffer.size, rows.positions_at, rows.tables_at, n_rows));
  }
  // Runs of rows sharing a slice length and kPipe (by each token's own key count), split in passes where
  // the scratch cannot hold a run's partials; every pipeline built before anything is recorded.
  struct Pass {
    uint32_t r0, n, split_len, n_splits;
    const vk::Pipeline* pipeline;
    bool fused;  // merged by its own last workgroups (TROVE_ATTENTION_COMBINE=fused; counter rows = the call's rows)
  };
  std::vector<Pass> passes;
  std::vector<uint32_t> keys_of(n_rows);
  for (const AttentionSeq& q_seq : seqs) {
    for (uint32_t t = 0; t < q_seq.n_tokens; ++t) keys_of[q_seq.first_row + t] = q_seq.start_pos + t + 1;
  }
  for (uint32_t r0 = 0; r0 < n_rows;) {
    const uint32_t len = decode_v2_token_slice(sh, keys_of[r0]);
    const bool pipe = decode_v2_token_pipelined(sh, keys_of[r0]);
    uint32_t r1 = r0 + 1, most = keys_of[r0];
    while (r1 < n_rows && decode_v2_token_slice(sh, keys_of[r1]) == len && decode_v2_token_pipelined(sh, keys_of[r1]) == pipe) {
      most = std::max(most, keys_of[r1++]);
    }
    const uint32_t n_splits = (most + len - 1) / len;  // the run's most keys; other rows' last slices are empty
    if (n_splits > kDecodeV2MaxSplits) {
      return Status::InvalidArgument(fmt::format("attention: {} keys need {} slices of {} keys, more than the combine's {}",
                                                 most, n_splits, len, kDecodeV2MaxSplits));
    }
    const uint64_t row_bytes = uint64_t{n_heads} * n_splits * (d + 2) * 4;
    const uint32_t per_pass = n_splits == 1 ? r1 - r0
                                            : static_cast<uint32_t>(std::min<uint64_t>(r1 - r0, scratch_.size() / row_bytes));
    if (per_pass == 0) {
      return Status::InvalidArgument(fmt::format("attention: one token over {} keys needs {} key slices of {} keys, more "
                                                 "than the decode v2 scratch ({} bytes) holds", most, n_splits, len,
                                                 scratch_.size()));
    }
    const bool fused = decode_v2_fused_ && n_splits > 1 && uint64_t{n_rows} * kvh * hg <= kCombineCounters;
    auto pipeline = decode_v2_pipeline(group, d, pipe, false, true, fused);
    if (!pipeline.ok()) return pipeline.status();
    for (uint32_t p0 = r0; p0 < r1; p0 += per_pass) {
      passes.push_back({p0, std::min(per_pass, r1 - p0), len, n_splits, *pipeline, fused});
    }
    r0 = r1;
  }
  // The passes' slices, each pass with several slices writing its partials to a scratch range of its
  // own; when the scratch is full (or at the end) one barrier, their combines, one barrier (fused passes:
  // no combine; the barriers order the scratch's reuse and the output's readers).
  struct Pending {
    vk::BufferRange part, out;
    uint32_t n, n_splits;
    bool fused;
  };
  std::vector<Pending> pending;
  uint64_t used = 0;
  auto flush = [&]() -> Status {
    if (pending.empty()) return Status::Ok();
    s.barrier();
    for (const Pending& p : pending) {
      if (p.fused) continue;
      CombinePush cp{d, n_heads, p.n_splits};
      vk::BufferRange cb[2] = {p.part, p.out};
      TROVE_RETURN_IF_ERROR(s.dispatch(combine_v2_, cb, &cp, sizeof(cp), n_heads, p.n));
    }
    s.barrier();
    pending.clear();
    used = 0;
    return Status::Ok();
  };
  for (const Pass& p : passes) {
    vk::BufferRange qp = q, op = out, part = scratch_;
    qp.offset += p.r0 * tok_bytes;
    qp.size = p.n * tok_bytes;
    op.offset += p.r0 * tok_bytes;
    op.size = p.n * tok_bytes;
    if (p.n_splits > 1) {
      const uint64_t bytes = uint64_t{p.n} * n_heads * p.n_splits * (d + 2) * 4;
      if (used + bytes > scratch_.size()) TROVE_RETURN_IF_ERROR(flush());
      part.offset += used;
      part.size = bytes;
      used = (used + bytes + kScratchAlign - 1) / kScratchAlign * kScratchAlign;  // the next range's offset, aligned
    }
    PushV2 push{{static_cast<uint32_t>(sh.block_size), kvh, d, n_heads, rows.positions_at + p.r0, p.n, scale, p.n_splits,
                 p.split_len}, rows.tables_at + p.r0, p.r0};
    vk::BufferRange bufs[7] = {pool, tables, qp, op, part, rows.buffer, combine_counts_};
    TROVE_RETURN_IF_ERROR(s.dispatch(*p.pipeline, bufs, &push, sizeof(push), p.n_splits, kvh * hg, p.n));
    if (p.n_splits > 1) pending.push_back({part, op, p.n, p.n_splits, p.fused});
  }
  return flush();
}

}  // namespace trove::ops
