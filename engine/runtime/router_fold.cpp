#include "engine/runtime/router_fold.h"

#include <algorithm>

namespace trove::engine {

RouterFold fold_router(const float* router, const float* norm_w, uint32_t n_expert, uint32_t hidden,
                       quant::GgmlType o_type, const uint8_t* o, uint32_t q_dim) {
  RouterFold f;
  f.rn.resize(uint64_t{n_expert} * hidden);
  for (uint64_t e = 0; e < n_expert; ++e) {
    for (uint64_t c = 0; c < hidden; ++c) f.rn[e * hidden + c] = router[e * hidden + c] * norm_w[c];
  }
  // M[e] = Σ_r R̃[e][r] · W_o[r]: W_o's rows dequantized kRows at a time, each M row updated by all of
  // them while it sits in the cache.
  constexpr uint32_t kRows = 16;
  f.m.assign(uint64_t{n_expert} * q_dim, 0.f);
  std::vector<float> rows(uint64_t{kRows} * q_dim);
  const uint64_t rb = quant::row_bytes(o_type, q_dim);
  for (uint32_t r0 = 0; r0 < hidden; r0 += kRows) {
    const uint32_t n = std::min(kRows, hidden - r0);
    for (uint32_t i = 0; i < n; ++i)
      quant::dequantize_row(o_type, o + (r0 + i) * rb, &rows[uint64_t{i} * q_dim], q_dim);
    for (uint64_t e = 0; e < n_expert; ++e) {
      float* me = &f.m[e * q_dim];
      for (uint32_t i = 0; i < n; ++i) {
        const float a = f.rn[e * hidden + r0 + i];
        const float* w = &rows[uint64_t{i} * q_dim];
        for (uint32_t j = 0; j < q_dim; ++j) me[j] += a * w[j];
      }
    }
  }
  return f;
}

}  // namespace trove::engine
