// kernels/ops/layer_ops.h — the non-matmul ops of a Qwen3 layer on the GPU, all float32 activations:
//   RmsNorm   out[r,:] = x[r,:] * rsqrt(mean(x[r,:]^2) + eps) * w        (also per-head QK-norm:
//             rows = tokens*heads, ncols = head_dim)
//   SwiGlu    out = silu(gate) * up
//   RopeNeox  in-place NEOX rotary embedding of x[tokens, heads, head_dim] at int32 positions >= 0;
//             angles are exact to ~4e-7 rad at any position (64-bit fixed-point turns, see the shader)
//   QkNormRopeKv  the attention prologue in one dispatch: per-head RMSNorm of q and k, RoPE NEOX on
//             both, q out in f32, k and v into the paged KV pool in f16 (= RmsNorm → RopeNeox → KvWrite)
//   Argmax    out[r] = argmax of logits row r (uint32; ties → smallest index)
//   GetRows   out[t,:] = table[ids[t],:] for F32 and F16 tables (int32 ids)
// Contract: each op owns its pipeline; record() validates buffer sizes and records one dispatch into
// the stream (the caller adds barriers between dependent ops and submits). Errors name the op and
// the mismatching size.
#pragma once

#include <map>
#include <utility>

#include "kernels/kv_layout.h"
#include "kernels/quant/quant.h"
#include "kernels/vk/runtime.h"

namespace trove::ops {

class RmsNorm {
 public:
  static Result<RmsNorm> create(vk::Device& dev);
  Status record(vk::CommandStream& s, const vk::Buffer& x, const vk::Buffer& w, const vk::Buffer& out,
                uint32_t rows, uint32_t ncols, float eps) const;
 private:
  vk::Pipeline pipeline_;
};

class SwiGlu {
 public:
  static Result<SwiGlu> create(vk::Device& dev);
  Status record(vk::CommandStream& s, const vk::Buffer& gate, const vk::Buffer& up, const vk::Buffer& out,
                uint32_t n) const;
 private:
  vk::Pipeline pipeline_;
};

class RopeNeox {
 public:
  static Result<RopeNeox> create(vk::Device& dev);
  Status record(vk::CommandStream& s, const vk::Buffer& x, const vk::Buffer& positions, uint32_t tokens,
                uint32_t heads, uint32_t head_dim, float base) const;
 private:
  vk::Device* dev_ = nullptr;
  vk::Pipeline pipeline_;
  // Per (head_dim, base): each pair's frequency in turns per position as a 64-bit binary fraction,
  // computed once on the host in long double and uploaded.
  mutable std::map<std::pair<uint32_t, float>, vk::Buffer> turns_;
};

// q_raw f32 [tokens][n_heads][head_dim], k_raw and v_raw f32 [tokens][kv_heads][head_dim] (the QKV
// products), q_w / k_w f32 [head_dim], positions int32 [tokens], slots uint32 [tokens] (pool slot =
// block · block_tokens + offset), pool: one layer's blocks (kernels/kv_layout.h), q_out f32 like q_raw.
// head_dim even and <= 256.
class QkNormRopeKv {
 public:
  static Result<QkNormRopeKv> create(vk::Device& dev);
  struct Call {
    const vk::Buffer *q_raw, *k_raw, *v_raw, *q_w, *k_w, *positions, *slots, *pool, *q_out;
    uint32_t tokens = 0, n_heads = 0, pool_blocks = 0;
    kv::KvLayout layout{};
    float eps = 1e-6f, rope_base = 10000.0f;
  };
  Status record(vk::CommandStream& s, const Call& c) const;
 private:
  vk::Device* dev_ = nullptr;
  vk::Pipeline pipeline_;
  mutable std::map<std::pair<uint32_t, float>, vk::Buffer> turns_;  // as RopeNeox's
};

class Argmax {
 public:
  static Result<Argmax> create(vk::Device& dev);
  Status record(vk::CommandStream& s, const vk::Buffer& logits, const vk::Buffer& out, uint32_t rows,
                uint32_t ncols) const;
 private:
  vk::Pipeline pipeline_;
};

class GetRows {
 public:
  // type: F32, F16 (exact copies/conversions), BF16, Q8_0, Q4_K, Q5_K, Q6_K (dequantized in chunks of
  // 32 by the matmul's decoders, dequant_chunk.glsl); other types → Unsupported.
  static Result<GetRows> create(vk::Device& dev, quant::GgmlType type);
  Status record(vk::CommandStream& s, const vk::Buffer& table, const vk::Buffer& ids, const vk::Buffer& out,
                uint32_t nrows, uint32_t ncols, uint32_t ntokens) const;
 private:
  vk::Pipeline pipeline_;
  quant::GgmlType type_{};
};

// f16-output variants for prefill (the large-batch matmuls read f16 activations as they are; see
// kernels/ops/matmul.h). Same math in f32, rounded to f16 on the store; `out` holds rows·ncols (n)
// halves. ncols (n) must be even. Added by the prefill GEMM work as separate classes.
class RmsNormF16 {
 public:
  static Result<RmsNormF16> create(vk::Device& dev);
  Status record(vk::CommandStream& s, const vk::Buffer& x, const vk::Buffer& w, const vk::Buffer& out,
                uint32_t rows, uint32_t ncols, float eps) const;
 private:
  vk::Pipeline pipeline_;
};

// A weight matrix (rows of `cols` values in a GGUF format: F32, F16, BF16, Q8_0, Q4_K, Q5_K, Q6_K) to
// f16 rows, out[r · cols + c], for the prefill GEMMs (TROVE_PREFILL_WEIGHTS=f16: the matrix units then
// read plain f16 weights instead of decoding K-quants per element). The values are the matmul
// decoders' f32 ones (dequant_chunk.glsl) rounded to f16; cols a multiple of 32 and of the type's block.
class DequantF16 {
 public:
  static Result<DequantF16> create(vk::Device& dev);
  Status record(vk::CommandStream& s, quant::GgmlType type, vk::BufferRange w, uint32_t rows, uint32_t cols,
                vk::BufferRange out) const;

 private:
  vk::Pipeline pipeline_;
};

class SwiGluF16 {
 public:
  static Result<SwiGluF16> create(vk::Device& dev);
  Status record(vk::CommandStream& s, const vk::Buffer& gate, const vk::Buffer& up, const vk::Buffer& out,
                uint32_t n) const;
 private:
  vk::Pipeline pipeline_;
};

}  // namespace trove::ops
