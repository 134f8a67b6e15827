// kernels/ops/moe_ffn.h — mixture-of-experts FFN on the GPU for a batch of tokens, computing only
// the selected experts: out[t] = sum_k w[t][k] * down_e(silu(gate_e x[t]) * up_e x[t]), e = ids[t][k].
//
// Contract: x and out are f32 [tokens][hidden] device buffers; each expert's gate/up ([ffn][hidden])
// and down ([hidden][ffn]) are GGUF weight matrices in their own device buffers (any kernels/quant
// type the Matmul op takes). Routing (ids, weights: [tokens][top_k]) is given on the host: tokens are
// gathered per expert with buffer copies, each used expert runs gate/up matmuls, SwiGLU (the layer
// op) and the down matmul on its gathered rows, and a combine shader adds the weighted rows into out.
// run() records, submits and waits (it owns the per-call scratch buffers). Checked against
// kernels/ref/matmul_ref.h moe_ffn.
#pragma once

#include <vector>

#include "kernels/ops/layer_ops.h"
#include "kernels/ops/matmul.h"

namespace trove::ops {

struct ExpertBuffers {
  quant::GgmlType type = quant::GgmlType::F32;
  const vk::Buffer* gate = nullptr;
  const vk::Buffer* up = nullptr;
  const vk::Buffer* down = nullptr;
};

class MoeFfn {
 public:
  static Result<MoeFfn> create(vk::Device& dev);
  Status run(vk::Device& dev, const std::vector<ExpertBuffers>& experts, uint32_t hidden, uint32_t ffn,
             uint32_t tokens, uint32_t top_k, const std::vector<int32_t>& ids, const std::vector<float>& weights,
             const vk::Buffer& x, vk::Buffer& out) const;

 private:
  Matmul matmul_;
  SwiGlu swiglu_;
  vk::Pipeline combine_;
};

}  // namespace trove::ops
