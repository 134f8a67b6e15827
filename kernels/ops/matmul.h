// kernels/ops/matmul.h — weight × activation products on the GPU: y[b][r] = sum_c W[r][c] * x[b][c].
//
// Contract: W is a GGUF weight matrix (rows × cols, input dim contiguous, row_bytes(type, cols)
// bytes per row) in a device buffer padded to a multiple of 4 bytes (the shader reads whole words); x is f32 [batch][cols] (f16 with x_f16); y is f32 [batch][y_stride]
// (y_stride 0 = rows; larger when a big matrix is computed in row ranges). record() only
// records one dispatch into the stream; the caller submits. Every kernels/quant type (F32 F16 BF16
// Q8_0 Q4_K Q5_K Q6_K) through matmul_tiled.comp (any device: chunks of 32 values dequantized once
// per tile of up to 8 batch columns; not yet the tensor-core path); other type ids are a named Unsupported error. Checked against
// kernels/ref/matmul_ref.h.
#pragma once

#include "kernels/quant/quant.h"
#include "kernels/vk/runtime.h"

namespace trove::ops {

class Matmul {
 public:
  static Result<Matmul> create(vk::Device& dev);
  Status record(vk::CommandStream& s, quant::GgmlType type, uint32_t rows, uint32_t cols, uint32_t batch,
                vk::BufferRange w, vk::BufferRange x, vk::BufferRange y, uint32_t y_stride = 0,
                bool x_f16 = false) const;
  // Whether batches of at least kCoopmatMinBatch go through the cooperative-matrix (tensor core)
  // shader: activations rounded to f16, f32 accumulation. TROVE_NO_COOPMAT=1 turns it off.
  bool uses_coopmat() const { return has_coopmat_; }
  static constexpr uint32_t kCoopmatMinBatch = 32;

 private:
  vk::Pipeline coopmat_[2];   // [f32, f16 activations] matrix units, batches >= kCoopmatMinBatch (when the device has them)
  bool has_coopmat_ = false;
  vk::Pipeline tiled_row_[2];    // one row per invocation (decode); [f32, f16 activations]
  vk::Pipeline tiled_rows4_[2];  // four rows per invocation (batches)
};

}  // namespace trove::ops
