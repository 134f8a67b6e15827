// kernels/ref/layer_ref.h — plain C++ references for kernels/ops/layer_ops.h, accumulating in float64
// where it matters (norm sums, RoPE angles); these are the definitions the GPU ops are tested against.
#pragma once
#include <cstddef>
#include <cstdint>

#include "kernels/quant/quant.h"

namespace trove::ref {
void rms_norm(const float* x, const float* w, float* out, size_t rows, size_t ncols, float eps);
void swiglu(const float* gate, const float* up, float* out, size_t n);
void rope_neox(float* x, const int32_t* pos, size_t tokens, size_t heads, size_t head_dim, double base);
void argmax(const float* logits, uint32_t* out, size_t rows, size_t ncols);  // ties → smallest index
// table rows of `ncols` values of `type`, dequantised with kernels/quant.
void get_rows(quant::GgmlType type, const void* table, const int32_t* ids, float* out, size_t ntokens, size_t ncols);
}  // namespace trove::ref

#include "kernels/kv_layout.h"

namespace trove::ref {
// MoE routing: top-k of logits (ties → smaller index); weights = softmax over the chosen, in float64.
void moe_route(const float* logits, uint32_t* ids, float* weights, size_t tokens, size_t n_experts, size_t k);
// KV write into a pool of f16 (uint16 bits) laid out per kv::KvLayout.
void kv_write(const kv::KvLayout& L, const float* k, const float* v, const uint32_t* slots, uint16_t* pool,
              size_t tokens);
}  // namespace trove::ref
