// Plain C++ references for the matmul and MoE expert FFN kernels (issue 8): the answers the Vulkan
// shaders are tested against. Slow on purpose: every weight row is dequantized with kernels/quant
// (the single definition of each format) and every dot product is accumulated in double, so the
// reference's own rounding error is far below the shaders' error bounds.
//
// Layouts are GGUF's: a weight matrix of `rows` output features × `cols` input features is stored
// row-major with the input dimension contiguous (ne0 = cols), each row row_bytes(type, cols) bytes.
// Activations and outputs are row-major [batch][features] f32 (f16 activations are passed as f16 bits
// and widened exactly). Bad shapes are reported as Status errors naming the argument.
#pragma once

#include <cstdint>
#include <span>
#include <vector>

#include "common/status.h"
#include "kernels/quant/quant.h"

namespace trove::kernels::ref {

// A weight matrix as GGUF stores it: `rows` rows of `cols` values of `type`, rows contiguous.
struct WeightMatrix {
  quant::GgmlType type = quant::GgmlType::F32;
  int64_t rows = 0;
  int64_t cols = 0;
  std::span<const uint8_t> bytes;  // rows * row_bytes(type, cols)
};

// y[b][r] = sum_c W[r][c] * x[b][c] for b < batch. x: batch*cols, y: batch*rows.
Status matmul(const WeightMatrix& w, std::span<const float> x, int64_t batch, std::span<float> y);
// The same with f16 activations (bits as stored on the GPU).
Status matmul_f16(const WeightMatrix& w, std::span<const quant::f16_bits> x, int64_t batch,
                  std::span<float> y);

// One expert's FFN weights: gate and up are [ffn][hidden], down is [hidden][ffn].
struct ExpertWeights {
  WeightMatrix gate;
  WeightMatrix up;
  WeightMatrix down;
};

// Mixture-of-experts FFN for a batch of tokens, computing only the selected experts:
//   out[t] = sum_k weight[t][k] * down_e( silu(gate_e x[t]) * up_e x[t] ),  e = ids[t][k]
// ids and weights are [tokens][top_k] as the routing op produces them. Tokens are gathered per
// expert (each expert's matrices are applied once to all tokens routed to it), which is the order
// the GPU kernel works in. x: tokens*hidden, out: tokens*hidden.
Status moe_ffn(std::span<const ExpertWeights> experts, std::span<const float> x, int64_t tokens,
               std::span<const int32_t> ids, std::span<const float> weights, int64_t top_k,
               std::span<float> out);

// Random weights of `type`: values uniform in [-scale, scale], quantized with kernels/quant.
// Returns the bytes; `dense` (optional) receives the dequantized values (rows*cols floats).
std::vector<uint8_t> random_weights(quant::GgmlType type, int64_t rows, int64_t cols, float scale,
                                    uint64_t seed, std::vector<float>* dense = nullptr);

}  // namespace trove::kernels::ref
