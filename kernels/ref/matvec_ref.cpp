#include "kernels/ref/matvec_ref.h"

#include <cmath>

#include <fmt/format.h>

namespace trove::kernels::ref {
namespace {

Status check(const WeightMatrix& w, size_t xhat_size, int64_t batch, size_t y_size, int64_t y_stride) {
  auto t = quant::traits(w.type);
  if (!t) return Status::InvalidArgument(fmt::format("matvec ref: weight type id {} is not supported", static_cast<uint32_t>(w.type)));
  if (w.rows <= 0 || w.cols <= 0 || w.cols % t->block_values != 0 ||
      w.bytes.size() != static_cast<size_t>(w.rows) * quant::row_bytes(w.type, w.cols)) {
    return Status::InvalidArgument(fmt::format("matvec ref: {}x{} {} matrix with {} bytes is invalid", w.rows, w.cols,
                                               t->name, w.bytes.size()));
  }
  if (batch <= 0 || xhat_size != static_cast<size_t>(batch * w.cols)) {
    return Status::InvalidArgument(fmt::format("matvec ref: x̂ has {} values, expected batch {} x cols {}", xhat_size,
                                               batch, w.cols));
  }
  if (y_stride < w.rows || y_size < static_cast<size_t>((batch - 1) * y_stride + w.rows)) {
    return Status::InvalidArgument(fmt::format("matvec ref: y has {} values with stride {}; batch {} x rows {} do not fit",
                                               y_size, y_stride, batch, w.rows));
  }
  return Status::Ok();
}

// out[b*rows + r] = (W x̂[b])[r] in double.
std::vector<double> products(const WeightMatrix& w, std::span<const double> xhat, int64_t batch) {
  const size_t rb = quant::row_bytes(w.type, w.cols);
  std::vector<float> row(static_cast<size_t>(w.cols));
  std::vector<double> out(static_cast<size_t>(batch * w.rows));
  for (int64_t r = 0; r < w.rows; ++r) {
    quant::dequantize_row(w.type, w.bytes.data() + static_cast<size_t>(r) * rb, row.data(), w.cols);
    for (int64_t b = 0; b < batch; ++b) {
      const double* xb = xhat.data() + b * w.cols;
      double acc = 0.0;
      for (int64_t c = 0; c < w.cols; ++c) acc += static_cast<double>(row[c]) * xb[c];
      out[static_cast<size_t>(b * w.rows + r)] = acc;
    }
  }
  return out;
}

}  // namespace

Result<std::vector<double>> matvec_prologue(std::span<const float> x, int64_t batch, int64_t cols,
                                            std::span<const float> norm_w, double eps) {
  if (batch <= 0 || cols <= 0 || x.size() != static_cast<size_t>(batch * cols) ||
      (!norm_w.empty() && norm_w.size() != static_cast<size_t>(cols))) {
    return Status::InvalidArgument(fmt::format("matvec ref prologue: x has {} values, norm_w {}; batch {} cols {}",
                                               x.size(), norm_w.size(), batch, cols));
  }
  std::vector<double> out(x.begin(), x.end());
  if (norm_w.empty()) return out;
  for (int64_t b = 0; b < batch; ++b) {
    double ss = 0.0;
    for (int64_t c = 0; c < cols; ++c) ss += out[b * cols + c] * out[b * cols + c];
    const double inv = 1.0 / std::sqrt(ss / static_cast<double>(cols) + eps);
    for (int64_t c = 0; c < cols; ++c) out[b * cols + c] *= inv * static_cast<double>(norm_w[c]);
  }
  return out;
}

Status matvec(const WeightMatrix& w, std::span<const double> xhat, int64_t batch, std::span<float> y,
              int64_t y_stride, bool add) {
  TROVE_RETURN_IF_ERROR(check(w, xhat.size(), batch, y.size(), y_stride));
  const std::vector<double> p = products(w, xhat, batch);
  for (int64_t b = 0; b < batch; ++b) {
    for (int64_t r = 0; r < w.rows; ++r) {
      float& out = y[static_cast<size_t>(b * y_stride + r)];
      const double v = p[static_cast<size_t>(b * w.rows + r)];
      out = static_cast<float>(add ? static_cast<double>(out) + v : v);
    }
  }
  return Status::Ok();
}

Status matvec_swiglu(const WeightMatrix& gate, const WeightMatrix& up, std::span<const double> xhat, int64_t batch,
                     std::span<float> y, int64_t y_stride) {
  TROVE_RETURN_IF_ERROR(check(gate, xhat.size(), batch, y.size(), y_stride));
  TROVE_RETURN_IF_ERROR(check(up, xhat.size(), batch, y.size(), y_stride));
  if (gate.rows != up.rows || gate.cols != up.cols) {
    return Status::InvalidArgument(fmt::format("matvec ref swiglu: gate {}x{} and up {}x{} differ", gate.rows, gate.cols,
                                               up.rows, up.cols));
  }
  const std::vector<double> g = products(gate, xhat, batch), u = products(up, xhat, batch);
  for (int64_t b = 0; b < batch; ++b) {
    for (int64_t r = 0; r < gate.rows; ++r) {
      const size_t i = static_cast<size_t>(b * gate.rows + r);
      y[static_cast<size_t>(b * y_stride + r)] = static_cast<float>(g[i] / (1.0 + std::exp(-g[i])) * u[i]);
    }
  }
  return Status::Ok();
}

}  // namespace trove::kernels::ref
