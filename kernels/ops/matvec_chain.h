// kernels/ops/matvec_chain.h — up to three batch-1 decode matvecs, each reading what the one before
// wrote, in ONE dispatch: its workgroups (one per SM on a GPU, all resident at once) meet at a grid
// barrier between steps instead of the GPU draining between dispatches (kernels/shaders/
// matvec_chain.comp). The engine's use (TROVE_DECODE_CHAIN=1, off by default until measured): a dense
// layer's attention output (+ residual), FFN gate/up (RMSNorm prologue, SwiGLU) and FFN down (+
// residual) — two dependent dispatch boundaries fewer per layer.
//
// Contract:
//  - Vectors 0..3 and weights 0..3 are buffer ranges the steps refer to by index. A vector is f32,
//    16-byte aligned, at least the values a step reads or writes; a weight is a GGUF matrix of Q4_K,
//    Q5_K, Q6_K or Q8_0 rows (row_bytes(type, cols) each). A step's input must not be its output.
//  - Step k computes what ops::Matvec computes for the same call at batch 1 in the q8 form with split
//    1 and Matvec::q8_config()'s rows per row group and workgroup size, bit for bit (the same shader
//    functions on the same lanes; test MatvecChain.*): with rows per row group 1 or 2 only.
//  - record() records one dispatch (the caller puts barriers before and after it). The grid barrier
//    needs every workgroup resident at once: the op launches Matvec::q8_config().sms workgroups on a
//    GPU (TROVE_MATVEC_CHAIN_GRID overrides), 1 on a CPU device. A wait that gives up (workgroups not
//    resident together) is counted: timeouts() after the submission says the results are wrong.
//  - Devices without the q8 form (integer dot products, subgroup arithmetic and shuffles): create()
//    fails with kUnsupported.
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <mutex>

#include "kernels/ops/matvec.h"

namespace trove::ops {

struct MatvecChainStep {
  uint32_t cols = 0, rows = 0;
  uint32_t input = 0, output = 0;  // vector indices 0..3
  int32_t norm = -1;               // vector index of the RMSNorm weights (-1: no prologue)
  MatvecEpilogue epilogue = MatvecEpilogue::kStore;
  uint32_t weight0 = 0, weight1 = 0;  // weight indices (weight1: the up rows of kSwiGlu)
  quant::GgmlType type0 = quant::GgmlType::Q4_K, type1 = quant::GgmlType::Q4_K;
};

struct MatvecChainCall {
  static constexpr uint32_t kMaxSteps = 3, kVectors = 4, kWeights = 4;
  vk::BufferRange vectors[kVectors];
  vk::BufferRange weights[kWeights];
  MatvecChainStep steps[kMaxSteps];
  uint32_t n_steps = 0;
  float eps = 1e-6f;
};

class MatvecChain {
 public:
  // `mv` gives the settings (Matvec::q8_config(), read at each record()) and must outlive the op.
  static Result<MatvecChain> create(vk::Device& dev, const Matvec& mv);
  Status record(vk::CommandStream& s, const MatvecChainCall& call) const;
  // Grid-barrier waits that gave up since the op was created (reads a host-visible word: call it
  // after the submission's wait).
  uint32_t timeouts() const;
  uint32_t grid() const;

  MatvecChain(MatvecChain&&) noexcept;
  MatvecChain& operator=(MatvecChain&&) noexcept;
  ~MatvecChain();

 private:
  struct State;
  MatvecChain() = default;
  std::unique_ptr<State> st_;
};

}  // namespace trove::ops
