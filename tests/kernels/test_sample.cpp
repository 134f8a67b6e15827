// Stochastic sampling: the distribution of GPU draws (one draw per row, 20000 rows of the same
// logits, each row its own counter-based uniform) is checked against the exact probabilities of
// ref::sampling_probs with a chi-square bound (df + 8·sqrt(2·df) + 10: a false failure is < 1e-6
// likely), tokens excluded by top-k/top-p/min-p must never be drawn, and a seed reproduces its draws.
// Runs in a few seconds on lavapipe.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <random>
#include <utility>
#include <vector>

#include "kernels/ops/sample.h"
#include "kernels/ref/sample_ref.h"

using namespace trove;

TEST(Sampler, DistributionMatchesReference) {
  auto d = vk::Device::open();
  ASSERT_TRUE(d.ok()) << d.status().ToString();
  auto op = ops::Sampler::create(**d);
  ASSERT_TRUE(op.ok()) << op.status().ToString();
  std::mt19937 rng(std::random_device{}());
  const uint32_t ncols = 40, rows = 20000;
  std::vector<ops::SamplingParams> cases = {
      {1.0f, 40, 1.0f, 0.0f, uint32_t(rng())},   // plain softmax
      {0.7f, 10, 1.0f, 0.0f, uint32_t(rng())},   // temperature + top-k
      {1.0f, 40, 0.8f, 0.0f, uint32_t(rng())},   // top-p
      {1.3f, 20, 0.95f, 0.05f, uint32_t(rng())}, // all together
  };
  for (const auto& p : cases) {
    std::normal_distribution<float> nd(0.f, 1.5f);
    std::vector<float> row(ncols);
    for (auto& x : row) x = nd(rng);
    std::vector<float> l;
    for (uint32_t r = 0; r < rows; ++r) l.insert(l.end(), row.begin(), row.end());
    auto want = ref::sampling_probs(row.data(), ncols, p.temperature, p.top_k, p.top_p, p.min_p);
    auto bl = (*d)->buffer(l.size() * 4), bo = (*d)->buffer(rows * 4);
    ASSERT_TRUE(bl.ok() && bo.ok());
    ASSERT_TRUE(bl->upload(l.data(), l.size() * 4).ok());
    ASSERT_TRUE(bo->fill(0xffffffffu).ok());
    auto s = (*d)->stream();
    ASSERT_TRUE(op->record(*s, *bl, *bo, rows, ncols, p).ok());
    ASSERT_TRUE(s->submit_and_wait().ok());
    std::vector<uint32_t> got(rows);
    ASSERT_TRUE(bo->download(got.data(), rows * 4).ok());
    std::vector<double> count(ncols, 0);
    for (uint32_t t : got) {
      ASSERT_LT(t, ncols);
      ASSERT_GT(want[t], 0.0) << "token " << t << " was excluded by the filters but drawn";
      count[t] += 1;
    }
    double chi2 = 0;
    int df = -1;
    for (uint32_t i = 0; i < ncols; ++i) {
      if (want[i] == 0) continue;
      double e = want[i] * rows;
      chi2 += (count[i] - e) * (count[i] - e) / e;
      ++df;
    }
    double bound = df + 8 * std::sqrt(2.0 * std::max(df, 1)) + 10;
    EXPECT_LT(chi2, bound) << "T=" << p.temperature << " k=" << p.top_k << " p=" << p.top_p << " min_p=" << p.min_p;
    // Same seed → same draws.
    ASSERT_TRUE(op->record(*s, *bl, *bo, rows, ncols, p).ok());
    ASSERT_TRUE(s->submit_and_wait().ok());
    std::vector<uint32_t> again(rows);
    ASSERT_TRUE(bo->download(again.data(), rows * 4).ok());
    EXPECT_EQ(got, again);
  }
  auto bl = (*d)->buffer(4096), bo = (*d)->buffer(4096);
  auto s = (*d)->stream();
  EXPECT_FALSE(op->record(*s, *bl, *bo, 1, 10, {0.0f, 10, 1.0f, 0.0f, 1}).ok());
  EXPECT_FALSE(op->record(*s, *bl, *bo, 1, 10, {1.0f, 100, 1.0f, 0.0f, 1}).ok());
}

// The workgroup form (sample_wg_f32.comp, what vocabulary-sized rows take): rows of 4100 (scalar
// loads) and 8192 logits (vec4 loads) with two tied maxima, ties further down and a NaN; the draws of
// 1000 rows against ref::sampling_probs (chi-square as above, support), top-k 1 takes the first of the
// tied maxima, a seed reproduces its draws. ~2 s on lavapipe.
TEST(Sampler, WorkgroupFormMatchesReference) {
  auto d = vk::Device::open();
  ASSERT_TRUE(d.ok()) << d.status().ToString();
  auto op = ops::Sampler::create(**d);
  ASSERT_TRUE(op.ok()) << op.status().ToString();
  std::mt19937 rng(std::random_device{}());
  const uint32_t rows = 1000;
  for (uint32_t ncols : {4100u, 8192u}) {
    std::normal_distribution<float> nd(0.f, 1.f);
    std::vector<float> row(ncols);
    // Below the planted values: an unclamped draw above 5 (p ≈ 3e-7 each, ~0.2% of runs at 8192 columns)
    // became the one maximum, and top-k 1 rightly took it instead of the first tied 5.
    for (auto& x : row) x = std::clamp(nd(rng), -4.f, 4.f);
    row[ncols / 3] = row[ncols - 2] = 5.f;           // tied maxima
    row[7] = row[ncols / 2] = row[ncols - 1] = 4.5f;  // ties further down the candidates
    row[5] = NAN;                                     // never a candidate
    std::vector<float> l;
    for (uint32_t r = 0; r < rows; ++r) l.insert(l.end(), row.begin(), row.end());
    auto bl = (*d)->buffer(l.size() * 4), bo = (*d)->buffer(rows * 4);
    ASSERT_TRUE(bl.ok() && bo.ok());
    ASSERT_TRUE(bl->upload(l.data(), l.size() * 4).ok());
    std::vector<float> clean = row;
    clean[5] = -1e30f;  // the reference takes no NaN
    for (const ops::SamplingParams& p : {ops::SamplingParams{1.0f, 6, 1.0f, 0.0f, uint32_t(rng())},
                                         ops::SamplingParams{1.5f, 4, 0.9f, 0.02f, uint32_t(rng())},
                                         ops::SamplingParams{1.0f, 1, 1.0f, 0.0f, uint32_t(rng())}}) {
      SCOPED_TRACE(testing::Message() << "ncols " << ncols << " k " << p.top_k);
      ASSERT_TRUE(bo->fill(0xffffffffu).ok());
      auto s = (*d)->stream();
      ASSERT_TRUE(s.ok());
      ASSERT_TRUE(op->record(*s, *bl, *bo, rows, ncols, p, ops::SamplerForm::kWorkgroup).ok());
      ASSERT_TRUE(s->submit_and_wait().ok());
      std::vector<uint32_t> got(rows);
      ASSERT_TRUE(bo->download(got.data(), rows * 4).ok());
      auto want = ref::sampling_probs(clean.data(), ncols, p.temperature, p.top_k, p.top_p, p.min_p);
      std::vector<double> count(ncols, 0);
      for (uint32_t t : got) {
        ASSERT_LT(t, ncols);
        ASSERT_GT(want[t], 0.0) << "token " << t << " was excluded by the filters but drawn";
        count[t] += 1;
      }
      double chi2 = 0;
      int df = -1;
      for (uint32_t i = 0; i < ncols; ++i) {
        if (want[i] == 0) continue;
        const double e = want[i] * rows;
        chi2 += (count[i] - e) * (count[i] - e) / e;
        ++df;
      }
      EXPECT_LT(chi2, df + 8 * std::sqrt(2.0 * std::max(df, 1)) + 10);
      if (p.top_k == 1) EXPECT_EQ(count[ncols / 3], rows);  // the first of the tied maxima
      ASSERT_TRUE(op->record(*s, *bl, *bo, rows, ncols, p, ops::SamplerForm::kWorkgroup).ok());
      ASSERT_TRUE(s->submit_and_wait().ok());
      std::vector<uint32_t> again(rows);
      ASSERT_TRUE(bo->download(again.data(), rows * 4).ok());
      EXPECT_EQ(got, again);
    }
  }
}

// Decode replay reads the draw's seed from a buffer (ops::SamplerSeed): both forms draw exactly what
// the same seed pushed draws; another value in the buffer draws otherwise (it is read); a buffer
// without the entry is refused.
TEST(Sampler, SeedFromABufferDrawsAsThePushedSeed) {
  auto d = vk::Device::open();
  ASSERT_TRUE(d.ok()) << d.status().ToString();
  auto op = ops::Sampler::create(**d);
  ASSERT_TRUE(op.ok()) << op.status().ToString();
  std::mt19937 rng(11);
  const uint32_t rows = 64;
  for (const auto& shape : {std::pair{40u, ops::SamplerForm::kPerRow}, std::pair{4100u, ops::SamplerForm::kWorkgroup}}) {
    const uint32_t ncols = shape.first;
    const ops::SamplerForm form = shape.second;
    SCOPED_TRACE(testing::Message() << ncols << " logits a row");
    std::normal_distribution<float> nd(0.f, 1.f);
    std::vector<float> l(size_t{rows} * ncols);
    for (auto& x : l) x = nd(rng);
    auto bl = (*d)->buffer(l.size() * 4), bo = (*d)->buffer(rows * 4), bs = (*d)->buffer(16, vk::Memory::kHostVisible);
    ASSERT_TRUE(bl.ok() && bo.ok() && bs.ok());
    ASSERT_TRUE(bl->upload(l.data(), l.size() * 4).ok());
    const ops::SamplingParams p{1.2f, 40, 1.0f, 0.0f, 12345u};
    auto draw = [&](const ops::SamplerSeed& seed, uint32_t in_buffer) {
      const uint32_t seeds[4] = {0, 0, in_buffer, 0};
      EXPECT_TRUE(bs->upload(seeds, sizeof(seeds)).ok());
      EXPECT_TRUE(bo->fill(0xffffffffu).ok());
      auto s = (*d)->stream();
      EXPECT_TRUE(s.ok());
      Status st = op->record(*s, *bl, *bo, rows, ncols, p, form, seed);
      EXPECT_TRUE(st.ok()) << st.ToString();
      EXPECT_TRUE(s->submit_and_wait().ok());
      std::vector<uint32_t> got(rows);
      EXPECT_TRUE(bo->download(got.data(), rows * 4).ok());
      return got;
    };
    const std::vector<uint32_t> pushed = draw({}, 0), read = draw({*bs, 2}, p.seed), other = draw({*bs, 2}, p.seed + 1);
    EXPECT_EQ(pushed, read);
    EXPECT_NE(pushed, other) << "the buffer's seed is not read";
    auto s = (*d)->stream();
    ASSERT_TRUE(s.ok());
    const Status st = op->record(*s, *bl, *bo, rows, ncols, p, form, {vk::BufferRange(*bs, 0, 8), 2});
    EXPECT_EQ(st.code(), StatusCode::kInvalidArgument);
    EXPECT_NE(st.message().find("has no entry 2"), std::string::npos) << st.message();
  }
}

// The engine samples row r of a step into its token r, a range 4·r bytes into the tokens buffer —
// under the minStorageBufferOffsetAlignment of every device (16 on lavapipe and NVIDIA). The op binds
// the output from the 256-byte boundary below it: rows drawn one call each into slots at 4·r bytes
// give the tokens the same calls give at offset 0, every other slot keeps its poison, and the
// validated run of this test (kernels_test_sample_validated) reports no misaligned binding. An offset
// that is not a multiple of 4 is refused.
TEST(Sampler, RowsDrawnIntoUnalignedSlotsEqualAlignedOnes) {
  auto d = vk::Device::open();
  ASSERT_TRUE(d.ok()) << d.status().ToString();
  auto op = ops::Sampler::create(**d);
  ASSERT_TRUE(op.ok()) << op.status().ToString();
  std::mt19937 rng(12);
  const uint32_t rows = 7, ncols = 4100;
  std::normal_distribution<float> nd(0.f, 1.f);
  std::vector<float> l(size_t{rows} * ncols);
  for (auto& x : l) x = nd(rng);
  auto bl = (*d)->buffer(l.size() * 4), bo = (*d)->buffer(512);
  ASSERT_TRUE(bl.ok() && bo.ok());
  ASSERT_TRUE(bl->upload(l.data(), l.size() * 4).ok());
  const ops::SamplingParams p{1.0f, 64, 1.0f, 0.0f, 99u};
  for (const auto form : {ops::SamplerForm::kPerRow, ops::SamplerForm::kWorkgroup}) {
    SCOPED_TRACE(testing::Message() << "form " << static_cast<int>(form));
    auto row_logits = [&](uint32_t r) { return vk::BufferRange(*bl, uint64_t{r} * ncols * 4, uint64_t{ncols} * 4); };
    std::vector<uint32_t> aligned(rows), slots(128);
    for (uint32_t r = 0; r < rows; ++r) {  // row r alone into slot 0
      ASSERT_TRUE(bo->fill(0xffffffffu).ok());
      auto s = (*d)->stream();
      ASSERT_TRUE(s.ok());
      ASSERT_TRUE(op->record(*s, row_logits(r), vk::BufferRange(*bo, 0, 4), 1, ncols, p, form).ok());
      ASSERT_TRUE(s->submit_and_wait().ok());
      ASSERT_TRUE(bo->download(&aligned[r], 4).ok());
    }
    ASSERT_TRUE(bo->fill(0xffffffffu).ok());
    auto s = (*d)->stream();
    ASSERT_TRUE(s.ok());
    for (uint32_t r = 0; r < rows; ++r) {  // row r alone into slot 65 + r (byte 260 + 4·r)
      const Status st = op->record(*s, row_logits(r), vk::BufferRange(*bo, 260 + 4ull * r, 4), 1, ncols, p, form);
      ASSERT_TRUE(st.ok()) << st.ToString();
    }
    ASSERT_TRUE(s->submit_and_wait().ok());
    ASSERT_TRUE(bo->download(slots.data(), slots.size() * 4).ok());
    for (uint32_t i = 0; i < 128; ++i) {
      if (i >= 65 && i < 65 + rows) {
        EXPECT_EQ(slots[i], aligned[i - 65]) << "row " << i - 65;
        EXPECT_LT(slots[i], ncols) << "row " << i - 65;
      } else {
        EXPECT_EQ(slots[i], 0xffffffffu) << "slot " << i << " written";
      }
    }
  }
  auto s = (*d)->stream();
  ASSERT_TRUE(s.ok());
  const Status st = op->record(*s, *bl, vk::BufferRange(*bo, 2, 4), 1, ncols, p);
  EXPECT_NE(st.message().find("output offset 2 is not a multiple of 4"), std::string::npos) << st.message();
}
