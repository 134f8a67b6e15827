// KV write into the paged pool + block copies, against kernels/ref: f16 bits exact (f32→f16 round to
// nearest even on both sides). Runs in ~2 s on lavapipe. (MoE routing: test_moe_route.cpp.)
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
