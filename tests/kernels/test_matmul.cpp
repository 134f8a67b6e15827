// GPU matmul (kernels/ops/matmul.h) against the float64 reference (kernels/ref/matmul_ref.h) on fresh
// random weights and activations, outputs NaN-poisoned before every dispatch.
//
// Paths: the tiled one always runs; the KHR cooperative-matrix and NV cooperative-matrix-2 ones run
// where the device has them (each tile size forced in turn), and a path the device lacks must be
// refused with its reason. TROVE_MATMUL=cm2|khr|tiled makes the path tests run that path only, and
// then its absence FAILS the test (for the GPU runs: a forced path never passes by skipping).
// Bounds: 1e-5 of the output norm on the tiled path (f32 math), 2e-3 on the matrix paths (f16
// operands: ~5e-4 per product, f32 sums). Shapes are small for lavapipe (the file < 10 s on 2 cores):
// row counts, batches and K not multiples of any tile; TROVE_KERNEL_FULL=1 adds the Qwen3-8B and
// 30B-A3B shapes at batch 512 and 2048 (reference on a sample of batch columns, to keep the CPU side
// short; the 151936-row head is left to the benchmark: quantizing its random weights alone takes
// minutes on the CPU).
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <numeric>
#include <random>
#include <string>
#include <tuple>
#include <utility>
#include <vector>

#include <fmt/format.h>
#include <gtest/gtest.h>

#include "kernels/ops/matmul.h"
#include "kernels/ops/matvec.h"
#include "kernels/ref/matmul_ref.h"
#include "tests/scoped_env.h"

using namespace trove;
using ops::MatmulPath;
using ops::MatmulTile;
using quant::GgmlType;

namespace {
constexpr uint32_t kNaN = 0x7fc00000u;
const GgmlType kAllTypes[] = {GgmlType::F32, GgmlType::F16, GgmlType::BF16, GgmlType::Q8_0,
                              GgmlType::Q4_K, GgmlType::Q5_K, GgmlType::Q6_K};

bool full() {
  const char* v = std::getenv("TROVE_KERNEL_FULL");
  return v && std::string(v) == "1";
}

std::unique_ptr<vk::Device> open_device() {
  auto d = vk::Device::open();
  if (!d.ok()) {
    ADD_FAILURE() << d.status().ToString();
    return nullptr;
  }
  return std::move(*d);
}

// The matrix paths to test: the forced one (TROVE_MATMUL), else every one the device has.
std::vector<MatmulPath> matrix_paths(const vk::Device& dev) {
  if (const char* env = std::getenv("TROVE_MATMUL"); env && *env) {
    std::string v(env);
    if (v == "cm2") return {MatmulPath::kCm2};
    if (v == "khr") return {MatmulPath::kKhr};
    return {};
  }
  std::vector<MatmulPath> out;
  for (MatmulPath p : {MatmulPath::kKhr, MatmulPath::kCm2})
    if (ops::Matmul::available(dev, p)) out.push_back(p);
  return out;
}

// Every tile of the path, or the one TROVE_TEST_TILE names (small, medium or large): on the H200 each
// cm2 tile × type × activation type is a pipeline of ~2 s to build, so one tile keeps a run short.
std::vector<MatmulTile> tiles(MatmulPath p) {
  if (const char* env = std::getenv("TROVE_TEST_TILE"); env && *env) {
    const std::string v(env);
    const MatmulTile t = v == "small" ? MatmulTile::kSmall : v == "medium" ? MatmulTile::kMedium : MatmulTile::kLarge;
    if (p == MatmulPath::kKhr && t == MatmulTile::kMedium) return {MatmulTile::kLarge};
    return {t};
  }
  if (p == MatmulPath::kCm2) return {MatmulTile::kSmall, MatmulTile::kMedium, MatmulTile::kLarge};
  return {MatmulTile::kSmall, MatmulTile::kLarge};
}

const char* tile_name(MatmulTile t) {
  switch (t) {
    case MatmulTile::kAuto: return "auto";
    case MatmulTile::kSmall: return "small";
    case MatmulTile::kMedium: return "medium";
    case MatmulTile::kLarge: return "large";
  }
  return "?";
}

struct Compared {
  double err = 0, norm = 0;
};

// Runs one matmul and compares batch columns `cols_checked` (all when empty) with the reference.
void check(vk::Device& dev, const ops::Matmul& op, GgmlType type, uint32_t rows, uint32_t cols, uint32_t batch,
           uint64_t seed, double bound, bool x_f16 = false, uint32_t sample = 0) {
  SCOPED_TRACE(testing::Message() << "path " << ops::matmul_path_name(op.path()) << " type "
                                  << quant::traits(type)->name << " " << rows << "x" << cols << " batch " << batch
                                  << (x_f16 ? " x f16" : " x f32"));
  auto wbytes = kernels::ref::random_weights(type, rows, cols, 0.5f, seed);
  std::mt19937 rng(static_cast<uint32_t>(seed));
  std::normal_distribution<float> nd(0.0f, 1.0f);
  std::vector<float> x(size_t{batch} * cols);
  for (auto& v : x) v = nd(rng);
  // f16 activations: the reference multiplies the same rounded values the GPU reads.
  std::vector<uint16_t> xh;
  if (x_f16) {
    for (auto& v : x) {
      xh.push_back(quant::f32_to_f16(v));
      v = quant::f16_to_f32(xh.back());
    }
  }
  // Batch columns to check: all, or `sample` spread over the batch (first and last included).
  std::vector<uint32_t> picked;
  if (sample == 0 || sample >= batch) {
    picked.resize(batch);
    std::iota(picked.begin(), picked.end(), 0u);
  } else {
    for (uint32_t i = 0; i < sample; ++i) picked.push_back(static_cast<uint32_t>(uint64_t{i} * (batch - 1) / (sample - 1)));
  }
  std::vector<float> xs;
  for (uint32_t b : picked) xs.insert(xs.end(), x.begin() + size_t{b} * cols, x.begin() + size_t{b + 1} * cols);
  std::vector<float> expect(picked.size() * rows);
  ASSERT_TRUE(kernels::ref::matmul({type, rows, cols, wbytes}, xs, static_cast<int64_t>(picked.size()), expect).ok());

  auto wb = dev.buffer((wbytes.size() + 3) / 4 * 4);
  auto xb = dev.buffer(x_f16 ? (xh.size() * 2 + 3) / 4 * 4 : x.size() * 4);
  auto yb = dev.buffer(size_t{batch} * rows * 4);
  ASSERT_TRUE(wb.ok() && xb.ok() && yb.ok());
  ASSERT_TRUE(wb->upload(wbytes.data(), wbytes.size()).ok());
  ASSERT_TRUE((x_f16 ? xb->upload(xh.data(), xh.size() * 2) : xb->upload(x.data(), x.size() * 4)).ok());
  ASSERT_TRUE(yb->fill(kNaN).ok());
  auto s = dev.stream();
  ASSERT_TRUE(s.ok());
  Status st = op.record(*s, type, rows, cols, batch, *wb, *xb, *yb, 0, x_f16);
  ASSERT_TRUE(st.ok()) << st.ToString();
  ASSERT_TRUE(s->submit_and_wait().ok());
  std::vector<float> got(size_t{batch} * rows);
  ASSERT_TRUE(yb->download(got.data(), got.size() * 4).ok());
  for (size_t i = 0; i < got.size(); ++i) ASSERT_TRUE(std::isfinite(got[i])) << "output " << i << " not written";
  double err2 = 0, ref2 = 0;
  for (size_t j = 0; j < picked.size(); ++j) {
    for (uint32_t r = 0; r < rows; ++r) {
      const double g = got[size_t{picked[j]} * rows + r], e = expect[j * rows + r];
      err2 += (g - e) * (g - e);
      ref2 += e * e;
    }
  }
  EXPECT_LT(std::sqrt(err2), bound * std::sqrt(ref2)) << "relative error " << std::sqrt(err2 / ref2);
}
}  // namespace

// The f32 forms: the tiled kernel (GPUs without matrix units; TROVE_MATMUL=tiled) and the CPU form
// (matmul_cpu.comp, the automatic choice on lavapipe). Both run the same cases on every device.
const MatmulPath kF32Paths[] = {MatmulPath::kTiled, MatmulPath::kCpu};

TEST(Matmul, MatchesReferenceForEachSupportedType) {
  auto dev = open_device();
  ASSERT_TRUE(dev);
  for (MatmulPath path : kF32Paths) {
    auto op = ops::Matmul::create(*dev, path);
    ASSERT_TRUE(op.ok()) << op.status().ToString();
    uint64_t seed = 1;
    for (GgmlType type : kAllTypes) {
      check(*dev, *op, type, 33, 256, 1, seed++, 1e-5);   // decode matvec, odd row count
      check(*dev, *op, type, 17, 1024, 3, seed++, 1e-5);  // small batch, longer rows
      check(*dev, *op, type, 70, 512, 11, seed++, 1e-5);  // batch across two column tiles, partial row group
      if (quant::traits(type)->block_values <= 32) check(*dev, *op, type, 9, 96, 2, seed++, 1e-5);  // one invocation per row
    }
    if (full()) {
      check(*dev, *op, GgmlType::Q4_K, 4096, 4096, 1, seed++, 1e-5);
      check(*dev, *op, GgmlType::Q6_K, 4096, 4096, 1, seed++, 1e-5);
    }
  }
}

// Batches >= 32 on the f32 forms (lavapipe, or TROVE_MATMUL=tiled|cpu): f32 math.
TEST(Matmul, LargeBatchesOnTheF32FormsMatchReference) {
  auto dev = open_device();
  ASSERT_TRUE(dev);
  for (MatmulPath path : kF32Paths) {
    auto op = ops::Matmul::create(*dev, path);
    ASSERT_TRUE(op.ok()) << op.status().ToString();
    uint64_t seed = 100;
    for (GgmlType type : {GgmlType::F32, GgmlType::Q8_0, GgmlType::Q4_K, GgmlType::Q6_K}) {
      check(*dev, *op, type, 100, 512, 37, seed++, 1e-5);
      check(*dev, *op, type, 100, 512, 37, seed++, 1e-5, true);
    }
    if (path == MatmulPath::kCpu) {
      // The remaining types at a prefill batch, and rows spanning several workgroups (64 x 4 rows).
      for (GgmlType type : {GgmlType::F16, GgmlType::BF16, GgmlType::Q5_K}) check(*dev, *op, type, 300, 256, 41, seed++, 1e-5, type == GgmlType::F16);
    }
  }
}

// On a CPU device the automatic path is the CPU form; TROVE_MATMUL=tiled still forces the tiled
// kernel (CI keeps testing it on lavapipe) and TROVE_MATMUL=cpu forces the CPU form anywhere.
TEST(Matmul, CpuDevicesTakeTheCpuFormUnlessForced) {
  auto dev = open_device();
  ASSERT_TRUE(dev);
  auto op = ops::Matmul::create(*dev);
  ASSERT_TRUE(op.ok()) << op.status().ToString();
  const char* env = std::getenv("TROVE_MATMUL");
  const std::string forced = env ? env : "";
  if (forced == "tiled") EXPECT_EQ(op->path(), MatmulPath::kTiled);
  else if (forced == "cpu") EXPECT_EQ(op->path(), MatmulPath::kCpu);
  else if (forced.empty() && dev->features().is_cpu) EXPECT_EQ(op->path(), MatmulPath::kCpu);
  else if (forced.empty()) EXPECT_NE(op->path(), MatmulPath::kCpu);
  std::printf("automatic matmul path on '%s': %s\n", dev->features().name.c_str(),
              std::string(ops::matmul_path_name(op->path())).c_str());
}

// Every matrix-unit path the device has (or the one TROVE_MATMUL forces), every weight type, every
// tile, f16 and f32 activations, partial tiles in rows and batch, K not a multiple of 256 where the
// type allows it.
TEST(Matmul, MatrixPathsMatchReference) {
  auto dev = open_device();
  ASSERT_TRUE(dev);
  const auto paths = matrix_paths(*dev);
  std::printf("matrix-unit matmul paths on '%s':", dev->features().name.c_str());
  for (MatmulPath p : paths) std::printf(" %s", std::string(ops::matmul_path_name(p)).c_str());
  std::printf("%s\n", paths.empty() ? " none (the tiled path covers batches here)" : "");
  {
    const auto& f = dev->features();
    std::string why_khr, why_cm2;
    ops::Matmul::available(*dev, MatmulPath::kKhr, &why_khr);
    ops::Matmul::available(*dev, MatmulPath::kCm2, &why_cm2);
    std::printf("  KHR coopmat shapes %zu%s%s; NV cm2 offered %d enabled %d per-element %d, %zu flexible shapes, max dim %u, "
                "reserved shared %u of %u bytes%s%s\n",
                f.coopmat_shapes.size(), why_khr.empty() ? "" : ": ", why_khr.c_str(), f.cooperative_matrix2_offered,
                f.cooperative_matrix2, f.coopmat2_per_element, f.coopmat2_flexible.size(), f.coopmat2_max_dimension,
                f.coopmat2_reserved_shared, f.max_compute_shared_memory, why_cm2.empty() ? "" : "; cm2: ", why_cm2.c_str());
    for (const auto& fl : f.coopmat2_flexible) {
      std::printf("  cm2 flexible: granularity %ux%ux%u types %u,%u,%u,%u scope %u invocations %u\n", fl.m_granularity,
                  fl.n_granularity, fl.k_granularity, fl.a, fl.b, fl.c, fl.result, fl.scope, fl.invocations);
    }
  }
  uint64_t seed = 300;
  for (MatmulPath path : paths) {
    auto op = ops::Matmul::create(*dev, path);
    ASSERT_TRUE(op.ok()) << "TROVE_MATMUL / path " << ops::matmul_path_name(path) << ": " << op.status().ToString();
    ASSERT_EQ(op->path(), path);
    for (MatmulTile tile : tiles(path)) {
      SCOPED_TRACE(testing::Message() << "tile " << tile_name(tile));
      op->force_tile(tile);
      for (GgmlType type : kAllTypes) {
        const bool small_blocks = quant::traits(type)->block_values <= 32;
        check(*dev, *op, type, 100, 512, 37, seed++, 2e-3, true);    // partial tiles both ways
        check(*dev, *op, type, 130, 256, 200, seed++, 2e-3, false);  // f32 activations, > one 128 tile
        if (small_blocks) check(*dev, *op, type, 64, 96, 33, seed++, 2e-3, true);  // K = 96: 3 steps of 32
        if (small_blocks) check(*dev, *op, type, 257, 160, 64, seed++, 2e-3, true);
        // The smallest batches the engine hands the matrix path (kCoopmatMinBatch = 9 columns up).
        check(*dev, *op, type, 100, 512, ops::Matmul::kCoopmatMinBatch, seed++, 2e-3, true);
        check(*dev, *op, type, 70, 256, 16, seed++, 2e-3, false);
      }
    }
    op->force_tile(MatmulTile::kAuto);
    if (full()) {
      struct Shape { GgmlType type; uint32_t rows, cols; };
      const Shape shapes[] = {{GgmlType::Q4_K, 4096, 4096},  {GgmlType::Q4_K, 1024, 4096}, {GgmlType::Q4_K, 12288, 4096},
                              {GgmlType::Q6_K, 4096, 12288}, {GgmlType::Q4_K, 4096, 2048},
                              {GgmlType::Q8_0, 4096, 4096}};
      for (const auto& sh : shapes) {
        for (uint32_t batch : {512u, 2048u}) check(*dev, *op, sh.type, sh.rows, sh.cols, batch, seed++, 2e-3, true, 24);
      }
    }
  }
}

// cm2 variants 1 (prefetched K-quant scales, Q6_K decoded from 16-bit words with its scales read in
// the decode function; matmul.h, TROVE_CM2_VARIANT) and 2 (1 with the interior test once per workgroup,
// plain and Q8_0 weights 8 K steps an outer step with a remainder, Q4_K from 16-bit words, scales at a
// stride of BM + 2) against the reference: the K-quants and Q8_0, partial tiles both ways, f16 and f32
// activations, K of one and of several 256-value blocks; variant 2 also whole tiles (its interior
// loop) and F16 / Q8_0 weights with K of 3 outer steps and a remainder, and 2 outer steps exactly;
// then f16 accumulators (TROVE_MATMUL_ACC=f16) on variants 0, 1 and 2.
// Skipped where the device has no NV cooperative matrix 2 (lavapipe): run on the H200.
TEST(Matmul, Cm2VariantOneMatchesReference) {
  auto dev = open_device();
  ASSERT_TRUE(dev);
  std::string why;
  if (!ops::Matmul::available(*dev, MatmulPath::kCm2, &why)) GTEST_SKIP() << "no cm2 here: " << why;
  auto op = ops::Matmul::create(*dev, MatmulPath::kCm2);
  ASSERT_TRUE(op.ok()) << op.status().ToString();
  uint64_t seed = 700;
  for (uint32_t variant : {1u, 2u}) {
    op->force_cm2_variant(variant);
    for (MatmulTile tile : {MatmulTile::kMedium, MatmulTile::kSmall}) {
      SCOPED_TRACE(testing::Message() << "variant " << variant << " tile " << tile_name(tile));
      op->force_tile(tile);
      for (GgmlType type : {GgmlType::Q4_K, GgmlType::Q5_K, GgmlType::Q6_K}) {
        check(*dev, *op, type, 100, 768, 37, seed++, 2e-3, true);   // 3 blocks: prefetch over several
        check(*dev, *op, type, 130, 256, 200, seed++, 2e-3, true);  // one block, > one 128 tile
      }
      if (tile == MatmulTile::kMedium) {
        check(*dev, *op, GgmlType::Q6_K, 70, 512, 45, seed++, 2e-3, false);  // f32 activations
        check(*dev, *op, GgmlType::Q8_0, 100, 512, 37, seed++, 2e-3, true);  // untouched by variant 1
      }
      if (variant == 2) {  // whole tiles (the interior loop), and the 8-step outer loop with its remainder
        const uint32_t bm = tile == MatmulTile::kMedium ? 128 : 64;
        for (GgmlType type : {GgmlType::Q4_K, GgmlType::Q6_K})
          check(*dev, *op, type, 2 * bm, 512, 2 * bm, seed++, 2e-3, true);
        for (GgmlType type : {GgmlType::F16, GgmlType::Q8_0}) {
          check(*dev, *op, type, 2 * bm, 800, 2 * bm, seed++, 2e-3, true);  // BK 32: 3 outer steps + 1 step
          // BK 64: 2 outer steps, partial tiles
          check(*dev, *op, type, bm + 5, 1024, bm - 3, seed++, 2e-3, true);
        }
        // 7 steps of 32: the remainder loop only; f32 activations
        check(*dev, *op, GgmlType::BF16, 2 * bm, 224, 2 * bm, seed++, 2e-3, false);
      }
    }
  }
  // Other large tiles (TROVE_CM2_LARGE): 256 rows, with and without f16 accumulators; partial tiles.
  for (auto [bm, bn] : {std::pair{256u, 256u}, std::pair{256u, 128u}}) {
    SCOPED_TRACE(testing::Message() << "large tile " << bm << "x" << bn);
    op->force_cm2_large(bm, bn);
    op->force_tile(MatmulTile::kLarge);
    for (bool f16 : {false, true}) {
      op->force_acc_f16(f16);
      check(*dev, *op, GgmlType::Q4_K, 300, 512, 300, seed++, f16 ? 2e-2 : 2e-3, true);
      check(*dev, *op, GgmlType::Q6_K, 260, 256, 270, seed++, f16 ? 2e-2 : 2e-3, true);
    }
  }
  op->force_cm2_large(128, 256);
  // f16 accumulators (TROVE_MATMUL_ACC=f16): sums rounded to f16 at every step, so a wider bound.
  op->force_acc_f16(true);
  op->force_tile(MatmulTile::kMedium);
  for (uint32_t variant : {0u, 1u, 2u}) {
    SCOPED_TRACE(testing::Message() << "f16 accumulators, variant " << variant);
    op->force_cm2_variant(variant);
    for (GgmlType type : {GgmlType::Q4_K, GgmlType::Q6_K, GgmlType::Q8_0}) {
      check(*dev, *op, type, 130, 768, 200, seed++, 2e-2, true);
    }
  }
}

// The KHR kernel at both prefetch distances (matmul_coopmat_tile.glsl kPrefetch; TROVE_KHR_PREFETCH; 2 is
// the default) against the reference: every type, both tiles, K of 1, 2, 3, 5 and 24 steps of 32 (odd
// and even step counts end the two-step loop in each of its halves), partial tiles both ways, f16
// and f32 activations. Skipped where the device has no KHR cooperative matrix (lavapipe): run on the H200.
TEST(Matmul, KhrPrefetchDistancesMatchReference) {
  auto dev = open_device();
  ASSERT_TRUE(dev);
  std::string why;
  if (!ops::Matmul::available(*dev, MatmulPath::kKhr, &why)) GTEST_SKIP() << "no KHR cooperative matrix here: " << why;
  auto op = ops::Matmul::create(*dev, MatmulPath::kKhr);
  ASSERT_TRUE(op.ok()) << op.status().ToString();
  uint64_t seed = 900;
  for (uint32_t distance : {1u, 2u}) {
    op->force_khr_prefetch(distance);
    for (MatmulTile tile : {MatmulTile::kSmall, MatmulTile::kLarge}) {
      SCOPED_TRACE(testing::Message() << "prefetch " << distance << " tile " << tile_name(tile));
      op->force_tile(tile);
      for (GgmlType type : kAllTypes) {
        const bool small_blocks = quant::traits(type)->block_values <= 32;
        check(*dev, *op, type, 100, small_blocks ? 512 : 768, 37, seed++, 2e-3, true);
        check(*dev, *op, type, 130, 256, 200, seed++, 2e-3, false);
        if (small_blocks) {
          for (uint32_t k : {32u, 64u, 96u, 160u}) check(*dev, *op, type, 257, k, 64, seed++, 2e-3, true);
        }
      }
    }
  }
  op->force_khr_prefetch(3);
  auto b = dev->buffer(1 << 20);
  ASSERT_TRUE(b.ok());
  auto s = dev->stream();
  ASSERT_TRUE(s.ok());
  const Status st = op->record(*s, GgmlType::Q8_0, 64, 256, 64, *b, *b, *b);
  EXPECT_EQ(st.code(), StatusCode::kInvalidArgument);
  EXPECT_NE(st.message().find("prefetch distance 3"), std::string::npos) << st.message();
  // f16 accumulators (TROVE_MATMUL_ACC=f16), where the device has the f16-accumulating shape (create()
  // refuses it otherwise, naming the shape): a wider bound, both tiles.
  trove::tests::ScopedEnv env("TROVE_MATMUL_ACC", "f16");
  auto h = ops::Matmul::create(*dev, MatmulPath::kKhr);
  if (!h.ok()) {
    EXPECT_NE(h.status().message().find("f16 x f16 -> f16"), std::string::npos) << h.status().message();
    return;
  }
  for (MatmulTile tile : {MatmulTile::kSmall, MatmulTile::kLarge}) {
    SCOPED_TRACE(testing::Message() << "f16 accumulators, tile " << tile_name(tile));
    h->force_tile(tile);
    for (GgmlType type : {GgmlType::Q4_K, GgmlType::Q6_K, GgmlType::Q8_0}) check(*dev, *h, type, 130, 768, 200, seed++, 2e-2, true);
  }
}

// The automatic path on a device with KHR and NV cm2 cooperative matrices hands dense calls of
// Matmul::kCm2AutoMinBatch+ columns whose cm2 tiles cover the SMs to cm2 (variant kCm2AutoVariant):
// from kCm2LargeBatch columns the large tile alone, below it also the medium one; they match the
// reference; smaller calls, forced tiles and a forced path stay on KHR. Skipped without both
// (lavapipe): run on the H100/H200.
TEST(Matmul, AutomaticPathTakesCm2ForLargeBatches) {
  auto dev = open_device();
  ASSERT_TRUE(dev);
  if (!ops::Matmul::available(*dev, MatmulPath::kKhr) || !ops::Matmul::available(*dev, MatmulPath::kCm2)) {
    GTEST_SKIP() << "needs KHR and NV cm2 cooperative matrices";
  }
  trove::tests::ScopedEnv env("TROVE_MATMUL", nullptr);
  trove::tests::ScopedEnv min_batch("TROVE_CM2_MIN_BATCH", nullptr);
  trove::tests::ScopedEnv variant("TROVE_CM2_VARIANT", nullptr);
  trove::tests::ScopedEnv medium("TROVE_CM2_MIN_MEDIUM_TILES", nullptr);
  trove::tests::ScopedEnv small("TROVE_CM2_SMALL_MAX_ROWS", nullptr);
  auto op = ops::Matmul::create(*dev);
  ASSERT_TRUE(op.ok()) << op.status().ToString();
  ASSERT_EQ(op->path(), MatmulPath::kKhr);
  const uint32_t B = ops::Matmul::kCm2LargeBatch;
  EXPECT_TRUE(op->takes_cm2(4096, B));
  EXPECT_TRUE(op->takes_cm2(12288, B));
  EXPECT_FALSE(op->takes_cm2(1024, B));  // 8 × 8 large tiles: too few for the SMs
  EXPECT_TRUE(op->takes_cm2(2048, B));   // 16 × 8 = 128: the 30B-A3B's attention output (cm2_min_tiles_)
  // Below kCm2LargeBatch, down to kCm2AutoMinBatch (512): the 8B's shapes at 512 tokens take the
  // medium tile where the large one does not fill the SMs, the large one where it does; too few of
  // either stays on KHR. From 2048 columns the rule is the large tile's alone (1024 rows: KHR still).
  ASSERT_EQ(ops::Matmul::kCm2AutoMinBatch, 512u);
  EXPECT_EQ(op->auto_cm2_tile(4096, 512), MatmulTile::kMedium);   // attention output, ffn_down: 128 medium tiles
  EXPECT_EQ(op->auto_cm2_tile(6144, 512), MatmulTile::kMedium);   // QKV: 96 large, 192 medium
  EXPECT_EQ(op->auto_cm2_tile(24576, 512), MatmulTile::kLarge);   // gate/up: 384 large
  EXPECT_EQ(op->auto_cm2_tile(2048, 512), MatmulTile::kMedium);   // the 30B-A3B's attention output: 64 medium
  EXPECT_EQ(op->auto_cm2_tile(1024, 512), MatmulTile::kAuto);     // 32 medium tiles
  EXPECT_EQ(op->auto_cm2_tile(128, 512), MatmulTile::kSmall);     // the MoE router (kCm2SmallMaxRows)
  EXPECT_EQ(op->auto_cm2_tile(128, 1023), MatmulTile::kSmall);
  EXPECT_EQ(op->auto_cm2_tile(128, 1024), MatmulTile::kAuto);
  EXPECT_EQ(op->auto_cm2_tile(129, 512), MatmulTile::kAuto);
  EXPECT_EQ(op->auto_cm2_tile(4096, 511), MatmulTile::kAuto);
  EXPECT_EQ(op->auto_cm2_tile(4096, B - 1), MatmulTile::kLarge);    // 256 large tiles
  EXPECT_EQ(op->auto_cm2_tile(1024, B - 1), MatmulTile::kMedium);   // 64 large, 128 medium
  EXPECT_EQ(op->auto_cm2_tile(1024, B), MatmulTile::kAuto);
  EXPECT_EQ(op->auto_cm2_tile(4096, B), MatmulTile::kLarge);
  uint64_t seed = 1100;
  for (GgmlType type : {GgmlType::Q4_K, GgmlType::Q6_K, GgmlType::Q8_0, GgmlType::F16}) {
    check(*dev, *op, type, 4096, 1024, B, seed++, 2e-3, true, 24);  // large, variant 2
  }
  check(*dev, *op, GgmlType::Q4_K, 4100, 512, B + 37, seed++, 2e-3, false, 24);  // partial tiles, f32 x
  check(*dev, *op, GgmlType::Q4_K, 4096, 512, 512, seed++, 2e-3, true, 24);      // medium, variant 2
  check(*dev, *op, GgmlType::F32, 128, 2048, 512, seed++, 2e-3, false, 24);      // small: the router, f32 x
  check(*dev, *op, GgmlType::F32, 100, 256, 700, seed++, 2e-3, false, 24);       // small, partial tiles
  check(*dev, *op, GgmlType::F16, 4096, 512, 512, seed++, 2e-3, true, 24);
  check(*dev, *op, GgmlType::Q6_K, 4100, 256, 512 + 19, seed++, 2e-3, false, 24);  // partial medium tiles, f32 x
  {  // TROVE_CM2_MIN_MEDIUM_TILES=128: the rule before 2026-12-06, 64 medium tiles on KHR.
    trove::tests::ScopedEnv m128("TROVE_CM2_MIN_MEDIUM_TILES", "128");
    auto old = ops::Matmul::create(*dev);
    ASSERT_TRUE(old.ok()) << old.status().ToString();
    EXPECT_EQ(old->auto_cm2_tile(2048, 512), MatmulTile::kAuto);
    EXPECT_EQ(old->auto_cm2_tile(4096, 512), MatmulTile::kMedium);
  }
  {  // TROVE_CM2_SMALL_MAX_ROWS=0: the rule before 2026-12-06, the router on KHR.
    trove::tests::ScopedEnv none("TROVE_CM2_SMALL_MAX_ROWS", "0");
    auto old = ops::Matmul::create(*dev);
    ASSERT_TRUE(old.ok()) << old.status().ToString();
    EXPECT_EQ(old->auto_cm2_tile(128, 512), MatmulTile::kAuto);
  }
  // TROVE_CM2_MIN_BATCH=2048 (force_cm2_min_batch): the rule before 2026-12-05, 512 columns on KHR.
  op->force_cm2_min_batch(B);
  EXPECT_FALSE(op->takes_cm2(4096, 512));
  EXPECT_FALSE(op->takes_cm2(4096, B - 1));
  op->force_tile(MatmulTile::kLarge);
  EXPECT_FALSE(op->takes_cm2(4096, B));
  auto khr = ops::Matmul::create(*dev, MatmulPath::kKhr);
  ASSERT_TRUE(khr.ok());
  EXPECT_FALSE(khr->takes_cm2(4096, B));
}

// TROVE_KHR_PREFETCH takes 1 or 2; anything else is refused with what it means, whatever the path.
TEST(Matmul, TroveKhrPrefetchIsChecked) {
  auto dev = open_device();
  ASSERT_TRUE(dev);
  {
    trove::tests::ScopedEnv env("TROVE_KHR_PREFETCH", "4");
    auto bad = ops::Matmul::create(*dev, MatmulPath::kTiled);
    ASSERT_FALSE(bad.ok());
    EXPECT_NE(bad.status().message().find("use 1 or 2"), std::string::npos) << bad.status().message();
  }
  trove::tests::ScopedEnv env("TROVE_KHR_PREFETCH", "2");
  auto good = ops::Matmul::create(*dev, MatmulPath::kTiled);
  EXPECT_TRUE(good.ok()) << good.status().ToString();
}

// The A/B knobs (matmul.h): TROVE_GROUPED_BY_SLOT takes 0 or 1, TROVE_CM2_MIN_TILES and
// TROVE_CM2_MIN_MEDIUM_TILES a positive count, TROVE_CM2_SMALL_MAX_ROWS a row count up to 1024,
// TROVE_CM2_MIN_BATCH a column count of 9 or more (kCoopmatMinBatch), TROVE_MATRIX_MIN_BATCH one of 1 or
// more (read back by matrix_min_batch()), TROVE_CM2_LARGE BMxBN of 64/128/256, TROVE_CM2_VARIANT 0, 1 or
// 2, TROVE_GROUPED_VARIANT 0, 1 or 2, TROVE_GROUPED_TILE BMxBN[xBK], TROVE_MATMUL_ACC f16 or f32;
// anything else is refused by name,
// whatever the path.
TEST(Matmul, GroupedBySlotAndCm2MinTilesAreChecked) {
  auto dev = open_device();
  ASSERT_TRUE(dev);
  for (auto [name, bad, good] :
       {std::tuple{"TROVE_GROUPED_BY_SLOT", "yes", "1"}, std::tuple{"TROVE_CM2_MIN_TILES", "0", "128"},
        std::tuple{"TROVE_CM2_MIN_TILES", "12x", "64"}, std::tuple{"TROVE_CM2_VARIANT", "3", "2"},
        std::tuple{"TROVE_CM2_MIN_BATCH", "8", "512"}, std::tuple{"TROVE_CM2_MIN_BATCH", "5l2", "2048"},
        std::tuple{"TROVE_MATRIX_MIN_BATCH", "0", "32"}, std::tuple{"TROVE_MATRIX_MIN_BATCH", "9x", "16"},
        std::tuple{"TROVE_CM2_LARGE", "128x512", "256x256"}, std::tuple{"TROVE_CM2_LARGE", "256", "256x128"},
        std::tuple{"TROVE_GROUPED_TILE", "64x48", "64x32"}, std::tuple{"TROVE_MATMUL_ACC", "half", "f16"},
        std::tuple{"TROVE_CM2_MIN_MEDIUM_TILES", "0", "128"},
        std::tuple{"TROVE_CM2_MIN_MEDIUM_TILES", "6 4", "32"},
        std::tuple{"TROVE_CM2_SMALL_MAX_ROWS", "2000", "0"},
        std::tuple{"TROVE_CM2_SMALL_MAX_ROWS", "-1", "64"}, std::tuple{"TROVE_GROUPED_VARIANT", "3", "0"},
        std::tuple{"TROVE_GROUPED_VARIANT", "v2", "2"}}) {
    {
      trove::tests::ScopedEnv env(name, bad);
      auto op = ops::Matmul::create(*dev, MatmulPath::kTiled);
      ASSERT_FALSE(op.ok()) << name << "=" << bad;
      EXPECT_NE(op.status().message().find(fmt::format("{}='{}'", name, bad)), std::string::npos) << op.status().message();
    }
    trove::tests::ScopedEnv env(name, good);
    auto op = ops::Matmul::create(*dev, MatmulPath::kTiled);
    ASSERT_TRUE(op.ok()) << op.status().ToString();
    if (std::string_view(name) == "TROVE_MATRIX_MIN_BATCH") {
      EXPECT_EQ(op->matrix_min_batch(), std::stoul(good));
    }
  }
  auto op = ops::Matmul::create(*dev, MatmulPath::kTiled);
  ASSERT_TRUE(op.ok());
  EXPECT_EQ(op->matrix_min_batch(), ops::Matmul::kCoopmatMinBatch);
  EXPECT_EQ(ops::Matmul::kCoopmatMinBatch, ops::Matvec::kMaxBatch + 1);  // every step past the matvecs
}

// TROVE_KHR_LARGE (matmul.h) names a KHR 128x128 tile shape for A/B on a GPU: a shape the kernel
// cannot take is refused with the valid ones, whatever the path; a valid one is accepted.
TEST(Matmul, TroveKhrLargeIsChecked) {
  auto dev = open_device();
  ASSERT_TRUE(dev);
  const char* old = std::getenv("TROVE_KHR_LARGE");
  const std::string saved = old ? old : "";
  setenv("TROVE_KHR_LARGE", "128x8", 1);  // 8 subgroups along the rows, but 128 invocations have 4
  auto bad = ops::Matmul::create(*dev, MatmulPath::kTiled);
  setenv("TROVE_KHR_LARGE", "128x2", 1);
  auto good = ops::Matmul::create(*dev, MatmulPath::kTiled);
  if (old) setenv("TROVE_KHR_LARGE", saved.c_str(), 1);
  else unsetenv("TROVE_KHR_LARGE");
  ASSERT_FALSE(bad.ok());
  EXPECT_NE(bad.status().message().find("WG 128 or 256"), std::string::npos) << bad.status().message();
  EXPECT_TRUE(good.ok()) << good.status().ToString();
}

// Split K (matmul.h, "Split K"): the CPU form splits only when forced (TROVE_MATMUL_SPLIT_K), which is
// how CI tests the ranges and their sum on lavapipe: every type in 3 ranges (Q4_K and F16 in 2 and 8,
// to keep the file short), K of 1 to 4 blocks of 256, ranges clamped to the blocks there are, one
// column and several column tiles. Unforced it never splits.
TEST(Matmul, SplitKOnTheCpuFormMatchesReference) {
  auto dev = open_device();
  ASSERT_TRUE(dev);
  auto op = ops::Matmul::create(*dev, MatmulPath::kCpu);
  ASSERT_TRUE(op.ok()) << op.status().ToString();
  EXPECT_EQ(op->split_k(100, 1024, 37), 1u) << "the CPU form splits only when forced";
  uint64_t seed = 1300;
  for (uint32_t splits : {2u, 3u, 8u}) {
    SCOPED_TRACE(testing::Message() << "forced splits " << splits);
    op->force_split_k(splits);
    EXPECT_EQ(op->split_k(100, 1024, 37), std::min(splits, 4u)) << "at most one range a 256-value block";
    EXPECT_EQ(op->split_k(100, 96, 37), 1u) << "K not a multiple of 256";
    for (GgmlType type : kAllTypes) {
      if (splits != 3 && type != GgmlType::Q4_K && type != GgmlType::F16) continue;
      check(*dev, *op, type, 100, 1024, 37, seed++, 1e-5, true);
      if (splits == 3) {
        check(*dev, *op, type, 70, 768, 1, seed++, 1e-5);
        check(*dev, *op, type, 33, 256, 11, seed++, 1e-5);  // one block: not split
      }
    }
  }
}

namespace {
// Three split calls recorded back to back with no barrier of the caller's between them (the engine's
// Q, K and V), the second into every other row of a wider y (y_stride: a row range), each against
// the reference: the scratch halves taken in turn must not let one call's sum read another's products.
void check_split_calls_in_a_row(vk::Device& dev, const ops::Matmul& op, uint64_t seed) {
  const uint32_t rows = 96, cols = 1024, batch = 24, stride = 2 * rows;
  const GgmlType type = GgmlType::Q4_K;
  std::vector<std::vector<uint8_t>> ws;
  std::mt19937 rng(static_cast<uint32_t>(seed));
  std::normal_distribution<float> nd(0.0f, 1.0f);
  std::vector<float> x(size_t{batch} * cols);
  for (auto& v : x) v = nd(rng);
  auto xb = dev.buffer(x.size() * 4);
  ASSERT_TRUE(xb.ok());
  ASSERT_TRUE(xb->upload(x.data(), x.size() * 4).ok());
  std::vector<vk::Buffer> wbs, ybs;
  for (int i = 0; i < 3; ++i) {
    ws.push_back(kernels::ref::random_weights(type, rows, cols, 0.5f, seed + 1 + i));
    auto wb = dev.buffer((ws.back().size() + 3) / 4 * 4);
    auto yb = dev.buffer(size_t{batch} * stride * 4);
    ASSERT_TRUE(wb.ok() && yb.ok());
    ASSERT_TRUE(wb->upload(ws.back().data(), ws.back().size()).ok());
    ASSERT_TRUE(yb->fill(kNaN).ok());
    wbs.push_back(std::move(*wb));
    ybs.push_back(std::move(*yb));
  }
  auto s = dev.stream();
  ASSERT_TRUE(s.ok());
  for (int i = 0; i < 3; ++i) {
    const Status st = op.record(*s, type, rows, cols, batch, wbs[i], *xb, ybs[i], i == 1 ? stride : 0);
    ASSERT_TRUE(st.ok()) << st.ToString();
  }
  ASSERT_TRUE(s->submit_and_wait().ok());
  for (int i = 0; i < 3; ++i) {
    SCOPED_TRACE(testing::Message() << "call " << i);
    std::vector<float> expect(size_t{batch} * rows);
    ASSERT_TRUE(kernels::ref::matmul({type, rows, cols, ws[i]}, x, batch, expect).ok());
    std::vector<float> got(size_t{batch} * stride);
    ASSERT_TRUE(ybs[i].download(got.data(), got.size() * 4).ok());
    const uint32_t ys = i == 1 ? stride : rows;
    double err2 = 0, ref2 = 0;
    for (uint32_t b = 0; b < batch; ++b) {
      for (uint32_t r = 0; r < rows; ++r) {
        const double g = got[size_t{b} * ys + r], e = expect[size_t{b} * rows + r];
        ASSERT_TRUE(std::isfinite(g)) << "column " << b << " row " << r << " not written";
        err2 += (g - e) * (g - e);
        ref2 += e * e;
      }
      if (i == 1) {
        for (uint32_t r = rows; r < stride; ++r) {
          ASSERT_TRUE(std::isnan(got[size_t{b} * ys + r])) << "column " << b << " row " << r << " is past it";
        }
      }
    }
    EXPECT_LT(std::sqrt(err2), 2e-3 * std::sqrt(ref2)) << "relative error " << std::sqrt(err2 / ref2);
  }
}
}  // namespace

namespace {
// Weights whose scales differ from one 32-value block to the next (a factor in [0.05, 2] and an offset
// per block), unlike random_weights' uniform values, whose super-blocks all quantize to about the same
// d, scales and mins — where a kernel reading another block's scales would go unseen.
std::vector<uint8_t> varied_weights(GgmlType type, uint32_t rows, uint32_t cols, uint64_t seed) {
  std::mt19937_64 r(seed);
  std::uniform_real_distribution<float> u(-1.0f, 1.0f), f(0.05f, 2.0f);
  const size_t rb = quant::row_bytes(type, cols);
  std::vector<uint8_t> bytes(size_t{rows} * rb);
  std::vector<float> row(cols);
  for (uint32_t i = 0; i < rows; ++i) {
    for (uint32_t b = 0; b < cols; b += 32) {
      const float scale = f(r), offset = 0.5f * u(r) * scale;
      for (uint32_t k = b; k < b + 32; ++k) row[k] = offset + scale * u(r);
    }
    quant::quantize_row(type, row.data(), bytes.data() + i * rb, cols);
  }
  return bytes;
}

// One call's output with the op's split as it is set (f32 or f16 activations).
std::vector<float> run_once(vk::Device& dev, const ops::Matmul& op, GgmlType type, uint32_t rows,
                            uint32_t cols, uint32_t batch, const std::vector<uint8_t>& w,
                            const std::vector<float>& x, bool x_f16) {
  std::vector<uint16_t> xh;
  for (float v : x) xh.push_back(quant::f32_to_f16(v));
  auto wb = dev.buffer((w.size() + 3) / 4 * 4);
  auto xb = dev.buffer(x.size() * 4);
  auto yb = dev.buffer(size_t{batch} * rows * 4);
  EXPECT_TRUE(wb.ok() && xb.ok() && yb.ok());
  if (!wb.ok() || !xb.ok() || !yb.ok()) return {};
  EXPECT_TRUE(wb->upload(w.data(), w.size()).ok() && yb->fill(kNaN).ok());
  EXPECT_TRUE((x_f16 ? xb->upload(xh.data(), xh.size() * 2) : xb->upload(x.data(), x.size() * 4)).ok());
  auto s = dev.stream();
  EXPECT_TRUE(s.ok());
  if (!s.ok()) return {};
  const Status st = op.record(*s, type, rows, cols, batch, *wb, *xb, *yb, 0, x_f16);
  EXPECT_TRUE(st.ok()) << st.ToString();
  EXPECT_TRUE(s->submit_and_wait().ok());
  std::vector<float> y(size_t{batch} * rows);
  EXPECT_TRUE(yb->download(y.data(), y.size() * 4).ok());
  return y;
}
}  // namespace

// Split K changes only the order of f32 sums: a split call's output equals the unsplit call's to f32
// rounding (1e-5 relative), which the bound against the float64 reference (2e-3 on the matrix units, f16
// activations) cannot tell. Weights with scales that vary block to block (varied_weights). The CPU form
// here (lavapipe: CI) and the KHR kernel where the device has it.
TEST(Matmul, SplitKEqualsTheUnsplitSumsToF32Rounding) {
  auto dev = open_device();
  ASSERT_TRUE(dev);
  std::mt19937 rng(4242);
  std::normal_distribution<float> nd(0.0f, 1.0f);
  int paths = 0;
  for (MatmulPath path : {MatmulPath::kCpu, MatmulPath::kKhr}) {
    if (!ops::Matmul::available(*dev, path, nullptr)) continue;
    ++paths;
    auto op = ops::Matmul::create(*dev, path);
    ASSERT_TRUE(op.ok()) << op.status().ToString();
    double largest = 0;
    for (auto [type, rows, cols, batch] : {std::tuple{GgmlType::Q4_K, 100u, 1024u, 37u},
                                           {GgmlType::Q6_K, 100u, 1024u, 37u},
                                           {GgmlType::F16, 100u, 1024u, 37u},
                                           {GgmlType::Q4_K, 256u, 512u, 40u},
                                           {GgmlType::Q6_K, 256u, 512u, 40u},
                                           {GgmlType::Q4_K, 512u, 512u, 17u}}) {
      for (bool x_f16 : {false, true}) {
        const auto w = varied_weights(type, rows, cols, rng());
        std::vector<float> x(size_t{batch} * cols);
        for (auto& v : x) v = nd(rng);
        op->force_split_k(1);
        const auto whole = run_once(*dev, *op, type, rows, cols, batch, w, x, x_f16);
        for (uint32_t splits : {2u, 4u}) {
          SCOPED_TRACE(testing::Message()
                       << (path == MatmulPath::kCpu ? "cpu" : "khr") << " " << quant::traits(type)->name
                       << " " << rows << "x" << cols << " batch " << batch << (x_f16 ? " f16 x" : " f32 x")
                       << " splits " << splits);
          op->force_split_k(splits);
          const auto split = run_once(*dev, *op, type, rows, cols, batch, w, x, x_f16);
          ASSERT_EQ(split.size(), whole.size());
          double d2 = 0, n2 = 0;
          for (size_t i = 0; i < whole.size(); ++i) {
            ASSERT_TRUE(std::isfinite(split[i])) << "output " << i << " not written";
            d2 += (double(split[i]) - whole[i]) * (double(split[i]) - whole[i]);
            n2 += double(whole[i]) * whole[i];
          }
          const double rel = std::sqrt(d2 / n2);
          EXPECT_LT(rel, 1e-5);
          largest = std::max(largest, rel);
        }
      }
    }
    std::printf("split K, %s: largest relative difference from the unsplit call %.3g\n",
                path == MatmulPath::kCpu ? "CPU form" : "KHR kernel", largest);
  }
  EXPECT_GT(paths, 0) << "neither the CPU form nor the KHR kernel ran";
}

TEST(Matmul, SplitCallsInARowKeepTheirSums) {
  auto dev = open_device();
  ASSERT_TRUE(dev);
  auto op = ops::Matmul::create(*dev, MatmulPath::kCpu);
  ASSERT_TRUE(op.ok()) << op.status().ToString();
  op->force_split_k(3);
  check_split_calls_in_a_row(*dev, *op, 1400);
}

// The KHR kernel split (forced: 2, 3 and 5 ranges; both tiles, both prefetch distances, every type)
// against the reference, three split calls in a row, and the automatic rule (on by default, a target
// of kSplitTargetWorkgroups): a skinny call (the 8B's attention output at 32 tokens: 64 small
// tiles) is split towards the target, 512+ values a range; a call with enough tiles, or whose partials
// would not fit the scratch, is not. Skipped where the device has no KHR
// cooperative matrix (lavapipe): run on the H100/H200.
TEST(Matmul, SplitKOnTheKhrKernelMatchesReference) {
  auto dev = open_device();
  ASSERT_TRUE(dev);
  std::string why;
  if (!ops::Matmul::available(*dev, MatmulPath::kKhr, &why)) {
    GTEST_SKIP() << "no KHR cooperative matrix here: " << why;
  }
  auto op = ops::Matmul::create(*dev, MatmulPath::kKhr);
  ASSERT_TRUE(op.ok()) << op.status().ToString();
  if (!std::getenv("TROVE_MATMUL_SPLIT_WGS") && !std::getenv("TROVE_MATMUL_SPLIT_K")) {
    EXPECT_EQ(op->split_k(4096, 4096, 32), 8u) << "on by default";
  }
  op->force_split_target(ops::Matmul::kSplitTargetWorkgroups);
  EXPECT_EQ(op->split_k(4096, 4096, 32), 8u);    // 64 small tiles: 8 ranges of 512
  EXPECT_EQ(op->split_k(4096, 4096, 128), 4u);   // 128 small tiles
  EXPECT_EQ(op->split_k(12288, 4096, 32), 6u);   // 96 large tiles (tile_for: 96+ take the large one)
  EXPECT_EQ(op->split_k(4096, 1024, 32), 2u);    // two ranges of 512 values at most
  EXPECT_EQ(op->split_k(32768, 4096, 256), 1u);  // 256 x 2 large tiles: enough
  EXPECT_EQ(op->split_k(12288, 4096, 200), 1u);  // 192 large tiles; 3 or 2 ranges would not fit the scratch
  EXPECT_EQ(op->split_k(4096, 4096, 8), 1u);     // below the matrix path (the tiled kernel)
  op->force_split_target(64);
  EXPECT_EQ(op->split_k(4096, 4096, 32), 1u);
  op->force_split_target(0);
  EXPECT_EQ(op->split_k(4096, 4096, 32), 1u);
  uint64_t seed = 1500;
  for (uint32_t distance : {1u, 2u}) {
    op->force_khr_prefetch(distance);
    for (MatmulTile tile : {MatmulTile::kSmall, MatmulTile::kLarge}) {
      op->force_tile(tile);
      for (uint32_t splits : {2u, 3u, 5u}) {
        SCOPED_TRACE(testing::Message() << "prefetch " << distance << " tile " << tile_name(tile)
                                        << " splits " << splits);
        op->force_split_k(splits);
        for (GgmlType type : kAllTypes) {
          check(*dev, *op, type, 100, 1280, 37, seed++, 2e-3, true);
          check(*dev, *op, type, 130, 768, 200, seed++, 2e-3, false);
        }
      }
    }
  }
  op->force_tile(MatmulTile::kAuto);
  op->force_split_k(3);
  check_split_calls_in_a_row(*dev, *op, 1600);
}

// TROVE_MATMUL_SPLIT_K takes 1..kMaxSplits (1: never split) and TROVE_MATMUL_SPLIT_WGS a positive
// workgroup count; anything else is refused by name, whatever the path.
TEST(Matmul, SplitKKnobsAreChecked) {
  auto dev = open_device();
  ASSERT_TRUE(dev);
  for (const char* bad : {"0", "9", "two"}) {
    trove::tests::ScopedEnv env("TROVE_MATMUL_SPLIT_K", bad);
    auto op = ops::Matmul::create(*dev, MatmulPath::kCpu);
    ASSERT_FALSE(op.ok()) << bad;
    const std::string want = "TROVE_MATMUL_SPLIT_K='" + std::string(bad) + "' is not a split count";
    EXPECT_NE(op.status().message().find(want), std::string::npos) << op.status().message();
  }
  {
    trove::tests::ScopedEnv env("TROVE_MATMUL_SPLIT_WGS", "0");
    auto op = ops::Matmul::create(*dev, MatmulPath::kCpu);
    ASSERT_FALSE(op.ok());
    const std::string m = op.status().message();
    EXPECT_NE(m.find("is not a workgroup count"), std::string::npos) << m;
  }
  trove::tests::ScopedEnv env("TROVE_MATMUL_SPLIT_K", "4");
  auto op = ops::Matmul::create(*dev, MatmulPath::kCpu);
  ASSERT_TRUE(op.ok()) << op.status().ToString();
  EXPECT_EQ(op->split_k(64, 2048, 9), 4u);
}

// A matrix path the device lacks is refused with the reason, never silently replaced.
TEST(Matmul, MissingMatrixPathIsRefused) {
  auto dev = open_device();
  ASSERT_TRUE(dev);
  int refused = 0;
  for (MatmulPath p : {MatmulPath::kKhr, MatmulPath::kCm2}) {
    std::string why;
    if (ops::Matmul::available(*dev, p, &why)) continue;
    auto op = ops::Matmul::create(*dev, p);
    ASSERT_FALSE(op.ok()) << ops::matmul_path_name(p);
    EXPECT_EQ(op.status().code(), StatusCode::kUnsupported);
    EXPECT_NE(op.status().message().find(std::string(ops::matmul_path_name(p))), std::string::npos) << op.status().message();
    EXPECT_NE(op.status().message().find(why), std::string::npos) << op.status().message();
    ++refused;
  }
  std::printf("matrix paths refused here: %d\n", refused);
}

TEST(Matmul, UnsupportedTypeAndBadShapeAreNamed) {
  auto dev = open_device();
  ASSERT_TRUE(dev);
  auto op = ops::Matmul::create(*dev, MatmulPath::kTiled);
  ASSERT_TRUE(op.ok());
  auto b = dev->buffer(1 << 16);
  ASSERT_TRUE(b.ok());
  auto s = dev->stream();
  ASSERT_TRUE(s.ok());
  Status st = op->record(*s, static_cast<GgmlType>(2), 4, 256, 1, *b, *b, *b);  // Q4_0: not supported
  EXPECT_EQ(st.code(), StatusCode::kUnsupported);
  EXPECT_NE(st.message().find("Q4_0"), std::string::npos) << st.message();
  st = op->record(*s, GgmlType::Q8_0, 4, 100, 1, *b, *b, *b);
  EXPECT_NE(st.message().find("multiple of 32"), std::string::npos) << st.message();
  st = op->record(*s, GgmlType::F32, 4096, 4096, 1, *b, *b, *b);
  EXPECT_NE(st.message().find("too small"), std::string::npos) << st.message();
}

// ---- grouped GEMM (MoE prefill)

namespace {
// Runs the grouped GEMM for slot counts per expert `counts` (row_ids a random gather of x rows) and
// compares every slot with the reference applied to its expert's matrix. by_slot: x in slot order
// (row_ids[s] = s, GroupedMatmulCall::x_by_slot; x_rows is then the slot count plus `x_rows`, rows past
// the last slot that no one may read).
void check_grouped(vk::Device& dev, const ops::Matmul& op, GgmlType type, uint32_t rows, uint32_t cols,
                   const std::vector<uint32_t>& counts, uint32_t x_rows, uint64_t seed, double bound, bool x_f16 = true,
                   uint32_t sample = 0, bool by_slot = false) {
  const uint32_t E = static_cast<uint32_t>(counts.size());
  SCOPED_TRACE(testing::Message() << "grouped path " << ops::matmul_path_name(op.path()) << " type "
                                  << quant::traits(type)->name << " " << rows << "x" << cols << " experts " << E);
  const uint64_t rb = quant::row_bytes(type, cols), eb = (rb * rows + 15) / 16 * 16;
  std::vector<uint8_t> w(eb * E, 0);
  std::vector<std::vector<uint8_t>> ew;
  for (uint32_t e = 0; e < E; ++e) {
    ew.push_back(kernels::ref::random_weights(type, rows, cols, 0.5f, seed * 1000 + e));
    std::copy(ew.back().begin(), ew.back().end(), w.begin() + static_cast<ptrdiff_t>(e * eb));
  }
  std::mt19937 rng(static_cast<uint32_t>(seed));
  std::normal_distribution<float> nd(0.0f, 1.0f);
  uint32_t n_slots = 0;
  for (uint32_t c : counts) n_slots += c;
  if (by_slot) x_rows += n_slots;
  std::vector<float> x(size_t{x_rows} * cols);
  std::vector<uint16_t> xh;
  for (auto& v : x) {
    v = nd(rng);
    if (x_f16) {
      xh.push_back(quant::f32_to_f16(v));
      v = quant::f16_to_f32(xh.back());
    }
  }
  std::vector<uint32_t> offsets(E + 1, 0), ids;
  for (uint32_t e = 0; e < E; ++e) offsets[e + 1] = offsets[e] + counts[e];
  const uint32_t slots = offsets[E];
  std::uniform_int_distribution<uint32_t> pick(0, x_rows - 1);
  for (uint32_t s = 0; s < slots; ++s) ids.push_back(by_slot ? s : pick(rng));

  auto wb = dev.buffer(w.size()), xb = dev.buffer(x_f16 ? (xh.size() * 2 + 3) / 4 * 4 : x.size() * 4),
       ob = dev.buffer(offsets.size() * 4), ib = dev.buffer(std::max<size_t>(ids.size(), 1) * 4),
       yb = dev.buffer(std::max<size_t>(size_t{slots} * rows, 1) * 4);
  ASSERT_TRUE(wb.ok() && xb.ok() && ob.ok() && ib.ok() && yb.ok());
  ASSERT_TRUE(wb->upload(w.data(), w.size()).ok());
  ASSERT_TRUE((x_f16 ? xb->upload(xh.data(), xh.size() * 2) : xb->upload(x.data(), x.size() * 4)).ok());
  ASSERT_TRUE(ob->upload(offsets.data(), offsets.size() * 4).ok());
  if (!ids.empty()) ASSERT_TRUE(ib->upload(ids.data(), ids.size() * 4).ok());
  ASSERT_TRUE(yb->fill(kNaN).ok());
  auto s = dev.stream();
  ASSERT_TRUE(s.ok());
  ops::GroupedMatmulCall call{type, rows, cols, E, eb, slots, x_rows, 0, x_f16, by_slot};
  Status st = op.record_grouped(*s, call, *wb, *xb, *ob, *ib, *yb);
  ASSERT_TRUE(st.ok()) << st.ToString();
  ASSERT_TRUE(s->submit_and_wait().ok());
  std::vector<float> got(size_t{slots} * rows);
  if (slots) ASSERT_TRUE(yb->download(got.data(), got.size() * 4).ok());
  for (size_t i = 0; i < got.size(); ++i) ASSERT_TRUE(std::isfinite(got[i])) << "slot " << i / rows << " not written";
  double err2 = 0, ref2 = 0;
  const uint32_t step = sample && slots > sample ? slots / sample : 1;
  for (uint32_t e = 0; e < E; ++e) {
    for (uint32_t sl = offsets[e]; sl < offsets[e + 1]; ++sl) {
      if ((sl - offsets[e]) % step != 0 && sl + 1 != offsets[e + 1]) continue;
      std::vector<float> xr(x.begin() + size_t{ids[sl]} * cols, x.begin() + size_t{ids[sl] + 1} * cols), want(rows);
      ASSERT_TRUE(kernels::ref::matmul({type, rows, cols, ew[e]}, xr, 1, want).ok());
      for (uint32_t r = 0; r < rows; ++r) {
        const double g = got[size_t{sl} * rows + r];
        err2 += (g - want[r]) * (g - want[r]);
        ref2 += double(want[r]) * want[r];
      }
    }
  }
  if (slots) EXPECT_LT(std::sqrt(err2), bound * std::sqrt(ref2)) << "relative error " << std::sqrt(err2 / ref2);
}

std::vector<MatmulPath> grouped_paths(const vk::Device& dev) {
  std::vector<MatmulPath> out;
  if (const char* env = std::getenv("TROVE_MATMUL"); env && *env) {
    std::string v(env);
    out.push_back(v == "cm2" ? MatmulPath::kCm2 : v == "khr" ? MatmulPath::kKhr : MatmulPath::kTiled);
    return out;
  }
  out.push_back(MatmulPath::kTiled);
  for (MatmulPath p : {MatmulPath::kKhr, MatmulPath::kCm2})
    if (ops::Matmul::available(dev, p)) out.push_back(p);
  return out;
}
}  // namespace

// Adversarial distributions: every slot to one expert (the last), experts without slots between
// others, single slots, an uneven random spread; several weight types and both activation types.
TEST(GroupedMatmul, MatchesReferenceForAdversarialRoutings) {
  auto dev = open_device();
  ASSERT_TRUE(dev);
  uint64_t seed = 500;
  for (MatmulPath path : grouped_paths(*dev)) {
    auto op = ops::Matmul::create(*dev, path);
    ASSERT_TRUE(op.ok()) << op.status().ToString();
    const double bound = path == MatmulPath::kTiled ? 1e-5 : 2e-3;
    for (GgmlType type : {GgmlType::Q4_K, GgmlType::Q8_0, GgmlType::F16, GgmlType::Q6_K}) {
      check_grouped(*dev, *op, type, 96, 256, {0, 0, 0, 0, 0, 0, 0, 70}, 40, seed++, bound);  // all to one expert
      check_grouped(*dev, *op, type, 96, 256, {5, 0, 0, 1, 0, 33, 0, 2}, 30, seed++, bound);  // empty experts between
      check_grouped(*dev, *op, type, 80, 256, {0, 1, 0, 0, 0, 0, 0, 0}, 1, seed++, bound);    // one slot
    }
    check_grouped(*dev, *op, GgmlType::Q5_K, 130, 512, {17, 3, 64, 0, 9, 1, 70, 12}, 64, seed++, bound, false);  // f32 x
    check_grouped(*dev, *op, GgmlType::BF16, 64, 96, {2, 0, 7}, 5, seed++, bound);
    if (full()) {
      // Qwen3-30B-A3B prefill at 512 tokens × 8 experts, skewed: the gate/up shape, 128 × [768 × 2048].
      std::mt19937 rng(7);
      std::vector<uint32_t> counts(128, 0);
      for (uint32_t i = 0; i < 512 * 8; ++i) ++counts[std::min<uint32_t>(127, static_cast<uint32_t>(std::abs(std::normal_distribution<float>(0, 40)(rng))))];
      check_grouped(*dev, *op, GgmlType::Q4_K, 768, 2048, counts, 512, seed++, path == MatmulPath::kTiled ? 1e-5 : 2e-3, true, 64);
    }
  }
}

// The cm2 grouped kernel's other tiles and variants 1 and 2 (matmul.h: TROVE_GROUPED_TILE, TROVE_CM2_VARIANT)
// on the adversarial routings: every slot to one expert (several slot tiles), empty experts, one
// slot, K of three blocks. Skipped where the device has no NV cooperative matrix 2 (lavapipe).
TEST(GroupedMatmul, Cm2TilesAndVariantsMatchReference) {
  auto dev = open_device();
  ASSERT_TRUE(dev);
  std::string why;
  if (!ops::Matmul::available(*dev, MatmulPath::kCm2, &why)) GTEST_SKIP() << "no cm2 here: " << why;
  if (!dev->features().coopmat2_per_element) GTEST_SKIP() << "no cm2 per-element operations here";
  auto op = ops::Matmul::create(*dev, MatmulPath::kCm2);
  ASSERT_TRUE(op.ok()) << op.status().ToString();
  struct Cfg { uint32_t bm, bn, variant; };
  uint64_t seed = 800;
  for (const Cfg& c :
       {Cfg{64, 64, 1}, Cfg{128, 32, 1}, Cfg{64, 32, 0}, Cfg{64, 64, 2}, Cfg{64, 32, 1}, Cfg{128, 128, 1}}) {
    SCOPED_TRACE(testing::Message() << "tile " << c.bm << "x" << c.bn << " variant " << c.variant);
    op->force_grouped_tile(c.bm, c.bn);
    op->force_cm2_variant(c.variant);
    for (GgmlType type : {GgmlType::Q4_K, GgmlType::Q6_K, GgmlType::F16}) {  // F16: the f16 experts
      check_grouped(*dev, *op, type, 160, 768, {0, 0, 0, 0, 0, 0, 0, 70}, 40, seed++, 2e-3);  // all to one expert
      check_grouped(*dev, *op, type, 96, 256, {5, 0, 0, 1, 0, 33, 0, 2}, 30, seed++, 2e-3);   // empty experts between
      check_grouped(*dev, *op, type, 80, 512, {0, 1, 0, 0, 0, 0, 0, 0}, 1, seed++, 2e-3);     // one slot
    }
  }
  op->force_grouped_tile(128, 64, 32);  // BK 32
  op->force_cm2_variant(1);
  check_grouped(*dev, *op, GgmlType::Q5_K, 130, 512, {17, 3, 64, 0, 9, 1, 70, 12}, 64, seed++, 2e-3, false);  // f32 x
  op->force_grouped_tile(64, 64);  // f16 accumulators (TROVE_MATMUL_ACC=f16): a wider bound
  op->force_acc_f16(true);
  for (uint32_t variant : {0u, 1u}) {
    op->force_cm2_variant(variant);
    check_grouped(*dev, *op, GgmlType::Q4_K, 160, 768, {0, 0, 0, 0, 0, 0, 0, 70}, 40, seed++, 2e-2);
    check_grouped(*dev, *op, GgmlType::Q6_K, 96, 256, {5, 0, 0, 1, 0, 33, 0, 2}, 30, seed++, 2e-2);
  }
}

// x in slot order (GroupedMatmulCall::x_by_slot, MoE down): the cm2 kernel loads the rows as they lie
// (the last slot tile reads past the last slot into rows that must not matter); the other kernels
// gather through the identity row_ids. Every path the device has; on cm2 the default tile (variant 2,
// the default of slot-ordered loads), 128-wide tiles and variant 0. Off the cm2 grouped kernel (the
// tiled path) grouped_loads_slot_order() says no, and force_by_slot(false) says no everywhere.
// (NoSlotsIsANoOpAndBadShapesAreNamed checks the refusal of fewer x rows than slots.)
TEST(GroupedMatmul, SlotOrderedInputMatchesReference) {
  auto dev = open_device();
  ASSERT_TRUE(dev);
  uint64_t seed = 900;
  for (MatmulPath path : grouped_paths(*dev)) {
    auto op = ops::Matmul::create(*dev, path);
    ASSERT_TRUE(op.ok()) << op.status().ToString();
    op->force_by_slot(true);
    if (path == MatmulPath::kTiled) EXPECT_FALSE(op->grouped_loads_slot_order());
    if (path == MatmulPath::kCm2) {
      EXPECT_EQ(op->grouped_loads_slot_order(), dev->features().coopmat2_per_element);
    }
    const double bound = path == MatmulPath::kTiled ? 1e-5 : 2e-3;
    for (int tile = 0; tile < (path == MatmulPath::kCm2 ? 3 : 1); ++tile) {
      SCOPED_TRACE(testing::Message() << "tile form " << tile);
      if (tile == 1) op->force_grouped_tile(128, 128);
      if (tile == 2) op->force_grouped_tile(64, 64), op->force_grouped_variant(0);
      for (GgmlType type : {GgmlType::Q6_K, GgmlType::Q4_K}) {
        check_grouped(*dev, *op, type, 96, 256, {5, 0, 0, 1, 0, 33, 0, 2}, 7, seed++, bound, true, 0, true);
        check_grouped(*dev, *op, type, 160, 768, {0, 0, 0, 0, 0, 0, 0, 70}, 0, seed++, bound, true, 0, true);
      }
      check_grouped(*dev, *op, GgmlType::Q5_K, 130, 512, {17, 3, 64, 0, 9, 1, 70, 12}, 3, seed++, bound, false, 0, true);
    }
    op->force_by_slot(false);
    EXPECT_FALSE(op->grouped_loads_slot_order());
  }
}

// The cm2 grouped tile by slots an expert (Matmul::grouped_tile, kGroupedLargeSlotsPerExpert): 128 x 128
// for slot-ordered calls from 128 slots an expert on average (a 2048-token step of 128 experts x 8),
// 64 x 64 below it, for gathered calls and with slot-ordered loads off; a forced tile (TROVE_GROUPED_TILE,
// force_grouped_tile) wins. The rule alone, on any device (the kernels it picks are tested above).
TEST(GroupedMatmul, LargeTilesFromManySlotsPerExpert) {
  auto dev = open_device();
  ASSERT_TRUE(dev);
  auto op = ops::Matmul::create(*dev, MatmulPath::kTiled);
  ASSERT_TRUE(op.ok());
  const uint32_t E = 128, per = ops::Matmul::kGroupedLargeSlotsPerExpert;
  auto call = [&](uint32_t slots, bool by_slot) {
    return ops::GroupedMatmulCall{GgmlType::Q4_K, 768, 2048, E, 768 * 1152, slots, slots, 0, true, by_slot};
  };
  using Tile = std::pair<uint32_t, uint32_t>;
  EXPECT_EQ(op->grouped_tile(call(per * E, true)), Tile(128, 128));
  EXPECT_EQ(op->grouped_tile(call(per * E - 1, true)), Tile(64, 64));
  EXPECT_EQ(op->grouped_tile(call(512 * 8, true)), Tile(64, 64));
  EXPECT_EQ(op->grouped_tile(call(per * E, false)), Tile(64, 64));  // gathered x
  op->force_by_slot(false);
  EXPECT_EQ(op->grouped_tile(call(per * E, true)), Tile(64, 64));
  op->force_by_slot(true);
  op->force_grouped_tile(64, 32);
  EXPECT_EQ(op->grouped_tile(call(per * E, true)), Tile(64, 32));
  {
    tests::ScopedEnv tile("TROVE_GROUPED_TILE", "64x64");
    auto forced = ops::Matmul::create(*dev, MatmulPath::kTiled);
    ASSERT_TRUE(forced.ok());
    EXPECT_EQ(forced->grouped_tile(call(per * E, true)), Tile(64, 64));
  }
}

TEST(GroupedMatmul, NoSlotsIsANoOpAndBadShapesAreNamed) {
  auto dev = open_device();
  ASSERT_TRUE(dev);
  auto op = ops::Matmul::create(*dev, MatmulPath::kTiled);
  ASSERT_TRUE(op.ok());
  auto b = dev->buffer(1 << 16);
  ASSERT_TRUE(b.ok());
  auto s = dev->stream();
  ASSERT_TRUE(s.ok());
  ops::GroupedMatmulCall call{GgmlType::Q4_K, 64, 256, 4, 64 * 144, 0, 8, 0, true};
  EXPECT_TRUE(op->record_grouped(*s, call, *b, *b, *b, *b, *b).ok());
  call.slots = 16;
  call.expert_bytes = 100;  // not a multiple of 16
  Status st = op->record_grouped(*s, call, *b, *b, *b, *b, *b);
  EXPECT_EQ(st.code(), StatusCode::kInvalidArgument);
  EXPECT_NE(st.message().find("expert bytes"), std::string::npos) << st.message();
  call.expert_bytes = 64 * 144;
  call.x_by_slot = true;  // 8 x rows for 16 slots in slot order
  st = op->record_grouped(*s, call, *b, *b, *b, *b, *b);
  EXPECT_EQ(st.code(), StatusCode::kInvalidArgument);
  EXPECT_NE(st.message().find("x_by_slot"), std::string::npos) << st.message();
}
