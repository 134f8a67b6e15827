// MoE routing (Qwen3-30B-A3B: 128 experts, top-8) and KV write into the paged pool + block copies,
// against kernels/ref. Expert ids exact; weights 1e-5 relative; KV f16 bits exact (f32→f16 round to
// nearest even on both sides). Runs in ~2 s on lavapipe.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <numeric>
#include <random>

#include "kernels/ops/routing_kv.h"
#include "kernels/ref/layer_ref.h"

using namespace trove;

namespace {
std::unique_ptr<vk::Device> open_device() {
  auto d = vk::Device::open();
  if (!d.ok()) { ADD_FAILURE() << d.status().ToString(); return nullptr; }
  return std::move(*d);
}
template <class T>
vk::Buffer upload(vk::Device& d, const std::vector<T>& v) {
  auto b = d.buffer(v.size() * sizeof(T));
  EXPECT_TRUE(b.ok());
  EXPECT_TRUE(b->upload(v.data(), v.size() * sizeof(T)).ok());
  return std::move(*b);
}
}  // namespace

TEST(MoeRoute, TopKAndRenormalisedWeights) {
  auto d = open_device();
  ASSERT_TRUE(d);
  auto op = ops::MoeRoute::create(*d);
  ASSERT_TRUE(op.ok()) << op.status().ToString();
  std::mt19937 rng(std::random_device{}());
  struct Shape { uint32_t tokens, experts, k; };
  for (auto sh : {Shape{1, 128, 8}, Shape{37, 128, 8}, Shape{5, 64, 4}, Shape{3, 8, 8}}) {
    std::normal_distribution<float> nd(0.f, 2.f);
    std::vector<float> l(size_t(sh.tokens) * sh.experts);
    for (auto& x : l) x = nd(rng);
    l[3] = l[5] = 50.f;  // a tie at the top of token 0: expert 3 before 5
    std::vector<uint32_t> want_ids(size_t(sh.tokens) * sh.k);
    std::vector<float> want_w(want_ids.size());
    ref::moe_route(l.data(), want_ids.data(), want_w.data(), sh.tokens, sh.experts, sh.k);
    auto bl = upload(*d, l);
    auto bi = d->buffer(want_ids.size() * 4), bw = d->buffer(want_w.size() * 4);
    ASSERT_TRUE(bi.ok() && bw.ok());
    ASSERT_TRUE(bi->fill(0xffffffffu).ok() && bw->fill(0x7fc00000u).ok());
    auto s = d->stream();
    ASSERT_TRUE(op->record(*s, bl, *bi, *bw, sh.tokens, sh.experts, sh.k).ok());
    ASSERT_TRUE(s->submit_and_wait().ok());
    std::vector<uint32_t> ids(want_ids.size());
    std::vector<float> w(want_w.size());
    ASSERT_TRUE(bi->download(ids.data(), ids.size() * 4).ok());
    ASSERT_TRUE(bw->download(w.data(), w.size() * 4).ok());
    EXPECT_EQ(ids, want_ids);
    for (size_t i = 0; i < w.size(); ++i) ASSERT_NEAR(w[i], want_w[i], 1e-5 * want_w[i] + 1e-7) << i;
    for (uint32_t t = 0; t < sh.tokens; ++t)
      EXPECT_NEAR(std::accumulate(w.begin() + t * sh.k, w.begin() + (t + 1) * sh.k, 0.0), 1.0, 1e-5);
  }
  auto bl = d->buffer(4096), bi = d->buffer(4096), bw = d->buffer(4096);
  auto s = d->stream();
  EXPECT_FALSE(op->record(*s, *bl, *bi, *bw, 1, 8, 9).ok());  // k > experts
}

TEST(KvWrite, StoresF16IntoBlocksAndCopiesBlocks) {
  auto d = open_device();
  ASSERT_TRUE(d);
  auto op = ops::KvWrite::create(*d);
  ASSERT_TRUE(op.ok()) << op.status().ToString();
  std::mt19937 rng(std::random_device{}());
  for (kv::KvLayout L : {kv::KvLayout{16, 8, 128}, kv::KvLayout{16, 4, 128}, kv::KvLayout{4, 2, 8}}) {
    const uint32_t blocks = 6, tokens = 11;
    std::normal_distribution<float> nd(0.f, 3.f);
    std::vector<float> k(size_t(tokens) * L.kv_heads * L.head_dim), v(k.size());
    for (auto& x : k) x = nd(rng);
    for (auto& x : v) x = nd(rng);
    // Distinct random slots across the pool.
    std::vector<uint32_t> all(blocks * L.block_tokens);
    std::iota(all.begin(), all.end(), 0u);
    std::shuffle(all.begin(), all.end(), rng);
    std::vector<uint32_t> slots(all.begin(), all.begin() + tokens);
    std::vector<uint16_t> want(blocks * L.block_bytes() / 2, 0x7e00);  // f16 NaN everywhere else
    ref::kv_write(L, k.data(), v.data(), slots.data(), want.data(), tokens);
    auto pool = upload(*d, std::vector<uint16_t>(want.size(), 0x7e00));
    auto bk = upload(*d, k), bv = upload(*d, v), bs = upload(*d, slots);
    auto s = d->stream();
    ASSERT_TRUE(op->record(*s, L, bk, bv, bs, pool, tokens, blocks).ok());
    ASSERT_TRUE(s->submit_and_wait().ok());
    std::vector<uint16_t> got(want.size());
    ASSERT_TRUE(pool.download(got.data(), got.size() * 2).ok());
    ASSERT_EQ(got, want);
    // Block copy pool→pool (block 1 → block 4) on the stream, and pool→host of block 4.
    s->copy(pool, 1 * L.block_bytes(), pool, 4 * L.block_bytes(), L.block_bytes());
    ASSERT_TRUE(s->submit_and_wait().ok());
    std::vector<uint16_t> blk(L.block_bytes() / 2);
    ASSERT_TRUE(pool.download(blk.data(), L.block_bytes(), 4 * L.block_bytes()).ok());
    ASSERT_EQ(0, std::memcmp(blk.data(), want.data() + L.block_bytes() / 2, L.block_bytes()));
  }
}
