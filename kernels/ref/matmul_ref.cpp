#include "kernels/ref/matmul_ref.h"

#include <algorithm>
#include <cmath>
#include <random>
#include <string>

#include <fmt/format.h>

namespace trove::kernels::ref {
namespace {

Status check_weights(const WeightMatrix& w, const char* what) {
  auto t = quant::traits(w.type);
  if (!t) {
    return Status::InvalidArgument(fmt::format("{}: weight type id {} is not supported (use one of {})",
                                               what, static_cast<uint32_t>(w.type),
                                               quant::supported_type_names()));
  }
  if (w.rows <= 0 || w.cols <= 0 || w.cols % t->block_values != 0) {
    return Status::InvalidArgument(fmt::format(
        "{}: shape {}x{} is invalid for {} (rows and cols must be positive, cols a multiple of {})",
        what, w.rows, w.cols, t->name, t->block_values));
  }
  const size_t need = static_cast<size_t>(w.rows) * quant::row_bytes(w.type, w.cols);
  if (w.bytes.size() != need) {
    return Status::InvalidArgument(fmt::format("{}: {} bytes given, a {}x{} {} matrix has {} bytes",
                                               what, w.bytes.size(), w.rows, w.cols, t->name, need));
  }
  return Status::Ok();
}

// y[b][r] for all b, from activations already widened to double.
void matmul_double(const WeightMatrix& w, const std::vector<double>& x, int64_t batch,
                   std::span<float> y) {
  const size_t rb = quant::row_bytes(w.type, w.cols);
  std::vector<float> row(static_cast<size_t>(w.cols));
  for (int64_t r = 0; r < w.rows; ++r) {
    quant::dequantize_row(w.type, w.bytes.data() + static_cast<size_t>(r) * rb, row.data(), w.cols);
    for (int64_t b = 0; b < batch; ++b) {
      const double* xb = x.data() + b * w.cols;
      double acc = 0.0;
      for (int64_t c = 0; c < w.cols; ++c) acc += static_cast<double>(row[c]) * xb[c];
      y[static_cast<size_t>(b * w.rows + r)] = static_cast<float>(acc);
    }
  }
}

Status check_io(const WeightMatrix& w, size_t x_size, int64_t batch, size_t y_size) {
  TROVE_RETURN_IF_ERROR(check_weights(w, "matmul weights"));
  if (batch <= 0) return Status::InvalidArgument(fmt::format("matmul: batch {} must be positive", batch));
  if (x_size != static_cast<size_t>(batch * w.cols)) {
    return Status::InvalidArgument(fmt::format("matmul: activations have {} values, expected batch {} x cols {}",
                                               x_size, batch, w.cols));
  }
  if (y_size != static_cast<size_t>(batch * w.rows)) {
    return Status::InvalidArgument(fmt::format("matmul: output has {} values, expected batch {} x rows {}",
                                               y_size, batch, w.rows));
  }
  return Status::Ok();
}

}  // namespace

Status matmul(const WeightMatrix& w, std::span<const float> x, int64_t batch, std::span<float> y) {
  TROVE_RETURN_IF_ERROR(check_io(w, x.size(), batch, y.size()));
  std::vector<double> xd(x.begin(), x.end());
  matmul_double(w, xd, batch, y);
  return Status::Ok();
}

Status matmul_f16(const WeightMatrix& w, std::span<const quant::f16_bits> x, int64_t batch,
                  std::span<float> y) {
  TROVE_RETURN_IF_ERROR(check_io(w, x.size(), batch, y.size()));
  std::vector<double> xd(x.size());
  for (size_t i = 0; i < x.size(); ++i) xd[i] = quant::f16_to_f32(x[i]);
  matmul_double(w, xd, batch, y);
  return Status::Ok();
}

Status moe_ffn(std::span<const ExpertWeights> experts, std::span<const float> x, int64_t tokens,
               std::span<const int32_t> ids, std::span<const float> weights, int64_t top_k,
               std::span<float> out) {
  if (experts.empty()) return Status::InvalidArgument("moe_ffn: no experts given");
  if (tokens <= 0 || top_k <= 0) {
    return Status::InvalidArgument(fmt::format("moe_ffn: tokens {} and top_k {} must be positive", tokens, top_k));
  }
  const int64_t hidden = experts[0].gate.cols;
  const int64_t ffn = experts[0].gate.rows;
  for (size_t e = 0; e < experts.size(); ++e) {
    const ExpertWeights& ex = experts[e];
    TROVE_RETURN_IF_ERROR(check_weights(ex.gate, "moe_ffn gate"));
    TROVE_RETURN_IF_ERROR(check_weights(ex.up, "moe_ffn up"));
    TROVE_RETURN_IF_ERROR(check_weights(ex.down, "moe_ffn down"));
    if (ex.gate.rows != ffn || ex.gate.cols != hidden || ex.up.rows != ffn || ex.up.cols != hidden ||
        ex.down.rows != hidden || ex.down.cols != ffn) {
      return Status::InvalidArgument(fmt::format(
          "moe_ffn: expert {} has shapes gate {}x{} up {}x{} down {}x{}; all experts need gate/up "
          "{}x{} and down {}x{}",
          e, ex.gate.rows, ex.gate.cols, ex.up.rows, ex.up.cols, ex.down.rows, ex.down.cols, ffn,
          hidden, hidden, ffn));
    }
  }
  const size_t n_route = static_cast<size_t>(tokens * top_k);
  if (x.size() != static_cast<size_t>(tokens * hidden) || out.size() != x.size() ||
      ids.size() != n_route || weights.size() != n_route) {
    return Status::InvalidArgument(fmt::format(
        "moe_ffn: sizes x {} out {} ids {} weights {}; expected tokens*hidden = {} and tokens*top_k = {}",
        x.size(), out.size(), ids.size(), weights.size(), tokens * hidden, n_route));
  }
  for (size_t i = 0; i < n_route; ++i) {
    if (ids[i] < 0 || static_cast<size_t>(ids[i]) >= experts.size()) {
      return Status::InvalidArgument(fmt::format("moe_ffn: route {} (token {}) selects expert {}, only {} exist",
                                                 i, i / top_k, ids[i], experts.size()));
    }
  }
  std::vector<double> acc(x.size(), 0.0);
  for (size_t e = 0; e < experts.size(); ++e) {
    // Gather the tokens routed to this expert (a token may not pick the same expert twice in a
    // real router, but nothing breaks if it does: each route is its own row).
    std::vector<int64_t> tok;
    std::vector<double> wt;
    for (size_t i = 0; i < n_route; ++i) {
      if (ids[i] == static_cast<int32_t>(e)) {
        tok.push_back(static_cast<int64_t>(i) / top_k);
        wt.push_back(weights[i]);
      }
    }
    if (tok.empty()) continue;
    const int64_t n = static_cast<int64_t>(tok.size());
    std::vector<float> xg(static_cast<size_t>(n * hidden));
    for (int64_t j = 0; j < n; ++j) {
      std::copy_n(x.begin() + tok[j] * hidden, hidden, xg.begin() + j * hidden);
    }
    std::vector<float> g(static_cast<size_t>(n * ffn)), u(g.size()), d(static_cast<size_t>(n * hidden));
    TROVE_RETURN_IF_ERROR(matmul(experts[e].gate, xg, n, g));
    TROVE_RETURN_IF_ERROR(matmul(experts[e].up, xg, n, u));
    std::vector<float> h(g.size());
    for (size_t i = 0; i < g.size(); ++i) {
      const double gv = g[i];
      h[i] = static_cast<float>(gv / (1.0 + std::exp(-gv)) * u[i]);  // SwiGLU: silu(gate) * up
    }
    TROVE_RETURN_IF_ERROR(matmul(experts[e].down, h, n, d));
    for (int64_t j = 0; j < n; ++j) {
      for (int64_t c = 0; c < hidden; ++c) acc[tok[j] * hidden + c] += wt[j] * d[j * hidden + c];
    }
  }
  for (size_t i = 0; i < acc.size(); ++i) out[i] = static_cast<float>(acc[i]);
  return Status::Ok();
}

std::vector<uint8_t> random_weights(quant::GgmlType type, int64_t rows, int64_t cols, float scale,
                                    uint64_t seed, std::vector<float>* dense) {
  std::mt19937_64 rng(seed);
  std::uniform_real_distribution<float> dist(-scale, scale);
  const size_t rb = quant::row_bytes(type, cols);
  std::vector<uint8_t> bytes(static_cast<size_t>(rows) * rb);
  std::vector<float> row(static_cast<size_t>(cols));
  if (dense) dense->assign(static_cast<size_t>(rows * cols), 0.0f);
  for (int64_t r = 0; r < rows; ++r) {
    for (auto& v : row) v = dist(rng);
    quant::quantize_row(type, row.data(), bytes.data() + r * rb, cols);
    if (dense) quant::dequantize_row(type, bytes.data() + r * rb, dense->data() + r * cols, cols);
  }
  return bytes;
}

}  // namespace trove::kernels::ref
