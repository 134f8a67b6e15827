#include "kernels/ops/matmul.h"

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <map>
#include <mutex>
#include <string>

#include <fmt/format.h>

#include "common/env.h"

namespace trove::ops {
namespace {
// matmul_tiled.comp's push constants.
struct Push { uint32_t rows, cols, batch, type, row_bytes, tpr, y_stride, rpt; };
// The matrix-unit and grouped shaders' push constants.
// k_splits and split_stride: split K (matmul_coopmat_tile.glsl, matmul_cpu.comp; 0 = none).
struct TilePush {
  uint32_t rows, cols, batch, row_bytes, y_stride, n_expert, expert_bytes, x_rows, k_splits, split_stride;
};
// matmul_split_sum.comp's push constants.
struct SplitSumPush { uint32_t rows, batch, y_stride, splits, split_stride, row_groups; };
constexpr uint32_t kMaxGroups = 65535;  // minimum maxComputeWorkGroupCount Vulkan guarantees
constexpr uint32_t kBatchCols = 8;      // batch columns per workgroup (kCols in matmul_tiled.comp)
constexpr uint32_t kGroupedSlots = 4;   // slots per workgroup in matmul_grouped_tiled.comp
// matmul_cpu.comp's tile: rows per invocation, batch columns per workgroup (measured, docs/kernels.md).
constexpr uint32_t kCpuRows = 4, kCpuCols = 16;

// Invocations per row: the largest power of two <= min(64, chunks / 4), so that each invocation
// dequantizes at least 4 chunks of 32 values between reductions (short rows: more rows per group).
uint32_t threads_per_row(uint32_t cols) {
  uint32_t tpr = 1;
  while (tpr < 64 && tpr * 2 <= cols / 128) tpr *= 2;
  return tpr;
}

// A whole-number knob from the environment (common/env.h), refused as "NAME='value' is not <what>".
template <class T>
Status read_count(const char* name, unsigned long lo, unsigned long hi, const std::string& what, T& out) {
  return env_count(name, lo, hi, out,
                   [&](const std::string& v) { return fmt::format("{}='{}' is not {}", name, v, what); });
}

uint32_t div_up(uint32_t a, uint32_t b) { return (a + b - 1) / b; }

// TROVE_GROUPED_KHR's mode ("1", "2" or "3": grouped calls on the KHR kernel), else empty.
std::string_view grouped_khr_mode() {
  const char* v = std::getenv("TROVE_GROUPED_KHR");
  const std::string_view m = v ? v : "";
  return m == "1" || m == "2" || m == "3" ? m : std::string_view();
}

// VkComponentTypeKHR FLOAT16 = 0, FLOAT32 = 1; VkScopeKHR WORKGROUP = 2, SUBGROUP = 3.
bool khr_available(const vk::Device& dev, std::string* why) {
  const auto& f = dev.features();
  auto no = [&](std::string s) {
    if (why) *why = std::move(s);
    return false;
  };
  if (!vk::find_shader("matmul_coopmat").words) return no("this build has no cooperative-matrix shaders (glslang < 14)");
  if (f.coopmat_shapes.empty()) return no("the device has no usable VK_KHR_cooperative_matrix");
  if (f.subgroup_size != 32) return no(fmt::format("the subgroup size is {}, the shader needs 32", f.subgroup_size));
  for (const auto& c : f.coopmat_shapes) {
    if (c.m == 16 && c.n == 16 && c.k == 16 && c.a == 0 && c.b == 0 && c.c == 1 && c.result == 1 && c.scope == 3) return true;
  }
  return no("the device offers no 16x16x16 f16 x f16 -> f32 subgroup matrix shape");
}

// Whether the KHR kernel can take f16 accumulators: a 16×16×16 f16 × f16 → f16 subgroup shape.
bool khr_f16_acc(const vk::Device& dev) {
  for (const auto& c : dev.features().coopmat_shapes) {
    if (c.m == 16 && c.n == 16 && c.k == 16 && c.a == 0 && c.b == 0 && c.c == 0 && c.result == 0 && c.scope == 3) return true;
  }
  return false;
}

// The workgroup-scope shape entry for 256 invocations of f16 × f16 → f32, if any.
const vk::DeviceFeatures::FlexShape* cm2_shape(const vk::DeviceFeatures& f) {
  for (const auto& s : f.coopmat2_flexible) {
    if (s.scope == 2 && s.a == 0 && s.b == 0 && s.c == 1 && s.result == 1 && s.invocations == 256 && s.m_granularity &&
        s.n_granularity && s.k_granularity && 64 % s.m_granularity == 0 && 64 % s.n_granularity == 0 &&
        32 % s.k_granularity == 0) {
      return &s;
    }
  }
  return nullptr;
}

bool cm2_available(const vk::Device& dev, std::string* why) {
  const auto& f = dev.features();
  auto no = [&](std::string s) {
    if (why) *why = std::move(s);
    return false;
  };
  if (!vk::find_shader("matmul_cm2").words) return no("this build has no NV cooperative matrix 2 shaders (glslang < 15)");
  if (!f.cooperative_matrix2) {
    return no(f.cooperative_matrix2_offered
                  ? "VK_NV_cooperative_matrix2 is offered but was not enabled (validation on, TROVE_VK_NO_CM2=1, "
                    "Vulkan < 1.3, no buffer device address or a missing feature)"
                  : "the device does not offer VK_NV_cooperative_matrix2");
  }
  if (!cm2_shape(f)) return no("VK_NV_cooperative_matrix2 offers no 256-invocation f16 x f16 -> f32 workgroup shape");
  if (f.coopmat2_max_dimension < 128) return no("VK_NV_cooperative_matrix2's flexible dimensions stop below 128");
  if (f.coopmat2_reserved_shared + 8 * 64 * 8 > f.max_compute_shared_memory) {
    return no("too little shared memory beside what the driver reserves for workgroup matrices");
  }
  return true;
}

struct KhrTile { uint32_t bm, bn, wg, sgm; };
constexpr KhrTile kKhrSmall{64, 64, 128, 2}, kKhrLarge{128, 128, 256, 2};
constexpr uint32_t kKhrLargeShared = 49152;  // (128 + 128) * 40 halves * 2 buffers + 8 KiB staging

struct Cm2Tile { uint32_t bm, bn; };
constexpr Cm2Tile kCm2Small{64, 64}, kCm2Medium{128, 128};  // large: Matmul::cm2_large_bm_ × cm2_large_bn_ (128 × 256)
constexpr uint64_t kCm2TilesToFill = 132;  // cm2 tiles a call needs for the larger tile (H100/H200: one per SM)

}  // namespace

std::string_view matmul_path_name(MatmulPath p) {
  switch (p) {
    case MatmulPath::kAuto: return "auto";
    case MatmulPath::kTiled: return "tiled";
    case MatmulPath::kKhr: return "khr";
    case MatmulPath::kCm2: return "cm2";
    case MatmulPath::kCpu: return "cpu";
  }
  return "?";
}

struct Matmul::Cache {
  std::mutex mu;
  std::map<std::string, std::unique_ptr<vk::Pipeline>> pipelines;
  // Split K: the partial sums' scratch (two halves of kSplitScratchHalf bytes, made at the first split
  // call), the half the next split call takes, and the pipeline that adds the partials.
  std::optional<vk::Buffer> split_scratch;
  uint32_t split_half = 0;
  std::optional<vk::Pipeline> split_sum;
};

bool Matmul::available(const vk::Device& dev, MatmulPath path, std::string* why) {
  switch (path) {
    case MatmulPath::kAuto:
    case MatmulPath::kTiled:
    case MatmulPath::kCpu: return true;
    case MatmulPath::kKhr: return khr_available(dev, why);
    case MatmulPath::kCm2: return cm2_available(dev, why);
  }
  return false;
}

Result<Matmul> Matmul::create(vk::Device& dev, MatmulPath path) {
  if (path == MatmulPath::kAuto) {
    if (const char* env = std::getenv("TROVE_MATMUL"); env && *env && std::string_view(env) != "auto") {
      const std::string_view v(env);
      if (v == "cm2") path = MatmulPath::kCm2;
      else if (v == "khr") path = MatmulPath::kKhr;
      else if (v == "tiled") path = MatmulPath::kTiled;
      else if (v == "cpu") path = MatmulPath::kCpu;
      else return Status::InvalidArgument(fmt::format("TROVE_MATMUL='{}' is not a matmul path; use cm2, khr, tiled or cpu (or unset it)", v));
    } else if (const char* off = std::getenv("TROVE_NO_COOPMAT"); off && std::string_view(off) == "1" && !dev.features().is_cpu) {
      path = MatmulPath::kTiled;
    }
  }
  const bool automatic = path == MatmulPath::kAuto;
  if (path == MatmulPath::kAuto) {
    // KHR first: on the H200 (2026-12-02, bench_kernels and bench_engine in one call) the KHR GEMM ran
    // the 8B's prefill at 4,978 tok/s (pp512) and the cm2 GEMM at 3,255; at 512 tokens it still does
    // (2026-12-03: 7516 against 6477 pp512, cm2 variant 1). From kCm2AutoMinBatch tokens the automatic
    // path hands calls whose cm2 tiles fill the SMs to cm2 (cm2_large_ below, auto_cm2_tile).
    // A CPU device (lavapipe) takes the CPU form (matmul.h; measured in docs/kernels.md).
    path = khr_available(dev, nullptr) ? MatmulPath::kKhr : dev.features().is_cpu ? MatmulPath::kCpu : MatmulPath::kTiled;
  }
  std::string why;
  if (!available(dev, path, &why)) {
    return Status::Unsupported(fmt::format("matmul path {} was asked for (TROVE_MATMUL or the caller) but cannot run on "
                                           "'{}': {}; use another path (cm2, khr, tiled) or unset TROVE_MATMUL",
                                           matmul_path_name(path), dev.features().name, why));
  }
  Matmul op;
  op.dev_ = &dev;
  op.path_ = path;
  op.cache_ = std::make_shared<Cache>();
  op.cm2_grouped_ = path == MatmulPath::kKhr && cm2_available(dev, nullptr);
  // The automatic path on a device with both: batches of kCm2LargeBatch+ whose cm2 tile is the large one
  // (128 × 256, enough tiles for every SM) run the cm2 kernel (then variant 1). H200, 8B shapes at 2048
  // tokens (2026-12-03, TFLOP/s, KHR prefetch 2 → cm2 v1 large): attn_q/o 122 → 149, ffn_gate/up 126 →
  // 147, ffn_down (Q6_K) 104 → 139; at 512 tokens KHR won (gate/up 123.5 against 111.9). bench_engine
  // in 2048-token steps: pp4096 7366 → 8547, prefill to 16384 6239 → 7081 tok/s. Since 2026-12-05 also
  // from 512 tokens (medium tiles where the large do not fill), variant 2: H100, 8B pp512 7664 → 9486.
  op.cm2_large_ = automatic && op.cm2_grouped_;
  if (const char* v = std::getenv("TROVE_CM2_VARIANT"); v && *v) {
    if (std::string_view(v) != "0" && std::string_view(v) != "1" && std::string_view(v) != "2") {
      return Status::InvalidArgument(
          fmt::format("TROVE_CM2_VARIANT='{}' is not a cm2 variant; use 0, 1 or 2 (or unset it)", v));
    }
    op.force_cm2_variant(static_cast<uint32_t>(v[0] - '0'));
  }
  if (const char* v = std::getenv("TROVE_MATMUL_ACC"); v && *v) {
    if (std::string_view(v) != "f16" && std::string_view(v) != "f32") {
      return Status::InvalidArgument(fmt::format(
          "TROVE_MATMUL_ACC='{}' is not an accumulator type; use f16 (half the registers, f16 sums) or f32 (the default)", v));
    }
    op.acc_f16_ = std::string_view(v) == "f16";
  }
  if (op.acc_f16_ && path == MatmulPath::kKhr && !khr_f16_acc(dev)) {
    return Status::Unsupported(fmt::format("TROVE_MATMUL_ACC=f16: '{}' offers no 16x16x16 f16 x f16 -> f16 subgroup matrix "
                                           "shape for the KHR kernel; unset it", dev.features().name));
  }
  TROVE_RETURN_IF_ERROR(read_count(
      "TROVE_MATMUL_SPLIT_K", 1, kMaxSplits,
      fmt::format("a split count; give the K ranges (1..{}) every dense KHR or CPU matmul of 256+ columns "
                  "sums apart (1: never split; unset: the automatic rule)", kMaxSplits),
      op.split_forced_));
  TROVE_RETURN_IF_ERROR(read_count(
      "TROVE_MATMUL_SPLIT_WGS", 1, 1ul << 20,
      fmt::format("a workgroup count; give how many workgroups a dense KHR call should have before it is not "
                  "split (unset: {}; TROVE_MATMUL_SPLIT_K=1 splits none)",
                  kSplitTargetWorkgroups),
      op.split_target_wgs_));
  TROVE_RETURN_IF_ERROR(read_count("TROVE_CM2_MIN_TILES", 1, 100000,
                                   "a tile count; give the large cm2 tiles (128 x 256) a dense call of 2048+ "
                                   "columns needs to run on cm2 (default 128)",
                                   op.cm2_min_tiles_));
  TROVE_RETURN_IF_ERROR(read_count(
      "TROVE_CM2_SMALL_MAX_ROWS", 0, 1024,
      fmt::format("a row count; give the most rows (0..1024) of a dense call of {}-{} columns that the "
                  "automatic path runs on the small cm2 tile (default {}; 0: none)",
                  kCm2AutoMinBatch, 2 * kCm2AutoMinBatch - 1, kCm2SmallMaxRows),
      op.cm2_small_max_rows_));
  TROVE_RETURN_IF_ERROR(read_count("TROVE_CM2_MIN_MEDIUM_TILES", 1, 100000,
                                   "a tile count; give the medium cm2 tiles (128 x 128) a dense call of "
                                   "512-2047 columns needs to run on cm2 (default 64)",
                                   op.cm2_min_medium_tiles_));
  TROVE_RETURN_IF_ERROR(read_count(
      "TROVE_MATRIX_MIN_BATCH", 1, 1ul << 20,
      fmt::format("a column count; give the fewest columns (1 or more) of a call that runs on the matrix "
                  "units (default {}; smaller calls take the tiled kernel)", kCoopmatMinBatch),
      op.matrix_min_batch_));
  TROVE_RETURN_IF_ERROR(read_count(
      "TROVE_CM2_MIN_BATCH", kCoopmatMinBatch, 1ul << 20,
      fmt::format("a column count; give the fewest columns ({} or more) of a dense call that the automatic "
                  "path runs on cm2 (default {})", kCoopmatMinBatch, kCm2AutoMinBatch),
      op.cm2_min_batch_));
  if (const char* v = std::getenv("TROVE_CM2_LARGE"); v && *v) {
    unsigned bm = 0, bn = 0;
    char tail = 0;
    const int n = std::sscanf(v, "%ux%u%c", &bm, &bn, &tail);
    if (n != 2 || (bm != 64 && bm != 128 && bm != 256) || (bn != 64 && bn != 128 && bn != 256)) {
      return Status::InvalidArgument(fmt::format(
          "TROVE_CM2_LARGE='{}' is not a cm2 tile; use BMxBN with BM and BN each 64, 128 or 256 (default 128x256)", v));
    }
    op.force_cm2_large(bm, bn);
  }
  if (const char* v = std::getenv("TROVE_GROUPED_BY_SLOT"); v && *v) {
    if (std::string_view(v) != "0" && std::string_view(v) != "1") {
      return Status::InvalidArgument(fmt::format(
          "TROVE_GROUPED_BY_SLOT='{}' is not a choice; use 1 (the default: cm2 loads slot-ordered x as it "
          "lies) or 0 (it gathers every row through row_ids, for A/B)", v));
    }
    op.by_slot_ = v[0] == '1';
  }
  if (const char* v = std::getenv("TROVE_GROUPED_TILE"); v && *v) {
    unsigned bm = 0, bn = 0, bk = 0;
    char tail = 0;
    const int n = std::sscanf(v, "%ux%ux%u%c", &bm, &bn, &bk, &tail);
    if ((n != 2 && n != 3) || (bm != 64 && bm != 128) || (bn != 32 && bn != 64 && bn != 128) || (n == 3 && bk != 32 && bk != 64)) {
      return Status::InvalidArgument(fmt::format(
          "TROVE_GROUPED_TILE='{}' is not a grouped cm2 tile; use BMxBN or BMxBNxBK with BM 64 or 128, BN 32, 64 or 128 and "
          "BK 32 or 64 (e.g. 128x32 or 128x64x32)", v));
    }
    op.force_grouped_tile(bm, bn, n == 3 ? bk : 0);
  }
  if (const char* v = std::getenv("TROVE_GROUPED_VARIANT"); v && *v) {
    if (std::string_view(v) != "0" && std::string_view(v) != "1" && std::string_view(v) != "2") {
      return Status::InvalidArgument(
          fmt::format("TROVE_GROUPED_VARIANT='{}' is not a cm2 variant; use 0, 1 or 2 (or unset it)", v));
    }
    op.forced_grouped_variant_ = static_cast<uint32_t>(v[0] - '0');
  }
  if (const char* v = std::getenv("TROVE_KHR_LARGE"); v && *v) {
    unsigned wg = 0, sgm = 0;
    char tail = 0;
    const int n = std::sscanf(v, "%ux%u%c", &wg, &sgm, &tail);
    // 128 rows over SGM subgroups and 128 columns over the other WG/32/SGM, each a multiple of 16.
    const bool ok = n == 2 && (wg == 128 || wg == 256) && (sgm == 1 || sgm == 2 || sgm == 4 || sgm == 8) &&
                    sgm <= wg / 32 && wg / 32 / sgm <= 8;
    if (!ok) {
      return Status::InvalidArgument(fmt::format(
          "TROVE_KHR_LARGE='{}' is not a KHR large tile; use WGxSGM with WG 128 or 256 and SGM 1, 2, 4 or 8 "
          "subgroups along the rows, at most WG/32 (e.g. 128x2 or 256x4)", v));
    }
    op.khr_large_wg_ = wg, op.khr_large_sgm_ = sgm;
  }
  if (const char* v = std::getenv("TROVE_KHR_PREFETCH"); v && *v) {
    if (std::string_view(v) != "1" && std::string_view(v) != "2") {
      return Status::InvalidArgument(fmt::format(
          "TROVE_KHR_PREFETCH='{}' is not a prefetch distance of the KHR GEMM; use 1 or 2 (steps between a load and "
          "its store into shared memory), or unset it", v));
    }
    op.khr_prefetch_ = static_cast<uint32_t>(v[0] - '0');
  }
  // Specialization of the tiled shader: [rows per invocation, f16 activations].
  for (uint32_t h = 0; h < 2; ++h) {
    auto p1 = dev.pipeline({"matmul_tiled", {1, h}, sizeof(Push), 3, 64});
    if (!p1.ok()) return p1.status();
    auto p4 = dev.pipeline({"matmul_tiled", {4, h}, sizeof(Push), 3, 64});
    if (!p4.ok()) return p4.status();
    op.tiled_row_[h] = std::move(*p1);
    op.tiled_rows4_[h] = std::move(*p4);
  }
  return op;
}

Result<const vk::Pipeline*> Matmul::pipeline(const char* shader, std::vector<uint32_t> spec, uint32_t bindings,
                                             uint32_t local_size) const {
  std::string key = shader;
  for (uint32_t v : spec) key += fmt::format("/{}", v);
  std::lock_guard<std::mutex> lock(cache_->mu);
  auto it = cache_->pipelines.find(key);
  if (it != cache_->pipelines.end()) return it->second.get();
  auto p = dev_->pipeline({shader, std::move(spec), sizeof(TilePush), bindings, local_size});
  if (!p.ok()) return p.status();
  auto owned = std::make_unique<vk::Pipeline>(std::move(*p));
  const vk::Pipeline* raw = owned.get();
  cache_->pipelines.emplace(std::move(key), std::move(owned));
  return raw;
}

namespace {
// Whether the device holds a cm2 tile: the driver's reserved shared memory plus the tile's scales (8
// sub-blocks × BM rows × vec2), and BN within the largest cooperative-matrix dimension.
bool cm2_fits(const vk::DeviceFeatures& f, Cm2Tile t) {
  return f.coopmat2_reserved_shared + 8 * (t.bm + 2) * 8 <= f.max_compute_shared_memory &&
         t.bn <= f.coopmat2_max_dimension;
}
}  // namespace

MatmulTile Matmul::auto_cm2_tile(uint32_t rows, uint32_t batch) const {
  const uint32_t min_batch = std::max(cm2_min_batch_, matrix_min_batch_);
  if (path_ != MatmulPath::kKhr || !cm2_large_ || forced_tile_ != MatmulTile::kAuto || batch < min_batch) {
    return MatmulTile::kAuto;
  }
  const auto& f = dev_->features();
  // A few rows (the MoE router: 128 experts) below 1024 columns: the small tile. H100 (bench_kernels
  // "gemm router", f16 x, 2026-12-06): 128 x 2048 at 512 columns 22.5-60.5 µs on cm2 small variant 2
  // against 44.0 on KHR small; at 2048 columns 106.8 against 44.6. In the 30B-A3B's 512-token step
  // (H200): the router 3665 -> 1801 µs, pp512 7261-7268 -> 7445-7472 tok/s.
  if (rows <= cm2_small_max_rows_ && batch < 2 * kCm2AutoMinBatch && cm2_fits(f, kCm2Small)) {
    return MatmulTile::kSmall;
  }
  const Cm2Tile large{cm2_large_bm_, cm2_large_bn_};
  if (cm2_fits(f, large) && div_up(rows, large.bm) * div_up(batch, large.bn) >= cm2_min_tiles_) return MatmulTile::kLarge;
  // Below kCm2LargeBatch (down to cm2_min_batch_): the medium tile where it fills the SMs, as
  // llama.cpp's cm2 path picks at 512 tokens (the 8B's attention output and ffn_down: 128 medium tiles).
  if (batch < kCm2LargeBatch && cm2_fits(f, kCm2Medium) &&
      div_up(rows, 128) * div_up(batch, 128) >= cm2_min_medium_tiles_) {
    return MatmulTile::kMedium;
  }
  return MatmulTile::kAuto;
}

MatmulTile Matmul::tile_for(uint32_t rows, uint32_t batch, bool grouped) const {
  if (path_ == MatmulPath::kTiled || path_ == MatmulPath::kCpu) return MatmulTile::kAuto;
  const auto& f = dev_->features();
  if (path_ == MatmulPath::kKhr) {
    const bool large_fits = f.max_compute_shared_memory >= kKhrLargeShared;
    if (forced_tile_ != MatmulTile::kAuto) return forced_tile_ == MatmulTile::kSmall || !large_fits ? MatmulTile::kSmall : MatmulTile::kLarge;
    if (grouped) return MatmulTile::kSmall;  // a few dozen slots per expert
    // 128 × 128 once there are about as many workgroups as a big GPU has SMs (H100/H200: 132). Measured
    // on the H200: at 128 large tiles the large tile wins (4096 rows × 512 tokens: 143 µs vs 204 µs
    // small), at 32 the small one (1024 rows × 512 tokens: 88 µs vs 145 µs).
    return large_fits && div_up(rows, 128) * div_up(batch, 128) >= 96 ? MatmulTile::kLarge : MatmulTile::kSmall;
  }
  // cm2
  auto fits = [&](Cm2Tile t) { return cm2_fits(f, t); };
  if (forced_tile_ != MatmulTile::kAuto) {
    MatmulTile t = forced_tile_;
    if (t == MatmulTile::kLarge && !fits({cm2_large_bm_, cm2_large_bn_})) t = MatmulTile::kMedium;
    if (t == MatmulTile::kMedium && !fits(kCm2Medium)) t = MatmulTile::kSmall;
    return t;
  }
  if (grouped) return MatmulTile::kSmall;
  if (batch >= cm2_large_bn_ && fits({cm2_large_bm_, cm2_large_bn_}) &&
      div_up(rows, cm2_large_bm_) * div_up(batch, cm2_large_bn_) >= kCm2TilesToFill) {
    return MatmulTile::kLarge;
  }
  if (fits(kCm2Medium) && div_up(rows, 128) * div_up(batch, 128) >= kCm2TilesToFill) return MatmulTile::kMedium;
  return MatmulTile::kSmall;
}

uint32_t Matmul::split_k(uint32_t rows, uint32_t cols, uint32_t batch) const {
  const bool khr = path_ == MatmulPath::kKhr && batch >= matrix_min_batch_ &&
                   auto_cm2_tile(rows, batch) == MatmulTile::kAuto;
  if (!(khr || path_ == MatmulPath::kCpu) || cols % 256 != 0 || rows == 0 || batch == 0) return 1;
  uint32_t n = split_forced_;
  if (n == 0) {  // the automatic rule: KHR only, up to split_target_wgs_ workgroups, 512+ values a range
    if (!khr || split_target_wgs_ == 0) return 1;
    const uint32_t bm = tile_for(rows, batch) == MatmulTile::kSmall ? kKhrSmall.bm : 128;
    const uint64_t tiles = uint64_t{div_up(rows, bm)} * div_up(batch, bm);
    if (tiles >= split_target_wgs_) return 1;
    n = std::min<uint64_t>({div_up(split_target_wgs_, static_cast<uint32_t>(tiles)), kMaxSplits, cols / 512});
  }
  n = std::min(n, cols / 256);  // at least one 256-value block a range
  while (n > 1 && uint64_t{n} * batch * rows * 4 > kSplitScratchHalf) --n;
  return std::max(n, 1u);
}

Status Matmul::record_split(vk::CommandStream& s, const vk::Pipeline& p, vk::BufferRange (&bufs)[3],
                            uint32_t splits, uint32_t rows, uint32_t cols, uint32_t batch, uint32_t row_bytes,
                            uint32_t y_stride, uint32_t gx, uint32_t gy) const {
  const vk::Pipeline* sum = nullptr;
  vk::BufferRange part;
  {
    std::lock_guard<std::mutex> lock(cache_->mu);
    if (!cache_->split_scratch) {
      auto b = dev_->buffer(2 * kSplitScratchHalf);
      if (!b.ok()) return b.status();
      cache_->split_scratch = std::move(*b);
    }
    if (!cache_->split_sum) {
      auto q = dev_->pipeline({"matmul_split_sum", {}, sizeof(SplitSumPush), 2, 256});
      if (!q.ok()) return q.status();
      cache_->split_sum = std::move(*q);
    }
    // The two halves in turn: a split call's sum runs beside the next call's products (no barrier
    // between them), and the call after that, past the next call's barrier, may take this half again.
    part = vk::BufferRange(*cache_->split_scratch, uint64_t{cache_->split_half} * kSplitScratchHalf,
                           uint64_t{splits} * batch * rows * 4);
    cache_->split_half ^= 1;
    sum = &*cache_->split_sum;
  }
  const vk::BufferRange y = bufs[2];
  bufs[2] = part;
  TilePush push{rows, cols, batch, row_bytes, rows, 1, 0, batch, splits, batch * rows};
  TROVE_RETURN_IF_ERROR(s.dispatch(p, bufs, &push, sizeof(push), gx, gy, splits));
  s.barrier();
  const uint32_t groups = div_up(batch * rows, 256), sx = std::min(groups, kMaxGroups);
  SplitSumPush sp{rows, batch, y_stride, splits, batch * rows, sx};
  vk::BufferRange sb[2] = {part, y};
  return s.dispatch(*sum, sb, &sp, sizeof(sp), sx, div_up(groups, sx));
}

Status Matmul::record(vk::CommandStream& s, quant::GgmlType type, uint32_t rows, uint32_t cols,
                      uint32_t batch, vk::BufferRange w, vk::BufferRange x, vk::BufferRange y,
                      uint32_t y_stride, bool x_f16) const {
  if (y_stride == 0) y_stride = rows;
  auto t = quant::traits(type);
  if (!t) {
    return Status::Unsupported(fmt::format("matmul: weight type {} is not supported (supported: {})",
                                           quant::ggml_type_name(static_cast<uint32_t>(type)),
                                           quant::supported_type_names()));
  }
  if (rows == 0 || cols == 0 || batch == 0 || cols % static_cast<uint32_t>(t->block_values) != 0 ||
      cols % 32 != 0 || y_stride < rows) {
    return Status::InvalidArgument(fmt::format(
        "matmul: shape rows {} cols {} batch {} (y stride {}) is invalid for {} (all positive, cols a multiple of "
        "32 and of {}, y stride >= rows)", rows, cols, batch, y_stride, t->name, t->block_values));
  }
  const uint64_t rb = quant::row_bytes(type, cols);
  const uint64_t need_w = (rb * rows + 3) / 4 * 4, need_x = uint64_t{batch} * cols * (x_f16 ? 2 : 4), need_y = (uint64_t{batch - 1} * y_stride + rows) * 4;
  if (w.size < need_w || x.size < need_x || y.size < need_y) {
    return Status::InvalidArgument(fmt::format(
        "matmul: buffers too small: weights {} (need {}), x {} (need {}), y {} (need {})", w.size, need_w,
        x.size, need_x, y.size, need_y));
  }
  vk::BufferRange bufs[3] = {w, x, y};
  const uint32_t ty = static_cast<uint32_t>(type), xh = x_f16 ? 1 : 0;
  if (path_ == MatmulPath::kCpu) {
    // Rows per invocation and batch columns per workgroup (matmul_cpu.comp): kCpuRows x kCpuCols,
    // 4 columns for batches up to 4 (columns past the batch are computed and dropped). Two column
    // counts only: each variant is a pipeline that lavapipe compiles for ~1 s.
    const uint32_t r = cpu_rows_ ? cpu_rows_ : kCpuRows, c = cpu_cols_ ? cpu_cols_ : batch <= 4 ? 4 : kCpuCols;
    if (r < 1 || r > 8 || c < 1 || c > 16) {
      return Status::InvalidArgument(fmt::format("matmul: CPU tile {} rows x {} columns is invalid (1..8 rows, 1..16 columns)", r, c));
    }
    auto p = pipeline("matmul_cpu", {ty, xh, r, c}, 3, 64);
    if (!p.ok()) return p.status();
    if (div_up(rows, 64 * r) > kMaxGroups || div_up(batch, c) > kMaxGroups) {
      return Status::InvalidArgument(fmt::format("matmul: rows {} or batch {} need more than {} workgroups (split the call)", rows, batch, kMaxGroups));
    }
    if (const uint32_t splits = split_k(rows, cols, batch); splits > 1) {
      return record_split(s, **p, bufs, splits, rows, cols, batch, static_cast<uint32_t>(rb), y_stride,
                          div_up(rows, 64 * r), div_up(batch, c));
    }
    TilePush push{rows, cols, batch, static_cast<uint32_t>(rb), y_stride, 0, 0, 0};
    return s.dispatch(**p, bufs, &push, sizeof(push), div_up(rows, 64 * r), div_up(batch, c));
  }
  if (batch >= matrix_min_batch_ && uses_coopmat()) {
    TilePush push{rows, cols, batch, static_cast<uint32_t>(rb), y_stride, 1, 0, batch};
    const MatmulTile tile = tile_for(rows, batch);
    auto record_cm2 = [&](Cm2Tile c, uint32_t variant) -> Status {
      const uint32_t bk = cols % 64 == 0 ? 64 : 32;
      if (variant > 2)
        return Status::InvalidArgument(fmt::format("matmul: cm2 variant {} is not 0, 1 or 2", variant));
      auto p = pipeline(acc_f16_ ? "matmul_cm2_f16acc" : "matmul_cm2", {ty, xh, c.bm, c.bn, 256, bk, variant}, 3, 256);
      if (!p.ok()) return p.status();
      if (div_up(rows, c.bm) > kMaxGroups || div_up(batch, c.bn) > kMaxGroups) {
        return Status::InvalidArgument(fmt::format("matmul: rows {} or batch {} need more than {} workgroups (split the call)", rows, batch, kMaxGroups));
      }
      return s.dispatch(**p, bufs, &push, sizeof(push), div_up(rows, c.bm), div_up(batch, c.bn));
    };
    if (const MatmulTile t = auto_cm2_tile(rows, batch); t != MatmulTile::kAuto) {
      return record_cm2(t == MatmulTile::kLarge    ? Cm2Tile{cm2_large_bm_, cm2_large_bn_}
                        : t == MatmulTile::kMedium ? kCm2Medium
                                                   : kCm2Small,
                        forced_cm2_variant_.value_or(kCm2AutoVariant));
    }
    if (path_ == MatmulPath::kKhr) {
      const KhrTile k = tile == MatmulTile::kSmall ? kKhrSmall : KhrTile{128, 128, khr_large_wg_, khr_large_sgm_};
      if (khr_prefetch_ != 1 && khr_prefetch_ != 2) {
        return Status::InvalidArgument(fmt::format("matmul: KHR prefetch distance {} is not 1 or 2", khr_prefetch_));
      }
      auto p = pipeline(acc_f16_ ? "matmul_coopmat_f16acc" : "matmul_coopmat", {ty, xh, k.bm, k.bn, k.wg, k.sgm, 0, khr_prefetch_}, 3, k.wg);
      if (!p.ok()) return p.status();
      if (div_up(rows, k.bm) > kMaxGroups || div_up(batch, k.bn) > kMaxGroups) {
        return Status::InvalidArgument(fmt::format("matmul: rows {} or batch {} need more than {} workgroups (split the call)", rows, batch, kMaxGroups));
      }
      if (const uint32_t splits = split_k(rows, cols, batch); splits > 1) {
        return record_split(s, **p, bufs, splits, rows, cols, batch, static_cast<uint32_t>(rb), y_stride,
                            div_up(rows, k.bm), div_up(batch, k.bn));
      }
      return s.dispatch(**p, bufs, &push, sizeof(push), div_up(rows, k.bm), div_up(batch, k.bn));
    }
    return record_cm2(tile == MatmulTile::kSmall ? kCm2Small : tile == MatmulTile::kMedium ? kCm2Medium : Cm2Tile{cm2_large_bm_, cm2_large_bn_},
                      forced_cm2_variant_.value_or(0));
  }
  // Rows per invocation: 4 for batches (each activation chunk loaded once serves 4 rows), 1 for decode.
  const uint32_t rpt = batch > 1 ? 4 : 1;
  const uint32_t tpr = threads_per_row(cols), rows_per_group = 64 / tpr * rpt;
  const uint32_t groups_x = div_up(rows, rows_per_group), groups_y = div_up(batch, kBatchCols);
  if (groups_x > kMaxGroups || groups_y > kMaxGroups) {
    return Status::InvalidArgument(fmt::format("matmul: rows {} or batch {} need more than {} workgroups (split the call)",
                                               rows, batch, kMaxGroups));
  }
  Push push{rows, cols, batch, ty, static_cast<uint32_t>(rb), tpr, y_stride, rpt};
  return s.dispatch(rpt == 1 ? tiled_row_[xh] : tiled_rows4_[xh], bufs, &push, sizeof(push), groups_x, groups_y);
}

std::pair<uint32_t, uint32_t> Matmul::grouped_tile(const GroupedMatmulCall& c) const {
  if (grouped_tile_forced_) return {grouped_bm_, grouped_bn_};
  const bool slot_loads = c.x_by_slot && by_slot_;
  if (slot_loads && c.n_expert > 0 && c.slots >= uint64_t{kGroupedLargeSlotsPerExpert} * c.n_expert) {
    return {128, 128};
  }
  return {grouped_bm_, grouped_bn_};
}

// Whether grouped calls go to the cm2 grouped kernel on this path (where their type and expert stride
// fit it): the cm2 path, or the KHR path on a cm2 device unless TROVE_GROUPED_KHR asks for the KHR kernel.
bool Matmul::grouped_on_cm2() const {
  if (!dev_->features().coopmat2_per_element) return false;
  return path_ == MatmulPath::kCm2 ||
         (path_ == MatmulPath::kKhr && cm2_grouped_ && grouped_khr_mode().empty());
}

bool Matmul::grouped_loads_slot_order() const { return by_slot_ && grouped_on_cm2(); }

Status Matmul::record_grouped(vk::CommandStream& s, const GroupedMatmulCall& c, vk::BufferRange w, vk::BufferRange x,
                              vk::BufferRange expert_offsets, vk::BufferRange row_ids, vk::BufferRange y) const {
  auto t = quant::traits(c.type);
  if (!t) {
    return Status::Unsupported(fmt::format("grouped matmul: weight type {} is not supported (supported: {})",
                                           quant::ggml_type_name(static_cast<uint32_t>(c.type)),
                                           quant::supported_type_names()));
  }
  const uint32_t y_stride = c.y_stride ? c.y_stride : c.rows;
  const uint64_t rb = quant::row_bytes(c.type, c.cols);
  if (c.rows == 0 || c.cols == 0 || c.n_expert == 0 || c.x_rows == 0 || c.cols % 32 != 0 ||
      c.cols % static_cast<uint32_t>(t->block_values) != 0 || y_stride < c.rows || c.expert_bytes % 16 != 0 ||
      c.expert_bytes < rb * c.rows || c.expert_bytes * c.n_expert > UINT32_MAX) {
    return Status::InvalidArgument(fmt::format(
        "grouped matmul: shape rows {} cols {} experts {} x rows {} (expert bytes {}, y stride {}) is invalid for {} "
        "(all positive, cols a multiple of 32 and of {}, expert bytes a multiple of 16, >= rows x row bytes, "
        "all experts within 4 GiB, y stride >= rows)",
        c.rows, c.cols, c.n_expert, c.x_rows, c.expert_bytes, y_stride, t->name, t->block_values));
  }
  if (c.x_by_slot && c.x_rows < c.slots) {
    return Status::InvalidArgument(fmt::format("grouped matmul: x in slot order (x_by_slot) needs a row per slot: {} rows "
                                               "for {} slots", c.x_rows, c.slots));
  }
  if (c.slots == 0) return Status::Ok();
  const uint64_t need_w = (c.expert_bytes * (c.n_expert - 1) + rb * c.rows + 3) / 4 * 4,
                 need_x = uint64_t{c.x_rows} * c.cols * (c.x_f16 ? 2 : 4), need_y = (uint64_t{c.slots - 1} * y_stride + c.rows) * 4;
  if (w.size < need_w || x.size < need_x || y.size < need_y || expert_offsets.size < (c.n_expert + 1) * 4ull ||
      row_ids.size < c.slots * 4ull) {
    return Status::InvalidArgument(fmt::format(
        "grouped matmul: buffers too small: weights {} (need {}), x {} (need {}), y {} (need {}), expert offsets {} "
        "(need {}), row ids {} (need {})", w.size, need_w, x.size, need_x, y.size, need_y, expert_offsets.size,
        (c.n_expert + 1) * 4ull, row_ids.size, c.slots * 4ull));
  }
  vk::BufferRange bufs[5] = {w, x, y, expert_offsets, row_ids};
  TilePush push{c.rows, c.cols, c.slots, static_cast<uint32_t>(rb), y_stride, c.n_expert,
                static_cast<uint32_t>(c.expert_bytes), c.x_rows};
  const uint32_t ty = static_cast<uint32_t>(c.type), xh = c.x_f16 ? 1 : 0;
  // cm2 needs per-element operations (results scattered to their slots) and an expert stride that is
  // a whole number of the format's elements (blocks).
  static constexpr uint32_t kElemBytes[] = {4, 2, 0, 0, 0, 0, 0, 0, 34, 0, 0, 0, 144, 176, 210};
  const uint32_t elem = ty < 15 ? kElemBytes[ty] : 2;  // BF16 (30): 2
  const bool cm2_fits = elem != 0 && c.expert_bytes % elem == 0;
  // The KHR grouped kernel gave wrong results on the H200 (matmul.h): on the KHR path grouped calls
  // take the cm2 grouped kernel where the device has NV cooperative matrix 2, else the tiled one,
  // unless TROVE_GROUPED_KHR=1 asks for the KHR kernel.
  const std::string_view khr_mode = grouped_khr_mode();
  const bool khr_grouped = !khr_mode.empty();
  // Debugging switches of the KHR grouped kernel (matmul_coopmat_tile.glsl kDebug): 2 = no early
  // return, 3 = serial (expert, tile) search without subgroup operations.
  const uint32_t khr_debug = khr_mode == "2" ? 1 : khr_mode == "3" ? 2 : 0;
  const bool use_cm2 = cm2_fits && grouped_on_cm2();
  if (path_ == MatmulPath::kTiled || path_ == MatmulPath::kCpu || (path_ == MatmulPath::kKhr && !khr_grouped && !use_cm2)) {
    auto p = pipeline("matmul_grouped_tiled", {ty, xh}, 5, 64);
    if (!p.ok()) return p.status();
    if (div_up(c.rows, 64) > kMaxGroups || div_up(c.slots, kGroupedSlots) > kMaxGroups) {
      return Status::InvalidArgument(fmt::format("grouped matmul: rows {} or slots {} need more than {} workgroups (split the call)",
                                                 c.rows, c.slots, kMaxGroups));
    }
    return s.dispatch(**p, bufs, &push, sizeof(push), div_up(c.rows, 64), div_up(c.slots, kGroupedSlots));
  }
  // Matrix units: workgroup y index j = the j-th (expert, slot tile) pair; ceil(slots / BN) + n_expert
  // bounds their number. On the cm2 path a call cm2 cannot take goes to the KHR form.
  if (use_cm2) {
    const auto [bm, bn] = grouped_tile(c);
    const uint32_t bk = grouped_bk_ == 32 || c.cols % 64 != 0 ? 32 : 64;
    const auto* shape = cm2_shape(dev_->features());
    // Unforced: variant 2 where x is loaded in slot order (by_slot_ and x_by_slot), else 0 for quantized
    // experts and 1 for plain ones (F16 / BF16 / F32 — the f16 experts of TROVE_PREFILL_WEIGHTS=f16).
    // H100, 2026-12-05, bench_kernels' 30B-A3B expert rows, F16 gate/up 1001 -> 229 µs at 512 tokens and
    // 2001 -> 488 at 2048, down 995 -> 248 and 1972 -> 509 (variant 0 -> 1); Q4_K / Q6_K alike in both.
    // H100, 2026-12-06 (warm runs): slot-ordered x on variant 0 doubles the time (Q4_K gate/up at 512
    // tokens 344 -> 634 µs), on variant 2 it saves 4-8% (318 µs; down 396 -> 378); gathered x on variant
    // 2 loses at 2048 tokens.
    using quant::GgmlType;
    const bool plain = c.type == GgmlType::F16 || c.type == GgmlType::BF16 || c.type == GgmlType::F32;
    const bool slot_loads = c.x_by_slot && by_slot_;
    const uint32_t variant =
        forced_grouped_variant_.value_or(forced_cm2_variant_.value_or(slot_loads ? 2 : plain ? 1 : 0));
    if ((bm != 64 && bm != 128) || (bn != 32 && bn != 64 && bn != 128) || variant > 2 || !shape ||
        bm % shape->m_granularity != 0 || bn % shape->n_granularity != 0 ||
        bn > dev_->features().coopmat2_max_dimension) {
      return Status::InvalidArgument(fmt::format(
          "grouped matmul: cm2 tile {}x{} variant {} is not usable here (BM 64 or 128, BN 32, 64 or 128 and "
          "multiples of "
          "the device's granularity {}x{}, variant 0, 1 or 2); change TROVE_GROUPED_TILE / TROVE_CM2_VARIANT",
          bm, bn, variant, shape ? shape->m_granularity : 0, shape ? shape->n_granularity : 0));
    }
    auto p = pipeline(acc_f16_ ? "matmul_cm2_grouped_f16acc" : "matmul_cm2_grouped",
                      {ty, xh, bm, bn, 256, bk, variant, slot_loads ? 1u : 0u}, 5, 256);
    if (!p.ok()) return p.status();
    const uint64_t gy = div_up(c.slots, bn) + uint64_t{c.n_expert};
    if (div_up(c.rows, bm) > kMaxGroups || gy > kMaxGroups) {
      return Status::InvalidArgument(fmt::format("grouped matmul: rows {} or slots {} need more than {} workgroups (split the call)",
                                                 c.rows, c.slots, kMaxGroups));
    }
    return s.dispatch(**p, bufs, &push, sizeof(push), div_up(c.rows, bm), static_cast<uint32_t>(gy));
  }
  const KhrTile k = tile_for(c.rows, c.slots, true) == MatmulTile::kSmall ? kKhrSmall : kKhrLarge;
  auto p = pipeline("matmul_coopmat_grouped", {ty, xh, k.bm, k.bn, k.wg, k.sgm, khr_debug}, 5, k.wg);
  if (!p.ok()) return p.status();
  const uint64_t gy = div_up(c.slots, k.bn) + uint64_t{c.n_expert};
  if (div_up(c.rows, k.bm) > kMaxGroups || gy > kMaxGroups) {
    return Status::InvalidArgument(fmt::format("grouped matmul: rows {} or slots {} need more than {} workgroups (split the call)",
                                               c.rows, c.slots, kMaxGroups));
  }
  return s.dispatch(**p, bufs, &push, sizeof(push), div_up(c.rows, k.bm), static_cast<uint32_t>(gy));
}

}  // namespace trove::ops
