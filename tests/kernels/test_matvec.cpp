// Decode matvec (kernels/ops/matvec.h) against the float64 reference (kernels/ref/matvec_ref.h):
// every weight type × batch 1, 3, 8 × each epilogue, several matrices of different types and row
// counts in one dispatch (odd rows, rows not a multiple of the rows per workgroup), y strides larger
// than rows, activations staged in several tiles, other work splits, the GPUs' unrolled form. Fresh
// random weights, activations, norm weights and residuals on every run (the seed is printed on
// failure); every output buffer is poisoned with NaN first, and the entries between strided rows must
// still be the poison afterwards. Bound: 1e-5 of the norm of the matvec part of the output (f32
// accumulation over <= 2048 terms, ~1e-7 expected). Cost on lavapipe: ~23 s of CPU with an empty Mesa
// shader cache, ~10 s with a warm one, nearly all of it compiling ~30 pipelines (one per batch size ×
// set of types; the suite shares one op so tests reuse them). TROVE_KERNEL_FULL=1 adds the real Qwen3
// shapes (8B fused q/k/v, gate+up, down, 30B-A3B q/k/v, the 151936-row head in 32768-row pieces).
#include <algorithm>
#include <bit>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <optional>
#include <random>
#include <string>
#include <tuple>
#include <vector>

#include <fmt/format.h>
#include <gtest/gtest.h>

#include "kernels/ops/matvec.h"
#include "kernels/ref/matvec_ref.h"
#include "tests/scoped_env.h"

using namespace trove;
using quant::GgmlType;
using ops::MatvecEpilogue;

namespace {
constexpr uint32_t kNaN = 0x7fc00000u;

bool full_shapes() {
  const char* full = std::getenv("TROVE_KERNEL_FULL");
  return full && std::string(full) == "1";
}

struct Mat {
  GgmlType type;
  uint32_t rows;
  uint32_t y_stride = 0;  // 0 = rows
};

struct Case {
  uint32_t cols = 256, batch = 1;
  bool norm = false;
  MatvecEpilogue epilogue = MatvecEpilogue::kStore;
  std::vector<Mat> mats;
  bool residual_is_x = false;  // kAdd: y starts as a copy of x (needs rows == cols)
  double bound = 1e-5;
  bool exact = false;  // check_columns: the batched call's columns equal batch-1 calls' bit for bit
  bool batch1_bits = true;  // MatvecCall::batch1_bits
};

std::string describe(const Case& c) {
  std::string s = "cols " + std::to_string(c.cols) + " batch " + std::to_string(c.batch) + (c.norm ? " +norm" : "") +
                  (c.epilogue == MatvecEpilogue::kStore ? " store" : c.epilogue == MatvecEpilogue::kAdd ? " add" : " swiglu");
  for (const auto& m : c.mats) {
    s += fmt::format(" [{} {}x{}{}]", quant::traits(m.type)->name, m.rows, c.cols,
                     m.y_stride ? " stride " + std::to_string(m.y_stride) : "");
  }
  return s;
}

Result<vk::Buffer> upload(vk::Device& dev, const void* data, size_t bytes) {
  auto b = dev.buffer((bytes + 3) / 4 * 4);
  if (!b.ok()) return b.status();
  TROVE_RETURN_IF_ERROR(b->upload(data, bytes));
  return b;
}

// One case's random draw from `seed`: Gaussian activations x [batch][cols], norm weights in
// [0.5, 1.5) when the case has the norm prologue, the reference's x̂ (x · norm_w / rms, kernels/ref),
// and the generator and normal distribution the caller goes on drawing weights and residuals from.
struct Draw {
  std::mt19937_64 r;
  std::normal_distribution<float> nd{0.0f, 1.0f};
  std::vector<float> x, norm_w;
  std::vector<double> xhat;
};

// Nullopt (a gtest failure recorded) when the reference refuses.
std::optional<Draw> draw(const Case& c, uint64_t seed) {
  Draw d;
  d.r.seed(seed);
  std::uniform_real_distribution<float> uw(0.5f, 1.5f);
  d.x.resize(size_t{c.batch} * c.cols);
  d.norm_w.resize(c.norm ? c.cols : 0);
  for (auto& v : d.x) v = d.nd(d.r);
  for (auto& v : d.norm_w) v = uw(d.r);
  auto h = kernels::ref::matvec_prologue(d.x, c.batch, c.cols, d.norm_w, 1e-6);
  EXPECT_TRUE(h.ok()) << h.status().ToString();
  if (!h.ok()) return std::nullopt;
  d.xhat = std::move(*h);
  return d;
}

// Runs one call on the GPU and the reference, checks the outputs. Returns false on a failure (gtest
// failures are recorded too), so that loops can stop at the first broken case. `outs`: each checked
// output's values as the GPU wrote them.
bool check(vk::Device& dev, const ops::Matvec& op, const Case& c, std::mt19937_64& rng,
           std::vector<std::vector<float>>* outs = nullptr) {
  const uint64_t seed = rng();
  SCOPED_TRACE(describe(c) + " seed " + std::to_string(seed));
  auto d = draw(c, seed);
  if (!d) return false;
  auto& [r, nd, x, norm_w, xhat] = *d;
  const uint32_t B = c.batch, C = c.cols;
  const bool swiglu = c.epilogue == MatvecEpilogue::kSwiGlu, add = c.epilogue == MatvecEpilogue::kAdd;

  ops::MatvecCall call;
  call.cols = C;
  call.batch = B;
  call.eps = 1e-6f;
  call.epilogue = c.epilogue;
  call.n_mats = static_cast<uint32_t>(c.mats.size());
  call.batch1_bits = c.batch1_bits;
  std::vector<std::vector<uint8_t>> wbytes(c.mats.size());
  std::vector<vk::Buffer> wbuf, ybuf;
  std::vector<std::vector<float>> expect(c.mats.size()), residual(c.mats.size());
  for (size_t m = 0; m < c.mats.size(); ++m) {
    const Mat& mat = c.mats[m];
    const uint32_t stride = mat.y_stride ? mat.y_stride : mat.rows;
    wbytes[m] = kernels::ref::random_weights(mat.type, mat.rows, C, 0.5f, r());
    auto wb = upload(dev, wbytes[m].data(), wbytes[m].size());
    EXPECT_TRUE(wb.ok());
    if (!wb.ok()) return false;
    const size_t ny = size_t{B - 1} * stride + mat.rows;
    // Poison everything, then (kAdd) write the residual rows; the gaps of a stride stay NaN.
    std::vector<float> y0(ny);
    std::memcpy(y0.data(), std::vector<uint32_t>(ny, kNaN).data(), ny * 4);
    if (add) {
      for (uint32_t b = 0; b < B; ++b) {
        for (uint32_t i = 0; i < mat.rows; ++i) y0[size_t{b} * stride + i] = c.residual_is_x ? x[size_t{b} * C + i] : nd(r);
      }
    }
    auto yb = dev.buffer(ny * 4);
    EXPECT_TRUE(yb.ok() && yb->fill(kNaN).ok() && (!add || yb->upload(y0.data(), ny * 4).ok()));
    if (!yb.ok()) return false;
    residual[m] = y0;
    expect[m] = y0;
    call.mats[m] = {mat.type, mat.rows, vk::BufferRange(*wb), vk::BufferRange(*yb), mat.y_stride};
    wbuf.push_back(std::move(*wb));
    ybuf.push_back(std::move(*yb));
  }
  auto xb = upload(dev, x.data(), x.size() * 4);
  EXPECT_TRUE(xb.ok());
  if (!xb.ok()) return false;
  call.x = *xb;
  vk::Buffer nb;
  if (c.norm) {
    auto n = upload(dev, norm_w.data(), norm_w.size() * 4);
    EXPECT_TRUE(n.ok());
    if (!n.ok()) return false;
    nb = std::move(*n);
    call.norm_w = nb;
  }

  auto s = dev.stream();
  EXPECT_TRUE(s.ok());
  if (!s.ok()) return false;
  Status st = op.record(*s, call);
  EXPECT_TRUE(st.ok()) << st.ToString();
  if (!st.ok()) return false;
  EXPECT_TRUE(s->submit_and_wait().ok());

  // Reference.
  auto wm = [&](size_t m) {
    return kernels::ref::WeightMatrix{c.mats[m].type, c.mats[m].rows, C, wbytes[m]};
  };
  if (swiglu) {
    const uint32_t stride = c.mats[0].y_stride ? c.mats[0].y_stride : c.mats[0].rows;
    EXPECT_TRUE(kernels::ref::matvec_swiglu(wm(0), wm(1), xhat, B, expect[0], stride).ok());
  } else {
    for (size_t m = 0; m < c.mats.size(); ++m) {
      const uint32_t stride = c.mats[m].y_stride ? c.mats[m].y_stride : c.mats[m].rows;
      EXPECT_TRUE(kernels::ref::matvec(wm(m), xhat, B, expect[m], stride, add).ok());
    }
  }

  bool ok = true;
  for (size_t m = 0; m < (swiglu ? 1 : c.mats.size()); ++m) {
    const uint32_t rows = c.mats[m].rows, stride = c.mats[m].y_stride ? c.mats[m].y_stride : rows;
    std::vector<float> got(expect[m].size());
    EXPECT_TRUE(ybuf[m].download(got.data(), got.size() * 4).ok());
    if (outs) outs->push_back(got);
    double err2 = 0, ref2 = 0;
    for (uint32_t b = 0; b < B; ++b) {
      for (uint32_t i = 0; i < stride && size_t{b} * stride + i < got.size(); ++i) {
        const size_t k = size_t{b} * stride + i;
        uint32_t bits;
        std::memcpy(&bits, &got[k], 4);
        if (i >= rows) {  // between two batch rows of a strided output: never written
          EXPECT_EQ(bits, kNaN) << "matrix " << m << " wrote outside its rows at " << k;
          if (bits != kNaN) return false;
          continue;
        }
        if (!std::isfinite(got[k])) {
          ADD_FAILURE() << "matrix " << m << " output " << k << " (batch " << b << ", row " << i << ") not written: " << got[k];
          return false;
        }
        const double base = add ? residual[m][k] : 0.0;  // the matvec part's norm is the scale
        err2 += (double(got[k]) - expect[m][k]) * (double(got[k]) - expect[m][k]);
        ref2 += (double(expect[m][k]) - base) * (double(expect[m][k]) - base);
      }
    }
    const double rel = std::sqrt(err2 / ref2);
    EXPECT_LT(rel, c.bound) << "matrix " << m;
    if (!(rel < c.bound)) ok = false;
  }
  return ok;
}

// Each checked output of case c run by op, its inputs drawn from `seed` (check's failures recorded), for
// comparing two ops or settings on the same draw.
std::vector<std::vector<float>> outputs_of(vk::Device& dev, const ops::Matvec& op, const Case& c,
                                           uint64_t seed) {
  std::mt19937_64 r(seed);
  std::vector<std::vector<float>> out;
  EXPECT_TRUE(check(dev, op, c, r, &out)) << describe(c);
  return out;
}

bool same_bits(const std::vector<std::vector<float>>& a, const std::vector<std::vector<float>>& b) {
  if (a.size() != b.size()) return false;
  for (size_t m = 0; m < a.size(); ++m) {
    if (a[m].size() != b[m].size() || std::memcmp(a[m].data(), b[m].data(), a[m].size() * 4) != 0)
      return false;
  }
  return true;
}

}  // namespace

// The device's f32 form (kAuto without q8: GPUs take the q8 form for batch-1 calls by default), the
// tuning of the tests held to the f32 bounds; the q8 tests set their form themselves.
static ops::MatvecTuning f32() {
  ops::MatvecTuning t;
  t.form = ops::MatvecTuning::Form::kF32;
  return t;
}

// One device and one op for the whole suite, so that a pipeline compiled for one test is reused by
// the others (lavapipe compiles each in ~0.7 s of CPU); each test starts from the default tuning.
class Matvec : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    auto d = vk::Device::open();
    if (!d.ok()) return;
    dev_ = std::move(*d).release();
    auto o = ops::Matvec::create(*dev_);
    if (o.ok()) op_ = new ops::Matvec(std::move(*o));
  }
  static void TearDownTestSuite() {
    delete op_;
    op_ = nullptr;
    delete dev_;
    dev_ = nullptr;
  }
  void SetUp() override {
    ASSERT_NE(dev_, nullptr) << "no Vulkan device";
    ASSERT_NE(op_, nullptr) << "ops::Matvec::create failed";
    op_->set_tuning(f32());
  }
  bool run(const Case& c) { return check(*dev_, *op_, c, rng_); }
  // The q8 coopmat form's cases on `kernel` (MatvecTuning::q8cm_kernel: 1 shared memory, 2 registers),
  // then the same kernel chosen by its environment variables.
  void check_q8_coopmat(uint32_t kernel);
  static vk::Device* dev_;
  static ops::Matvec* op_;
  std::mt19937_64 rng_{std::random_device{}()};
};
vk::Device* Matvec::dev_ = nullptr;
ops::Matvec* Matvec::op_ = nullptr;

namespace {
// One call of c.batch columns and, in the same stream, one batch-1 call per column (x, residual and
// output ranges of that column), every output poisoned first. Each batch-1 column must equal the
// batched call's column to within f32 noise (1e-5 of the column's matvec norm: the same numbers,
// whatever the batch — what speculative verification relies on, bench_spec --verify-cost), and the
// batched output the float64 reference to within c.bound. Row counts multiples of 64 (the column
// ranges stay 256-byte aligned); y stride = rows.
bool check_columns(vk::Device& dev, const ops::Matvec& op, const Case& c, std::mt19937_64& rng) {
  const uint64_t seed = rng();
  SCOPED_TRACE(describe(c) + " against batch-1 calls, seed " + std::to_string(seed));
  auto d = draw(c, seed);
  if (!d) return false;
  auto& [r, nd, x, norm_w, xhat] = *d;
  const uint32_t B = c.batch, C = c.cols;
  const bool swiglu = c.epilogue == MatvecEpilogue::kSwiGlu, add = c.epilogue == MatvecEpilogue::kAdd;
  const size_t n_out = swiglu ? 1 : c.mats.size();
  auto xb = upload(dev, x.data(), x.size() * 4);
  EXPECT_TRUE(xb.ok());
  if (!xb.ok()) return false;
  vk::Buffer nb;
  if (c.norm) {
    auto n = upload(dev, norm_w.data(), norm_w.size() * 4);
    EXPECT_TRUE(n.ok());
    if (!n.ok()) return false;
    nb = std::move(*n);
  }
  std::vector<std::vector<uint8_t>> wbytes(c.mats.size());
  std::vector<vk::Buffer> wbuf, ybatch, yone;
  std::vector<std::vector<float>> start(c.mats.size());  // NaN, or the residual (kAdd)
  for (size_t m = 0; m < c.mats.size(); ++m) {
    EXPECT_TRUE(c.mats[m].rows % 64 == 0 && c.mats[m].y_stride == 0) << "check_columns takes rows of 64s, no stride";
    wbytes[m] = kernels::ref::random_weights(c.mats[m].type, c.mats[m].rows, C, 0.5f, r());
    auto wb = upload(dev, wbytes[m].data(), wbytes[m].size());
    EXPECT_TRUE(wb.ok());
    if (!wb.ok()) return false;
    wbuf.push_back(std::move(*wb));
    const size_t ny = size_t{B} * c.mats[m].rows;
    start[m].resize(ny);
    std::memcpy(start[m].data(), std::vector<uint32_t>(ny, kNaN).data(), ny * 4);
    if (add) for (auto& v : start[m]) v = nd(r);
    for (auto* ys : {&ybatch, &yone}) {
      auto yb = upload(dev, start[m].data(), ny * 4);
      EXPECT_TRUE(yb.ok());
      if (!yb.ok()) return false;
      ys->push_back(std::move(*yb));
    }
  }
  auto call_of = [&](uint32_t b0, uint32_t n, std::vector<vk::Buffer>& ys) {
    ops::MatvecCall call;
    call.cols = C;
    call.batch = n;
    call.eps = 1e-6f;
    call.epilogue = c.epilogue;
    call.n_mats = static_cast<uint32_t>(c.mats.size());
    call.x = vk::BufferRange(*xb, uint64_t{b0} * C * 4, uint64_t{n} * C * 4);
    if (c.norm) call.norm_w = nb;
    for (size_t m = 0; m < c.mats.size(); ++m) {
      const uint32_t rows = c.mats[m].rows;
      vk::BufferRange y;
      if (m < n_out) y = vk::BufferRange(ys[m], uint64_t{b0} * rows * 4, uint64_t{n} * rows * 4);
      call.mats[m] = {c.mats[m].type, rows, vk::BufferRange(wbuf[m]), y, 0};
    }
    return call;
  };
  auto s = dev.stream();
  EXPECT_TRUE(s.ok());
  if (!s.ok()) return false;
  Status st = op.record(*s, call_of(0, B, ybatch));
  for (uint32_t b = 0; b < B && st.ok(); ++b) st = op.record(*s, call_of(b, 1, yone));
  EXPECT_TRUE(st.ok()) << st.ToString();
  if (!st.ok()) return false;
  EXPECT_TRUE(s->submit_and_wait().ok());

  auto wm = [&](size_t m) { return kernels::ref::WeightMatrix{c.mats[m].type, c.mats[m].rows, C, wbytes[m]}; };
  bool ok = true;
  for (size_t m = 0; m < n_out; ++m) {
    const uint32_t rows = c.mats[m].rows;
    std::vector<float> expect = start[m], got(expect.size()), one(expect.size());
    if (swiglu) {
      EXPECT_TRUE(kernels::ref::matvec_swiglu(wm(0), wm(1), xhat, B, expect, rows).ok());
    } else {
      EXPECT_TRUE(kernels::ref::matvec(wm(m), xhat, B, expect, rows, add).ok());
    }
    EXPECT_TRUE(ybatch[m].download(got.data(), got.size() * 4).ok() && yone[m].download(one.data(), one.size() * 4).ok());
    double err2 = 0, ref2 = 0;
    for (uint32_t b = 0; b < B; ++b) {
      double d2 = 0, n2 = 0;
      for (uint32_t i = 0; i < rows; ++i) {
        const size_t k = size_t{b} * rows + i;
        if (!std::isfinite(got[k]) || !std::isfinite(one[k])) {
          ADD_FAILURE() << "matrix " << m << " column " << b << " row " << i << " not written: batched " << got[k]
                        << ", batch 1 " << one[k];
          return false;
        }
        const double base = add ? start[m][k] : 0.0;
        d2 += (double(got[k]) - one[k]) * (double(got[k]) - one[k]);
        n2 += (double(one[k]) - base) * (double(one[k]) - base);
        err2 += (double(got[k]) - expect[k]) * (double(got[k]) - expect[k]);
        ref2 += (expect[k] - base) * (expect[k] - base);
      }
      const double rel = std::sqrt(d2 / n2);
      EXPECT_LT(rel, 1e-5) << "matrix " << m << " column " << b << ": the batch-" << B
                           << " call differs from a batch-1 call of the same column";
      if (!(rel < 1e-5)) ok = false;
      if (c.exact && std::memcmp(got.data() + size_t{b} * rows, one.data() + size_t{b} * rows, rows * 4) != 0) {
        ADD_FAILURE() << "matrix " << m << " column " << b << ": the batch-" << B
                      << " call's numbers are not bit for bit a batch-1 call's (relative difference " << rel << ")";
        ok = false;
      }
    }
    const double rel = std::sqrt(err2 / ref2);
    EXPECT_LT(rel, c.bound) << "matrix " << m << " against the float64 reference";
    if (!(rel < c.bound)) ok = false;
  }
  return ok;
}
}  // namespace

namespace {
using G = GgmlType;
// The three sets of three matrices that cover the seven types (C is the Q4_K_M attention shape: q
// and k Q4_K, v Q6_K), with odd row counts, none a multiple of the 16 rows of a workgroup.
std::vector<Mat> set_a(uint32_t gap) { return {{G::F32, 37, 37 + gap}, {G::F16, 70}, {G::BF16, 5}}; }
std::vector<Mat> set_b(uint32_t gap) { return {{G::Q8_0, 37}, {G::Q4_K, 70, 70 + gap}, {G::Q5_K, 19}}; }
std::vector<Mat> set_c(uint32_t gap, uint32_t q_rows = 131) { return {{G::Q4_K, q_rows}, {G::Q4_K, 19}, {G::Q6_K, 19, 19 + gap}}; }
}  // namespace

// Each weight type under each epilogue at batch 1, 3 and 8, three types per dispatch (pipelines are
// specialized per set of types: grouping keeps lavapipe's compile time down). Store and add share a
// pipeline (a run-time flag); SwiGLU pairs cover one type twice (one pass over each tile) and
// different types (two passes).
TEST_F(Matvec, EveryTypeBatchAndEpilogue) {
  for (uint32_t batch : {1u, 3u, 8u}) {
    const uint32_t gap = batch > 1 ? 4 : 0;  // strided outputs leave gaps that must stay NaN
    for (const auto& mats : {set_a(gap), set_b(gap), set_c(gap)}) {
      ASSERT_TRUE(run({512, batch, false, MatvecEpilogue::kStore, mats}));
      ASSERT_TRUE(run({512, batch, true, MatvecEpilogue::kAdd, mats}));
    }
    ASSERT_TRUE(run({512, batch, true, MatvecEpilogue::kSwiGlu, {{G::Q4_K, 45, 45 + gap}, {G::Q4_K, 45}}}));
    ASSERT_TRUE(run({512, batch, true, MatvecEpilogue::kSwiGlu, {{G::Q5_K, 45}, {G::Q6_K, 45}}}));
    ASSERT_TRUE(run({512, batch, false, MatvecEpilogue::kSwiGlu, {{G::BF16, 21}, {G::Q8_0, 21}}}));
    ASSERT_TRUE(run({512, batch, true, MatvecEpilogue::kSwiGlu, {{G::F32, 19, 19 + gap}, {G::F16, 19}}}));
  }
}

// The pre-norm residual pattern: y holds x itself before the call, y = x + W·norm(x).
TEST_F(Matvec, AddsIntoAResidualEqualToX) {
  for (uint32_t batch : {1u, 3u, 8u}) {
    Case c{512, batch, true, MatvecEpilogue::kAdd, set_c(0, 512)};
    c.residual_is_x = true;
    ASSERT_TRUE(run(c));
  }
}

// x larger than one tile of shared memory: staged in pieces, partial sums carried across tiles.
TEST_F(Matvec, ActivationsInSeveralTiles) {
  ops::MatvecTuning t = f32();
  t.tile_values = 256;  // 8 and 7 tiles
  op_->set_tuning(t);
  ASSERT_TRUE(run({2048, 1, true, MatvecEpilogue::kAdd, set_c(0, 29)}));
  ASSERT_TRUE(run({1792, 3, true, MatvecEpilogue::kSwiGlu, {{G::Q5_K, 17}, {G::Q6_K, 17}}}));
  op_->set_tuning(f32());
  // Batch 8 x 2048 columns fits neither lavapipe's 32 KiB nor 48 KiB: tiles by themselves.
  ASSERT_TRUE(run({2048, 8, true, MatvecEpilogue::kStore, set_c(4, 40)}));
}

// On lavapipe the loops over batch columns are not unrolled and rows are reduced without subgroup
// operations (compile time); this is the GPUs' form: unrolled loops, subgroupAdd first.
TEST_F(Matvec, GpuFormOfTheKernel) {
  ops::MatvecTuning t = f32();
  t.gpu_form = true;
  op_->set_tuning(t);
  ASSERT_TRUE(run({512, 3, true, MatvecEpilogue::kAdd, set_c(4)}));
  ASSERT_TRUE(run({512, 3, true, MatvecEpilogue::kSwiGlu, {{G::Q5_K, 45}, {G::Q6_K, 45}}}));
}

// The direct form (GPUs' default where subgroups have arithmetic: the row group is one subgroup, x read
// through the caches, subgroupAdd only): every weight type under each epilogue, batches 1, 3 and 8,
// SwiGLU with one and two types, the residual equal to x, and another work split (batch 8 once: lavapipe
// compiles the unrolled form for seconds). On lavapipe the
// subgroup is 8 lanes wide (4 or 16 with other vector widths): the same code with a narrower group.
TEST_F(Matvec, DirectForm) {
  ops::MatvecTuning t = f32();
  t.form = ops::MatvecTuning::Form::kDirect;
  op_->set_tuning(t);
  for (uint32_t batch : {1u, 3u}) {
    const uint32_t gap = batch > 1 ? 4 : 0;
    for (const auto& mats : {set_a(gap), set_b(gap), set_c(gap)}) {
      ASSERT_TRUE(run({512, batch, batch == 1, batch == 1 ? MatvecEpilogue::kAdd : MatvecEpilogue::kStore, mats}));
    }
    ASSERT_TRUE(run({512, batch, true, MatvecEpilogue::kSwiGlu, {{G::Q4_K, 45, 45 + gap}, {G::Q4_K, 45}}}));
    ASSERT_TRUE(run({512, batch, true, MatvecEpilogue::kSwiGlu, {{G::Q5_K, 45}, {G::Q6_K, 45}}}));
  }
  t.gpu_form = true;  // unrolled column loops, batch 8
  op_->set_tuning(t);
  ASSERT_TRUE(run({512, 8, true, MatvecEpilogue::kStore, set_c(4)}));
  t.gpu_form = false;
  op_->set_tuning(t);
  Case c{768, 3, true, MatvecEpilogue::kAdd, set_c(0, 768)};
  c.residual_is_x = true;
  ASSERT_TRUE(run(c));
  t.rows_per_group = 4;
  t.workgroup_size = 64;
  op_->set_tuning(t);
  ASSERT_TRUE(run({1024, 2, true, MatvecEpilogue::kStore, set_c(4, 300)}));
  ASSERT_TRUE(run({1024, 1, true, MatvecEpilogue::kSwiGlu, {{G::BF16, 21}, {G::Q8_0, 21}}}));
}

// The q8 form (TROVE_MATVEC=q8: x̂ rounded to int8 with a scale per 32 values, integer dot products):
// Q4_K, Q5_K, Q6_K, Q8_0 under each epilogue (batch 1), batches 3 and 8, SwiGLU with one and two
// types, strided outputs, the residual equal to x, workgroups walking several row blocks, 4 rows per
// group, and a call with an F32 matrix (runs the direct form). Few batch sizes × type sets: each is a
// pipeline lavapipe compiles for ~1 s (Q8FormQwenShapesOnAGpu takes batches 1, 2, 3, 5, 8 on a
// GPU). Bound 2e-2 of the output norm: the int8 rounding of x̂ costs ~0.6% for Gaussian activations
// (llama.cpp's q8_1 activations on GPUs do the same).
TEST_F(Matvec, Q8Form) {
  if (!op_->q8_supported()) {
    GTEST_SKIP() << "the device lacks integer dot products, subgroup arithmetic or subgroup shuffles (the q8 form is refused there)";
  }
  ops::MatvecTuning t = f32();
  t.form = ops::MatvecTuning::Form::kQ8;
  op_->set_tuning(t);
  // SwiGLU multiplies two rounded products (gate and up): 3e-2, as the MoE q8 test. One random draw of
  // the 45-row Q4_K SwiGLU case came to 2.01e-2 (seed 7788605605174537710, 2026-12-03).
  auto q8 = [](Case c) {
    c.bound = c.epilogue == MatvecEpilogue::kSwiGlu ? 3e-2 : 2e-2;
    return c;
  };
  const std::vector<Mat> set_q{{G::Q8_0, 37}, {G::Q4_K, 70}, {G::Q5_K, 19}};
  ASSERT_TRUE(run(q8({512, 1, false, MatvecEpilogue::kStore, set_q})));
  ASSERT_TRUE(run(q8({512, 1, true, MatvecEpilogue::kAdd, set_q})));
  ASSERT_TRUE(run(q8({512, 1, true, MatvecEpilogue::kStore, set_c(0)})));
  ASSERT_TRUE(run(q8({512, 1, true, MatvecEpilogue::kSwiGlu, {{G::Q4_K, 45}, {G::Q4_K, 45}}})));
  ASSERT_TRUE(run(q8({512, 1, true, MatvecEpilogue::kSwiGlu, {{G::Q5_K, 45}, {G::Q6_K, 45}}})));
  ASSERT_TRUE(run(q8({512, 3, true, MatvecEpilogue::kAdd, set_c(4)})));
  ASSERT_TRUE(run(q8({512, 3, true, MatvecEpilogue::kSwiGlu, {{G::Q4_K, 45, 49}, {G::Q4_K, 45}}})));
  ASSERT_TRUE(run(q8({512, 8, true, MatvecEpilogue::kAdd, set_c(4)})));
  Case c = q8({768, 3, true, MatvecEpilogue::kAdd, set_c(0, 768)});
  c.residual_is_x = true;
  ASSERT_TRUE(run(c));
  t.workgroups = 3;  // three workgroups walk all row blocks of the three matrices
  op_->set_tuning(t);
  ASSERT_TRUE(run(q8({512, 3, true, MatvecEpilogue::kAdd, set_c(4, 300)})));
  t.workgroups = 0;
  t.rows_per_group = 4;
  op_->set_tuning(t);
  ASSERT_TRUE(run(q8({1024, 1, true, MatvecEpilogue::kStore, set_q})));
  ASSERT_TRUE(run(q8({512, 1, true, MatvecEpilogue::kSwiGlu, {{G::Q4_K, 45}, {G::Q6_K, 45}}})));  // 8 row slots
  ASSERT_TRUE(run({512, 1, true, MatvecEpilogue::kStore, set_a(0)}));  // F32/F16/BF16: the direct form, 1e-5
}

// TROVE_MATVEC_ROWS / TROVE_MATVEC_SWIGLU_ROWS set the rows per row group of batch-1 q8 calls (A/B
// knobs): 4 rows each gives the reference's numbers; other values than 1, 2 and 4 are refused.
TEST_F(Matvec, TroveMatvecRowsSetsBatchOneRows) {
  auto make = [&](const char* rows, const char* swiglu_rows) {
    tests::ScopedEnv r("TROVE_MATVEC_ROWS", rows), w("TROVE_MATVEC_SWIGLU_ROWS", swiglu_rows);
    return ops::Matvec::create(*dev_);
  };
  for (auto [rows, swiglu_rows, name] : {std::tuple{"3", "", "TROVE_MATVEC_ROWS='3'"},
                                          std::tuple{"", "8", "TROVE_MATVEC_SWIGLU_ROWS='8'"}}) {
    auto bad = make(rows, swiglu_rows);
    ASSERT_FALSE(bad.ok()) << name;
    EXPECT_NE(bad.status().message().find(std::string(name) + " is not 1, 2 or 4"), std::string::npos)
        << bad.status().message();
  }
  if (!op_->q8_supported()) {
    GTEST_SKIP() << "the device lacks integer dot products, subgroup arithmetic or subgroup shuffles (the q8 form is refused there)";
  }
  auto op = make("4", "4");
  ASSERT_TRUE(op.ok()) << op.status().ToString();
  ops::MatvecTuning t = f32();
  t.form = ops::MatvecTuning::Form::kQ8;
  op->set_tuning(t);
  ASSERT_TRUE(check(*dev_, *op, {512, 1, true, MatvecEpilogue::kStore, {{G::Q4_K, 70}, {G::Q6_K, 19}}, false, 2e-2}, rng_));
  ASSERT_TRUE(check(*dev_, *op, {512, 1, true, MatvecEpilogue::kSwiGlu, {{G::Q4_K, 45}, {G::Q4_K, 45}}, false, 3e-2}, rng_));
}

namespace {
// A Q4_K call of rows × cols at `batch` columns with the RMSNorm prologue (weights from seed w_seed, x
// and the norm weights from x_seed), recorded by a fresh op made with `var` set to `value` (nullptr:
// unset) and tuned to `form`: its outputs as written (NaN-poisoned first); empty after a gtest failure.
std::vector<float> run_on_fresh_op(vk::Device& dev, const char* var, const char* value,
                                   ops::MatvecTuning::Form form, uint32_t rows, uint32_t cols, uint32_t batch,
                                   uint64_t w_seed, uint32_t x_seed) {
  const auto w = kernels::ref::random_weights(G::Q4_K, rows, cols, 0.5f, w_seed);
  std::mt19937 r(x_seed);
  std::normal_distribution<float> nd(0.0f, 1.0f);
  std::vector<float> x(size_t{batch} * cols), nw(cols);
  for (auto& v : x) v = nd(r);
  for (auto& v : nw) v = 1.0f + 0.2f * nd(r);
  auto wb = upload(dev, w.data(), w.size());
  auto xb = upload(dev, x.data(), x.size() * 4);
  auto nb = upload(dev, nw.data(), nw.size() * 4);
  auto yb = dev.buffer(size_t{batch} * rows * 4);
  EXPECT_TRUE(wb.ok() && xb.ok() && nb.ok() && yb.ok());
  if (!(wb.ok() && xb.ok() && nb.ok() && yb.ok())) return {};
  tests::ScopedEnv e(var, value);
  auto op = ops::Matvec::create(dev);
  EXPECT_TRUE(op.ok()) << op.status().ToString();
  if (!op.ok()) return {};
  ops::MatvecTuning t = f32();
  t.form = form;
  op->set_tuning(t);
  ops::MatvecCall call;
  call.cols = cols;
  call.batch = batch;
  call.x = *xb;
  call.norm_w = *nb;
  call.eps = 1e-6f;
  call.n_mats = 1;
  call.mats[0] = {G::Q4_K, rows, vk::BufferRange(*wb), vk::BufferRange(*yb), 0};
  EXPECT_TRUE(yb->fill(kNaN).ok());
  auto s = dev.stream();
  EXPECT_TRUE(s.ok());
  if (!s.ok()) return {};
  const Status st = op->record(*s, call);
  EXPECT_TRUE(st.ok()) << st.ToString();
  if (!st.ok()) return {};
  EXPECT_TRUE(s->submit_and_wait().ok());
  std::vector<float> y(size_t{batch} * rows);
  EXPECT_TRUE(yb->download(y.data(), y.size() * 4).ok());
  return y;
}
}  // namespace

// TROVE_MATVEC_Q8_STAGE=noloads|skip (a measurement of what the q8 form's staging of x̂ costs, with
// wrong results; docs/performance.md): another value is refused, and each of the two changes what the
// kernel computes — staging constants, or nothing — so the speed it gives is that of a kernel that did
// not stage x. One Q4_K matrix with the norm prologue, the default against each.
TEST_F(Matvec, TroveMatvecQ8StageIsAMeasurementThatChangesTheResult) {
  {
    tests::ScopedEnv e("TROVE_MATVEC_Q8_STAGE", "none");
    auto bad = ops::Matvec::create(*dev_);
    ASSERT_FALSE(bad.ok());
    EXPECT_NE(bad.status().message().find("TROVE_MATVEC_Q8_STAGE='none' is not noloads or skip"), std::string::npos)
        << bad.status().message();
  }
  if (!op_->q8_supported()) {
    GTEST_SKIP() << "the device lacks integer dot products, subgroup arithmetic or subgroup shuffles (the q8 form is refused there)";
  }
  const uint32_t rows = 64;
  auto run_with = [&](const char* stage) {
    return run_on_fresh_op(*dev_, "TROVE_MATVEC_Q8_STAGE", stage, ops::MatvecTuning::Form::kQ8, rows, 512, 1,
                           7, 8);
  };
  const std::vector<float> normal = run_with(nullptr), noloads = run_with("noloads"), skip = run_with("skip");
  ASSERT_EQ(normal.size(), rows);
  for (float v : normal) ASSERT_TRUE(std::isfinite(v));
  EXPECT_NE(0, std::memcmp(normal.data(), noloads.data(), rows * 4)) << "noloads gave the staged result";
  EXPECT_NE(0, std::memcmp(normal.data(), skip.data(), rows * 4)) << "skip gave the staged result";
}

// TROVE_MATVEC_Q8CM_SKIP (a measurement, wrong results): values that are not a sum of its parts are
// refused, saying so; 64 leaves out the activation pass before q8 coopmat and q8p calls, so a q8p call
// on a fresh op reads zeroed slots (x̂, scales, sums, inv_rms all 0) and writes exactly 0 where the pass
// gives the product.
TEST_F(Matvec, TroveMatvecQ8cmSkipIsAMeasurementThatChangesTheResult) {
  for (const char* bad : {"3", "256", "64x"}) {
    tests::ScopedEnv e("TROVE_MATVEC_Q8CM_SKIP", bad);
    auto op = ops::Matvec::create(*dev_);
    ASSERT_FALSE(op.ok()) << bad;
    EXPECT_NE(op.status().message().find("is not a sum of 4, 8, 16, 32, 64 and 128"), std::string::npos)
        << op.status().message();
  }
  if (!op_->q8_supported()) {
    GTEST_SKIP() << "the device lacks integer dot products, subgroup arithmetic or subgroup shuffles (the q8 "
                    "forms are refused there)";
  }
  const uint32_t rows = 64, batch = 2;
  auto run_with = [&](const char* skip) {
    return run_on_fresh_op(*dev_, "TROVE_MATVEC_Q8CM_SKIP", skip, ops::MatvecTuning::Form::kQ8P, rows, 512,
                           batch, 17, 18);
  };
  const std::vector<float> normal = run_with(nullptr), no_pass = run_with("64");
  ASSERT_EQ(normal.size(), size_t{batch} * rows);
  ASSERT_EQ(no_pass.size(), normal.size());
  size_t nonzero = 0;
  for (size_t i = 0; i < normal.size(); ++i) {
    ASSERT_TRUE(std::isfinite(normal[i])) << i;
    nonzero += normal[i] != 0.0f;
    EXPECT_EQ(no_pass[i], 0.0f) << "output " << i << " with no pass (zeroed slots)";
  }
  EXPECT_GT(nonzero, normal.size() / 2) << "the call with its pass gave mostly zeros";
}

// The q8p form (TROVE_MATVEC=q8p: x̂ quantized by a pass into the op's scratch ring, then the q8
// kernel reading it through the caches, one row block per workgroup): the four types at batch 1 and
// 8, SwiGLU with two types, cols beyond one tile (2048 x 8 int8 would not fit lavapipe's shared
// memory), two chained calls in one stream (different ring slots), and the F32 fallback to the direct
// form. Bound 2e-2 as for the q8 form.
TEST_F(Matvec, Q8PassForm) {
  if (!op_->q8_supported()) {
    GTEST_SKIP() << "the device lacks integer dot products, subgroup arithmetic or subgroup shuffles (the q8p form is refused there)";
  }
  ops::MatvecTuning t = f32();
  t.form = ops::MatvecTuning::Form::kQ8P;
  op_->set_tuning(t);
  auto q8 = [](Case c) {
    c.bound = 2e-2;
    return c;
  };
  ASSERT_TRUE(run(q8({512, 1, true, MatvecEpilogue::kStore, {{G::Q8_0, 37}, {G::Q4_K, 70}, {G::Q5_K, 19}}})));
  ASSERT_TRUE(run(q8({512, 1, false, MatvecEpilogue::kSwiGlu, {{G::Q5_K, 45}, {G::Q6_K, 45}}})));
  ASSERT_TRUE(run(q8({512, 8, true, MatvecEpilogue::kStore, set_c(4)})));
  Case c = q8({2048, 8, true, MatvecEpilogue::kAdd, set_c(0, 2048)});
  c.residual_is_x = true;
  ASSERT_TRUE(run(c));
  // Two calls in one stream, the second reading the first's output (a barrier between): two slots.
  auto x = dev_->buffer(512 * 4), nw = dev_->buffer(512 * 4), y1 = dev_->buffer(512 * 4), y2 = dev_->buffer(64 * 4);
  std::vector<float> xv(512), nv(512, 1.0f);
  std::mt19937_64 r(rng_());
  std::normal_distribution<float> nd(0.0f, 1.0f);
  for (auto& v : xv) v = nd(r);
  auto w1 = kernels::ref::random_weights(G::Q4_K, 512, 512, 0.5f, r()), w2 = kernels::ref::random_weights(G::Q6_K, 64, 512, 0.5f, r());
  auto w1b = upload(*dev_, w1.data(), w1.size()), w2b = upload(*dev_, w2.data(), w2.size());
  ASSERT_TRUE(x.ok() && nw.ok() && y1.ok() && y2.ok() && w1b.ok() && w2b.ok());
  ASSERT_TRUE(x->upload(xv.data(), 512 * 4).ok() && nw->upload(nv.data(), 512 * 4).ok());
  auto s = dev_->stream();
  ASSERT_TRUE(s.ok());
  ops::MatvecCall a;
  a.cols = 512;
  a.x = *x;
  a.norm_w = *nw;
  a.mats[0] = {G::Q4_K, 512, vk::BufferRange(*w1b), vk::BufferRange(*y1), 0};
  ASSERT_TRUE(op_->record(*s, a).ok());
  s->barrier();
  ops::MatvecCall b = a;
  b.x = *y1;
  b.mats[0] = {G::Q6_K, 64, vk::BufferRange(*w2b), vk::BufferRange(*y2), 0};
  ASSERT_TRUE(op_->record(*s, b).ok());
  ASSERT_TRUE(s->submit_and_wait().ok());
  auto xh = kernels::ref::matvec_prologue(xv, 1, 512, nv, 1e-6);
  ASSERT_TRUE(xh.ok());
  std::vector<float> e1(512), e2(64), g2(64);
  ASSERT_TRUE(kernels::ref::matvec({G::Q4_K, 512, 512, w1}, *xh, 1, e1, 512, false).ok());
  auto xh2 = kernels::ref::matvec_prologue(e1, 1, 512, nv, 1e-6);
  ASSERT_TRUE(xh2.ok());
  ASSERT_TRUE(kernels::ref::matvec({G::Q6_K, 64, 512, w2}, *xh2, 1, e2, 64, false).ok());
  ASSERT_TRUE(y2->download(g2.data(), 64 * 4).ok());
  double err2 = 0, ref2 = 0;
  for (int i = 0; i < 64; ++i) {
    err2 += (double(g2[i]) - e2[i]) * (double(g2[i]) - e2[i]);
    ref2 += double(e2[i]) * e2[i];
  }
  EXPECT_LT(std::sqrt(err2 / ref2), 4e-2) << "two chained q8p calls";
  ASSERT_TRUE(run({512, 1, true, MatvecEpilogue::kStore, set_a(0)}));  // F32/F16/BF16: the direct form, 1e-5
}

// Q6_K rows in 32-value parts (MatvecTuning::Q6Parts::kWide, TROVE_MATVEC_Q6_WIDE=1) in the q8 and
// q8p forms: row lengths of 1, 3 and 48 super-blocks (fewer parts than lanes, and several per lane),
// rows past the end of a row group, Q6_K beside Q4_K in one call and in a SwiGLU, the RMSNorm
// prologue and the residual add; then batched columns against batch-1 calls bit for bit (the wide
// parts on both sides). Against the float64 reference, bound 2e-2.
TEST_F(Matvec, Q6WideParts) {
  if (!op_->q8_supported()) {
    GTEST_SKIP() << "the device lacks integer dot products, subgroup arithmetic or subgroup shuffles (the q8 form is refused there)";
  }
  auto q8 = [](Case c) {
    c.bound = 2e-2;
    return c;
  };
  for (auto form : {ops::MatvecTuning::Form::kQ8, ops::MatvecTuning::Form::kQ8P}) {
    SCOPED_TRACE(form == ops::MatvecTuning::Form::kQ8 ? "q8" : "q8p");
    ops::MatvecTuning t = f32();
    t.form = form;
    t.q6_parts = ops::MatvecTuning::Q6Parts::kWide;
    op_->set_tuning(t);
    ASSERT_TRUE(run(q8({256, 1, true, MatvecEpilogue::kStore, {{G::Q6_K, 37}}})));
    ASSERT_TRUE(run(q8({768, 3, false, MatvecEpilogue::kAdd, {{G::Q6_K, 45}}})));
    ASSERT_TRUE(run(q8({768, 1, true, MatvecEpilogue::kStore, set_c(4)})));
    ASSERT_TRUE(run(q8({768, 2, true, MatvecEpilogue::kSwiGlu, {{G::Q4_K, 45}, {G::Q6_K, 45}}})));
    ASSERT_TRUE(run(q8({12288, 1, false, MatvecEpilogue::kAdd, {{G::Q6_K, 64}}})));
  }
  ops::MatvecTuning t = f32();
  t.form = ops::MatvecTuning::Form::kQ8;
  t.q6_parts = ops::MatvecTuning::Q6Parts::kWide;
  op_->set_tuning(t);
  Case c{12288, 3, true, MatvecEpilogue::kStore, {{G::Q6_K, 64}}};
  c.bound = 2e-2;
  c.exact = true;
  ASSERT_TRUE(check_columns(*dev_, *op_, c, rng_));
}

// The q8 form at batch 6-8 gives every column the numbers a batch-1 call gives it (H200, 2026-12-03:
// bench_spec --verify-cost with TROVE_MATVEC=q8 found the batched argmax different from one token
// per step at k >= 6). Shapes whose batch · cols int8 exceed shared memory at that batch but not at
// batch 1 — the 8B's ffn_down (12288 columns) from batch 3 on every device, 4096 columns from batch
// 6 on lavapipe's 32 KiB — once ran the f32 direct form there (~0.6% of the norm away from the q8
// numbers of batch 1): they must stay in the q8 numbers (the q8p form). On 48 KiB GPUs the 4096-column
// calls fit: the staged q8 kernel at 6 and 7 columns against batch 1. Bit for bit (H200, 2026-12-03:
// the q8p pass summed Σ x² in another order, ~1e-7 apart, and at depth 8188 the 8B's verification of 2
// tokens took another argmax than one-token decoding); the default batched form (q8p) too.
TEST_F(Matvec, Q8FormColumnsEqualBatchOne) {
  if (!op_->q8_supported()) {
    GTEST_SKIP() << "the device lacks integer dot products, subgroup arithmetic or subgroup shuffles (the q8 form is refused there)";
  }
  ops::MatvecTuning t;
  t.form = ops::MatvecTuning::Form::kQ8;
  op_->set_tuning(t);
  auto cols = [&](Case c) {
    c.bound = 2e-2;
    c.exact = true;
    return check_columns(*dev_, *op_, c, rng_);
  };
  ASSERT_TRUE(cols({12288, 8, false, MatvecEpilogue::kAdd, {{G::Q6_K, 64}}}));
  ASSERT_TRUE(cols({4096, 7, true, MatvecEpilogue::kSwiGlu, {{G::Q4_K, 64}, {G::Q4_K, 64}}}));
  ASSERT_TRUE(cols({4096, 6, true, MatvecEpilogue::kStore, {{G::Q4_K, 64}, {G::Q6_K, 64}}}));
  // With the RMSNorm prologue and two blocks per invocation (12288 columns: the pass at batch 3 on
  // every device): Σ x² in the staged kernel's order.
  ASSERT_TRUE(cols({12288, 3, true, MatvecEpilogue::kStore, {{G::Q4_K, 64}}}));
}

void Matvec::check_q8_coopmat(uint32_t kernel) {
  using G = GgmlType;
  ops::MatvecTuning t;
  t.form = ops::MatvecTuning::Form::kQ8Coopmat;
  t.q8cm_kernel = kernel;
  auto q8 = [](Case c) {
    c.bound = 2e-2;
    return c;
  };
  for (auto [split, tiles] : {std::pair{0u, 0u}, {1u, 1u}, {8u, 2u}, {2u, 4u}, {0u, 4u}}) {
    SCOPED_TRACE(testing::Message() << "split " << split << ", tiles of 16 rows " << tiles);
    t.split = split;
    t.rows_per_group = tiles;
    op_->set_tuning(t);
    for (uint32_t b : {1u, 2u, 5u, 8u}) {
      ASSERT_TRUE(run(
          q8({512, b, true, MatvecEpilogue::kStore, {{G::Q4_K, 131}, {G::Q4_K, 19, 40}, {G::Q4_K, 16}}})));
      ASSERT_TRUE(run(q8({4096, b, true, MatvecEpilogue::kSwiGlu, {{G::Q4_K, 70}, {G::Q4_K, 70}}})));
      Case c = q8({2048, b, false, MatvecEpilogue::kAdd, {{G::Q4_K, 2048}}});
      c.residual_is_x = true;
      ASSERT_TRUE(run(c));
    }
  }
  t.split = 0;
  t.rows_per_group = 0;
  op_->set_tuning(t);
  ASSERT_TRUE(run(q8({512, 4, true, MatvecEpilogue::kStore, set_c(4)})));  // Q6_K among them: q8p
  auto cols = [&](Case c) {
    c.bound = 2e-2;
    c.exact = true;
    return check_columns(*dev_, *op_, c, rng_);
  };
  ASSERT_TRUE(cols({4096, 8, true, MatvecEpilogue::kSwiGlu, {{G::Q4_K, 64}, {G::Q4_K, 64}}}));
  ASSERT_TRUE(cols({12288, 3, true, MatvecEpilogue::kAdd, {{G::Q4_K, 64}}}));
  // The kernel chosen by name: TROVE_MATVEC_BATCHED=q8coopmat, and TROVE_MATVEC_Q8CM_REGS=0|1.
  op_->set_tuning({});
  tests::ScopedEnv env("TROVE_MATVEC_BATCHED", "q8coopmat");
  tests::ScopedEnv regs("TROVE_MATVEC_Q8CM_REGS", kernel == 2 ? "1" : "0");
  auto named = ops::Matvec::create(*dev_);
  ASSERT_TRUE(named.ok()) << named.status().ToString();
  ASSERT_TRUE(check(*dev_, *named, q8({4096, 6, true, MatvecEpilogue::kStore, {{G::Q4_K, 96}}}), rng_));
}

// The q8 coopmat form (int8 matrix units; GPUs with a 16x8x32 int8 subgroup shape — lavapipe has none,
// so CI skips it): Q4_K calls of 1..8 columns against the float64 reference (bound 2e-2, the q8 forms'),
// row counts not a multiple of its 16-row tiles, three matrices of different rows, strides, SwiGLU, the
// residual add, the RMSNorm prologue, one and several 64-value runs a subgroup, 1, 2 and 4 tiles a
// workgroup and several splits; a call with a Q6_K matrix (the q8p form instead); then batched columns
// against batch-1 calls of the same form bit for bit (check_q8_coopmat), and TROVE_MATVEC_BATCHED=q8coopmat
// read by name.
TEST_F(Matvec, Q8CoopmatForm) {
  std::string why;
  if (!op_->q8_coopmat_supported(&why)) GTEST_SKIP() << "no q8 coopmat form here: " << why;
  check_q8_coopmat(1);
}

// The same cases on the q8 coopmat form's register kernel (matvec_q8_coopmat_regs.comp), where the
// device's element layout suits it (its probe says why not otherwise); TROVE_MATVEC_Q8CM_REGS read by name.
TEST_F(Matvec, Q8CoopmatRegisterKernel) {
  std::string why;
  if (!op_->q8_coopmat_regs_supported(&why)) GTEST_SKIP() << "no q8 coopmat register kernel here: " << why;
  check_q8_coopmat(2);
}

// TROVE_MATVEC_Q8CM_AHEAD=1 (the register kernel loads the next super-block's headers and first codes one
// step early) changes when loads are issued, not what is computed: on a GPU with the register kernel its
// outputs equal the default's bit for bit — one and several super-blocks a subgroup (splits 1, 2, 8 over 2
// to 16 super-blocks: subgroups with none, one or several), SwiGLU, the add, three matrices, 8 streams'
// calls through the default rule — and the variable takes 0 and 1 only (checked everywhere).
TEST_F(Matvec, Q8CoopmatAheadGivesTheSameBits) {
  {
    tests::ScopedEnv e("TROVE_MATVEC_Q8CM_AHEAD", "2");
    auto bad = ops::Matvec::create(*dev_);
    ASSERT_FALSE(bad.ok());
    EXPECT_NE(bad.status().message().find("is not 0 or 1"), std::string::npos) << bad.status().message();
  }
  std::string why;
  if (!op_->q8_coopmat_regs_supported(&why)) GTEST_SKIP() << "no q8 coopmat register kernel here: " << why;
  tests::ScopedEnv e("TROVE_MATVEC_Q8CM_AHEAD", "1");
  auto ahead = ops::Matvec::create(*dev_);
  ASSERT_TRUE(ahead.ok()) << ahead.status().ToString();
  auto q8 = [](Case c) {
    c.bound = 2e-2;
    return c;
  };
  const Case cases[] = {
      q8({512, 8, true, MatvecEpilogue::kStore, {{G::Q4_K, 131}, {G::Q4_K, 19}, {G::Q4_K, 16}}}),
      q8({4096, 8, true, MatvecEpilogue::kSwiGlu, {{G::Q4_K, 70}, {G::Q4_K, 70}}}),
      q8({4096, 8, false, MatvecEpilogue::kAdd, {{G::Q4_K, 512}}}),
      q8({1024, 5, true, MatvecEpilogue::kStore, {{G::Q4_K, 96}}})};
  ops::MatvecTuning t;
  t.form = ops::MatvecTuning::Form::kQ8Coopmat;
  t.q8cm_kernel = 2;
  uint64_t seed = 777;
  for (uint32_t split : {1u, 2u, 8u}) {
    t.split = split;
    op_->set_tuning(t);
    ahead->set_tuning(t);
    for (const Case& c : cases) {
      SCOPED_TRACE(testing::Message() << describe(c) << ", split " << split);
      EXPECT_TRUE(same_bits(outputs_of(*dev_, *op_, c, seed), outputs_of(*dev_, *ahead, c, seed)));
      ++seed;
    }
  }
  op_->set_tuning({});  // 8 streams' calls: the default rule takes the kernel
  ahead->set_tuning({});
  Case streams = cases[1];
  streams.batch1_bits = false;
  EXPECT_TRUE(same_bits(outputs_of(*dev_, *op_, streams, seed), outputs_of(*dev_, *ahead, streams, seed)))
      << "8 streams' call";
}

// What matvec_q8_coopmat_probe.comp writes for NVIDIA's int8 16 × 8 × 32 layout (lane l: rows l/4 and
// l/4 + 8, values 4·(l % 4).. and those + 16 of each, groups of a row adjacent; products of those rows,
// columns 2·(l % 4) and + 1) — or, with `apart`, its groups in the other order (h and h + 2 one row).
namespace {
std::vector<uint32_t> nvidia_probe(bool apart) {
  std::vector<uint32_t> o(642);
  for (uint32_t l = 0; l < 32; ++l) {
    const uint32_t r = l / 4, k0 = 4 * (l % 4), c = 2 * (l % 4);
    const uint32_t groups[4][2] = {{r, k0}, {r, k0 + 16}, {r + 8, k0}, {r + 8, k0 + 16}};
    for (uint32_t g = 0; g < 4; ++g) {
      const uint32_t from = apart && (g == 1 || g == 2) ? 3 - g : g;
      for (uint32_t b = 0; b < 4; ++b) o[16 * l + 4 * g + b] = groups[from][0] | ((groups[from][1] + b) << 8);
    }
    const uint32_t products[4] = {8 * r + c, 8 * r + c + 1, 8 * (r + 8) + c, 8 * (r + 8) + c + 1};
    for (uint32_t e = 0; e < 4; ++e) o[512 + 4 * l + e] = products[e];
  }
  o[640] = 16;
  o[641] = 4;
  return o;
}
}  // namespace

// The register kernel's element table from a probe's words (Matvec::q8_coopmat_layout_table, on the CPU:
// the probe itself needs int8 subgroup matrices, which lavapipe lacks): NVIDIA's layout is taken with its
// groups marked adjacent (table[256] = 1), the other group order unmarked; layouts the kernel cannot use
// are refused, each saying what is wrong.
TEST(MatvecLayoutTable, TakesBothGroupOrdersAndRefusesOtherLayouts) {
  auto adjacent = ops::Matvec::q8_coopmat_layout_table(nvidia_probe(false));
  ASSERT_TRUE(adjacent.ok()) << adjacent.status().ToString();
  ASSERT_EQ(adjacent->size(), 257u);
  EXPECT_EQ((*adjacent)[256], 1u);
  // Lane 5: A groups (row 1, values 4..), (1, 20..), (9, 4..), (9, 20..); products (1, 2) (1, 3) (9, 2) (9,
  // 3).
  const std::vector<uint32_t> lane5(adjacent->begin() + 20, adjacent->begin() + 24);
  EXPECT_EQ(lane5, (std::vector<uint32_t>{1 | 4 << 8, 1 | 20 << 8, 9 | 4 << 8, 9 | 20 << 8}));
  const std::vector<uint32_t> lane5_c(adjacent->begin() + 148, adjacent->begin() + 152);
  EXPECT_EQ(lane5_c, (std::vector<uint32_t>{1 | 2 << 8, 1 | 3 << 8, 9 | 2 << 8, 9 | 3 << 8}));
  auto apart = ops::Matvec::q8_coopmat_layout_table(nvidia_probe(true));
  ASSERT_TRUE(apart.ok()) << apart.status().ToString();
  EXPECT_EQ((*apart)[256], 0u);
  EXPECT_EQ((*apart)[21], 9u | 4u << 8) << "lane 5's group 1 in the apart order: row 9, values 4..";

  auto refused = [](std::vector<uint32_t> o, const std::string& why) {
    auto t = ops::Matvec::q8_coopmat_layout_table(o);
    if (t.ok()) return testing::AssertionFailure() << "taken; expected a refusal saying '" << why << "'";
    const std::string msg(t.status().message());
    if (msg.find(why) == std::string::npos) return testing::AssertionFailure() << "refused with: " << msg;
    return testing::AssertionSuccess();
  };
  std::vector<uint32_t> o = nvidia_probe(false);
  o.pop_back();
  EXPECT_TRUE(refused(o, "wrote 641 words"));
  o = nvidia_probe(false);
  o[640] = 8;
  EXPECT_TRUE(refused(o, "a lane holds 8 elements of A"));
  o = nvidia_probe(false);
  o[16 * 2 + 1] = 0 | 10 << 8;  // lane 2 (row 0, values 8..): element 1 value 10, not 9
  EXPECT_TRUE(refused(o, "lane 2's A elements 0..3 are not 4 consecutive values"));
  o = nvidia_probe(false);
  for (uint32_t b = 0; b < 4; ++b) std::swap(o[16 * 7 + 4 + b], o[16 * 8 + 4 + b]);  // group 1 of lanes 7, 8
  EXPECT_TRUE(refused(o, "lane 7's A elements are not two rows' values k0.. and k0 + 16.."));
  const std::vector<uint32_t> other = nvidia_probe(true);
  o = nvidia_probe(false);
  std::copy(other.begin() + 16 * 3, other.begin() + 16 * 4, o.begin() + 16 * 3);
  EXPECT_TRUE(refused(o, "lane 3's A groups come in another order than lane 0's"));
  o = nvidia_probe(false);
  std::swap(o[512 + 1], o[512 + 4 + 1]);  // products (0, 1) of lane 0 and (0, 3) of lane 1
  EXPECT_TRUE(refused(o, "lane 0's product elements are not two rows × two columns"));
  o = nvidia_probe(false);
  std::copy(o.begin(), o.begin() + 16, o.begin() + 16);  // lane 1's A elements as lane 0's
  EXPECT_TRUE(refused(o, "do not cover A and the product once each"));
}

// Several streams' one-token steps (MatvecCall::batch1_bits false) of kStreamsCoopmatBatch Q4_K columns
// take the q8 coopmat register kernel by default: the bits of that kernel asked for by name (one tile of 16
// rows a workgroup), within the q8 bound of the reference, and not the q8p form's bits (the default for
// batch1_bits calls). Seven columns, a Q6_K matrix among Q4_K ones, and TROVE_MATVEC_BATCHED=q8p keep
// q8p's bits. Skipped where the register kernel cannot run (lavapipe: no int8 subgroup matrices).
TEST_F(Matvec, StreamsCallsOfEightColumnsTakeTheRegisterKernel) {
  std::string why;
  if (!op_->q8_coopmat_regs_supported(&why)) GTEST_SKIP() << "no q8 coopmat register kernel here: " << why;
  static_assert(ops::Matvec::kStreamsCoopmatBatch == 8);
  auto outputs = [&](const ops::Matvec& op, Case c, bool batch1_bits, uint64_t seed) {
    c.bound = 2e-2;
    c.batch1_bits = batch1_bits;
    return outputs_of(*dev_, op, c, seed);
  };
  Case swiglu{4096, 8, true, MatvecEpilogue::kSwiGlu, {{G::Q4_K, 70}, {G::Q4_K, 70}}};
  Case add{2048, 8, false, MatvecEpilogue::kAdd, {{G::Q4_K, 2048}}};
  add.residual_is_x = true;
  Case three{512, 8, true, MatvecEpilogue::kStore, {{G::Q4_K, 131}, {G::Q4_K, 19}, {G::Q4_K, 16}}};
  ops::MatvecTuning regs;
  regs.form = ops::MatvecTuning::Form::kQ8Coopmat;
  regs.q8cm_kernel = 2;
  regs.rows_per_group = 1;
  uint64_t seed = 9100;
  for (Case c : {swiglu, add, three}) {
    SCOPED_TRACE(describe(c));
    op_->set_tuning({});
    const auto streams = outputs(*op_, c, false, seed), q8p = outputs(*op_, c, true, seed);
    op_->set_tuning(regs);
    const auto named = outputs(*op_, c, true, seed);
    EXPECT_TRUE(same_bits(streams, named)) << "a streams call did not take the register kernel";
    EXPECT_FALSE(same_bits(streams, q8p)) << "the register kernel gave q8p's bits: did it run?";
    c.batch = 7;
    op_->set_tuning({});
    EXPECT_TRUE(same_bits(outputs(*op_, c, false, seed), outputs(*op_, c, true, seed))) << "7 columns";
    ++seed;
  }
  op_->set_tuning({});
  const Case q6{512, 8, true, MatvecEpilogue::kStore, set_c(0)};
  EXPECT_TRUE(same_bits(outputs(*op_, q6, false, seed), outputs(*op_, q6, true, seed))) << "a Q6_K matrix";
  tests::ScopedEnv env("TROVE_MATVEC_BATCHED", "q8p");
  auto named = ops::Matvec::create(*dev_);
  ASSERT_TRUE(named.ok()) << named.status().ToString();
  EXPECT_TRUE(same_bits(outputs(*named, swiglu, false, seed), outputs(*named, swiglu, true, seed)))
      << "TROVE_MATVEC_BATCHED=q8p";
}

// The q8 and q8p forms at the Qwen3-8B shapes, batch 1, 2, 3, 5, 8 (a GPU run: TROVE_KERNEL_FULL=1;
// every case builds its weights and float64 reference on the CPU, ~1-2 s each at these sizes); in the
// q8 form ffn_down (12288 columns) falls back to the direct form where batch · 12288 int8 exceed
// shared memory.
TEST_F(Matvec, Q8FormQwenShapesOnAGpu) {
  if (!full_shapes()) GTEST_SKIP() << "set TROVE_KERNEL_FULL=1 (a real GPU) for the Qwen3 shapes";
  if (!op_->q8_supported()) {
    GTEST_SKIP() << "the device lacks integer dot products, subgroup arithmetic or subgroup shuffles (the q8 form is refused there)";
  }
  for (auto form : {ops::MatvecTuning::Form::kQ8, ops::MatvecTuning::Form::kQ8P}) {
    for (uint32_t batch : {1u, 2u, 3u, 5u, 8u}) {
      ops::MatvecTuning t = f32();
      t.form = form;
      op_->set_tuning(t);
      SCOPED_TRACE(form == ops::MatvecTuning::Form::kQ8 ? "q8" : "q8p");
      Case qkv{4096, batch, true, MatvecEpilogue::kStore, {{G::Q4_K, 4096}, {G::Q4_K, 1024}, {G::Q6_K, 1024}}};
      Case ffn{4096, batch, true, MatvecEpilogue::kSwiGlu, {{G::Q4_K, 12288}, {G::Q4_K, 12288}}};
      Case down{12288, batch, false, MatvecEpilogue::kAdd, {{G::Q6_K, 4096}}};
      Case o{4096, batch, false, MatvecEpilogue::kAdd, {{G::Q4_K, 4096}}};
      Case head{4096, batch, true, MatvecEpilogue::kStore, {{G::Q6_K, 32768}}};
      for (Case* c : {&qkv, &ffn, &down, &o, &head}) {
        c->bound = 2e-2;
        ASSERT_TRUE(run(*c));
      }
    }
  }
}

// x staged once, then each workgroup walks several row blocks (the GPUs' default when x fits one
// tile: about two workgroups per SM); blocks of all three matrices land on the same workgroups.
TEST_F(Matvec, WorkgroupsWalkingSeveralRowBlocks) {
  ops::MatvecTuning t = f32();
  t.workgroups = 3;
  op_->set_tuning(t);
  for (uint32_t batch : {1u, 3u}) {
    ASSERT_TRUE(run({512, batch, true, MatvecEpilogue::kStore, set_c(4, 300)}));
    ASSERT_TRUE(run({512, batch, true, MatvecEpilogue::kSwiGlu, {{G::Q5_K, 145}, {G::Q6_K, 145}}}));
  }
  t.gpu_form = true;
  op_->set_tuning(t);
  ASSERT_TRUE(run({512, 3, true, MatvecEpilogue::kAdd, set_c(4, 300)}));
}

// The tiny-coder fixture's shapes at 7 and 8 columns on a CPU device (speculative verification found
// steps of 7-8 tokens wrong there): Q8_0 down (768 columns: several tiles), O (512), gate/up, QKV, and
// the tied 151,936-row Q4_K head — which came back with rows unwritten while 16 workgroups walked all
// its row blocks on lavapipe (now one block per workgroup there; 100 workgroups walking were right).
TEST_F(Matvec, TinyCoderShapesAtSevenAndEightColumns) {
  for (uint32_t batch : {7u, 8u}) {
    ASSERT_TRUE(run({768, batch, false, MatvecEpilogue::kAdd, {{G::Q8_0, 256}}}));
    ASSERT_TRUE(run({512, batch, false, MatvecEpilogue::kAdd, {{G::Q8_0, 256}}}));
    ASSERT_TRUE(run({256, batch, true, MatvecEpilogue::kSwiGlu, {{G::Q8_0, 768}, {G::Q8_0, 768}}}));
    ASSERT_TRUE(run({256, batch, true, MatvecEpilogue::kStore, {{G::Q8_0, 512}, {G::Q8_0, 256}, {G::Q8_0, 256}}}));
  }
  ASSERT_TRUE(run({256, 8, true, MatvecEpilogue::kStore, {{G::Q4_K, 151936}}}));
}

// Other work splits: 1 and 4 rows per row group, 64 and 128 invocations per workgroup.
TEST_F(Matvec, OtherWorkSplits) {
  for (auto [rows, wg, batch] : {std::tuple<uint32_t, uint32_t, uint32_t>{1, 64, 3}, {4, 256, 1}}) {
    ops::MatvecTuning t = f32();
    t.rows_per_group = rows;
    t.workgroup_size = wg;
    op_->set_tuning(t);
    ASSERT_TRUE(run({512, batch, true, MatvecEpilogue::kStore, set_c(batch > 1 ? 4 : 0)}));
  }
  ops::MatvecTuning t = f32();
  t.rows_per_group = 4;
  op_->set_tuning(t);
  ASSERT_TRUE(run({512, 1, true, MatvecEpilogue::kSwiGlu, {{G::Q5_K, 45}, {G::Q6_K, 45}}}));
}

// TROVE_MATVEC names the form: f32 (the device's f32 form, no q8 at any batch; the H200's engine test
// compares f32 paths with it) is accepted everywhere, an unknown name is refused with the list.
TEST_F(Matvec, TroveMatvecNamesTheForms) {
  auto with = [&](const char* name, const char* v) {
    tests::ScopedEnv env(name, v);
    return ops::Matvec::create(*dev_);
  };
  auto f32 = with("TROVE_MATVEC", "f32");
  auto bad = with("TROVE_MATVEC", "int4");
  EXPECT_TRUE(f32.ok()) << f32.status().ToString();
  ASSERT_FALSE(bad.ok());
  EXPECT_NE(bad.status().message().find("f32, staged, direct, q8 or q8p"), std::string::npos) << bad.status().message();
  EXPECT_TRUE(with("TROVE_MATVEC_Q6_WIDE", "1").ok());
  auto bad_q6 = with("TROVE_MATVEC_Q6_WIDE", "yes");
  ASSERT_FALSE(bad_q6.ok());
  EXPECT_NE(bad_q6.status().message().find("TROVE_MATVEC_Q6_WIDE='yes' is not 0 or 1"), std::string::npos)
      << bad_q6.status().message();
}

// TROVE_MATVEC_BATCHED sets the form of batch 2..8 calls alone: with q8 at batch 1 (TROVE_MATVEC=q8)
// and q8p for batches, a batch-8 call gives every column the numbers of a batch-1 call (the same
// pipelines as Q8FormColumnsEqualBatchOne: cached by then), also with TROVE_MATVEC_BATCHED_ROWS=1 (one
// row per row group in batches); unknown values are refused with the list.
TEST_F(Matvec, TroveMatvecBatchedNamesTheBatchForm) {
  auto make = [&](const char* form, const char* batched, const char* rows) {
    tests::ScopedEnv f("TROVE_MATVEC", form), b("TROVE_MATVEC_BATCHED", batched), r("TROVE_MATVEC_BATCHED_ROWS", rows);
    return ops::Matvec::create(*dev_);
  };
  auto bad = make("f32", "int4", "");
  ASSERT_FALSE(bad.ok());
  EXPECT_NE(bad.status().message().find("f32, q8, q8p or q8coopmat"), std::string::npos)
      << bad.status().message();
  {  // its knobs' values are checked on any device
    tests::ScopedEnv regs("TROVE_MATVEC_Q8CM_REGS", "2"), tiles("TROVE_MATVEC_Q8CM_TILES", "3");
    auto refused = ops::Matvec::create(*dev_);
    ASSERT_FALSE(refused.ok());
    EXPECT_NE(refused.status().message().find("TROVE_MATVEC_Q8CM_REGS='2' is not 0 or 1"), std::string::npos)
        << refused.status().message();
    for (const char* w : {"0", "65", "x"}) {
      tests::ScopedEnv waves("TROVE_MATVEC_Q8CM_WAVES", w);
      tests::ScopedEnv ok_regs("TROVE_MATVEC_Q8CM_REGS", "1"), ok_tiles("TROVE_MATVEC_Q8CM_TILES", "1");
      auto no = ops::Matvec::create(*dev_);
      ASSERT_FALSE(no.ok()) << w;
      EXPECT_NE(no.status().message().find(fmt::format("TROVE_MATVEC_Q8CM_WAVES='{}' is not 1..64", w)),
                std::string::npos)
          << no.status().message();
    }
  }
  // q8coopmat where the device lacks the int8 matrix units (lavapipe): refused, saying what is missing.
  std::string why;
  auto cm = make("f32", "q8coopmat", "");
  if (op_->q8_coopmat_supported(&why)) {
    EXPECT_TRUE(cm.ok()) << cm.status().ToString();
  } else {
    ASSERT_FALSE(cm.ok());
    EXPECT_NE(cm.status().message().find("q8coopmat cannot run here: " + why), std::string::npos)
        << cm.status().message();
  }
  auto bad_rows = make("f32", "f32", "3");
  ASSERT_FALSE(bad_rows.ok());
  EXPECT_NE(bad_rows.status().message().find("not 1, 2 or 4"), std::string::npos) << bad_rows.status().message();
  auto f32 = make("f32", "f32", "");
  EXPECT_TRUE(f32.ok()) << f32.status().ToString();
  if (!op_->q8_supported()) {
    GTEST_SKIP() << "the device lacks integer dot products, subgroup arithmetic or subgroup shuffles (no q8 forms to name)";
  }
  for (const char* rows : {"", "1"}) {
    SCOPED_TRACE(std::string("TROVE_MATVEC_BATCHED_ROWS=") + rows);
    auto op = make("q8", "q8p", rows);
    ASSERT_TRUE(op.ok()) << op.status().ToString();
    ASSERT_TRUE(check_columns(*dev_, *op, {12288, 8, false, MatvecEpilogue::kAdd, {{G::Q6_K, 64}}, false, 2e-2}, rng_));
  }
}

namespace {
// check_columns at the q8 forms' bound (2e-2 of the output norm), the columns bit-equal to batch-1 calls.
bool check_q8_columns(vk::Device& dev, const ops::Matvec& op, Case c, std::mt19937_64& rng) {
  c.bound = 2e-2;
  c.exact = true;
  return check_columns(dev, op, c, rng);
}
}  // namespace

// TROVE_MATVEC_BATCHED_WG runs the batched q8p kernel in workgroups of another size (its activation
// pass and the split of a row group's parts stay the batch-1 call's), here with 4 rows a lane
// (TROVE_MATVEC_BATCHED_ROWS) and 2 gate rows for SwiGLU (TROVE_MATVEC_BATCHED_SWIGLU_ROWS): every
// column keeps the bits of a batch-1 call. Bad values are refused by name.
TEST_F(Matvec, TroveMatvecBatchedWgKeepsColumnsExact) {
  auto make = [&](const char* wg, const char* rows, const char* swiglu_rows) {
    tests::ScopedEnv f("TROVE_MATVEC", op_->q8_supported() ? "q8" : "f32"), b("TROVE_MATVEC_BATCHED", op_->q8_supported() ? "q8p" : "f32"),
        w("TROVE_MATVEC_BATCHED_WG", wg), r("TROVE_MATVEC_BATCHED_ROWS", rows), s("TROVE_MATVEC_BATCHED_SWIGLU_ROWS", swiglu_rows);
    return ops::Matvec::create(*dev_);
  };
  for (auto [wg, rows, sw, what] : {std::tuple{"384", "", "", "TROVE_MATVEC_BATCHED_WG='384'"},
                                    std::tuple{"256", "", "3", "TROVE_MATVEC_BATCHED_SWIGLU_ROWS='3'"}}) {
    auto bad = make(wg, rows, sw);
    ASSERT_FALSE(bad.ok()) << what;
    EXPECT_NE(bad.status().message().find(what), std::string::npos) << bad.status().message();
  }
  if (!op_->q8_supported()) {
    GTEST_SKIP() << "the device lacks integer dot products, subgroup arithmetic or subgroup shuffles (no q8p form)";
  }
  // The smallest size that holds the up to 8 subgroups a batch-1 call splits a row group over (128
  // with lavapipe's 8 lanes; 256 with NVIDIA's 32 — 128 is refused there, as it should be), and 512.
  const uint32_t sg = std::max<uint32_t>(dev_->features().subgroup_size, 1);
  const std::string small = std::to_string(std::max<uint32_t>(128, std::bit_ceil(8 * sg)));
  for (const std::string& wg : {small, std::string("512")}) {
    SCOPED_TRACE("TROVE_MATVEC_BATCHED_WG=" + wg);
    auto op = make(wg.c_str(), "4", "2");
    ASSERT_TRUE(op.ok()) << op.status().ToString();
    auto cols = [&](const Case& c) { return check_q8_columns(*dev_, *op, c, rng_); };
    ASSERT_TRUE(cols({4096, 8, true, MatvecEpilogue::kStore, {{G::Q4_K, 128}, {G::Q6_K, 64}, {G::Q8_0, 64}}}));
    ASSERT_TRUE(cols({4096, 5, true, MatvecEpilogue::kSwiGlu, {{G::Q4_K, 64}, {G::Q4_K, 64}}}));
    ASSERT_TRUE(cols({12288, 3, false, MatvecEpilogue::kAdd, {{G::Q6_K, 128}}}));
  }
}

// TROVE_MATVEC_REDUCE=scatter: the q8 forms sum a row group's lanes by one reduce-scatter of all its
// row sums instead of a subgroupAdd each. Both forms take it, and each value's tree is the same at
// every batch, so a batched call's columns still equal batch-1 calls bit for bit: at batch 8 (16 and,
// with 4 rows a group, 32 values a lane), SwiGLU at batch 5 (10 values, padded to 16: the up sums
// shuffled to the gate's lane), the residual add at batch 3 (6, padded to 8), and with split rows
// (subgroup sums meeting in shared memory). The batched outputs stay within the q8 bound of the
// float64 reference. A bad value is refused by name.
TEST_F(Matvec, TroveMatvecReduceScatterKeepsColumnsExact) {
  auto make = [&](const char* reduce, const char* split, const char* rows, const char* swiglu_rows) {
    tests::ScopedEnv f("TROVE_MATVEC", op_->q8_supported() ? "q8" : "f32"), b("TROVE_MATVEC_BATCHED", op_->q8_supported() ? "q8p" : "f32"),
        r("TROVE_MATVEC_REDUCE", reduce), sp("TROVE_MATVEC_Q8_SPLIT", split), br("TROVE_MATVEC_BATCHED_ROWS", rows),
        sr("TROVE_MATVEC_BATCHED_SWIGLU_ROWS", swiglu_rows);
    return ops::Matvec::create(*dev_);
  };
  auto bad = make("tree", "", "", "");
  ASSERT_FALSE(bad.ok());
  EXPECT_NE(bad.status().message().find("TROVE_MATVEC_REDUCE='tree' is not add or scatter"), std::string::npos)
      << bad.status().message();
  if (!op_->q8_supported()) {
    GTEST_SKIP() << "the device lacks integer dot products, subgroup arithmetic or subgroup shuffles (no q8 forms)";
  }
  for (auto [split, rows, swiglu_rows] : {std::tuple{"1", "", ""}, std::tuple{"2", "", ""}, std::tuple{"1", "4", "2"}}) {
    SCOPED_TRACE(fmt::format("TROVE_MATVEC_REDUCE=scatter TROVE_MATVEC_Q8_SPLIT={} TROVE_MATVEC_BATCHED_ROWS={} "
                             "TROVE_MATVEC_BATCHED_SWIGLU_ROWS={}", split, rows, swiglu_rows));
    auto op = make("scatter", split, rows, swiglu_rows);
    ASSERT_TRUE(op.ok()) << op.status().ToString();
    auto cols = [&](const Case& c) { return check_q8_columns(*dev_, *op, c, rng_); };
    ASSERT_TRUE(cols({1024, 8, true, MatvecEpilogue::kStore, {{G::Q4_K, 128}, {G::Q6_K, 64}, {G::Q8_0, 64}}}));
    ASSERT_TRUE(cols({1024, 5, true, MatvecEpilogue::kSwiGlu, {{G::Q5_K, 64}, {G::Q4_K, 64}}}));
    ASSERT_TRUE(cols({2048, 3, false, MatvecEpilogue::kAdd, {{G::Q6_K, 128}}}));
  }
}

// TROVE_MATVEC_Q8_WG sets the workgroup size of both q8 forms (GPUs: 512 by default, 256 on CPU
// devices): the q8p activation pass takes the same size, so with any of them a batched q8p call gives
// each column the bits of a batch-1 q8 call (Σ x² summed over the same invocations and subgroups).
// TROVE_MATVEC_Q8P_COLS sends batch-1 calls through q8p: again the same bits as the staged kernel's
// batched call. Bad values are refused by name. (lavapipe happens to give the same Σ x² bits for
// these columns even with the pass at another size — checked by breaking it — so there this test
// holds the knobs' plumbing; the H200 runs Q8FormColumnsEqualBatchOne with TROVE_MATVEC_Q8_WG=512,
// docs/performance.md 2026-12-04.)
TEST_F(Matvec, TroveMatvecQ8WgKeepsBothQ8FormsEqual) {
  auto make = [&](const char* batched, const char* wg, const char* q8p_cols) {
    tests::ScopedEnv f("TROVE_MATVEC", "q8"), b("TROVE_MATVEC_BATCHED", batched), w("TROVE_MATVEC_Q8_WG", wg),
        p("TROVE_MATVEC_Q8P_COLS", q8p_cols);
    return ops::Matvec::create(*dev_);
  };
  auto bad_wg = make("", "384", "");
  ASSERT_FALSE(bad_wg.ok());
  EXPECT_NE(bad_wg.status().message().find("TROVE_MATVEC_Q8_WG='384' is not 256, 512 or 1024"), std::string::npos)
      << bad_wg.status().message();
  auto bad_cols = make("", "", "7");
  ASSERT_FALSE(bad_cols.ok());
  EXPECT_NE(bad_cols.status().message().find("TROVE_MATVEC_Q8P_COLS='7'"), std::string::npos) << bad_cols.status().message();
  if (!op_->q8_supported()) {
    GTEST_SKIP() << "the device lacks integer dot products, subgroup arithmetic or subgroup shuffles (the q8 form is refused there)";
  }
  Case c{4096, 3, true, MatvecEpilogue::kStore, {{G::Q4_K, 64}, {G::Q6_K, 64}}};
  c.bound = 2e-2;
  c.exact = true;
  for (auto [batched, wg, q8p_cols] : {std::tuple{"q8p", "512", ""}, std::tuple{"q8p", "1024", ""},
                                       std::tuple{"q8", "", "32"}}) {
    SCOPED_TRACE(fmt::format("TROVE_MATVEC_BATCHED={} TROVE_MATVEC_Q8_WG={} TROVE_MATVEC_Q8P_COLS={}", batched, wg, q8p_cols));
    auto op = make(batched, wg, q8p_cols);
    ASSERT_TRUE(op.ok()) << op.status().ToString();
    ASSERT_TRUE(check_columns(*dev_, *op, c, rng_));
  }
}

// Two calls for the q8 knobs' tests, compared with check_columns (bit for bit): the norm prologue and
// the residual add over Q4_K (3 row blocks), Q6_K and Q8_0; SwiGLU over Q5_K gate and Q4_K up.
namespace {
std::pair<Case, Case> mixed_q8_cases() {
  Case add{1024, 3, true, MatvecEpilogue::kAdd, {{G::Q4_K, 192}, {G::Q6_K, 64}, {G::Q8_0, 64}}};
  Case swiglu{768, 2, true, MatvecEpilogue::kSwiGlu, {{G::Q5_K, 128}, {G::Q4_K, 128}}};
  for (Case* c : {&add, &swiglu}) {
    c->bound = 2e-2;
    c->exact = true;
  }
  return {add, swiglu};
}
}  // namespace

// TROVE_MATVEC_Q8_SPLIT: 2, 4 or 8 subgroups share a row group's rows and add their sums in
// shared memory. Against the reference, and batched calls (q8p, and q8 where x̂ fits) equal to
// batch-1 calls bit for bit at every split, with the norm prologue, the residual add, SwiGLU and
// matrices of several row blocks each. Bad values are refused by name.
TEST_F(Matvec, Q8SplitRowsMatchReferenceAndBatchOne) {
  auto make = [&](const char* split, const char* batched) {
    tests::ScopedEnv f("TROVE_MATVEC", "q8"), b("TROVE_MATVEC_BATCHED", batched), sp("TROVE_MATVEC_Q8_SPLIT", split);
    return ops::Matvec::create(*dev_);
  };
  auto bad = make("3", "");
  ASSERT_FALSE(bad.ok());
  EXPECT_NE(bad.status().message().find("TROVE_MATVEC_Q8_SPLIT='3' is not 1, 2, 4, 8 or auto"), std::string::npos)
      << bad.status().message();
  if (!op_->q8_supported()) {
    GTEST_SKIP() << "the device lacks integer dot products, subgroup arithmetic or subgroup shuffles (the q8 form is refused there)";
  }
  auto [add, swiglu] = mixed_q8_cases();
  for (auto [split, batched] : {std::pair{"2", "q8p"}, std::pair{"4", "q8"}, std::pair{"8", "q8p"}}) {
    SCOPED_TRACE(fmt::format("TROVE_MATVEC_Q8_SPLIT={} TROVE_MATVEC_BATCHED={}", split, batched));
    auto op = make(split, batched);
    ASSERT_TRUE(op.ok()) << op.status().ToString();
    ASSERT_TRUE(check_columns(*dev_, *op, add, rng_));
    ASSERT_TRUE(check_columns(*dev_, *op, swiglu, rng_));
  }
}

TEST_F(Matvec, BadCallsAreNamedAndRecordNothing) {
  auto b = dev_->buffer(1 << 20);
  auto y = dev_->buffer(1 << 16);
  ASSERT_TRUE(b.ok() && y.ok());
  auto s = dev_->stream();
  ASSERT_TRUE(s.ok());
  auto base = [&] {
    ops::MatvecCall c;
    c.cols = 256;
    c.batch = 1;
    c.x = vk::BufferRange(*b, 0, 256 * 4);
    c.mats[0] = {GgmlType::Q4_K, 16, vk::BufferRange(*b, 4096, 1 << 16), *y, 0};
    return c;
  };
  auto expect_error = [&](const ops::MatvecCall& c, const char* what) {
    Status st = op_->record(*s, c);
    EXPECT_FALSE(st.ok()) << what;
    EXPECT_NE(st.message().find(what), std::string::npos) << st.message();
  };
  auto c = base();
  c.batch = 9;
  expect_error(c, "batch 9");
  c = base();
  c.n_mats = 4;
  expect_error(c, "n_mats 4");
  c = base();
  c.mats[0].type = static_cast<GgmlType>(2);
  expect_error(c, "Q4_0");
  c = base();
  c.cols = 96;  // not a multiple of Q4_K's 256-value block
  c.x.size = 96 * 4;
  expect_error(c, "block of 256");
  c = base();
  c.epilogue = MatvecEpilogue::kSwiGlu;
  expect_error(c, "kSwiGlu takes 2 matrices");
  c = base();
  c.mats[0].rows = 4096;
  expect_error(c, "weight bytes");
  c = base();
  c.mats[0].y = vk::BufferRange(*y, 0, 32);
  expect_error(c, "output of matrix 0");
  c = base();
  c.mats[0].y = vk::BufferRange(*b, 512, 64);  // overlaps x = bytes 0..1023 of the same buffer
  expect_error(c, "x overlaps the output");
  c = base();
  c.norm_w = vk::BufferRange(*b, 0, 16);
  expect_error(c, "norm_w");
  ops::MatvecTuning t = f32();
  t.rows_per_group = 3;
  op_->set_tuning(t);
  expect_error(base(), "rows_per_group 3");
  ASSERT_TRUE(s->submit_and_wait().ok());  // nothing was recorded
}

// Real Qwen3 shapes (a GPU run: TROVE_KERNEL_FULL=1). The head is computed in 32768-row pieces that
// write into the full-width logits (y stride = 151936), as the engine splits it.
TEST_F(Matvec, QwenShapesOnAGpu) {
  if (!full_shapes()) GTEST_SKIP() << "set TROVE_KERNEL_FULL=1 (a real GPU) for the Qwen3 shapes";
  for (uint32_t batch : {1u, 8u}) {
    ASSERT_TRUE(run({4096, batch, true, MatvecEpilogue::kStore,
                                      {{GgmlType::Q4_K, 4096}, {GgmlType::Q4_K, 1024}, {GgmlType::Q6_K, 1024}}}));
    ASSERT_TRUE(run({4096, batch, true, MatvecEpilogue::kSwiGlu,
                                      {{GgmlType::Q4_K, 12288}, {GgmlType::Q4_K, 12288}}}));
    ASSERT_TRUE(run({12288, batch, false, MatvecEpilogue::kAdd, {{GgmlType::Q6_K, 4096}}}));
    ASSERT_TRUE(run({12288, batch, false, MatvecEpilogue::kAdd, {{GgmlType::Q4_K, 4096}}}));
    ASSERT_TRUE(run({2048, batch, true, MatvecEpilogue::kStore,
                                      {{GgmlType::Q4_K, 4096}, {GgmlType::Q4_K, 512}, {GgmlType::Q6_K, 512}}}));
  }
  // The 8B output head: 151936 x 4096 Q6_K, five pieces of <= 32768 rows into one logits buffer.
  const uint32_t V = 151936, C = 4096, piece = 32768;
  for (uint32_t batch : {1u, 2u}) {
    std::mt19937_64 r(rng_());
    SCOPED_TRACE("head batch " + std::to_string(batch));
    auto w = kernels::ref::random_weights(GgmlType::Q6_K, V, C, 0.5f, r());
    std::normal_distribution<float> nd(0.0f, 1.0f);
    std::vector<float> x(size_t{batch} * C), nw(C, 1.0f);
    for (auto& v : x) v = nd(r);
    auto xhat = kernels::ref::matvec_prologue(x, batch, C, nw, 1e-6);
    ASSERT_TRUE(xhat.ok());
    std::vector<float> expect(size_t{batch} * V);
    ASSERT_TRUE(kernels::ref::matvec({GgmlType::Q6_K, V, C, w}, *xhat, batch, expect, V, false).ok());
    auto wb = upload(*dev_, w.data(), w.size());
    auto xb = upload(*dev_, x.data(), x.size() * 4), nb = upload(*dev_, nw.data(), nw.size() * 4);
    auto yb = dev_->buffer(expect.size() * 4);
    ASSERT_TRUE(wb.ok() && xb.ok() && nb.ok() && yb.ok() && yb->fill(kNaN).ok());
    auto s = dev_->stream();
    ASSERT_TRUE(s.ok());
    const uint64_t rb = quant::row_bytes(GgmlType::Q6_K, C);
    for (uint32_t r0 = 0; r0 < V; r0 += piece) {
      const uint32_t n = std::min(piece, V - r0);
      ops::MatvecCall call;
      call.cols = C;
      call.batch = batch;
      call.x = *xb;
      call.norm_w = *nb;
      call.mats[0] = {GgmlType::Q6_K, n, vk::BufferRange(*wb, r0 * rb, (n * rb + 3) / 4 * 4),
                      vk::BufferRange(*yb, uint64_t{r0} * 4, (uint64_t{batch - 1} * V + n) * 4), V};
      Status st = op_->record(*s, call);
      ASSERT_TRUE(st.ok()) << st.ToString();
    }
    ASSERT_TRUE(s->submit_and_wait().ok());
    std::vector<float> got(expect.size());
    ASSERT_TRUE(yb->download(got.data(), got.size() * 4).ok());
    double err2 = 0, ref2 = 0;
    for (size_t i = 0; i < got.size(); ++i) {
      ASSERT_TRUE(std::isfinite(got[i])) << "logit " << i << " not written";
      err2 += (double(got[i]) - expect[i]) * (double(got[i]) - expect[i]);
      ref2 += double(expect[i]) * expect[i];
    }
    EXPECT_LT(std::sqrt(err2 / ref2), 1e-5);
  }
}
