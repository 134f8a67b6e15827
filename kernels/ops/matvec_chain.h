// kernels/ops/matvec_chain.h — up to four decode matvecs (1..8 columns), each reading what the ones before
// wrote, in ONE dispatch: its workgroups (one per SM on a GPU, all resident at once) meet at a grid
// barrier between steps instead of the GPU draining between dispatches (kernels/shaders/
// matvec_chain.glsl). The engine's use (TROVE_DECODE_CHAIN=1, off by default until measured): a dense
// layer's attention output (+ residual), FFN gate/up (RMSNorm prologue, SwiGLU), FFN down (+ residual)
// and the next layer's fused QKV (RMSNorm prologue) — three dependent dispatch boundaries fewer a layer.
//
// Contract:
//  - Vectors 0..7 and weights 0..7 are buffer ranges the steps refer to by index. A vector is f32,
//    16-byte aligned, at least the values a step reads or writes; a weight is a GGUF matrix of Q4_K,
//    Q5_K, Q6_K or Q8_0 rows (row_bytes(type, cols) each). A step's input and norm vectors must not be
//    its outputs, nor its outputs one another.
//  - Step k computes what ops::Matvec computes for the same call in the q8 form (batches of 2..8: the
//    q8p form, which gives a column the same numbers) with split 1 and Matvec::q8_config()'s workgroup
//    size, bit for bit (the same shader functions on the same lanes; tests MatvecChainTest.*). Batch 1
//    stages x̂ in shared memory per step; batches quantize each step's input into the op's scratch
//    first (workgroup b % grid does column b), a grid barrier, then every workgroup reads it. Rows per
//    row group: q8_config()'s (1 or 2 only), or 1 where 2 would leave the last round of row blocks
//    mostly idle (a row's bits do not depend on it).
//  - record() records one dispatch (the caller puts barriers before and after it). The first record()
//    of a plan (the steps' shapes, types and indices) uploads it (a blocking copy, outside the stream).
//    The grid barrier needs every workgroup resident at once: the op launches Matvec::q8_config().sms
//    workgroups on a GPU (TROVE_MATVEC_CHAIN_GRID overrides), 1 on a CPU device. A wait that gives up
//    (workgroups not resident together) is counted: timeouts() after the submission says the results
//    are wrong. TROVE_MATVEC_CHAIN_PREFETCH=1 (a measurement, off by default): between steps, a
//    workgroup that has arrived at the barrier reads its first row block of the next step into L2
//    while it waits (no result changes).
//  - Devices without the q8 form (integer dot products, subgroup arithmetic and shuffles): create()
//    fails with kUnsupported.
#pragma once

#include <cstdint>
#include <memory>

#include "kernels/ops/matvec.h"

namespace trove::ops {

struct MatvecChainMatrix {
  uint32_t weight = 0, output = 0;  // weight and output vector indices
  uint32_t rows = 0;
  quant::GgmlType type = quant::GgmlType::Q4_K;
};

struct MatvecChainStep {
  uint32_t cols = 0;
  uint32_t input = 0;   // vector index
  int32_t norm = -1;    // vector index of the RMSNorm weights (-1: no prologue)
  MatvecEpilogue epilogue = MatvecEpilogue::kStore;
  MatvecChainMatrix mats[3];  // kSwiGlu: gate, up (same rows; the output is the gate's)
  uint32_t n_mats = 1;
};

struct MatvecChainCall {
  static constexpr uint32_t kMaxSteps = 4, kVectors = 8, kWeights = 8;
  vk::BufferRange vectors[kVectors];
  vk::BufferRange weights[kWeights];
  MatvecChainStep steps[kMaxSteps];
  uint32_t n_steps = 0;
  uint32_t batch = 1;  // columns 1..8: vectors hold column b at b·cols (inputs) and b·rows (outputs)
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
