#include "kernels/ref/attention_ref.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

#include <fmt/format.h>

namespace trove::kernels::ref {

Status paged_attention(const PagedKvShape& shape, std::span<const quant::f16_bits> pool, int64_t n_heads,
                       float scale,
                       std::span<const AttentionSequence> seqs) {
  if (shape.n_blocks <= 0 || shape.block_size <= 0 || shape.n_kv_heads <= 0 || shape.head_dim <= 0) {
    return Status::InvalidArgument(fmt::format(
        "paged_attention: pool shape blocks {} block_size {} kv_heads {} head_dim {} must all be positive",
        shape.n_blocks, shape.block_size, shape.n_kv_heads, shape.head_dim));
  }
  if (n_heads <= 0 || n_heads % shape.n_kv_heads != 0) {
    return Status::InvalidArgument(fmt::format(
        "paged_attention: {} query heads is not a positive multiple of {} KV heads", n_heads, shape.n_kv_heads));
  }
  if (pool.size() != static_cast<size_t>(shape.elements())) {
    return Status::InvalidArgument(fmt::format("paged_attention: KV pool has {} values, the shape needs {}",
                                               pool.size(), shape.elements()));
  }
  const int64_t group = n_heads / shape.n_kv_heads;
  const int64_t hd = shape.head_dim;
  for (size_t s = 0; s < seqs.size(); ++s) {
    const AttentionSequence& seq = seqs[s];
    const size_t qsize = static_cast<size_t>(seq.n_tokens * n_heads * hd);
    if (seq.n_tokens <= 0 || seq.start_pos < 0 || seq.q.size() != qsize || seq.out.size() != qsize) {
      return Status::InvalidArgument(fmt::format(
          "paged_attention: sequence {} has n_tokens {} start_pos {} q {} out {} values (need {})", s,
          seq.n_tokens, seq.start_pos, seq.q.size(), seq.out.size(), qsize));
    }
    const int64_t n_pos = seq.start_pos + seq.n_tokens;
    const int64_t need_blocks = (n_pos + shape.block_size - 1) / shape.block_size;
    if (static_cast<int64_t>(seq.block_table.size()) < need_blocks) {
      return Status::InvalidArgument(fmt::format(
          "paged_attention: sequence {} covers {} positions and needs {} blocks, its block table has {}",
          s, n_pos, need_blocks, seq.block_table.size()));
    }
    for (int64_t b = 0; b < need_blocks; ++b) {
      if (seq.block_table[b] < 0 || seq.block_table[b] >= shape.n_blocks) {
        return Status::InvalidArgument(fmt::format(
            "paged_attention: sequence {} block table entry {} is {}, the pool has {} blocks", s, b,
            seq.block_table[b], shape.n_blocks));
      }
    }
    std::vector<double> acc(static_cast<size_t>(hd));
    for (int64_t t = 0; t < seq.n_tokens; ++t) {
      const int64_t last = seq.start_pos + t;  // causal: attend to 0..last
      for (int64_t h = 0; h < n_heads; ++h) {
        const int64_t kvh = h / group;
        const float* q = seq.q.data() + (t * n_heads + h) * hd;
        // Online softmax: running max m, running denominator l, accumulator rescaled when m grows.
        double m = -std::numeric_limits<double>::infinity();
        double l = 0.0;
        std::fill(acc.begin(), acc.end(), 0.0);
        for (int64_t p = 0; p <= last; ++p) {
          const int64_t off = shape.k_offset(seq.block_table[p / shape.block_size], p % shape.block_size, kvh);
          const int64_t voff = off + shape.half_block();
          double sc = 0.0;
          for (int64_t d = 0; d < hd; ++d) sc += static_cast<double>(q[d]) * quant::f16_to_f32(pool[off + d]);
          sc *= scale;
          const double m_new = std::max(m, sc);
          const double corr = std::exp(m - m_new);  // exp(-inf) = 0 on the first key
          const double w = std::exp(sc - m_new);
          l = l * corr + w;
          for (int64_t d = 0; d < hd; ++d) acc[d] = acc[d] * corr + w * quant::f16_to_f32(pool[voff + d]);
          m = m_new;
        }
        float* o = seq.out.data() + (t * n_heads + h) * hd;
        for (int64_t d = 0; d < hd; ++d) o[d] = static_cast<float>(acc[d] / l);
      }
    }
  }
  return Status::Ok();
}

}  // namespace trove::kernels::ref
