// GPU paged attention (kernels/ops/attention.h) against the float64 reference
// (kernels/ref/attention_ref.h): random f16 K/V scattered through a shuffled block table (unused
// blocks hold huge values the kernel must not read, and the unwritten slots after the last position
// hold NaN where the prefill kernels could multiply them by a zero probability), random queries,
// output NaN-poisoned. Bound: 1e-5 relative to the output norm for the f32 kernels (per-token and
// prefill tiled). The cooperative-matrix prefill kernel rounds q and the probabilities P to f16
// (relative error 2^-11 ≈ 4.9e-4 each; scores and sums stay f32): its bound is 3e-3, six times one
// f16 rounding, which a wrong mask, scale or tile (errors of order 1e-1) cannot pass. Decode and
// prefill shapes with grouped-query heads (ratios 1, 2, 3, 4, 8), start_pos not a multiple of the
// block, token counts not a multiple of the row tile; lavapipe < 10 s.
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <numeric>
#include <random>
#include <string_view>
#include <tuple>
#include <vector>

#include <gtest/gtest.h>

#include "kernels/ops/attention.h"
#include "tests/scoped_env.h"

using namespace trove;
using kernels::ref::PagedKvShape;

namespace {
constexpr uint32_t kNaN = 0x7fc00000u;

void check(vk::Device& dev, const ops::PagedAttention& op, uint32_t n_heads, int64_t n_kv_heads, int64_t head_dim,
           int64_t block_size, uint32_t start_pos, uint32_t n_tokens, uint32_t seed,
           ops::AttentionPath path = ops::AttentionPath::kAuto) {
  SCOPED_TRACE(testing::Message() << "heads " << n_heads << "/" << n_kv_heads << " dim " << head_dim << " block "
                                  << block_size << " start " << start_pos << " tokens " << n_tokens << " path "
                                  << static_cast<int>(path));
  std::mt19937 rng(seed);
  std::normal_distribution<float> nd(0.0f, 1.0f);
  const int64_t used = (start_pos + n_tokens + block_size - 1) / block_size;
  PagedKvShape shape{used + 3, block_size, n_kv_heads, head_dim};
  std::vector<int32_t> perm(shape.n_blocks);
  std::iota(perm.begin(), perm.end(), 0);
  std::shuffle(perm.begin(), perm.end(), rng);
  std::vector<int32_t> table(perm.begin(), perm.begin() + used);
  std::vector<quant::f16_bits> pool(shape.elements(), quant::f32_to_f16(3e4f));
  for (int64_t b : table) {
    for (int64_t i = 0; i < 2 * shape.half_block(); ++i) pool[b * 2 * shape.half_block() + i] = quant::f32_to_f16(nd(rng));
  }
  // Slots past the last position in the last block: never written by the engine, may hold anything.
  const int64_t end = start_pos + n_tokens;
  for (int64_t p = end; p < used * block_size; ++p) {
    for (int64_t h = 0; h < n_kv_heads; ++h) {
      for (int64_t d = 0; d < head_dim; ++d) {
        pool[shape.k_offset(table[p / block_size], p % block_size, h) + d] = 0x7e00;  // f16 NaN
        pool[shape.v_offset(table[p / block_size], p % block_size, h) + d] = 0x7e00;
      }
    }
  }
  std::vector<float> q(size_t{n_tokens} * n_heads * head_dim), expect(q.size());
  for (auto& v : q) v = nd(rng);
  const float scale = 1.0f / std::sqrt(static_cast<float>(head_dim));
  std::vector<kernels::ref::AttentionSequence> seqs = {{table, start_pos, n_tokens, q, expect}};
  ASSERT_TRUE(kernels::ref::paged_attention(shape, pool, n_heads, scale, seqs).ok());

  auto kb = dev.buffer(pool.size() * 2), tb = dev.buffer(table.size() * 4), qb = dev.buffer(q.size() * 4),
       ob = dev.buffer(q.size() * 4);
  ASSERT_TRUE(kb.ok() && tb.ok() && qb.ok() && ob.ok());
  ASSERT_TRUE(kb->upload(pool.data(), pool.size() * 2).ok());
  ASSERT_TRUE(tb->upload(table.data(), table.size() * 4).ok());
  ASSERT_TRUE(qb->upload(q.data(), q.size() * 4).ok());
  ASSERT_TRUE(ob->fill(kNaN).ok());
  auto s = dev.stream();
  ASSERT_TRUE(s.ok());
  const ops::AttentionCall call{shape, n_heads, start_pos, n_tokens, scale, path};
  const auto ran = path == ops::AttentionPath::kAuto ? op.choose(call) : path;
  const double bound =
      ran == ops::AttentionPath::kPrefillCoopmat || ran == ops::AttentionPath::kPrefillCm2 ? 3e-3 : 1e-5;
  Status st = op.record(*s, call, *kb, *tb, *qb, *ob);
  ASSERT_TRUE(st.ok()) << st.ToString();
  ASSERT_TRUE(s->submit_and_wait().ok());
  std::vector<float> got(q.size());
  ASSERT_TRUE(ob->download(got.data(), got.size() * 4).ok());
  double err2 = 0, ref2 = 0;
  for (size_t i = 0; i < got.size(); ++i) {
    ASSERT_TRUE(std::isfinite(got[i])) << "output " << i;
    err2 += double(got[i] - expect[i]) * (got[i] - expect[i]);
    ref2 += double(expect[i]) * expect[i];
  }
  EXPECT_LT(std::sqrt(err2), bound * std::sqrt(ref2));
}

std::unique_ptr<vk::Device> open_device() {
  auto d = vk::Device::open();
  if (!d.ok()) {
    ADD_FAILURE() << d.status().ToString();
    return nullptr;
  }
  return std::move(*d);
}

// PagedAttention::create with the environment variable `name` set to `value` (nullptr: unset) for
// the call alone: the TROVE_ATTENTION_* switches are read at create().
Result<ops::PagedAttention> create_with(vk::Device& dev, const char* name, const char* value) {
  tests::ScopedEnv env(name, value);
  return ops::PagedAttention::create(dev);
}

// A paged KV pool of `keys` + `tokens` positions (head_dim 128, blocks of 64 in shuffled order, `spare`
// blocks unused) and `tokens` query rows, random, on the device, with an output buffer as large as q:
// what the decode tests run their calls on.
struct DecodeData {
  PagedKvShape shape;
  std::vector<float> q;
  std::unique_ptr<vk::Buffer> kv, table, qb, out;
};
std::unique_ptr<DecodeData> decode_data(vk::Device& dev, uint32_t heads, uint32_t kvh, uint32_t keys, uint32_t tokens,
                                        int64_t spare, uint32_t seed) {
  const uint32_t dim = 128, bs = 64;
  std::mt19937 rng(seed);
  std::normal_distribution<float> nd(0.0f, 1.0f);
  const int64_t used = (keys + tokens + bs - 1) / bs;
  auto d = std::make_unique<DecodeData>();
  d->shape = PagedKvShape{used + spare, bs, kvh, dim};
  std::vector<int32_t> table(used);
  std::iota(table.begin(), table.end(), 1);
  std::shuffle(table.begin(), table.end(), rng);
  std::vector<quant::f16_bits> pool(d->shape.elements());
  for (auto& v : pool) v = quant::f32_to_f16(nd(rng));
  d->q.resize(size_t{tokens} * heads * dim);
  for (auto& v : d->q) v = nd(rng);
  auto kb = dev.buffer(pool.size() * 2), tb = dev.buffer(table.size() * 4), qb = dev.buffer(d->q.size() * 4),
       ob = dev.buffer(d->q.size() * 4);
  if (!kb.ok() || !tb.ok() || !qb.ok() || !ob.ok() || !kb->upload(pool.data(), pool.size() * 2).ok() ||
      !tb->upload(table.data(), table.size() * 4).ok() || !qb->upload(d->q.data(), d->q.size() * 4).ok()) {
    ADD_FAILURE() << "could not allocate or fill the decode test's buffers";
    return nullptr;
  }
  d->kv = std::make_unique<vk::Buffer>(std::move(*kb));
  d->table = std::make_unique<vk::Buffer>(std::move(*tb));
  d->qb = std::make_unique<vk::Buffer>(std::move(*qb));
  d->out = std::make_unique<vk::Buffer>(std::move(*ob));
  return d;
}
}  // namespace

TEST(PagedAttention, DecodeAndPrefillMatchReference) {
  auto dev = open_device();
  ASSERT_TRUE(dev);
  auto op = ops::PagedAttention::create(*dev);
  ASSERT_TRUE(op.ok()) << op.status().ToString();
  check(*dev, *op, 8, 2, 64, 16, 0, 1, 1);     // decode, first token
  check(*dev, *op, 8, 2, 64, 16, 47, 1, 2);    // decode, partial last block
  check(*dev, *op, 4, 4, 32, 8, 0, 13, 3);     // prefill, no prefix
  check(*dev, *op, 16, 4, 128, 16, 17, 9, 4);  // prefill after a cached prefix, Qwen3 head_dim
  check(*dev, *op, 2, 1, 256, 32, 40, 3, 5);   // largest head_dim
  check(*dev, *op, 8, 2, 128, 64, 0, 70, 6);   // prefill across two 64-key tiles
  check(*dev, *op, 8, 2, 128, 64, 1500, 1, 7); // split-K decode: 6 slices of 256 keys, the last partial
  check(*dev, *op, 4, 2, 64, 16, 2000, 3, 8);  // split-K, 3 tokens: the last slice is past token 0's end
}

// The decode kernel (one workgroup per key slice × KV head × token, serving the G query heads of the KV
// head): GQA ratios 1, 2, 4, 8, 16; head_dim 8..256; 1..7 tokens (causal within the call); one slice,
// many slices, slices past a token's last key; blocks of 16 and 64 keys; what kAuto picks.
TEST(PagedAttention, DecodeKernelMatchesReference) {
  auto dev = open_device();
  ASSERT_TRUE(dev);
  auto op = ops::PagedAttention::create(*dev);
  ASSERT_TRUE(op.ok()) << op.status().ToString();
  const auto kD = ops::AttentionPath::kDecode;
  check(*dev, *op, 32, 8, 128, 64, 0, 1, 31, kD);     // Qwen3-8B heads, first token: one slice of one key
  check(*dev, *op, 32, 8, 128, 64, 150, 1, 32, kD);   // 5 slices of 32 keys, the last partial
  check(*dev, *op, 32, 4, 128, 64, 3000, 1, 33, kD);  // Qwen3-30B-A3B heads (G 8): slices of 256 keys
  check(*dev, *op, 16, 1, 64, 16, 700, 2, 34, kD);    // G 16
  check(*dev, *op, 4, 4, 256, 64, 90, 3, 35, kD);     // G 1, head_dim 256
  check(*dev, *op, 8, 4, 8, 16, 33, 7, 36, kD);       // head_dim 8, 7 tokens: token 0's last slices are empty
  check(*dev, *op, 8, 2, 128, 64, 63, 5, 37, kD);     // tokens across a block boundary
  EXPECT_EQ(op->choose({{4, 64, 8, 128}, 32, 100, 1, 1.0f}),
            op->decode_v2_default() ? ops::AttentionPath::kDecodeV2 : ops::AttentionPath::kDecode);
  EXPECT_EQ(op->choose({{4, 64, 2, 128}, 6, 100, 1, 1.0f}), ops::AttentionPath::kPerToken);  // G 3
  EXPECT_EQ(op->choose({{4, 64, 2, 96}, 8, 100, 1, 1.0f}), ops::AttentionPath::kPerToken);   // head_dim 96
  auto b = dev->buffer(1 << 20);
  ASSERT_TRUE(b.ok());
  auto s = dev->stream();
  ASSERT_TRUE(s.ok());
  Status st = op->record(*s, {{4, 64, 2, 128}, 6, 0, 1, 1.0f, kD}, *b, *b, *b, *b);
  EXPECT_NE(st.message().find("decode path"), std::string::npos) << st.message();
}

// Decode v2 (attention_decode_v2.comp + attention_combine_v2.comp, TROVE_ATTENTION_DECODE=v2): one
// slice without the combine (<= 256 keys), slices of 128 keys with the last one partial, slices
// past a token's last key (keys 385: four slices of 128, token 0 ends at 378), 1..8 tokens, G 1, 4,
// 8, 16, head_dim 8..256, blocks of 2, 16 and 64 in shuffled order, NaN in the slots past the sequence.
TEST(PagedAttention, DecodeV2MatchesReference) {
  auto dev = open_device();
  ASSERT_TRUE(dev);
  // K/V loads a round ahead (1) and at each round's start (0); auto picks one of them per token.
  for (const char* pipeline : {"1", "0"}) {
    SCOPED_TRACE(testing::Message() << "TROVE_ATTENTION_PIPELINE=" << pipeline);
    auto op = create_with(*dev, "TROVE_ATTENTION_PIPELINE", pipeline);
    ASSERT_TRUE(op.ok()) << op.status().ToString();
    EXPECT_EQ(op->decode_v2_pipelined(100000), pipeline[0] == '1');
    const auto kV = ops::AttentionPath::kDecodeV2;
    if (!dev->features().subgroup_shuffle) {
      auto b = dev->buffer(1 << 20);
      ASSERT_TRUE(b.ok());
      auto s = dev->stream();
      ASSERT_TRUE(s.ok());
      Status st = op->record(*s, {{4, 64, 2, 128}, 8, 0, 1, 1.0f, kV}, *b, *b, *b, *b);
      EXPECT_NE(st.message().find("decode v2 path"), std::string::npos) << st.message();
      return;
    }
    check(*dev, *op, 32, 8, 128, 64, 1500, 1, 53, kV);   // 12 slices of 128, the last partial
    check(*dev, *op, 32, 4, 128, 16, 1000, 1, 54, kV);   // Qwen3-30B-A3B heads (G 8), 16-key blocks
    check(*dev, *op, 16, 1, 64, 2, 299, 2, 59, kV);      // 2-key blocks: a slot's keys span blocks, 2 slices
    if (pipeline[0] == '0') continue;  // lavapipe's time: the loads at each round's start on these alone
    check(*dev, *op, 32, 8, 128, 64, 0, 1, 51, kV);      // Qwen3-8B heads, first token
    check(*dev, *op, 32, 8, 128, 64, 150, 1, 52, kV);    // one slice, the last block partial
    for (uint32_t tokens = 1; tokens <= 8; ++tokens) {   // 4 slices; from 8 tokens token 0's last is empty
      check(*dev, *op, tokens % 2 ? 8 : 16, 2, 128, 64, 385 - tokens, tokens, 60 + tokens, kV);
    }
    check(*dev, *op, 16, 1, 64, 16, 700, 2, 55, kV);     // G 16, head_dim 64
    check(*dev, *op, 4, 4, 256, 64, 290, 3, 56, kV);     // G 1, head_dim 256, 2 slices
    check(*dev, *op, 8, 4, 8, 16, 33, 7, 57, kV);        // head_dim 8 (one lane a row)
    check(*dev, *op, 8, 2, 128, 64, 63, 5, 58, kV);      // tokens across a block boundary
    if (std::getenv("TROVE_KERNEL_FULL")) {  // the benchmark's depths: 64 and 128 slices, 4 tokens
      check(*dev, *op, 32, 8, 128, 64, 16383, 1, 70, kV);
      check(*dev, *op, 32, 4, 128, 64, 16383, 1, 71, kV);
      check(*dev, *op, 32, 8, 128, 64, 16380, 4, 72, kV);
    }
    auto b = dev->buffer(1 << 20);
    ASSERT_TRUE(b.ok());
    auto s = dev->stream();
    ASSERT_TRUE(s.ok());
    Status st = op->record(*s, {{4, 64, 2, 128}, 6, 0, 1, 1.0f, kV}, *b, *b, *b, *b);  // G 3
    EXPECT_NE(st.message().find("decode v2 path"), std::string::npos) << st.message();
  }
  auto bad = create_with(*dev, "TROVE_ATTENTION_PIPELINE", "yes");
  ASSERT_FALSE(bad.ok());
  EXPECT_NE(bad.status().message().find("TROVE_ATTENTION_PIPELINE=yes is not 0, 1 or auto"), std::string::npos)
      << bad.status().ToString();
  auto autop = create_with(*dev, "TROVE_ATTENTION_PIPELINE", "auto");
  ASSERT_TRUE(autop.ok());
  EXPECT_TRUE(autop->decode_v2_pipelined(ops::PagedAttention::kDecodeV2PipelineGroups));
  EXPECT_FALSE(autop->decode_v2_pipelined(ops::PagedAttention::kDecodeV2PipelineGroups + 1));
}

// Decode v2 slices the keys at fixed positions, so a token gets the same bits whether it is the only
// token of its step or one of k (a speculative verification step must give each drafted position
// exactly what one-token decoding gives it, or greedy output changes; on the H200 a slice count chosen
// from the step's token count made 6- and 7-token steps differ). Each token of an 8-token step at
// depth 1500 (12 slices), against the same token alone at its own position; then at 300 (3 slices, the
// first tokens with 2), 60 (one slice) and 12284, where the slice length doubles inside the step
// (tokens with up to 12288 keys take 96 slices of 128, later ones 49 of 256: two passes; fewer heads
// there, to keep lavapipe's time).
TEST(PagedAttention, DecodeV2TokenGetsTheBitsOfAOneTokenStep) {
  auto dev = open_device();
  ASSERT_TRUE(dev);
  auto op = ops::PagedAttention::create(*dev);
  ASSERT_TRUE(op.ok()) << op.status().ToString();
  if (!dev->features().subgroup_shuffle) GTEST_SKIP() << "decode v2 needs subgroup shuffles";
  for (uint32_t start : {1500u, 250u, 60u, 12284u}) {
    SCOPED_TRACE(testing::Message() << "start " << start);
    const uint32_t heads = start > 8000 ? 8 : 32, kvh = heads / 4, dim = 128, T = 8;
    auto data = decode_data(*dev, heads, kvh, start, T, 2, start);
    ASSERT_TRUE(data);
    const PagedKvShape shape = data->shape;
    vk::Buffer &kb = *data->kv, &tb = *data->table, &qb = *data->qb, &ob = *data->out;
    const uint64_t row = uint64_t{heads} * dim * 4;
    auto run = [&](uint32_t pos, uint32_t n, uint32_t first) -> std::vector<float> {
      EXPECT_TRUE(ob.fill(kNaN).ok());
      auto s = dev->stream();
      EXPECT_TRUE(s.ok());
      const ops::AttentionCall call{shape, heads, pos, n, 0.088f, ops::AttentionPath::kDecodeV2};
      Status st = op->record(*s, call, kb, tb, vk::BufferRange(qb, first * row, n * row),
                             vk::BufferRange(ob, 0, n * row));
      EXPECT_TRUE(st.ok()) << st.ToString();
      EXPECT_TRUE(s->submit_and_wait().ok());
      std::vector<float> got(size_t{n} * heads * dim);
      EXPECT_TRUE(ob.download(got.data(), got.size() * 4).ok());
      return got;
    };
    const std::vector<float> together = run(start, T, 0);
    for (uint32_t t = 0; t < T; ++t) {
      const std::vector<float> alone = run(start + t, 1, t);
      ASSERT_EQ(alone.size(), size_t{heads} * dim);
      EXPECT_EQ(0, std::memcmp(alone.data(), together.data() + size_t{t} * heads * dim, alone.size() * 4))
          << "token " << t << " of the 8-token step differs from the same token decoded alone";
    }
  }
}

// record_decode_rows (the engine's TROVE_ATTENTION_STEP=batched): the decode tokens of several
// sequences in one dispatch per run of rows sharing a slice length. Each row must get the bits
// record() gives its sequence alone on the decode v2 path, and the float64 reference's numbers: 8
// sequences in one pool, each with its own shuffled blocks and its table at its own offset of one tables
// buffer — one slice (40 keys), several (1500, 381–383: a 3-token sequence whose last token's slice is
// past the others' keys), a doubled slice length (12301 keys: 256-key slices, a run of its own), two
// alike sequences in one run, and the first token of a sequence; outputs NaN-poisoned. Then 12 rows
// sharing one KV (a prefix) whose partials overflow a small scratch (flushed mid-step), and the
// refusals (rows not contiguous, a sequence of no tokens, G 3).
TEST(PagedAttention, DecodeRowsGiveEachSequenceItsOwnBits) {
  auto dev = open_device();
  ASSERT_TRUE(dev);
  auto op = ops::PagedAttention::create(*dev);
  ASSERT_TRUE(op.ok()) << op.status().ToString();
  if (!dev->features().subgroup_shuffle) GTEST_SKIP() << "decode v2 needs subgroup shuffles";
  const uint32_t heads = 32, kvh = 8, dim = 128, bs = 64;
  const float scale = 0.088f;
  const uint64_t row = uint64_t{heads} * dim * 4;
  struct Seq { uint32_t start, tokens; };
  // `rows_out` (when given) gets the rows' outputs of record_decode_rows.
  auto run_case = [&](const ops::PagedAttention& a, const std::vector<Seq>& want, bool shared_kv, uint32_t seed,
                      std::vector<float>* rows_out = nullptr) {
    SCOPED_TRACE(testing::Message() << want.size() << " sequences" << (shared_kv ? ", one shared KV" : ""));
    std::mt19937 rng(seed);
    std::normal_distribution<float> nd(0.0f, 1.0f);
    // Blocks: each sequence its own (or all the first sequence's), shuffled over the pool.
    std::vector<int64_t> used(want.size());
    int64_t total = 0;
    for (size_t i = 0; i < want.size(); ++i) {
      used[i] = (want[i].start + want[i].tokens + bs - 1) / bs;
      total += shared_kv && i > 0 ? 0 : used[i];
    }
    const PagedKvShape shape{total + 2, bs, kvh, dim};
    std::vector<int32_t> perm(shape.n_blocks);
    std::iota(perm.begin(), perm.end(), 0);
    std::shuffle(perm.begin(), perm.end(), rng);
    std::vector<std::vector<int32_t>> tables(want.size());
    for (size_t i = 0, next = 0; i < want.size(); ++i) {
      if (shared_kv && i > 0) {
        tables[i].assign(tables[0].begin(), tables[0].begin() + used[i]);
        continue;
      }
      tables[i].assign(perm.begin() + next, perm.begin() + next + used[i]);
      next += used[i];
    }
    std::vector<quant::f16_bits> pool(shape.elements());
    for (auto& v : pool) v = quant::f32_to_f16(nd(rng));
    // One tables buffer (each table at the first multiple of 64 entries at least 3 past the previous
    // one's end: record() binds each as a range, whose offset must meet the device's alignment, 256
    // bytes at most) and the rows buffer: positions from entry 5, table offsets from entry 5 + rows + 7.
    std::vector<int32_t> all_tables;
    std::vector<uint32_t> table_at(want.size());
    std::vector<ops::AttentionSeq> seqs;
    uint32_t rows = 0;
    for (size_t i = 0; i < want.size(); ++i) {
      all_tables.resize((all_tables.size() + 3 + 63) / 64 * 64, -1);
      table_at[i] = static_cast<uint32_t>(all_tables.size());
      all_tables.insert(all_tables.end(), tables[i].begin(), tables[i].end());
      seqs.push_back({want[i].start, want[i].tokens, rows});
      rows += want[i].tokens;
    }
    const uint32_t pos_at = 5, tab_at = 5 + rows + 7;
    std::vector<int32_t> rowbuf(tab_at + rows, -1);
    for (size_t i = 0; i < want.size(); ++i) {
      for (uint32_t t = 0; t < want[i].tokens; ++t) {
        rowbuf[pos_at + seqs[i].first_row + t] = static_cast<int32_t>(want[i].start + t);
        rowbuf[tab_at + seqs[i].first_row + t] = static_cast<int32_t>(table_at[i]);
      }
    }
    std::vector<float> q(size_t{rows} * heads * dim), expect(q.size());
    for (auto& v : q) v = nd(rng);
    std::vector<kernels::ref::AttentionSequence> ref;
    for (size_t i = 0; i < want.size(); ++i) {
      const size_t off = size_t{seqs[i].first_row} * heads * dim, n = size_t{want[i].tokens} * heads * dim;
      ref.push_back({tables[i], want[i].start, want[i].tokens, std::span<const float>(q).subspan(off, n),
                     std::span<float>(expect).subspan(off, n)});
    }
    ASSERT_TRUE(kernels::ref::paged_attention(shape, pool, heads, scale, ref).ok());
    auto kb = dev->buffer(pool.size() * 2), tb = dev->buffer(all_tables.size() * 4), rb = dev->buffer(rowbuf.size() * 4),
         qb = dev->buffer(q.size() * 4), ob = dev->buffer(q.size() * 4);
    ASSERT_TRUE(kb.ok() && tb.ok() && rb.ok() && qb.ok() && ob.ok());
    ASSERT_TRUE(kb->upload(pool.data(), pool.size() * 2).ok() && tb->upload(all_tables.data(), all_tables.size() * 4).ok() &&
                rb->upload(rowbuf.data(), rowbuf.size() * 4).ok() && qb->upload(q.data(), q.size() * 4).ok());
    // Each sequence alone through record() (kDecodeV2), then all rows in one record_decode_rows.
    std::vector<float> alone(q.size()), together(q.size());
    ASSERT_TRUE(ob->fill(kNaN).ok());
    for (size_t i = 0; i < want.size(); ++i) {
      auto s = dev->stream();
      ASSERT_TRUE(s.ok());
      const ops::AttentionCall call{shape, heads, want[i].start, want[i].tokens, scale, ops::AttentionPath::kDecodeV2};
      const vk::BufferRange qr(*qb, seqs[i].first_row * row, want[i].tokens * row), orr(*ob, seqs[i].first_row * row, want[i].tokens * row);
      Status st = a.record(*s, call, *kb, vk::BufferRange(*tb, table_at[i] * 4ull, tables[i].size() * 4ull), qr, orr);
      ASSERT_TRUE(st.ok()) << st.ToString();
      ASSERT_TRUE(s->submit_and_wait().ok());
    }
    ASSERT_TRUE(ob->download(alone.data(), alone.size() * 4).ok());
    ASSERT_TRUE(ob->fill(kNaN).ok());
    {
      auto s = dev->stream();
      ASSERT_TRUE(s.ok());
      Status st = a.record_decode_rows(*s, shape, heads, scale, seqs, *kb, *tb, *qb, *ob, {*rb, pos_at, tab_at});
      ASSERT_TRUE(st.ok()) << st.ToString();
      ASSERT_TRUE(s->submit_and_wait().ok());
    }
    ASSERT_TRUE(ob->download(together.data(), together.size() * 4).ok());
    if (rows_out) *rows_out = together;
    for (size_t i = 0; i < want.size(); ++i) {
      for (uint32_t t = 0; t < want[i].tokens; ++t) {
        const size_t off = size_t{seqs[i].first_row + t} * heads * dim;
        EXPECT_EQ(0, std::memcmp(alone.data() + off, together.data() + off, row))
            << "sequence " << i << " (start " << want[i].start << ") token " << t
            << ": other bits in one dispatch than alone";
        double err2 = 0, ref2 = 0;
        for (size_t j = off; j < off + size_t{heads} * dim; ++j) {
          ASSERT_TRUE(std::isfinite(together[j])) << "sequence " << i << " token " << t << " output " << j - off;
          err2 += double(together[j] - expect[j]) * (together[j] - expect[j]);
          ref2 += double(expect[j]) * expect[j];
        }
        EXPECT_LT(std::sqrt(err2), 1e-5 * std::sqrt(ref2)) << "sequence " << i << " token " << t;
      }
    }
  };
  // TROVE_ATTENTION_COMBINE=fused (each split call's last workgroup per row and head group merges its
  // slices, no combine dispatch): the same checks, and the separate combine's bits.
  auto fused = [&](uint64_t scratch) {
    tests::ScopedEnv env("TROVE_ATTENTION_COMBINE", "fused");
    return ops::PagedAttention::create(*dev, scratch);
  };
  auto op_fused = fused(0);
  ASSERT_TRUE(op_fused.ok()) << op_fused.status().ToString();
  const std::vector<Seq> mixed = {{1500, 1}, {40, 1}, {381, 3}, {1499, 1}, {12300, 1}, {0, 1}, {700, 1}, {1501, 1}};
  std::vector<float> separate_rows, fused_rows;
  run_case(*op, mixed, false, 81, &separate_rows);
  run_case(*op_fused, mixed, false, 81, &fused_rows);
  ASSERT_EQ(separate_rows.size(), fused_rows.size());
  EXPECT_EQ(0, std::memcmp(separate_rows.data(), fused_rows.data(), fused_rows.size() * 4)) << "fused combine: other bits";
  // 12 rows of 12 slices (200 KiB of partials each) through a 1 MiB scratch: passes of 5 rows, the
  // scratch flushed (barrier, combines, barrier) twice mid-step — with both combines.
  auto small_scratch = ops::PagedAttention::create(*dev, 1 << 20);
  ASSERT_TRUE(small_scratch.ok()) << small_scratch.status().ToString();
  run_case(*small_scratch, std::vector<Seq>(12, Seq{1490, 1}), true, 82, &separate_rows);
  auto small_fused = fused(1 << 20);
  ASSERT_TRUE(small_fused.ok()) << small_fused.status().ToString();
  run_case(*small_fused, std::vector<Seq>(12, Seq{1490, 1}), true, 82, &fused_rows);
  EXPECT_EQ(0, std::memcmp(separate_rows.data(), fused_rows.data(), fused_rows.size() * 4))
      << "fused combine through a small scratch: other bits";

  // Refusals, by name.
  auto b = dev->buffer(1 << 20);
  ASSERT_TRUE(b.ok());
  auto s = dev->stream();
  ASSERT_TRUE(s.ok());
  const PagedKvShape small{4, 64, 2, 128};
  const std::vector<ops::AttentionSeq> gap{{10, 1, 0}, {20, 1, 2}}, empty{{10, 0, 0}}, one{{10, 1, 0}};
  Status st = op->record_decode_rows(*s, small, 8, 1.0f, gap, *b, *b, *b, *b, {*b, 0, 8});
  EXPECT_NE(st.message().find("whose rows follow each other"), std::string::npos) << st.message();
  st = op->record_decode_rows(*s, small, 8, 1.0f, empty, *b, *b, *b, *b, {*b, 0, 8});
  EXPECT_NE(st.message().find("sequences of 1+ tokens"), std::string::npos) << st.message();
  st = op->record_decode_rows(*s, small, 6, 1.0f, one, *b, *b, *b, *b, {*b, 0, 8});  // G 3
  EXPECT_NE(st.message().find("runs decode v2, which this call does not fit"), std::string::npos) << st.message();
}

// TROVE_ATTENTION_HEAD_GROUPS=2|4|auto: decode v2 with the query heads of a KV head over 2 or 4
// workgroups (never fewer than 2 heads a workgroup: 4 at G 4 runs 2) gives every head the bits of one
// workgroup per KV head, and TROVE_ATTENTION_MERGE=parallel (the subgroups' sums in copies of their own,
// added after one barrier; the default) those of the serial merge, and TROVE_ATTENTION_COMBINE=fused (the
// slices merged by each call's last workgroup) those of the combine dispatch (G = 1, 4 and 8; one token
// and a 5-token step, one slice and several); other values are refused by name.
TEST(PagedAttention, DecodeV2VariantsKeepTheBits) {
  auto dev = open_device();
  ASSERT_TRUE(dev);
  for (auto [name, value] : {std::pair{"TROVE_ATTENTION_HEAD_GROUPS", "3"}, std::pair{"TROVE_ATTENTION_MERGE", "tree"},
                             std::pair{"TROVE_ATTENTION_COMBINE", "last"}}) {
    auto bad = create_with(*dev, name, value);
    ASSERT_FALSE(bad.ok()) << name;
    EXPECT_NE(bad.status().message().find(fmt::format("{}='{}'", name, value)), std::string::npos) << bad.status().message();
  }
  if (!dev->features().subgroup_shuffle) GTEST_SKIP() << "decode v2 needs subgroup shuffles";
  // One workgroup per KV head, the serial merge: the reference bits.
  auto one = [&] {
    tests::ScopedEnv mg("TROVE_ATTENTION_MERGE", "serial");
    return create_with(*dev, "TROVE_ATTENTION_HEAD_GROUPS", "1");
  }();
  ASSERT_TRUE(one.ok()) << one.status().ToString();
  // The workgroups per KV head each setting gives: auto at most 4 heads a workgroup (G 8 in 2, G 16
  // in 4), a forced count never under 2 heads a workgroup (4 at G 4 runs as 2) nor over G.
  {
    auto automatic = create_with(*dev, "TROVE_ATTENTION_HEAD_GROUPS", nullptr);
    auto four = create_with(*dev, "TROVE_ATTENTION_HEAD_GROUPS", "4");
    ASSERT_TRUE(automatic.ok() && four.ok());
    for (auto [g, want_auto, want_four] : {std::tuple{1u, 1u, 1u}, std::tuple{2u, 1u, 1u}, std::tuple{4u, 1u, 2u},
                                          std::tuple{8u, 2u, 4u}, std::tuple{16u, 4u, 4u}}) {
      EXPECT_EQ(automatic->decode_v2_head_groups(g), want_auto) << "auto, G " << g;
      EXPECT_EQ(four->decode_v2_head_groups(g), want_four) << "4 groups, G " << g;
      EXPECT_EQ(one->decode_v2_head_groups(g), 1u) << "1 group, G " << g;
    }
  }
  // The variants, each created once (their pipelines are built per shape on first use): 2 and 4 head
  // groups, the parallel merge alone and with 2 groups, and the defaults (auto groups, parallel merge).
  struct Variant {
    const char *hg, *merge, *combine = nullptr;
  };
  std::vector<std::pair<std::string, ops::PagedAttention>> variants;
  for (const Variant& v : {Variant{"2", "serial"}, Variant{"4", "serial"}, Variant{"1", "parallel"}, Variant{"2", "parallel"},
                           Variant{"auto", nullptr}, Variant{"auto", nullptr, "fused"}, Variant{"2", "serial", "fused"}}) {
    tests::ScopedEnv mg("TROVE_ATTENTION_MERGE", v.merge);
    tests::ScopedEnv cb("TROVE_ATTENTION_COMBINE", v.combine);
    auto op = create_with(*dev, "TROVE_ATTENTION_HEAD_GROUPS", v.hg);
    ASSERT_TRUE(op.ok()) << op.status().ToString();
    variants.emplace_back(fmt::format("head groups {}, merge {}, combine {}", v.hg, v.merge ? v.merge : "(default)",
                                      v.combine ? v.combine : "(default)"),
                          std::move(*op));
  }
  for (auto [heads_, kvh] : {std::pair{16u, 4u}, std::pair{16u, 2u}, std::pair{16u, 16u}}) {
    for (auto [start_, n_] : {std::pair{40u, 1u}, std::pair{300u, 5u}}) {
      const uint32_t heads = heads_, start = start_, n = n_;  // captured below
      SCOPED_TRACE(testing::Message() << heads << " heads over " << kvh << " KV heads, start " << start << ", " << n << " tokens");
      auto data = decode_data(*dev, heads, kvh, start, n, 1, start + heads + kvh);
      ASSERT_TRUE(data);
      auto run = [&](const ops::PagedAttention& op) {
        EXPECT_TRUE(data->out->fill(kNaN).ok());
        auto st = dev->stream();
        EXPECT_TRUE(st.ok());
        const ops::AttentionCall call{data->shape, heads, start, n, 0.088f, ops::AttentionPath::kDecodeV2};
        const Status rs = op.record(*st, call, *data->kv, *data->table, *data->qb, *data->out);
        EXPECT_TRUE(rs.ok()) << rs.ToString();
        EXPECT_TRUE(st->submit_and_wait().ok());
        std::vector<float> got(data->q.size());
        EXPECT_TRUE(data->out->download(got.data(), got.size() * 4).ok());
        return got;
      };
      const std::vector<float> want = run(*one);
      EXPECT_FALSE(std::isnan(want[0]) || std::isnan(want.back()));
      for (const auto& [label, op] : variants) {
        const std::vector<float> got = run(op);
        EXPECT_EQ(0, std::memcmp(want.data(), got.data(), want.size() * 4)) << label;
      }
    }
  }
}

// Decode replay: the decode kernels reading the first query's position from a buffer
// (AttentionPositions) compute the bits of the same call with the position pushed; a different
// position in the buffer changes the result (it is read, not the pushed one); replay_key() equals for
// calls that record the same grid and is empty where no decode kernel would run; other paths refuse
// a positions buffer.
TEST(PagedAttention, DecodeKernelsReadThePositionFromABuffer) {
  auto dev = open_device();
  ASSERT_TRUE(dev);
  auto op = ops::PagedAttention::create(*dev);
  ASSERT_TRUE(op.ok()) << op.status().ToString();
  std::vector<ops::AttentionPath> paths = {ops::AttentionPath::kDecode};
  if (dev->features().subgroup_shuffle) paths.push_back(ops::AttentionPath::kDecodeV2);
  const uint32_t heads = 16, kvh = 4, dim = 128, bs = 64;
  for (ops::AttentionPath path : paths) {
    for (uint32_t start : {60u, 1500u}) {
      SCOPED_TRACE(testing::Message() << "path " << static_cast<int>(path) << " start " << start);
      std::mt19937 rng(start + 7);
      std::normal_distribution<float> nd(0.0f, 1.0f);
      const int64_t used = (start + 1 + bs - 1) / bs;
      PagedKvShape shape{used + 2, bs, kvh, dim};
      std::vector<int32_t> table(used);
      std::iota(table.begin(), table.end(), 1);
      std::shuffle(table.begin(), table.end(), rng);
      std::vector<quant::f16_bits> pool(shape.elements());
      for (auto& v : pool) v = quant::f32_to_f16(nd(rng));
      std::vector<float> q(size_t{heads} * dim);
      for (auto& v : q) v = nd(rng);
      std::vector<int32_t> positions = {-1, -1, -1, static_cast<int32_t>(start)};
      auto kb = dev->buffer(pool.size() * 2), tb = dev->buffer(table.size() * 4), qb = dev->buffer(q.size() * 4),
           ob = dev->buffer(q.size() * 4), pb = dev->buffer(positions.size() * 4);
      ASSERT_TRUE(kb.ok() && tb.ok() && qb.ok() && ob.ok() && pb.ok());
      ASSERT_TRUE(kb->upload(pool.data(), pool.size() * 2).ok());
      ASSERT_TRUE(tb->upload(table.data(), table.size() * 4).ok());
      ASSERT_TRUE(qb->upload(q.data(), q.size() * 4).ok());
      auto run = [&](bool from_buffer, int32_t in_buffer) -> std::vector<float> {
        positions[3] = in_buffer;
        EXPECT_TRUE(pb->upload(positions.data(), positions.size() * 4).ok());
        EXPECT_TRUE(ob->fill(kNaN).ok());
        auto s = dev->stream();
        EXPECT_TRUE(s.ok());
        const ops::AttentionCall call{shape, heads, start, 1, 0.088f, path};
        ops::AttentionPositions at;
        if (from_buffer) at = {*pb, 3};
        Status st = op->record(*s, call, *kb, *tb, *qb, *ob, at);
        EXPECT_TRUE(st.ok()) << st.ToString();
        EXPECT_TRUE(s->submit_and_wait().ok());
        std::vector<float> got(q.size());
        EXPECT_TRUE(ob->download(got.data(), got.size() * 4).ok());
        return got;
      };
      const std::vector<float> pushed = run(false, -1), read = run(true, static_cast<int32_t>(start));
      EXPECT_EQ(0, std::memcmp(pushed.data(), read.data(), pushed.size() * 4)) << "position from the buffer";
      const std::vector<float> earlier = run(true, static_cast<int32_t>(start) - 7);
      EXPECT_NE(0, std::memcmp(pushed.data(), earlier.data(), pushed.size() * 4)) << "the buffer's position is not read";
      for (float v : earlier) ASSERT_TRUE(std::isfinite(v));
      // The key: equal for the next position inside the same slices, present for decode calls.
      const ops::AttentionCall a{shape, heads, start, 1, 0.088f, path}, b{shape, heads, start + 1, 1, 0.088f, path};
      ASSERT_TRUE(op->replay_key(a).has_value());
      if (start == 60u) EXPECT_EQ(*op->replay_key(a), *op->replay_key(b));
    }
  }
  // A prefill-sized call has no key and refuses a positions buffer.
  PagedKvShape shape{8, 64, 4, 128};
  const ops::AttentionCall prefill{shape, 16, 0, 64, 0.088f, ops::AttentionPath::kPrefillTiled};
  EXPECT_FALSE(op->replay_key(prefill).has_value());
  auto b = dev->buffer(1 << 20);
  ASSERT_TRUE(b.ok());
  auto s = dev->stream();
  ASSERT_TRUE(s.ok());
  const Status st = op->record(*s, prefill, *b, *b, *b, *b, ops::AttentionPositions{*b, 0});
  EXPECT_EQ(st.code(), StatusCode::kInvalidArgument);
  EXPECT_NE(st.message().find("decode kernels only"), std::string::npos) << st.message();
  // A decode call whose positions buffer has no entry at the index is refused too.
  const ops::AttentionCall one{shape, 16, 10, 1, 0.088f, ops::AttentionPath::kDecode};
  const Status short_buffer = op->record(*s, one, *b, *b, *b, *b, ops::AttentionPositions{vk::BufferRange(*b, 0, 8), 2});
  EXPECT_EQ(short_buffer.code(), StatusCode::kInvalidArgument);
  EXPECT_NE(short_buffer.message().find("has no entry 2"), std::string::npos) << short_buffer.message();
}

// The prefill kernels (tiles of query rows = token × the query heads of one KV head) on shapes that
// stress the tiling: GQA ratios 1, 2, 3, 4, 8; start_pos inside a block; token counts that leave a
// partial row tile; a 16-token block; a walk over several 64-key tiles of a cached prefix.
void check_prefill(vk::Device& dev, const ops::PagedAttention& op, ops::AttentionPath path) {
  check(dev, op, 8, 2, 128, 64, 0, 70, 11, path);     // no prefix, 280 rows (partial tile), G 4
  check(dev, op, 8, 2, 128, 64, 100, 37, 12, path);   // prefix ends mid-block
  check(dev, op, 8, 1, 128, 64, 64, 9, 13, path);     // G 8, prefix of exactly one block
  check(dev, op, 4, 4, 128, 64, 130, 50, 14, path);   // G 1
  check(dev, op, 6, 2, 128, 64, 5, 33, 15, path);     // G 3: a row tile splits a token's heads
  check(dev, op, 4, 2, 128, 16, 17, 40, 16, path);    // 16-token blocks
  check(dev, op, 8, 2, 128, 64, 1000, 64, 17, path);  // 17 key tiles, the last one partial
  check(dev, op, 2, 1, 128, 64, 3, 8, 18, path);      // a small prefill, inside one block
  check(dev, op, 8, 1, 128, 64, 700, 4, 23, path);    // 4 tokens (the coopmat kernel's smallest chunk)
  check(dev, op, 8, 2, 128, 64, 2990, 8, 21, path);   // split-K: 6 slices of 512 keys, the last partial
  check(dev, op, 2, 2, 128, 64, 0, 600, 22, path);    // split-K: early row tiles end before slice 2
  if (std::getenv("TROVE_KERNEL_FULL")) {
    check(dev, op, 32, 8, 128, 64, 1536, 64, 19, path);  // Qwen3-8B heads, a prefill chunk at depth
    check(dev, op, 32, 4, 128, 64, 4000, 32, 20, path);  // Qwen3-30B-A3B heads
  }
}

TEST(PagedAttention, PrefillTiledMatchesReference) {
  auto dev = open_device();
  ASSERT_TRUE(dev);
  auto op = ops::PagedAttention::create(*dev);
  ASSERT_TRUE(op.ok()) << op.status().ToString();
  check_prefill(*dev, *op, ops::AttentionPath::kPrefillTiled);
  // The per-token kernel on the same prefill shapes (it stays the path for other head dims).
  check(*dev, *op, 6, 2, 128, 64, 5, 33, 15, ops::AttentionPath::kPerToken);
}

// The CPU form (attention_prefill_cpu.comp, chosen on lavapipe): the prefill shapes (GQA 1, 2, 3, 4,
// 8), other head dims (it takes multiples of 16), what kAuto picks on a CPU device, and a head_dim
// it refuses.
TEST(PagedAttention, PrefillCpuMatchesReference) {
  auto dev = open_device();
  ASSERT_TRUE(dev);
  auto op = ops::PagedAttention::create(*dev);
  ASSERT_TRUE(op.ok()) << op.status().ToString();
  const auto kC = ops::AttentionPath::kPrefillCpu;
  check_prefill(*dev, *op, kC);
  check(*dev, *op, 4, 4, 32, 8, 0, 13, 41, kC);     // head_dim 32, 8-key blocks
  check(*dev, *op, 2, 1, 256, 32, 40, 20, 42, kC);  // head_dim 256
  check(*dev, *op, 8, 2, 64, 16, 3, 1, 43, kC);     // one token
  const ops::AttentionCall prefill{{4, 64, 2, 128}, 8, 0, 64, 1.0f};
  if (dev->features().is_cpu) EXPECT_EQ(op->choose(prefill), kC);
  else EXPECT_NE(op->choose(prefill), kC);
  auto b = dev->buffer(1 << 20);
  ASSERT_TRUE(b.ok());
  auto s = dev->stream();
  ASSERT_TRUE(s.ok());
  Status st = op->record(*s, {{4, 64, 2, 120}, 8, 0, 8, 1.0f, kC}, *b, *b, *b, *b);  // head_dim not a multiple of 16
  EXPECT_NE(st.message().find("prefill CPU path"), std::string::npos) << st.message();
}

// On a device with f16 subgroup matrices the cooperative-matrix kernel must match the reference;
// on one without (lavapipe), forcing it must fail with an error that names the path.
TEST(PagedAttention, PrefillCoopmatMatchesReferenceOrIsRefused) {
  auto dev = open_device();
  ASSERT_TRUE(dev);
  auto op = ops::PagedAttention::create(*dev);
  ASSERT_TRUE(op.ok()) << op.status().ToString();
  if (op->prefill_uses_coopmat()) {
    check_prefill(*dev, *op, ops::AttentionPath::kPrefillCoopmat);
    if (!std::getenv("TROVE_ATTENTION") && !(ops::PagedAttention::kPrefillCm2Auto && op->has_prefill_cm2())) {
      EXPECT_EQ(op->choose({{4, 64, 2, 128}, 8, 0, 64, 1.0f}), ops::AttentionPath::kPrefillCoopmat);
    }
    return;
  }
  auto b = dev->buffer(1 << 20);
  ASSERT_TRUE(b.ok());
  auto s = dev->stream();
  ASSERT_TRUE(s.ok());
  Status st = op->record(*s, {{4, 64, 2, 128}, 8, 0, 64, 1.0f, ops::AttentionPath::kPrefillCoopmat}, *b, *b, *b, *b);
  EXPECT_NE(st.message().find("cooperative-matrix"), std::string::npos) << st.message();
  EXPECT_NE(op->choose({{4, 64, 2, 128}, 8, 0, 64, 1.0f}), ops::AttentionPath::kPrefillCoopmat);
}

// The NV cooperative matrix 2 kernel (attention_prefill_cm2.comp) where the device runs it: depth 0,
// chunks that leave a partial 64-row tile, GQA 1, 3, 4, 8, 64- and 128-key blocks (its key tile is 64,
// so smaller blocks are refused), NaN in the unwritten slots of the last block, a walk over many key
// tiles, split-K with slices past early rows' keys; both query tiles (64 and 128 rows, the latter
// where the device offers a 256-invocation shape). Where the device lacks it (lavapipe, validated
// runs) forcing it must fail naming the path, kAuto must never pick it, and the test is then skipped
// with the reason (it has checked only the refusal). Logs the prefill paths the device has.
TEST(PagedAttention, PrefillCm2MatchesReferenceOrIsRefused) {
  auto dev = open_device();
  ASSERT_TRUE(dev);
  auto op = ops::PagedAttention::create(*dev);
  ASSERT_TRUE(op.ok()) << op.status().ToString();
  std::printf("prefill attention paths on %s: tiled%s%s%s\n", dev->features().name.c_str(),
              op->prefill_uses_coopmat() ? ", khr cooperative matrix" : "", op->has_prefill_cm2() ? ", cm2" : "",
              dev->features().is_cpu ? ", cpu" : "");
  const auto kM = ops::AttentionPath::kPrefillCm2;
  auto b = dev->buffer(1 << 20);
  ASSERT_TRUE(b.ok());
  auto s = dev->stream();
  ASSERT_TRUE(s.ok());
  // A 16-key block never fits the kernel's 64-key tile.
  Status st = op->record(*s, {{64, 16, 2, 128}, 8, 0, 64, 1.0f, kM}, *b, *b, *b, *b);
  EXPECT_NE(st.message().find("prefill cm2"), std::string::npos) << st.message();
  EXPECT_NE(op->choose({{64, 16, 2, 128}, 8, 0, 64, 1.0f}), kM);
  if (!op->has_prefill_cm2()) {
    st = op->record(*s, {{4, 64, 2, 128}, 8, 0, 64, 1.0f, kM}, *b, *b, *b, *b);
    EXPECT_NE(st.message().find("prefill cm2"), std::string::npos) << st.message();
    EXPECT_NE(op->choose({{4, 64, 2, 128}, 8, 0, 64, 1.0f}), kM);
    GTEST_SKIP() << "this device has no NV cooperative matrix 2 prefill kernel (VK_NV_cooperative_matrix2 with "
                    "reductions, conversions and per-element operations): only the refusal was checked";
  }
  auto shapes = [&](const ops::PagedAttention& a) {
    SCOPED_TRACE(testing::Message() << "cm2 query tile " << a.prefill_cm2_rows() << " rows");
    check(*dev, a, 8, 2, 128, 64, 0, 70, 51, kM);     // depth 0, 280 rows (a partial tile), G 4
    check(*dev, a, 8, 2, 128, 64, 100, 37, 52, kM);   // prefix ends mid-block
    check(*dev, a, 8, 1, 128, 64, 64, 9, 53, kM);     // G 8, prefix of exactly one block
    check(*dev, a, 4, 4, 128, 128, 130, 50, 54, kM);  // G 1, 128-key blocks (two tiles per block)
    check(*dev, a, 6, 2, 128, 64, 5, 33, 55, kM);     // G 3: a row tile splits a token's heads
    check(*dev, a, 8, 2, 128, 64, 1000, 64, 56, kM);  // 17 key tiles, the last one partial
    check(*dev, a, 2, 1, 128, 64, 3, 4, 57, kM);      // 4 tokens (the smallest prefill chunk)
    check(*dev, a, 8, 2, 128, 64, 2990, 8, 58, kM);   // split-K: 6 slices, the last partial
    check(*dev, a, 2, 2, 128, 64, 0, 600, 59, kM);    // split-K: early row tiles end before slice 2
    check(*dev, a, 8, 2, 128, 128, 0, 200, 60, kM);   // depth 0, 128-key blocks, NaN past token 200
    check(*dev, a, 32, 8, 128, 64, 1536, 64, 61, kM); // Qwen3-8B heads, a prefill chunk at depth
    check(*dev, a, 32, 4, 128, 64, 4000, 32, 62, kM); // Qwen3-30B-A3B heads (G 8)
    check(*dev, a, 32, 8, 128, 64, 0, 512, 63, kM);   // Qwen3-8B heads, a 512-token chunk at depth 0
  };
  shapes(*op);
  // The 128-row variant (256 invocations) too, unless the run fixed one with TROVE_ATTENTION_CM2_ROWS.
  if (!std::getenv("TROVE_ATTENTION_CM2_ROWS")) {
    auto other = create_with(*dev, "TROVE_ATTENTION_CM2_ROWS", op->prefill_cm2_rows() == 64 ? "128" : "64");
    ASSERT_TRUE(other.ok()) << other.status().ToString();
    if (other->has_prefill_cm2()) shapes(*other);
    else std::printf("cm2 with %u-row tiles is not offered here (no workgroup shape for it)\n", other->prefill_cm2_rows());
  }
  const auto pick = op->choose({{4, 64, 2, 128}, 8, 0, 64, 1.0f});
  const char* env = std::getenv("TROVE_ATTENTION");
  if (env && std::string_view(env) == "cm2") EXPECT_EQ(pick, kM);
  else if (!env) EXPECT_EQ(pick == kM, ops::PagedAttention::kPrefillCm2Auto);
}

// TROVE_ATTENTION_SPLIT_KEYS (decode v2's slice length, for A/B) takes multiples of 32 in 32..4096;
// the pool rule still lengthens the slices of pools beyond kDecodeV2MaxSplits of them.
TEST(PagedAttention, TroveAttentionSplitKeysIsChecked) {
  auto dev = open_device();
  ASSERT_TRUE(dev);
  auto bad = create_with(*dev, "TROVE_ATTENTION_SPLIT_KEYS", "100");
  auto good = create_with(*dev, "TROVE_ATTENTION_SPLIT_KEYS", "256");
  ASSERT_FALSE(bad.ok());
  EXPECT_NE(bad.status().message().find("multiple of 32 in 32..4096"), std::string::npos) << bad.status().message();
  ASSERT_TRUE(good.ok()) << good.status().ToString();
  kernels::ref::PagedKvShape small{64, 16, 8, 128}, huge{65536, 16, 8, 128};  // 1,024 and 1,048,576 tokens
  EXPECT_EQ(ops::PagedAttention::decode_v2_split_keys(small), 128u);
  EXPECT_EQ(ops::PagedAttention::decode_v2_split_keys(small, 256), 256u);
  EXPECT_EQ(ops::PagedAttention::decode_v2_split_keys(huge, 256), 1024u);
  // By default the length doubles with the token's keys: at most kDecodeV2MostSlices (96) slices.
  EXPECT_EQ(ops::PagedAttention::kDecodeV2MostSlices, 96u);
  for (auto [keys, len] : {std::pair{1u, 128u}, {4096u, 128u}, {12288u, 128u}, {12289u, 256u}, {16384u, 256u},
                           {24576u, 256u}, {24577u, 512u}, {32768u, 512u}, {40000u, 512u}, {49153u, 1024u}}) {
    EXPECT_EQ(ops::PagedAttention::decode_v2_slice_keys(small, keys), len) << keys << " keys";
  }
  EXPECT_EQ(ops::PagedAttention::decode_v2_slice_keys(huge, 100), 1024u) << "the pool's floor";
}

// TROVE_ATTENTION_DECODE_TOKENS: steps of at most N tokens take the decode kernel where a matrix-unit
// prefill kernel would run (1..64; anything else is refused naming the range). By default 8
// (kDecodeMaxTokens): an 8-token step decodes; with 2, a 3-token step takes the prefill kernel on a
// device with a matrix-unit prefill kernel (elsewhere the tiled threshold decides).
TEST(PagedAttention, TroveAttentionDecodeTokensIsChecked) {
  auto dev = open_device();
  ASSERT_TRUE(dev);
  auto deflt = create_with(*dev, "TROVE_ATTENTION_DECODE_TOKENS", nullptr);
  auto bad = create_with(*dev, "TROVE_ATTENTION_DECODE_TOKENS", "0");
  auto two = create_with(*dev, "TROVE_ATTENTION_DECODE_TOKENS", "2");
  ASSERT_FALSE(bad.ok());
  EXPECT_NE(bad.status().message().find("1..64"), std::string::npos) << bad.status().message();
  ASSERT_TRUE(deflt.ok()) << deflt.status().ToString();
  ASSERT_TRUE(two.ok()) << two.status().ToString();
  auto decodes = [](ops::AttentionPath p) { return p == ops::AttentionPath::kDecode || p == ops::AttentionPath::kDecodeV2; };
  EXPECT_EQ(ops::PagedAttention::kDecodeMaxTokens, 8u);
  if (deflt->prefill_uses_coopmat() || deflt->has_prefill_cm2()) {
    EXPECT_TRUE(decodes(deflt->choose({{4, 64, 2, 128}, 8, 100, 8, 1.0f})));
    EXPECT_FALSE(decodes(deflt->choose({{4, 64, 2, 128}, 8, 100, 9, 1.0f})));
  } else {  // the tiled prefill kernel from kPrefillTiledMinTokens
    EXPECT_TRUE(decodes(deflt->choose({{4, 64, 2, 128}, 8, 100, 7, 1.0f})));
  }
  if (two->prefill_uses_coopmat() || two->has_prefill_cm2()) {
    EXPECT_TRUE(decodes(two->choose({{4, 64, 2, 128}, 8, 100, 2, 1.0f})));
    EXPECT_FALSE(decodes(two->choose({{4, 64, 2, 128}, 8, 100, 3, 1.0f})));
  }
}

// TROVE_ATTENTION: tiled makes kAuto take the tiled kernel (even on a CPU device), a path the device
// cannot run and an unknown name fail create() with the reason; TROVE_ATTENTION_CM2_ROWS other than 64
// or 128 fails too. The variables are set for each create() alone (create_with).
TEST(PagedAttention, TroveAttentionPicksThePrefillKernel) {
  auto dev = open_device();
  ASSERT_TRUE(dev);
  const ops::AttentionCall prefill{{4, 64, 2, 128}, 8, 0, 64, 1.0f};
  auto op = create_with(*dev, "TROVE_ATTENTION", "tiled");
  ASSERT_TRUE(op.ok()) << op.status().ToString();
  EXPECT_EQ(op->choose(prefill), ops::AttentionPath::kPrefillTiled);
  // TROVE_ATTENTION names the prefill kernel only: one token still decodes (v2 where it is the default).
  EXPECT_EQ(op->choose({{4, 64, 2, 128}, 8, 100, 1, 1.0f}),
            op->decode_v2_default() ? ops::AttentionPath::kDecodeV2 : ops::AttentionPath::kDecode);
  op = create_with(*dev, "TROVE_ATTENTION", "cm2");
  if (op.ok()) EXPECT_EQ(op->choose(prefill), ops::AttentionPath::kPrefillCm2);
  else EXPECT_NE(op.status().message().find("TROVE_ATTENTION=cm2"), std::string::npos) << op.status().message();
  op = create_with(*dev, "TROVE_ATTENTION", "flash");
  EXPECT_FALSE(op.ok());
  if (!op.ok()) EXPECT_NE(op.status().message().find("cm2, khr or tiled"), std::string::npos) << op.status().message();
  tests::ScopedEnv no_path("TROVE_ATTENTION", nullptr);
  op = create_with(*dev, "TROVE_ATTENTION_CM2_ROWS", "96");
  EXPECT_FALSE(op.ok());
  if (!op.ok()) EXPECT_NE(op.status().message().find("64 or 128"), std::string::npos) << op.status().message();
}

TEST(PagedAttention, BadShapesAreNamed) {
  auto dev = open_device();
  ASSERT_TRUE(dev);
  auto op = ops::PagedAttention::create(*dev);
  ASSERT_TRUE(op.ok());
  auto b = dev->buffer(1 << 12);
  ASSERT_TRUE(b.ok());
  auto s = dev->stream();
  ASSERT_TRUE(s.ok());
  Status st = op->record(*s, {{4, 16, 2, 64}, 3, 0, 1, 1.0f}, *b, *b, *b, *b);
  EXPECT_NE(st.message().find("multiple of the KV heads"), std::string::npos) << st.message();
  st = op->record(*s, {{4, 16, 2, 300}, 4, 0, 1, 1.0f}, *b, *b, *b, *b);
  EXPECT_NE(st.message().find("head_dim"), std::string::npos) << st.message();
  st = op->record(*s, {{64, 16, 8, 128}, 8, 0, 1, 1.0f}, *b, *b, *b, *b);
  EXPECT_NE(st.message().find("too small"), std::string::npos) << st.message();
  auto big = dev->buffer(1 << 16);
  ASSERT_TRUE(big.ok());
  st = op->record(*s, {{4, 16, 2, 64}, 4, 0, 16, 1.0f, ops::AttentionPath::kPrefillTiled}, *big, *big, *big, *big);
  EXPECT_NE(st.message().find("head_dim 128"), std::string::npos) << st.message();
}
