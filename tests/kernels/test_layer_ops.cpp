// GPU layer ops (RMSNorm incl. per-head QK-norm, SwiGLU, RoPE NEOX, the q/k norm + RoPE + KV write prologue,
// argmax, get_rows of every weight type, weights to f16 rows) against the C++ references in
// kernels/ref/layer_ref.h, on fresh random inputs with NaN-poisoned outputs. Error bounds: fp32
// norms/activations 2e-5 relative (+1e-6 absolute); RoPE 1e-5 absolute for |x| ~ N(0,1) at positions up to
// 131071 (angles from 64-bit fixed-point turns: ~4e-7 rad, then fp32 sin/cos); integer/copy ops exact
// (quantized get_rows: 1e-6 relative, FMA contraction). Shapes include Qwen3-8B (hidden 4096, 32 Q / 8 KV
// heads of 128) and Qwen3-30B-A3B (hidden 2048, 32 Q / 4 KV heads); big batches only with
// TROVE_KERNEL_FULL=1. Runs in ~10 s on lavapipe.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdlib>
#include <cstring>
#include <algorithm>
#include <random>

#include <fmt/format.h>

#include "kernels/ops/alu_probe.h"
#include "kernels/ops/chain_probe.h"
#include "kernels/ops/l2_warm.h"
#include "kernels/ops/layer_ops.h"
#include "kernels/quant/quant.h"
#include "kernels/ref/layer_ref.h"

using namespace trove;

namespace {
constexpr uint32_t kNaN = 0x7fc00000u;

bool full() { const char* v = std::getenv("TROVE_KERNEL_FULL"); return v && std::string(v) == "1"; }

struct Gpu {
  std::unique_ptr<vk::Device> dev;
  Gpu() {
    auto d = vk::Device::open();
    if (!d.ok()) ADD_FAILURE() << d.status().ToString();
    else dev = std::move(*d);
  }
  template <class T>
  vk::Buffer up(const std::vector<T>& v) {
    auto b = dev->buffer(std::max<uint64_t>(4, v.size() * sizeof(T)));
    EXPECT_TRUE(b.ok());
    EXPECT_TRUE(b->upload(v.data(), v.size() * sizeof(T)).ok());
    return std::move(*b);
  }
  vk::Buffer poisoned(uint64_t bytes) {
    auto b = dev->buffer(std::max<uint64_t>(4, bytes));
    EXPECT_TRUE(b.ok());
    EXPECT_TRUE(b->fill(kNaN).ok());
    return std::move(*b);
  }
  template <class T>
  std::vector<T> down(const vk::Buffer& b, size_t n) {
    std::vector<T> v(n);
    EXPECT_TRUE(b.download(v.data(), n * sizeof(T)).ok());
    return v;
  }
};

std::vector<float> randn(size_t n, std::mt19937& rng, float sd = 1.f) {
  std::normal_distribution<float> d(0.f, sd);
  std::vector<float> v(n);
  for (auto& x : v) x = d(rng);
  return v;
}

void expect_close(const std::vector<float>& got, const std::vector<float>& want, double rel, double abs_tol,
                  const std::string& what) {
  ASSERT_EQ(got.size(), want.size());
  for (size_t i = 0; i < got.size(); ++i) {
    double err = std::fabs(double(got[i]) - want[i]);
    ASSERT_TRUE(std::isfinite(got[i]) && err <= rel * std::fabs(want[i]) + abs_tol)
        << what << " element " << i << ": got " << got[i] << " want " << want[i];
  }
}
}  // namespace

TEST(RmsNorm, MatchesReferenceOnQwenShapes) {
  Gpu g;
  ASSERT_TRUE(g.dev);
  auto op = ops::RmsNorm::create(*g.dev);
  ASSERT_TRUE(op.ok()) << op.status().ToString();
  std::mt19937 rng(std::random_device{}());
  struct Shape { uint32_t rows, ncols; const char* what; };
  std::vector<Shape> shapes = {{1, 4096, "8B hidden, 1 token"}, {3, 2048, "30B hidden, 3 tokens"},
                               {7 * 32, 128, "Q-norm 32 heads x 7 tokens"}, {5 * 4, 128, "K-norm 4 heads x 5 tokens"},
                               {2, 100, "odd width"}};
  if (full()) shapes.push_back({512, 4096, "8B hidden, 512 tokens"});
  for (auto sh : shapes) {
    auto x = randn(size_t(sh.rows) * sh.ncols, rng, 2.f), w = randn(sh.ncols, rng);
    std::vector<float> want(x.size());
    ref::rms_norm(x.data(), w.data(), want.data(), sh.rows, sh.ncols, 1e-6f);
    auto bx = g.up(x), bw = g.up(w), bo = g.poisoned(x.size() * 4);
    auto s = g.dev->stream();
    ASSERT_TRUE(s.ok());
    ASSERT_TRUE(op->record(*s, bx, bw, bo, sh.rows, sh.ncols, 1e-6f).ok());
    ASSERT_TRUE(s->submit_and_wait().ok());
    expect_close(g.down<float>(bo, x.size()), want, 2e-5, 1e-6, sh.what);
  }
}

// The L2 warm-up has no result of its own; what proves it reads every word of its range (and nothing
// else) is the XOR its workgroups leave behind: the XOR of out[0..grid) must be the XOR of the range.
TEST(L2Warm, ReadsExactlyItsRange) {
  Gpu g;
  ASSERT_TRUE(g.dev);
  auto op = ops::L2Warm::create(*g.dev);
  ASSERT_TRUE(op.ok()) << op.status().ToString();
  std::mt19937 rng(std::random_device{}());
  std::vector<uint32_t> data(4 * 70001);
  for (auto& w : data) w = rng();
  auto buf = g.up(data);
  struct Case { uint64_t first, n; };
  for (Case c : {Case{0, 1}, Case{0, 70001}, Case{3, 2048}, Case{1000, 69001}, Case{17, 4097}}) {
    uint32_t want = 0;
    for (uint64_t i = 4 * c.first; i < 4 * (c.first + c.n); ++i) want ^= data[i];
    const uint32_t grid = ops::L2Warm::grid(c.n);
    auto out = g.poisoned(uint64_t{grid} * 4);
    auto s = g.dev->stream();
    ASSERT_TRUE(op->record(*s, buf, c.first, c.n, out).ok());
    ASSERT_TRUE(s->submit_and_wait().ok());
    uint32_t got = 0;
    for (uint32_t w : g.down<uint32_t>(out, grid)) got ^= w;
    EXPECT_EQ(got, want) << "words [" << c.first << ", " << c.first + c.n << ")";
  }
  auto out = g.poisoned(4);
  auto s = g.dev->stream();
  EXPECT_FALSE(op->record(*s, buf, 70000, 2, out).ok()) << "a range past the buffer must be refused";
  EXPECT_FALSE(op->record(*s, buf, 0, 70001, out).ok()) << "an out smaller than the grid must be refused";
}

TEST(SwiGlu, MatchesReference) {
  Gpu g;
  ASSERT_TRUE(g.dev);
  auto op = ops::SwiGlu::create(*g.dev);
  ASSERT_TRUE(op.ok()) << op.status().ToString();
  std::mt19937 rng(std::random_device{}());
  std::vector<uint32_t> sizes = {1, 777, 12288, 768 * 8 /* 30B expert FFN x top-8 */};
  if (full()) sizes.push_back(512u * 12288u);
  for (uint32_t n : sizes) {
    auto a = randn(n, rng, 4.f), b = randn(n, rng);
    std::vector<float> want(n);
    ref::swiglu(a.data(), b.data(), want.data(), n);
    auto ba = g.up(a), bb = g.up(b), bo = g.poisoned(n * 4ull);
    auto s = g.dev->stream();
    ASSERT_TRUE(op->record(*s, ba, bb, bo, n).ok());
    ASSERT_TRUE(s->submit_and_wait().ok());
    expect_close(g.down<float>(bo, n), want, 2e-5, 1e-6, "swiglu n=" + std::to_string(n));
  }
}

TEST(RopeNeox, MatchesReference) {
  Gpu g;
  ASSERT_TRUE(g.dev);
  auto op = ops::RopeNeox::create(*g.dev);
  ASSERT_TRUE(op.ok()) << op.status().ToString();
  std::mt19937 rng(std::random_device{}());
  struct Shape { uint32_t tokens, heads, head_dim; };
  std::vector<Shape> shapes = {{1, 32, 128}, {5, 8, 128}, {9, 4, 128}, {3, 2, 64}};
  if (full()) shapes.push_back({512, 32, 128});
  for (auto sh : shapes) {
    auto x = randn(size_t(sh.tokens) * sh.heads * sh.head_dim, rng);
    std::vector<int32_t> pos(sh.tokens);
    std::uniform_int_distribution<int32_t> pd(0, 131071);
    for (auto& p : pos) p = pd(rng);
    pos[0] = 0;  // position 0 is the identity rotation
    auto want = x;
    ref::rope_neox(want.data(), pos.data(), sh.tokens, sh.heads, sh.head_dim, 1e6);
    auto bx = g.up(x), bp = g.up(pos);
    auto s = g.dev->stream();
    ASSERT_TRUE(op->record(*s, bx, bp, sh.tokens, sh.heads, sh.head_dim, 1e6f).ok());
    ASSERT_TRUE(s->submit_and_wait().ok());
    auto got = g.down<float>(bx, x.size());
    expect_close(got, want, 0, 1e-5, "rope");
    // position 0 rows are unchanged up to rounding
    for (size_t i = 0; i < size_t(sh.heads) * sh.head_dim; ++i) ASSERT_NEAR(got[i], x[i], 1e-6);
  }
  auto bx = g.up(std::vector<float>(10)), bp = g.up(std::vector<int32_t>(1));
  auto s = g.dev->stream();
  EXPECT_FALSE(op->record(*s, bx, bp, 1, 2, 5, 1e6f).ok());  // odd head_dim
}

TEST(Argmax, ExactIncludingTies) {
  Gpu g;
  ASSERT_TRUE(g.dev);
  auto op = ops::Argmax::create(*g.dev);
  ASSERT_TRUE(op.ok()) << op.status().ToString();
  std::mt19937 rng(std::random_device{}());
  for (uint32_t ncols : {1u, 300u, 151936u /* Qwen3 vocabulary */}) {
    const uint32_t rows = 4;
    auto l = randn(size_t(rows) * ncols, rng, 5.f);
    if (ncols > 10) {
      // Row 1: a tie between two maxima → the smaller index must win. Row 2: max in the last column.
      std::uniform_int_distribution<uint32_t> cd(0, ncols - 1);
      uint32_t i = cd(rng) % (ncols / 2), j = ncols / 2 + cd(rng) % (ncols / 2);
      l[size_t(ncols) + i] = l[size_t(ncols) + j] = 100.f;
      l[2ull * ncols + ncols - 1] = 200.f;
      l[3ull * ncols + 0] = NAN;  // NaN never wins
    }
    std::vector<uint32_t> want(rows);
    ref::argmax(l.data(), want.data(), rows, ncols);
    auto bl = g.up(l), bo = g.poisoned(rows * 4);
    auto s = g.dev->stream();
    ASSERT_TRUE(op->record(*s, bl, bo, rows, ncols).ok());
    ASSERT_TRUE(s->submit_and_wait().ok());
    EXPECT_EQ(g.down<uint32_t>(bo, rows), want) << "ncols " << ncols;
  }
}

TEST(GetRows, EveryWeightType) {
  Gpu g;
  ASSERT_TRUE(g.dev);
  std::mt19937 rng(std::random_device{}());
  using quant::GgmlType;
  for (auto type : {GgmlType::F32, GgmlType::F16, GgmlType::BF16, GgmlType::Q8_0, GgmlType::Q4_K, GgmlType::Q5_K,
                    GgmlType::Q6_K}) {
    auto op = ops::GetRows::create(*g.dev, type);
    ASSERT_TRUE(op.ok()) << op.status().ToString();
    for (uint32_t ncols : {4096u, 2048u, 256u, 33u}) {
      if (ncols % quant::traits(type)->block_values != 0 || (ncols % 32 && type != GgmlType::F32 && type != GgmlType::F16)) continue;
      const uint32_t nrows = 300, ntok = 7;
      auto vals = randn(size_t(nrows) * ncols, rng);
      std::vector<uint8_t> table(quant::row_bytes(type, ncols) * nrows);
      for (uint32_t r = 0; r < nrows; ++r)
        quant::quantize_row(type, vals.data() + size_t(r) * ncols, table.data() + r * quant::row_bytes(type, ncols), ncols);
      std::vector<int32_t> ids(ntok);
      std::uniform_int_distribution<int32_t> id(0, nrows - 1);
      for (auto& i : ids) i = id(rng);
      ids[0] = nrows - 1;
      std::vector<float> want(size_t(ntok) * ncols);
      ref::get_rows(type, table.data(), ids.data(), want.data(), ntok, ncols);
      table.resize((table.size() + 3) / 4 * 4);
      auto bt = g.up(table), bi = g.up(ids), bo = g.poisoned(want.size() * 4);
      auto s = g.dev->stream();
      ASSERT_TRUE(op->record(*s, bt, bi, bo, nrows, ncols, ntok).ok());
      ASSERT_TRUE(s->submit_and_wait().ok());
      auto got = g.down<float>(bo, want.size());
      if (type == GgmlType::F32 || type == GgmlType::F16 || type == GgmlType::BF16) {
        ASSERT_EQ(0, std::memcmp(got.data(), want.data(), want.size() * 4)) << "type " << int(type) << " ncols " << ncols;
      } else {
        // scale × q − min: a GPU compiler may fuse it into one FMA (one rounding less than the host).
        for (size_t i = 0; i < want.size(); ++i)
          ASSERT_NEAR(got[i], want[i], 1e-6 * (1 + std::fabs(want[i]))) << "type " << int(type) << " element " << i;
      }
    }
  }
  auto q = ops::GetRows::create(*g.dev, static_cast<GgmlType>(2));  // Q4_0: not a trove type
  ASSERT_FALSE(q.ok());
  EXPECT_NE(q.status().ToString().find("get_rows"), std::string::npos);
}

// DequantF16 (dequant_f16.comp), the prefill GEMMs' f16 weights (TROVE_PREFILL_WEIGHTS=f16): every weight
// type at the 8B's and 30B-A3B's widths, rows starting inside a buffer (a weight piece's offset) and written
// at an offset of the output, against the host's dequantize_row rounded to nearest even: exact for the plain
// types; the K-quants' scale × q − min may be one FMA on the GPU (one rounding less), so those may differ by
// one f16 ulp, in at most 1% of the values. The output's halves outside the rows keep their poison.
TEST(DequantF16, EveryWeightTypeToF16Rows) {
  Gpu g;
  ASSERT_TRUE(g.dev);
  auto op = ops::DequantF16::create(*g.dev);
  ASSERT_TRUE(op.ok()) << op.status().ToString();
  std::mt19937 rng(std::random_device{}());
  using quant::GgmlType;
  constexpr uint16_t kPoison = 0x7e01;
  constexpr uint64_t kLead = 256;  // bytes before the weight in its buffer, and before the output in its own
  for (auto type : {GgmlType::F32, GgmlType::F16, GgmlType::BF16, GgmlType::Q8_0, GgmlType::Q4_K,
                    GgmlType::Q5_K, GgmlType::Q6_K}) {
    for (uint32_t cols : {4096u, 2048u, 768u, 256u}) {
      if (cols % quant::traits(type)->block_values != 0) continue;
      const uint32_t rows = cols == 256 ? 301 : 67;
      const uint64_t rb = quant::row_bytes(type, cols);
      auto vals = randn(size_t(rows) * cols, rng, 0.05f);
      std::vector<uint8_t> w(kLead + rb * rows + 4, 0xab);
      for (uint32_t r = 0; r < rows; ++r)
        quant::quantize_row(type, vals.data() + size_t(r) * cols, w.data() + kLead + r * rb, cols);
      std::vector<uint16_t> want(size_t(rows) * cols);
      std::vector<float> row(cols);
      for (uint32_t r = 0; r < rows; ++r) {
        quant::dequantize_row(type, w.data() + kLead + r * rb, row.data(), cols);
        for (uint32_t c = 0; c < cols; ++c) want[size_t(r) * cols + c] = quant::f32_to_f16(row[c]);
      }
      w.resize((w.size() + 3) / 4 * 4);
      auto bw = g.up(w);
      auto bo = g.up(std::vector<uint16_t>(kLead / 2 + want.size() + 64, kPoison));
      auto s = g.dev->stream();
      ASSERT_TRUE(op->record(*s, type, vk::BufferRange(bw, kLead, (rb * rows + 3) / 4 * 4), rows, cols,
                             vk::BufferRange(bo, kLead, want.size() * 2))
                      .ok());
      ASSERT_TRUE(s->submit_and_wait().ok());
      auto got = g.down<uint16_t>(bo, kLead / 2 + want.size() + 64);
      for (size_t i = 0; i < kLead / 2; ++i)
        ASSERT_EQ(got[i], kPoison) << "half " << i << " before the output";
      for (size_t i = 0; i < 64; ++i)
        ASSERT_EQ(got[kLead / 2 + want.size() + i], kPoison) << "half " << i << " after the output";
      const bool plain = type == GgmlType::F32 || type == GgmlType::F16 || type == GgmlType::BF16;
      size_t off_by_one = 0;
      for (size_t i = 0; i < want.size(); ++i) {
        const uint16_t a = got[kLead / 2 + i], b = want[i];
        if (a == b) continue;
        ASSERT_FALSE(plain) << quant::traits(type)->name << " cols " << cols << " value " << i << ": " << a
                            << " vs " << b;
        ASSERT_LE(std::abs(int(a) - int(b)), 1)
            << quant::traits(type)->name << " cols " << cols << " value " << i << ": " << quant::f16_to_f32(a)
            << " vs " << quant::f16_to_f32(b);
        ++off_by_one;
      }
      EXPECT_LE(off_by_one, want.size() / 100) << quant::traits(type)->name << " cols " << cols;
    }
  }
  // Refused shapes and types, with what was wrong.
  auto b = g.poisoned(1 << 16);
  auto s = g.dev->stream();
  auto st =
      op->record(*s, GgmlType::Q4_K, vk::BufferRange(b, 0, 1 << 16), 4, 100, vk::BufferRange(b, 0, 1 << 16));
  EXPECT_NE(st.ToString().find("multiple of 32"), std::string::npos) << st.ToString();
  st = op->record(*s, static_cast<GgmlType>(2), vk::BufferRange(b, 0, 1 << 16), 4, 256,
                  vk::BufferRange(b, 0, 1 << 16));
  EXPECT_NE(st.ToString().find("not supported"), std::string::npos) << st.ToString();
  st =
      op->record(*s, GgmlType::F16, vk::BufferRange(b, 0, 1 << 16), 64, 4096, vk::BufferRange(b, 0, 1 << 16));
  EXPECT_NE(st.ToString().find("too small"), std::string::npos) << st.ToString();
  st = op->record(*s, GgmlType::F16, vk::BufferRange(b, 0, 1 << 12), 4, 256, vk::BufferRange(b, 8, 1 << 12));
  EXPECT_NE(st.ToString().find("not a multiple of 16"), std::string::npos) << st.ToString();
}

// QkNormRopeKv (qk_rope_kv.comp), the decode prologue the engine runs by default: per head and token,
// q_out = rope(rmsnorm(q) · q_norm) in f32, the pool's K at the token's slot = f16(rope(rmsnorm(k) ·
// k_norm)) and V = f16(v). Against ref::rms_norm → ref::rope_neox → ref::kv_write: q within 2e-5
// relative + 1e-5 absolute (RoPE's angles as in RopeNeox above); K within 1.5e-3 relative of the f16
// the reference writes (f32 differences of ~1e-6 can move a value across an f16 rounding boundary: one
// ulp, 9.8e-4 relative); V bit-exact (both sides round to nearest even). Every other pool element must
// still hold the poison (f16 NaN 0x7e01) and q_out starts as f32 NaN. Qwen3-8B and 30B-A3B head counts,
// head_dim 64, and bad shapes are refused.
TEST(QkNormRopeKv, MatchesReference) {
  Gpu g;
  ASSERT_TRUE(g.dev);
  auto op = ops::QkNormRopeKv::create(*g.dev);
  ASSERT_TRUE(op.ok()) << op.status().ToString();
  std::mt19937 rng(std::random_device{}());
  struct Shape { uint32_t tokens, heads, kv_heads, head_dim; };
  std::vector<Shape> shapes = {{1, 32, 8, 128}, {3, 32, 4, 128}, {8, 4, 2, 64}, {2, 2, 1, 256}};
  if (full()) shapes.push_back({64, 32, 8, 128});
  constexpr uint16_t kPoison = 0x7e01;
  const float eps = 1e-6f, base = 1e6f;
  for (const Shape sh : shapes) {
    SCOPED_TRACE(fmt::format("{} tokens, {} + {} heads of {}", sh.tokens, sh.heads, sh.kv_heads, sh.head_dim));
    const uint32_t T = sh.tokens, D = sh.head_dim;
    kv::KvLayout L{16, sh.kv_heads, D};
    const uint32_t blocks = (T + L.block_tokens - 1) / L.block_tokens + 2;
    auto q = randn(size_t(T) * sh.heads * D, rng, 2.f), k = randn(size_t(T) * sh.kv_heads * D, rng, 2.f),
         v = randn(size_t(T) * sh.kv_heads * D, rng, 2.f);
    std::uniform_real_distribution<float> uw(0.5f, 1.5f);
    std::vector<float> qw(D), kw(D);
    for (auto& x : qw) x = uw(rng);
    for (auto& x : kw) x = uw(rng);
    std::vector<int32_t> pos(T);
    std::uniform_int_distribution<int32_t> pd(0, 131071);
    for (auto& p : pos) p = pd(rng);
    std::vector<uint32_t> all(blocks * L.block_tokens);
    for (uint32_t i = 0; i < all.size(); ++i) all[i] = i;
    std::shuffle(all.begin(), all.end(), rng);
    const std::vector<uint32_t> slots(all.begin(), all.begin() + T);

    std::vector<float> want_q(q.size()), want_k(k.size());
    ref::rms_norm(q.data(), qw.data(), want_q.data(), size_t(T) * sh.heads, D, eps);
    ref::rope_neox(want_q.data(), pos.data(), T, sh.heads, D, base);
    ref::rms_norm(k.data(), kw.data(), want_k.data(), size_t(T) * sh.kv_heads, D, eps);
    ref::rope_neox(want_k.data(), pos.data(), T, sh.kv_heads, D, base);
    std::vector<uint16_t> want_pool(blocks * L.block_bytes() / 2, kPoison);
    ref::kv_write(L, want_k.data(), v.data(), slots.data(), want_pool.data(), T);

    auto bq = g.up(q), bk = g.up(k), bv = g.up(v), bqw = g.up(qw), bkw = g.up(kw), bp = g.up(pos), bs = g.up(slots);
    auto pool = g.up(std::vector<uint16_t>(want_pool.size(), kPoison));
    auto qo = g.poisoned(q.size() * 4);
    ops::QkNormRopeKv::Call c{&bq, &bk, &bv, &bqw, &bkw, &bp, &bs, &pool, &qo};
    c.tokens = T;
    c.n_heads = sh.heads;
    c.pool_blocks = blocks;
    c.layout = L;
    c.eps = eps;
    c.rope_base = base;
    auto s = g.dev->stream();
    ASSERT_TRUE(s.ok());
    Status st = op->record(*s, c);
    ASSERT_TRUE(st.ok()) << st.ToString();
    ASSERT_TRUE(s->submit_and_wait().ok());
    expect_close(g.down<float>(qo, q.size()), want_q, 2e-5, 1e-5, "q_out");
    auto got = g.down<uint16_t>(pool, want_pool.size());
    for (uint32_t t = 0; t < T; ++t) {
      const uint32_t blk = slots[t] / L.block_tokens, off = slots[t] % L.block_tokens;
      for (uint32_t h = 0; h < sh.kv_heads; ++h) {
        for (uint32_t i = 0; i < D; ++i) {
          const size_t ki = L.k_index(blk, h, off, i), vi = L.v_index(blk, h, off, i);
          const float gk = quant::f16_to_f32(got[ki]), wk = quant::f16_to_f32(want_pool[ki]);
          ASSERT_LE(std::fabs(gk - wk), 1.5e-3 * std::fabs(wk) + 1e-6) << "K of token " << t << " head " << h << " dim " << i;
          ASSERT_EQ(got[vi], want_pool[vi]) << "V of token " << t << " head " << h << " dim " << i;
          got[ki] = got[vi] = kPoison;  // checked; the rest must be the poison
        }
      }
    }
    for (size_t i = 0; i < got.size(); ++i) ASSERT_EQ(got[i], kPoison) << "pool element " << i << " written outside the slots";
  }
  // A head_dim the kernel cannot take, and a pool too small for its blocks.
  auto small = g.up(std::vector<float>(1024));
  ops::QkNormRopeKv::Call bad{&small, &small, &small, &small, &small, &small, &small, &small, &small};
  bad.tokens = 1;
  bad.n_heads = 2;
  bad.pool_blocks = 1;
  bad.layout = kv::KvLayout{16, 1, 300};
  auto s = g.dev->stream();
  ASSERT_TRUE(s.ok());
  Status st = op->record(*s, bad);
  ASSERT_FALSE(st.ok());
  EXPECT_NE(st.message().find("head_dim 300 must be even and at most 256"), std::string::npos) << st.message();
  bad.layout = kv::KvLayout{16, 1, 64};
  bad.pool_blocks = 1000;
  st = op->record(*s, bad);
  ASSERT_FALSE(st.ok());
  EXPECT_NE(st.message().find("'pool'"), std::string::npos) << st.message();
}

// The chain probe (bench_kernels --only chain) measures; what makes its numbers mean anything is that
// every mode computes the same chain: vector p + 1 from all of vector p and phase p's weights, checked
// against the C++ reference. The grid-barrier modes run with grids whose workgroups can all be
// resident at once (1 on any device; more on a GPU), and report waits that gave up.
TEST(ChainProbe, EveryModeComputesTheSameChain) {
  Gpu g;
  ASSERT_TRUE(g.dev);
  auto op = ops::ChainProbe::create(*g.dev);
  ASSERT_TRUE(op.ok()) << op.status().ToString();
  std::mt19937 rng(std::random_device{}());
  const bool cpu = g.dev->features().is_cpu;
  struct Case { uint32_t n, phases; uint64_t words; uint32_t grid; };
  std::vector<Case> cases = {{1, 1, 0, 1}, {4096, 5, 3000, 1}, {777, 4, 1, 3}, {4096, 6, 5000, 7}, {100, 3, 64, 130}};
  int exact = 0, gave_up = 0;
  for (Case c : cases) {
    std::vector<uint32_t> y0(c.n), w(std::max<uint64_t>(4, 4 * c.phases * c.words));
    for (auto& v : y0) v = rng();
    for (auto& v : w) v = rng();
    const auto want = ops::ChainProbe::reference(y0, w, c.phases, c.words, c.grid);
    for (auto mode : {ops::ChainMode::kDispatchPerPhase, ops::ChainMode::kGridBarrier, ops::ChainMode::kSplitBarrier}) {
      const std::string what = fmt::format("{}, n {}, {} phases, {} words a phase, grid {}", ops::chain_mode_name(mode),
                                           c.n, c.phases, c.words, c.grid);
      auto by = g.up(y0);
      auto y = g.poisoned((uint64_t{c.phases} + 1) * c.n * 4);
      auto ctl = g.up(std::vector<uint32_t>{0, 0, 0});
      auto wb = g.up(w);
      auto s = g.dev->stream();
      ASSERT_TRUE(s.ok());
      s->copy(by, 0, y, 0, uint64_t{c.n} * 4);
      s->barrier();
      ASSERT_TRUE(op->record(*s, {mode, &wb, &y, &ctl, c.n, c.phases, c.words, c.grid}).ok()) << what;
      ASSERT_TRUE(s->submit_and_wait().ok()) << what;
      auto got = g.down<uint32_t>(y, (uint64_t{c.phases} + 1) * c.n);
      got.erase(got.begin(), got.begin() + c.n);
      const auto left = g.down<uint32_t>(ctl, 3);
      EXPECT_EQ(left[0], 0u) << what << ": the last workgroup out must reset the arrivals";
      EXPECT_EQ(left[1], 0u) << what << ": ... and the exits";
      if (left[2] > 0) {
        // Workgroups that were not resident together: the probe must say so rather than time a wrong
        // chain. A CPU device (lavapipe runs a dispatch's workgroups on a few threads) gets here with
        // grids over 1; a GPU must not at these grids of at most 130 workgroups of 256.
        EXPECT_TRUE(cpu && mode != ops::ChainMode::kDispatchPerPhase) << what << ": " << left[2] << " waits gave up";
        ++gave_up;
        continue;
      }
      ASSERT_EQ(got, want) << what;
      ++exact;
    }
  }
  EXPECT_GE(exact, 3 * 2 + 3) << "every mode must run the grid-1 cases, and per-phase dispatches every case";
  std::printf("chain probe: %d runs exact, %d reported waits that gave up\n", exact, gave_up);
  // The measurement without barriers records the same dispatches and no barrier between them.
  {
    auto y = g.poisoned(4 * 4 * 5), w = g.poisoned(16 * 4 * 8), ctl = g.up(std::vector<uint32_t>{0, 0, 0});
    for (auto mode : {ops::ChainMode::kDispatchPerPhase, ops::ChainMode::kDispatchNoBarrier}) {
      auto s = g.dev->stream();
      ASSERT_TRUE(s.ok());
      const vk::StreamCounters before = s->counters();
      ASSERT_TRUE(op->record(*s, {mode, &w, &y, &ctl, 4, 4, 8, 1}).ok());
      EXPECT_EQ(s->counters().dispatches - before.dispatches, 4u) << ops::chain_mode_name(mode);
      EXPECT_EQ(s->counters().barriers - before.barriers, mode == ops::ChainMode::kDispatchPerPhase ? 3u : 0u)
          << ops::chain_mode_name(mode);
      ASSERT_TRUE(s->submit_and_wait().ok());
    }
  }
  auto y = g.poisoned(8), w = g.poisoned(16), ctl = g.poisoned(12);
  auto s = g.dev->stream();
  EXPECT_FALSE(op->record(*s, {ops::ChainMode::kGridBarrier, &w, &y, &ctl, 4, 1, 0, 1}).ok())
      << "a y too small for its phases must be refused";
  EXPECT_FALSE(op->record(*s, {ops::ChainMode::kGridBarrier, &w, &y, &ctl, 1, 1, 2, 1}).ok())
      << "weights past w must be refused";
}

// The ALU probe (a measurement of instruction rates for bench_kernels --only alu) computes what its C++
// reference says, word for word, for every op the device has, at 0, 1 and many steps; a call the
// device cannot run or whose output is too small is refused by name.
TEST(AluProbe, EveryOpComputesItsReference) {
  Gpu g;
  ASSERT_TRUE(g.dev);
  auto probe = ops::AluProbe::create(*g.dev);
  ASSERT_TRUE(probe.ok()) << probe.status().ToString();
  EXPECT_TRUE(probe->available(ops::AluOp::kFma32));
  EXPECT_TRUE(probe->available(ops::AluOp::kImad));
  const uint32_t groups = 3, words = groups * ops::AluProbe::kLocal;
  int ran = 0;
  for (auto op : {ops::AluOp::kFma32, ops::AluOp::kImad, ops::AluOp::kDot4x8, ops::AluOp::kHfma2}) {
    auto out = g.poisoned(uint64_t{words} * 4);
    for (uint32_t iters : {0u, 1u, 37u, 200u}) {
      ops::AluProbe::Call c = ops::AluProbe::defaults(op);
      c.out = &out, c.groups = groups, c.iters = iters;
      auto s = g.dev->stream();
      ASSERT_TRUE(s.ok());
      Status st = probe->record(*s, c);
      if (!probe->available(op)) {
        EXPECT_EQ(st.code(), StatusCode::kUnsupported) << ops::alu_op_name(op);
        break;
      }
      ASSERT_TRUE(st.ok()) << st.ToString();
      ASSERT_TRUE(s->submit_and_wait().ok());
      const auto got = g.down<uint32_t>(out, words);
      for (uint32_t i = 0; i < words; ++i) {
        ASSERT_EQ(got[i], ops::AluProbe::reference(c, i))
            << ops::alu_op_name(op) << ", " << iters << " steps, invocation " << i;
      }
      ++ran;
    }
  }
  EXPECT_GE(ran, 8);
  auto tiny = g.poisoned(16);
  ops::AluProbe::Call c = ops::AluProbe::defaults(ops::AluOp::kFma32);
  c.out = &tiny, c.groups = 2;
  auto s = g.dev->stream();
  ASSERT_TRUE(s.ok());
  Status st = probe->record(*s, c);
  EXPECT_EQ(st.code(), StatusCode::kInvalidArgument);
  EXPECT_NE(st.message().find("alu probe"), std::string::npos) << st.message();
}
