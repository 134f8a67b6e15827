#include "kernels/ref/layer_ref.h"

#include <cmath>

namespace trove::ref {

void rms_norm(const float* x, const float* w, float* out, size_t rows, size_t ncols, float eps) {
  for (size_t r = 0; r < rows; ++r) {
    const float* xr = x + r * ncols;
    double s = 0;
    for (size_t i = 0; i < ncols; ++i) s += double(xr[i]) * xr[i];
    double scale = 1.0 / std::sqrt(s / double(ncols) + eps);
    for (size_t i = 0; i < ncols; ++i) out[r * ncols + i] = float(xr[i] * scale * w[i]);
  }
}

void swiglu(const float* gate, const float* up, float* out, size_t n) {
  for (size_t i = 0; i < n; ++i) {
    double g = gate[i];
    out[i] = float(g / (1.0 + std::exp(-g)) * up[i]);
  }
}

void rope_neox(float* x, const int32_t* pos, size_t tokens, size_t heads, size_t head_dim, double base) {
  size_t half = head_dim / 2;
  for (size_t t = 0; t < tokens; ++t)
    for (size_t h = 0; h < heads; ++h) {
      float* v = x + (t * heads + h) * head_dim;
      for (size_t i = 0; i < half; ++i) {
        double ang = double(pos[t]) * std::pow(base, -2.0 * double(i) / double(head_dim));
        double c = std::cos(ang), s = std::sin(ang), x0 = v[i], x1 = v[i + half];
        v[i] = float(x0 * c - x1 * s);
        v[i + half] = float(x0 * s + x1 * c);
      }
    }
}

void argmax(const float* logits, uint32_t* out, size_t rows, size_t ncols) {
  for (size_t r = 0; r < rows; ++r) {
    const float* l = logits + r * ncols;
    size_t best = ncols;
    for (size_t i = 0; i < ncols; ++i)
      if (!std::isnan(l[i]) && (best == ncols || l[i] > l[best])) best = i;
    out[r] = best == ncols ? 0xffffffffu : uint32_t(best);
  }
}

void get_rows(quant::GgmlType type, const void* table, const int32_t* ids, float* out, size_t ntokens, size_t ncols) {
  size_t rb = quant::row_bytes(type, int64_t(ncols));
  for (size_t t = 0; t < ntokens; ++t)
    quant::dequantize_row(type, static_cast<const uint8_t*>(table) + size_t(ids[t]) * rb, out + t * ncols, int64_t(ncols));
}

}  // namespace trove::ref

#include <algorithm>
#include <numeric>
#include <vector>

namespace trove::ref {
void moe_route(const float* logits, uint32_t* ids, float* weights, size_t tokens, size_t n_experts, size_t k) {
  std::vector<uint32_t> order(n_experts);
  for (size_t t = 0; t < tokens; ++t) {
    const float* l = logits + t * n_experts;
    std::iota(order.begin(), order.end(), 0u);
    std::stable_sort(order.begin(), order.end(), [&](uint32_t a, uint32_t b) { return l[a] > l[b]; });
    double sum = 0;
    for (size_t j = 0; j < k; ++j) sum += std::exp(double(l[order[j]]) - l[order[0]]);
    for (size_t j = 0; j < k; ++j) {
      ids[t * k + j] = order[j];
      weights[t * k + j] = float(std::exp(double(l[order[j]]) - l[order[0]]) / sum);
    }
  }
}

void kv_write(const kv::KvLayout& L, const float* k, const float* v, const uint32_t* slots, uint16_t* pool,
              size_t tokens) {
  for (size_t t = 0; t < tokens; ++t)
    for (uint32_t h = 0; h < L.kv_heads; ++h)
      for (uint32_t d = 0; d < L.head_dim; ++d) {
        uint32_t blk = slots[t] / L.block_tokens, off = slots[t] % L.block_tokens;
        size_t src = (t * L.kv_heads + h) * L.head_dim + d;
        pool[L.k_index(blk, h, off, d)] = quant::f32_to_f16(k[src]);
        pool[L.v_index(blk, h, off, d)] = quant::f32_to_f16(v[src]);
      }
}
}  // namespace trove::ref
