// kernels/ref/matvec_ref.h — plain C++ reference for kernels/ops/matvec.h (decode matvecs with the
// RMSNorm prologue and the store / add / SwiGLU epilogues). Float64 throughout: x̂ is computed in
// double from the f32 inputs, every dot product accumulates in double over the weights dequantized by
// kernels/quant, and only the stored outputs are rounded to f32. Bad shapes are Status errors.
#pragma once

#include <cstdint>
#include <span>
#include <vector>

#include "common/status.h"
#include "kernels/ref/matmul_ref.h"

namespace trove::kernels::ref {

// x̂[b][c] = x[b][c] / sqrt(mean_c(x[b][:]^2) + eps) * norm_w[c]; norm_w empty: x̂ = x.
// x: batch*cols. Returns batch*cols doubles.
Result<std::vector<double>> matvec_prologue(std::span<const float> x, int64_t batch, int64_t cols,
                                            std::span<const float> norm_w, double eps);

// y[b*y_stride + r] = (W x̂[b])[r], or += when `add` (y holds the residual). y has at least
// (batch-1)*y_stride + w.rows values; entries between the rows of a stride are left untouched.
Status matvec(const WeightMatrix& w, std::span<const double> xhat, int64_t batch, std::span<float> y,
              int64_t y_stride, bool add);

// y[b*y_stride + r] = silu(g) * u with g = (gate x̂[b])[r], u = (up x̂[b])[r]; silu(g) = g / (1 + e^-g).
Status matvec_swiglu(const WeightMatrix& gate, const WeightMatrix& up, std::span<const double> xhat, int64_t batch,
                     std::span<float> y, int64_t y_stride);

}  // namespace trove::kernels::ref
