// Tests of the paged attention reference (kernels/ref/attention_ref.h): each sequence's K/V is built
// contiguous here, scattered into the pool through a shuffled block table, and the reference's
// online-softmax result over the pool is compared with a plain two-pass softmax over the contiguous
// copy. Covers decode (1 token, many sequences), prefill with a cached prefix (start_pos > 0),
// grouped-query heads, partial last blocks. Runtime < 1 s.
#include <algorithm>
#include <cmath>
#include <numeric>
#include <random>
#include <vector>

#include <gtest/gtest.h>

#include "kernels/kv_layout.h"
#include "kernels/ref/attention_ref.h"

namespace trove::kernels::ref {
namespace {

struct Case {
  int64_t n_heads, n_kv_heads, head_dim, block_size;
  std::vector<std::pair<int64_t, int64_t>> seqs;  // (start_pos, n_tokens)
};

void run_case(const Case& c, uint32_t seed) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> nd(0.0f, 1.0f);
  PagedKvShape shape{0, c.block_size, c.n_kv_heads, c.head_dim};
  std::vector<int64_t> blocks_per_seq;
  for (auto [start, n] : c.seqs) {
    blocks_per_seq.push_back((start + n + c.block_size - 1) / c.block_size);
    shape.n_blocks += blocks_per_seq.back();
  }
  shape.n_blocks += 2;  // unused blocks, filled with garbage the kernel must not read
  std::vector<int32_t> perm(shape.n_blocks);
  std::iota(perm.begin(), perm.end(), 0);
  std::shuffle(perm.begin(), perm.end(), rng);
  std::vector<quant::f16_bits> pool(shape.elements(), quant::f32_to_f16(1e4f));

  const int64_t kv_row = c.n_kv_heads * c.head_dim, q_row = c.n_heads * c.head_dim;
  std::vector<std::vector<int32_t>> tables(c.seqs.size());
  std::vector<std::vector<float>> ks(c.seqs.size()), vs(c.seqs.size()), qs(c.seqs.size()), outs(c.seqs.size());
  std::vector<AttentionSequence> seqs;
  size_t next = 0;
  for (size_t s = 0; s < c.seqs.size(); ++s) {
    auto [start, n] = c.seqs[s];
    const int64_t n_pos = start + n;
    for (int64_t b = 0; b < blocks_per_seq[s]; ++b) tables[s].push_back(perm[next++]);
    ks[s].resize(n_pos * kv_row);
    vs[s].resize(n_pos * kv_row);
    for (auto& v : ks[s]) v = quant::f16_to_f32(quant::f32_to_f16(nd(rng)));
    for (auto& v : vs[s]) v = quant::f16_to_f32(quant::f32_to_f16(nd(rng)));
    for (int64_t p = 0; p < n_pos; ++p) {
      for (int64_t h = 0; h < c.n_kv_heads; ++h) {
        const int64_t ko = shape.k_offset(tables[s][p / c.block_size], p % c.block_size, h);
        const int64_t vo = shape.v_offset(tables[s][p / c.block_size], p % c.block_size, h);
        for (int64_t d = 0; d < c.head_dim; ++d) {
          pool[ko + d] = quant::f32_to_f16(ks[s][p * kv_row + h * c.head_dim + d]);
          pool[vo + d] = quant::f32_to_f16(vs[s][p * kv_row + h * c.head_dim + d]);
        }
      }
    }
    qs[s].resize(n * q_row);
    for (auto& v : qs[s]) v = nd(rng);
    outs[s].assign(n * q_row, std::nanf(""));
  }
  for (size_t s = 0; s < c.seqs.size(); ++s) {
    seqs.push_back({tables[s], c.seqs[s].first, c.seqs[s].second, qs[s], outs[s]});
  }
  const float scale = 1.0f / std::sqrt(static_cast<float>(c.head_dim));
  ASSERT_TRUE(paged_attention(shape, pool, c.n_heads, scale, seqs).ok());

  const int64_t group = c.n_heads / c.n_kv_heads;
  for (size_t s = 0; s < c.seqs.size(); ++s) {
    auto [start, n] = c.seqs[s];
    for (int64_t t = 0; t < n; ++t) {
      for (int64_t h = 0; h < c.n_heads; ++h) {
        const int64_t kvh = h / group, last = start + t;
        std::vector<double> score(last + 1);
        for (int64_t p = 0; p <= last; ++p) {
          double dot = 0;
          for (int64_t d = 0; d < c.head_dim; ++d) {
            dot += static_cast<double>(qs[s][t * q_row + h * c.head_dim + d]) * ks[s][p * kv_row + kvh * c.head_dim + d];
          }
          score[p] = dot * scale;
        }
        const double mx = *std::max_element(score.begin(), score.end());
        double sum = 0;
        for (auto& v : score) sum += (v = std::exp(v - mx));
        for (int64_t d = 0; d < c.head_dim; ++d) {
          double o = 0;
          for (int64_t p = 0; p <= last; ++p) o += score[p] / sum * vs[s][p * kv_row + kvh * c.head_dim + d];
          const float got = outs[s][t * q_row + h * c.head_dim + d];
          ASSERT_TRUE(std::isfinite(got)) << "seq " << s << " token " << t << " head " << h;
          EXPECT_NEAR(got, o, 1e-5 * (1.0 + std::fabs(o))) << "seq " << s << " token " << t << " head " << h << " d " << d;
        }
      }
    }
  }
}

TEST(AttentionRef, DecodeManySequencesGqa) {
  run_case({8, 2, 64, 16, {{0, 1}, {5, 1}, {16, 1}, {47, 1}, {130, 1}}}, 1);
}

TEST(AttentionRef, PrefillWithCachedPrefix) {
  run_case({4, 4, 32, 8, {{0, 13}}}, 2);
  run_case({8, 1, 64, 32, {{40, 25}, {0, 7}}}, 3);
  run_case({32, 8, 128, 16, {{17, 9}}}, 4);  // Qwen3-8B heads
}

TEST(AttentionRef, OffsetsAreKvLayouts) {
  kv::KvLayout layout{16, 8, 128};
  PagedKvShape shape{10, 16, 8, 128};
  for (uint32_t b : {0u, 3u, 9u}) {
    for (uint32_t h : {0u, 5u, 7u}) {
      for (uint32_t t : {0u, 1u, 15u}) {
        EXPECT_EQ(static_cast<uint64_t>(shape.k_offset(b, t, h)), layout.k_index(b, h, t, 0));
        EXPECT_EQ(static_cast<uint64_t>(shape.v_offset(b, t, h)), layout.v_index(b, h, t, 0));
      }
    }
  }
  EXPECT_EQ(static_cast<uint64_t>(shape.elements()) * 2, layout.block_bytes() * 10);
}

TEST(AttentionRef, ErrorsNameTheProblem) {
  PagedKvShape shape{2, 4, 1, 8};
  std::vector<quant::f16_bits> kp(shape.elements());
  std::vector<float> q(8), out(8);
  std::vector<int32_t> table = {0};
  std::vector<AttentionSequence> seqs = {{table, 4, 1, q, out}};  // position 4 needs a second block
  Status s = paged_attention(shape, kp, 1, 1.0f, seqs);
  EXPECT_FALSE(s.ok());
  EXPECT_NE(s.message().find("needs 2 blocks"), std::string::npos) << s.message();
  std::vector<int32_t> bad = {0, 7};
  seqs = {{bad, 4, 1, q, out}};
  s = paged_attention(shape, kp, 1, 1.0f, seqs);
  EXPECT_NE(s.message().find("pool has 2 blocks"), std::string::npos) << s.message();
  PagedKvShape two_kv{2, 4, 2, 8};  // 3 query heads cannot share 2 KV heads evenly
  s = paged_attention(two_kv, kp, 3, 1.0f, {});
  EXPECT_NE(s.message().find("multiple"), std::string::npos) << s.message();
}

}  // namespace
}  // namespace trove::kernels::ref
