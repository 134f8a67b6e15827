// The decode matvec chain (kernels/ops/matvec_chain.h): a dense layer's attention output (+ residual),
// FFN gate/up (RMSNorm, SwiGLU) and FFN down (+ residual) in one dispatch with grid barriers must give
// the bits of the same three calls through ops::Matvec in the q8 form (split 1) with barriers between
// them — an op tested against the float64 reference in test_matvec.cpp. Fresh random weights and
// vectors each run (seed printed on failure), outputs poisoned with NaN. Also: mixed gate/up types
// (two passes over a row), the next layer's q/k/v as a fourth step, 1 or 2 rows per row group on
// either side, chains of one and two steps, bad calls refused by name, and a grid whose workgroups
// cannot all be resident reported by timeouts() (on lavapipe).
#include <cmath>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include <fmt/format.h>
#include <gtest/gtest.h>

#include "kernels/ops/matvec.h"
#include "kernels/ops/matvec_chain.h"
#include "kernels/ref/matmul_ref.h"
#include "tests/scoped_env.h"

using namespace trove;
using quant::GgmlType;
using ops::MatvecEpilogue;

namespace {
constexpr uint32_t kNaN = 0x7fc00000u;

struct Layer {
  uint32_t E = 512, F = 1024;
  GgmlType o = GgmlType::Q4_K, gate = GgmlType::Q4_K, up = GgmlType::Q4_K, down = GgmlType::Q6_K;
  uint32_t steps = 4;  // o; o, gate/up; o, gate/up, down; o, gate/up, down, the next layer's q/k/v
  GgmlType qkv = GgmlType::Q4_K, v = GgmlType::Q6_K;  // q and k, and v, of the next layer (q: E rows, k and v: E / 4)
  uint32_t batch = 1;  // columns (tokens)
};

std::string describe(const Layer& l) {
  return fmt::format("E {} F {} o {} gate {} up {} down {} qk {} v {}, {} steps, batch {}", l.E, l.F,
                     quant::traits(l.o)->name, quant::traits(l.gate)->name, quant::traits(l.up)->name,
                     quant::traits(l.down)->name, quant::traits(l.qkv)->name, quant::traits(l.v)->name, l.steps, l.batch);
}

class MatvecChainTest : public ::testing::Test {
 protected:
  void SetUp() override {
    auto d = vk::Device::open();
    ASSERT_TRUE(d.ok()) << d.status().ToString();
    dev_ = std::move(*d);
    auto m = ops::Matvec::create(*dev_);
    ASSERT_TRUE(m.ok()) << m.status().ToString();
    mv_ = std::make_unique<ops::Matvec>(std::move(*m));
    if (!mv_->q8_supported()) GTEST_SKIP() << "the device has no q8 matvec form (integer dot products)";
    ops::MatvecTuning t;
    t.form = ops::MatvecTuning::Form::kQ8;
    t.split = 1;
    mv_->set_tuning(t);
  }

  vk::Buffer buf(const std::vector<float>& v) {
    auto b = dev_->buffer(v.size() * 4);
    EXPECT_TRUE(b.ok() && b->upload(v.data(), v.size() * 4).ok());
    return std::move(*b);
  }
  vk::Buffer bytes(const std::vector<uint8_t>& v) {
    auto b = dev_->buffer((v.size() + 3) / 4 * 4);
    EXPECT_TRUE(b.ok() && b->upload(v.data(), v.size()).ok());
    return std::move(*b);
  }
  std::vector<float> down(const vk::Buffer& b, size_t n) {
    std::vector<float> v(n);
    EXPECT_TRUE(b.download(v.data(), n * 4).ok());
    return v;
  }

  // Runs the layer both ways from the same draw; false (with failures recorded) when they differ.
  // `ref`: the Matvec of the separate dispatches (default mv_, whose settings the chain also reads).
  bool same_bits(const ops::MatvecChain& chain, const Layer& l, uint64_t seed, bool expect_timeouts = false,
                 const ops::Matvec* ref = nullptr) {
    if (!ref) ref = mv_.get();
    SCOPED_TRACE(describe(l) + " seed " + std::to_string(seed));
    std::mt19937_64 r(seed);
    std::normal_distribution<float> nd(0.0f, 1.0f);
    std::uniform_real_distribution<float> uw(0.5f, 1.5f);
    const uint32_t KV = l.E / 4, B = l.batch;
    std::vector<float> a(B * l.E), x(B * l.E), nw(l.E), anw(l.E), poison(B * l.F);
    for (auto& v : a) v = nd(r);
    for (auto& v : x) v = nd(r);
    for (auto& v : nw) v = uw(r);
    for (auto& v : anw) v = uw(r);
    std::memcpy(poison.data(), std::vector<uint32_t>(poison.size(), kNaN).data(), poison.size() * 4);
    const auto wo = kernels::ref::random_weights(l.o, l.E, l.E, 0.5f, r());
    const auto wg = kernels::ref::random_weights(l.gate, l.F, l.E, 0.5f, r());
    const auto wu = kernels::ref::random_weights(l.up, l.F, l.E, 0.5f, r());
    const auto wd = kernels::ref::random_weights(l.down, l.E, l.F, 0.5f, r());
    const auto wq = kernels::ref::random_weights(l.qkv, l.E, l.E, 0.5f, r());
    const auto wk = kernels::ref::random_weights(l.qkv, KV, l.E, 0.5f, r());
    const auto wv = kernels::ref::random_weights(l.v, KV, l.E, 0.5f, r());
    vk::Buffer bo = bytes(wo), bg = bytes(wg), bu = bytes(wu), bd = bytes(wd), ba = buf(a), bnw = buf(nw);
    vk::Buffer bq = bytes(wq), bk = bytes(wk), bv = bytes(wv), banw = buf(anw);

    // Separate dispatches. The next layer's q is written over a (o's input), as the engine does.
    vk::Buffer x1 = buf(x), h1 = buf(poison), a1 = buf(a), k1 = buf(poison), v1 = buf(poison);  // k, v: B·F ≥ B·KV
    {
      auto s = dev_->stream();
      EXPECT_TRUE(s.ok());
      auto matvec = [&](uint32_t k, uint32_t cols, const vk::Buffer& x, const vk::Buffer* norm, MatvecEpilogue ep,
                        std::initializer_list<ops::MatvecMatrix> mats) {
        if (k >= l.steps) return;
        if (k > 0) s->barrier();
        ops::MatvecCall c;
        c.cols = cols;
        c.batch = B;
        c.x = x;
        if (norm) c.norm_w = *norm;
        c.epilogue = ep;
        uint32_t n = 0;
        for (const auto& m : mats) c.mats[n++] = m;
        c.n_mats = n;
        EXPECT_TRUE(ref->record(*s, c).ok()) << "step " << k;
      };
      matvec(0, l.E, a1, nullptr, MatvecEpilogue::kAdd, {{l.o, l.E, vk::BufferRange(bo), vk::BufferRange(x1), 0}});
      matvec(1, l.E, x1, &bnw, MatvecEpilogue::kSwiGlu,
             {{l.gate, l.F, vk::BufferRange(bg), vk::BufferRange(h1), 0}, {l.up, l.F, vk::BufferRange(bu), {}, 0}});
      matvec(2, l.F, h1, nullptr, MatvecEpilogue::kAdd, {{l.down, l.E, vk::BufferRange(bd), vk::BufferRange(x1), 0}});
      matvec(3, l.E, x1, &banw, MatvecEpilogue::kStore,
             {{l.qkv, l.E, vk::BufferRange(bq), vk::BufferRange(a1), 0}, {l.qkv, KV, vk::BufferRange(bk), vk::BufferRange(k1), 0},
              {l.v, KV, vk::BufferRange(bv), vk::BufferRange(v1), 0}});
      EXPECT_TRUE(s->submit_and_wait().ok());
    }
    // One chain: vectors 0 a (then q), 1 x, 2 norm_w, 3 h, 4 the next attention norm, 5 k, 6 v;
    // weights 0 o, 1 gate, 2 up, 3 down, 4 q, 5 k, 6 v.
    vk::Buffer x2 = buf(x), h2 = buf(poison), a2 = buf(a), k2 = buf(poison), v2 = buf(poison);
    ops::MatvecChainCall call;
    call.vectors[0] = a2;
    call.vectors[1] = x2;
    call.vectors[2] = bnw;
    call.vectors[3] = h2;
    call.vectors[4] = banw;
    call.vectors[5] = k2;
    call.vectors[6] = v2;
    call.weights[0] = bo;
    call.weights[1] = bg;
    call.weights[2] = bu;
    call.weights[3] = bd;
    call.weights[4] = bq;
    call.weights[5] = bk;
    call.weights[6] = bv;
    call.n_steps = l.steps;
    call.batch = B;
    call.steps[0] = {l.E, 0, -1, MatvecEpilogue::kAdd, {{0, 1, l.E, l.o}}, 1};
    call.steps[1] = {l.E, 1, 2, MatvecEpilogue::kSwiGlu, {{1, 3, l.F, l.gate}, {2, 3, l.F, l.up}}, 2};
    call.steps[2] = {l.F, 3, -1, MatvecEpilogue::kAdd, {{3, 1, l.E, l.down}}, 1};
    call.steps[3] = {l.E, 1, 4, MatvecEpilogue::kStore, {{4, 0, l.E, l.qkv}, {5, 5, KV, l.qkv}, {6, 6, KV, l.v}}, 3};
    const uint32_t before = chain.timeouts();
    {
      auto s = dev_->stream();
      EXPECT_TRUE(s.ok());
      const Status st = chain.record(*s, call);
      EXPECT_TRUE(st.ok()) << st.ToString();
      if (!st.ok()) return false;
      EXPECT_TRUE(s->submit_and_wait().ok());
    }
    if (expect_timeouts) {
      EXPECT_GT(chain.timeouts(), before) << "a grid of workgroups that cannot all be resident must be reported";
      return true;
    }
    EXPECT_EQ(chain.timeouts(), before) << "grid-barrier waits gave up";
    bool ok = true;
    auto same = [&](const vk::Buffer& want, const vk::Buffer& got, size_t n, bool written, const char* what,
                    const std::vector<float>* before) {
      const auto w = down(want, n), g = down(got, n);
      for (size_t i = 0; i < n && ok; ++i) {
        ok = written ? std::isfinite(w[i]) && std::memcmp(&w[i], &g[i], 4) == 0 && (!before || w[i] != (*before)[i])
                     : std::memcmp(&w[i], &g[i], 4) == 0;
        EXPECT_TRUE(ok) << what << " " << i << ": chain " << g[i] << ", dispatches " << w[i];
      }
    };
    same(x1, x2, B * l.E, true, "residual", &x);
    same(h1, h2, B * l.F, l.steps >= 2, "h", nullptr);
    same(a1, a2, B * l.E, l.steps >= 4, "q (over a)", l.steps >= 4 ? &a : nullptr);
    same(k1, k2, B * KV, l.steps >= 4, "k", nullptr);
    same(v1, v2, B * KV, l.steps >= 4, "v", nullptr);
    return ok;
  }

  std::unique_ptr<vk::Device> dev_;
  std::unique_ptr<ops::Matvec> mv_;
};

TEST_F(MatvecChainTest, LayerGivesTheBitsOfSeparateDispatches) {
  auto chain = ops::MatvecChain::create(*dev_, *mv_);
  ASSERT_TRUE(chain.ok()) << chain.status().ToString();
  std::mt19937_64 seeds(std::random_device{}());
  // Lavapipe compiles a pipeline per set of types (~1-2 s each): three layers cover every type in
  // every step, gate and up of different types, and chains of 4, 3 and 1 steps.
  for (const Layer& l : {Layer{}, Layer{512, 768, GgmlType::Q5_K, GgmlType::Q4_K, GgmlType::Q5_K, GgmlType::Q8_0, 4, GgmlType::Q5_K, GgmlType::Q8_0},
                         Layer{256, 512, GgmlType::Q6_K, GgmlType::Q8_0, GgmlType::Q8_0, GgmlType::Q4_K, 3},
                         Layer{512, 1024, GgmlType::Q4_K, GgmlType::Q4_K, GgmlType::Q4_K, GgmlType::Q6_K, 1}}) {
    if (!same_bits(*chain, l, seeds())) break;
  }
}

// Batches of 2..8 columns (verification steps, several sequences): each step quantizes its input into
// the op's scratch, a grid barrier, then the rows — the bits of Matvec's batched calls (the q8p form, or
// the staged q8 form where x̂ fits shared memory: the same numbers).
TEST_F(MatvecChainTest, BatchesGiveTheBitsOfSeparateDispatches) {
  auto chain = ops::MatvecChain::create(*dev_, *mv_);
  ASSERT_TRUE(chain.ok()) << chain.status().ToString();
  std::mt19937_64 seeds(std::random_device{}());
  Layer l{256, 512};  // smaller: each batch size is new pipelines for both sides
  for (uint32_t b : {2u, 5u}) {
    l.batch = b;
    if (!same_bits(*chain, l, seeds())) break;
  }
  l.batch = 9;
  auto s = dev_->stream();
  ASSERT_TRUE(s.ok());
  ops::MatvecChainCall c;
  c.n_steps = 1;
  c.batch = 9;
  const Status st = chain->record(*s, c);
  EXPECT_FALSE(st.ok());
  EXPECT_NE(st.message().find("batch 9 (1..8)"), std::string::npos) << st.message();
}

// Rows per row group do not change a row's bits (each lane walks the same parts of the row), which
// lets the chain take 1 where 2 would leave its grid idle: a chain with one row per group against
// dispatches with two, and one with two against dispatches with one.
TEST_F(MatvecChainTest, RowsPerRowGroupDoNotChangeTheBits) {
  std::unique_ptr<ops::Matvec> one;
  {
    tests::ScopedEnv rows("TROVE_MATVEC_ROWS", "1");
    auto m = ops::Matvec::create(*dev_);
    ASSERT_TRUE(m.ok()) << m.status().ToString();
    one = std::make_unique<ops::Matvec>(std::move(*m));
  }
  ops::MatvecTuning t;
  t.form = ops::MatvecTuning::Form::kQ8;
  t.split = 1;
  one->set_tuning(t);
  ASSERT_EQ(one->q8_config().rows, 1u);
  ASSERT_EQ(mv_->q8_config().rows, 2u);
  auto chain1 = ops::MatvecChain::create(*dev_, *one);
  ASSERT_TRUE(chain1.ok()) << chain1.status().ToString();
  auto chain2 = ops::MatvecChain::create(*dev_, *mv_);
  ASSERT_TRUE(chain2.ok()) << chain2.status().ToString();
  std::mt19937_64 seeds(std::random_device{}());
  same_bits(*chain1, Layer{}, seeds(), false, mv_.get());
  same_bits(*chain2, Layer{}, seeds(), false, one.get());
}

// TROVE_MATVEC_CHAIN_PREFETCH=1 only reads weights between steps: the same bits (on lavapipe the one
// workgroup reads its next block before going on). A bad value is refused.
TEST_F(MatvecChainTest, PrefetchChangesNoResult) {
  {
    tests::ScopedEnv bad("TROVE_MATVEC_CHAIN_PREFETCH", "yes");
    EXPECT_FALSE(ops::MatvecChain::create(*dev_, *mv_).ok());
  }
  tests::ScopedEnv on("TROVE_MATVEC_CHAIN_PREFETCH", "1");
  auto chain = ops::MatvecChain::create(*dev_, *mv_);
  ASSERT_TRUE(chain.ok()) << chain.status().ToString();
  std::mt19937_64 seeds(std::random_device{}());
  Layer l;
  if (!same_bits(*chain, l, seeds())) return;
  l.batch = 2;
  l.E = 256;
  l.F = 512;
  same_bits(*chain, l, seeds());
}

// Lavapipe runs a dispatch's workgroups on a few threads, one after another on each: a grid of 3
// cannot meet at a barrier there, and the op must say so rather than leave wrong numbers unnoticed.
// On a GPU the same grid is resident and must give the bits of the dispatches.
TEST_F(MatvecChainTest, GridThatCannotMeetIsReported) {
  tests::ScopedEnv grid("TROVE_MATVEC_CHAIN_GRID", "3");
  auto chain = ops::MatvecChain::create(*dev_, *mv_);
  ASSERT_TRUE(chain.ok()) << chain.status().ToString();
  ASSERT_EQ(chain->grid(), 3u);
  same_bits(*chain, Layer{}, std::random_device{}(), dev_->features().is_cpu);
}

TEST_F(MatvecChainTest, BadCallsAreNamed) {
  auto chain = ops::MatvecChain::create(*dev_, *mv_);
  ASSERT_TRUE(chain.ok()) << chain.status().ToString();
  {
    tests::ScopedEnv grid("TROVE_MATVEC_CHAIN_GRID", "lots");
    EXPECT_FALSE(ops::MatvecChain::create(*dev_, *mv_).ok());
  }
  auto v = dev_->buffer(4096 * 4), w = dev_->buffer(4 << 20);
  ASSERT_TRUE(v.ok() && w.ok());
  ops::MatvecChainCall ok;
  for (auto& r : ok.vectors) r = *v;
  for (auto& r : ok.weights) r = *w;
  ok.n_steps = 1;
  ok.steps[0] = {512, 0, -1, MatvecEpilogue::kStore, {{0, 1, 512, GgmlType::Q4_K}}, 1};
  auto s = dev_->stream();
  ASSERT_TRUE(s.ok());
  ASSERT_TRUE(chain->record(*s, ok).ok());
  auto refused = [&](ops::MatvecChainCall c, const char* want, const char* what) {
    const Status st = chain->record(*s, c);
    EXPECT_FALSE(st.ok()) << what;
    EXPECT_NE(st.message().find(want), std::string::npos) << what << ": " << st.message();
  };
  auto c = ok;
  c.steps[0].mats[0].output = 0;
  refused(c, "is the step's input", "input == output");
  c = ok;
  c.steps[0].mats[0].type = GgmlType::F16;
  refused(c, "weight type F16", "F16 weights");
  c = ok;
  c.steps[0].cols = 300;
  refused(c, "multiple of 256", "cols 300");
  c = ok;
  c.steps[0].mats[0].rows = 5000;
  refused(c, "vector 1 (output)", "an output vector too small");
  c = ok;
  c.steps[0].mats[0].rows = 4096;
  c.weights[0] = vk::BufferRange(*w, 0, 1024);
  refused(c, "weight 0 holds 1024 bytes", "weights too small");
  c = ok;
  c.n_steps = 5;
  refused(c, "5 steps", "too many steps");
  c = ok;
  c.steps[0].norm = 9;
  refused(c, "indices are 0..7", "a vector index out of range");
  c = ok;
  c.steps[0].n_mats = 2;
  c.steps[0].mats[1] = {1, 1, 512, GgmlType::Q4_K};
  refused(c, "matrices 0 and 1 write one output vector", "two matrices, one output");
  c = ok;
  c.steps[0].epilogue = MatvecEpilogue::kSwiGlu;
  refused(c, "1 matrices (1..3; SwiGLU 2)", "SwiGLU of one matrix");
  ASSERT_TRUE(s->submit_and_wait().ok());
}

}  // namespace
