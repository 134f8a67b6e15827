// kernels/ops/matvec.h — bandwidth-bound weight × activation products for decode: batches of 1..8
// columns, every weight read once per call, with the fusions a decode layer needs.
//
//   y_m[b][r]  =  (W_m · x̂_b)[r]                 kStore, for each of 1..3 matrices W_m sharing x
//   y_m[b][r] +=  (W_m · x̂_b)[r]                 kAdd (residual add in place)
//   y_0[b][r]  =  silu(W_0 · x̂_b)[r] · (W_1 · x̂_b)[r]   kSwiGlu (W_0 = gate, W_1 = up)
//   x̂_b = x_b · rsqrt(mean(x_b²) + eps) · norm_w    with the RMSNorm prologue (norm_w given),
//   x̂_b = x_b                                      without it.
//
// Contract:
//  - Layouts: W is a GGUF weight matrix (rows × cols, input dimension contiguous, row_bytes(type,
//    cols) bytes per row) of any kernels/quant type (F32 F16 BF16 Q8_0 Q4_K Q5_K Q6_K; the matrices
//    of one call may differ in type and row count); its range holds rows · row_bytes bytes rounded up
//    to a multiple of 4 (Q6_K and Q8_0 rows are read as aligned words). x is f32 [batch][cols],
//    norm_w f32 [cols], y f32 with y[b · y_stride + r] (y_stride 0 = rows; larger when the engine
//    splits a matrix into row ranges and each call writes its slice of the full-width output).
//  - record() validates the call and records ONE dispatch into the stream; the caller adds the
//    barriers between dependent dispatches and submits. Errors name the argument and what is wrong;
//    on error nothing is recorded.
//  - x must not overlap any output range: workgroups write y while others may still be reading x.
//    (kAdd's "in place" is y holding the residual, e.g. the residual stream; x is another buffer.)
//  - kSwiGlu takes exactly 2 matrices with equal rows; mats[1].y is not used (may be empty).
//  - Precision: f32 activations and accumulation throughout (no f16/q8 rounding of x); the result is
//    within 1e-5 of the output norm of the float64 reference (kernels/ref/matvec_ref.h). The q8 form
//    (batch-1 calls on GPUs with integer dot products by default, batches of 2..8 there in the q8p
//    form; TROVE_MATVEC=q8 for every batch, TROVE_MATVEC=f32 never; TROVE_MATVEC_BATCHED=f32|q8|q8p
//    sets the form of batch 2..8 calls alone)
//    rounds x̂ to int8 with a scale per 32 values (as llama.cpp's q8_1 activations on GPUs): within
//    1e-2 of the output norm. The q8 and q8p forms give a column the same numbers at every batch (to
//    ~3e-7: Σ x² summed in another order), so do not mix them with the f32 forms across batch sizes
//    where a batched step must equal one-token steps (greedy speculative verification).
//  - Thread-safety: record() may be called from several threads. Pipelines are created on first use
//    (under a mutex) and live as long as the op: one per batch size, SwiGLU or not, tile size, set of
//    weight types and matrix count of the calls seen (a decode layer needs about five).
//
// Design (docs/kernels.md, "Decode matvec"): a row group of 32 lanes owns 2 rows (SwiGLU: 1 gate + 1
// up row); lanes walk the rows in 16- or 8-byte parts with the super-block scales decoded once per
// part; each workgroup stages x·norm_w and the sums of each 8 values in shared memory (once, then
// walks several row blocks, when batch · cols fits; else tile by tile for one block) and reduces the
// rows with subgroupAdd then shared memory (the "staged" form). GPUs with 32-lane subgroups use the
// "direct" form instead (matvec_direct.comp): one subgroup per row group reading x through the caches,
// subgroupAdd only, no shared memory or barriers, one row block per workgroup. On CPU devices a row group is
// one invocation (it walks every part of its rows; nothing to reduce across lanes), one row block per
// workgroup. Shaders: kernels/shaders/matvec.comp and matvec_nosg.comp (no subgroup operations: devices
// without them, lavapipe) around matvec_body.glsl; the per-type code, shared with other matvec-shaped
// kernels, is matvec_core.glsl. Weights are read as stored in the GGUF (no repacking at load).
//
// q8 form (matvec_q8.comp, TROVE_MATVEC=q8 on devices with integer dot products and subgroup
// arithmetic): each workgroup quantizes x̂ once into shared memory (int8, a scale per 32 values, d·Σq
// per 16 for the K-quant min term), then walks row blocks (a few workgroups per SM); a row group is
// one subgroup; weight codes meet the int8 activations in dotPacked4x8EXT (4 MACs per instruction,
// a quarter of the f32 form's activation bytes per row and batch column). Q4_K, Q5_K, Q6_K, Q8_0.
// q8p form (matvec_q8p.comp, TROVE_MATVEC=q8p): the same kernel without the staging — record()
// records TWO dispatches with a barrier between: matvec_q8_quant.comp (one workgroup per batch column)
// quantizes x̂ into a scratch slot the op owns, then one row block per workgroup reads it through the
// caches (any cols). Scratch: a ring of 64 slots per slot size, taken in turn by the calls, so a call's
// slot is reused by the 64th later q8p call of the same size, which must be ordered after it (a barrier
// or a wait between them: a decode step has several per layer). The GPUs' default for batches of 2..8.
//
// q8 coopmat form (matvec_q8_coopmat.comp; TROVE_MATVEC_BATCHED=q8coopmat or Form::kQ8Coopmat, an A/B
// form, not a default): the q8p form's activation pass (its slot laid out for 8 columns), then the int8
// matrix units (VK_KHR_cooperative_matrix, a 16 × 8 × 32 int8 → int32 subgroup shape, 32-lane subgroups)
// take 16 rows × 32 values × all 8 columns in one MMA, the lanes unpacking each weight code once instead
// of combining it with every column (matvec_q8_coopmat.comp: the int8 tiles through shared memory; with
// TROVE_MATVEC_Q8CM_REGS=1, matvec_q8_coopmat_regs.comp: each lane builds its elements of A from its own
// code loads and scales its elements of the products, no shared memory in the K loop — the element
// layout, the implementation's, probed once by matvec_q8_coopmat_probe.comp; a layout it cannot use makes
// such calls fail with the reason). Q4_K only: a call with another type runs the q8p form. A column's
// numbers are the same at every batch, but not the q8 forms' bits (another order of sums): not for
// speculative verification, whose batches must equal one-token steps. The register kernel is the GPUs'
// default for calls of kStreamsCoopmatBatch columns that do not ask for batch-1 bits
// (MatvecCall::batch1_bits false: several streams' one-token steps), one tile of 16 rows a workgroup.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "kernels/quant/quant.h"
#include "kernels/vk/runtime.h"

namespace trove::ops {

struct MatvecMatrix {           // one weight matrix W [rows][cols] in GGUF row layout
  quant::GgmlType type = quant::GgmlType::F32;
  uint32_t rows = 0;
  vk::BufferRange w;            // its bytes (row_bytes(type, cols) per row)
  vk::BufferRange y;            // output rows: y[b * y_stride + r]
  uint32_t y_stride = 0;        // 0 = rows
};

enum class MatvecEpilogue {
  kStore,    // y = W·x̂
  kAdd,      // y += W·x̂  (residual add in place: y may be the same buffer as the residual stream)
  kSwiGlu,   // mats[0] = gate, mats[1] = up (same rows, same type not required):
             //   mats[0].y = silu(gate·x̂) * (up·x̂); mats[1].y unused
};

struct MatvecCall {
  uint32_t cols = 0, batch = 1;            // batch 1..8 (columns of x)
  vk::BufferRange x;                        // f32 [batch][cols]
  // Optional RMSNorm prologue: x̂ = x * rsqrt(mean(x^2) + eps) * norm_w (per batch column), computed
  // inside the matvec so no separate norm dispatch runs. Empty range = x̂ = x.
  vk::BufferRange norm_w{}; float eps = 1e-6f;
  MatvecMatrix mats[3]; uint32_t n_mats = 1; // 1..3 matrices sharing x (Q, K, V in one dispatch)
  MatvecEpilogue epilogue = MatvecEpilogue::kStore;
  // Each column's numbers are a batch-1 call's bit for bit (speculative verification needs it; the
  // default). false — the columns are one token of each of several sequences — lets a call of
  // kStreamsCoopmatBatch Q4_K columns take the q8 coopmat register kernel where the device runs it and
  // TROVE_MATVEC_BATCHED is unset (another order of sums: the streams' tokens then depend on how many
  // ran together).
  bool batch1_bits = true;
};

// Extension (not needed by callers): the kernel's work split, for the benchmark's sweeps and the
// tests. Zero fields keep the op's choice.
struct MatvecTuning {
  uint32_t rows_per_group = 0;   // rows per 32-lane row group and matrix: 1, 2 or 4 (default 2; SwiGLU 1)
  uint32_t workgroup_size = 0;   // invocations per workgroup: a power of two, 32..1024 (default 256; q8
                                 // forms on GPUs 512)
  uint32_t tile_values = 0;      // at most this many staged values per batch column and tile (rounded
                                 // down to a multiple of 256; default: what shared memory holds)
  uint32_t workgroups = 0;       // when x fits one tile: at most this many workgroups walk the row
                                 // blocks (default: 8 per SM of 512 invocations, TROVE_MATVEC_WAVES; CPU: one per block)
  enum class Q6Parts { kDefault, kNarrow, kWide };
  Q6Parts q6_parts = Q6Parts::kDefault;  // q8 forms: Q6_K rows in 16-value parts (narrow) or 32-value ones
                                 // (wide: 16-byte code runs, half the parts); default: wide unless TROVE_MATVEC_Q6_WIDE=0
  uint32_t split = 0;            // q8 forms: subgroups sharing one row group's rows, 1, 2, 4 or 8 (0:
                                 // TROVE_MATVEC_Q8_SPLIT, else automatic: enough row blocks for the grid)
  uint32_t q8cm_kernel = 0;      // the q8 coopmat form's kernel: 1 shared memory, 2 registers (0:
                                 // TROVE_MATVEC_Q8CM_REGS, else shared memory)
  bool gpu_form = false;         // on a CPU device, compile the GPUs' form: unrolled loops over batch
                                 // columns and subgroupAdd (lavapipe spends seconds per pipeline on it)
  // kF32: kAuto without q8 (TROVE_MATVEC=f32); kQ8Coopmat: the q8 coopmat form (below), any batch
  enum class Form { kAuto, kF32, kStaged, kDirect, kQ8, kQ8P, kQ8Coopmat };
  Form form = Form::kAuto;       // kDirect needs 32-lane subgroups (refused otherwise); kAuto: direct
                                 // where the device has them (not on CPUs), q8 for batch-1 calls on GPUs
                                 // with integer dot products and q8p for their batches of 2..8,
                                 // TROVE_MATVEC=f32|staged|direct|q8|q8p, TROVE_MATVEC_BATCHED.
                                 // kQ8/kQ8P need subgroup arithmetic and shuffles and integer dot products (refused
                                 // otherwise); calls with a matrix not Q4_K/Q5_K/Q6_K/Q8_0 run the direct
                                 // form; kQ8 calls whose batch · cols int8 do not fit shared memory run kQ8P
                                 // (the same numbers)
};

class Matvec {
 public:
  static Result<Matvec> create(vk::Device& dev);
  Status record(vk::CommandStream& s, const MatvecCall& call) const;  // ONE dispatch
  static constexpr uint32_t kMaxBatch = 8;
  // Columns from which calls without batch1_bits take the q8 coopmat register kernel (H100, 2026-12-07,
  // the 8B's decode: 8 streams 1009-1016 tok/s against 934-938 on q8p; 6 streams 796-806 against 861).
  static constexpr uint32_t kStreamsCoopmatBatch = 8;
  // The device can run the q8 forms (integer dot products, subgroup arithmetic and shuffles).
  bool q8_supported() const;
  // The device can run the q8 coopmat form; if not, *why says what it lacks.
  bool q8_coopmat_supported(std::string* why = nullptr) const;
  // ... and its register kernel (probes the device's element layout on first use).
  bool q8_coopmat_regs_supported(std::string* why = nullptr) const;
  // The register kernel's element table (matvec_q8_coopmat_regs.comp's lt) from what
  // matvec_q8_coopmat_probe.comp wrote (642 words: each lane's 16 A elements as row | value << 8, its 4
  // product elements as 8 · row + column, then the counts 16 and 4), or Unsupported saying which property
  // of the layout the kernel needs is missing.
  static Result<std::vector<uint32_t>> q8_coopmat_layout_table(const std::vector<uint32_t>& probe);

  // Overrides the work split for later record() calls (bench, tests). Not thread-safe against
  // concurrent record().
  void set_tuning(const MatvecTuning& t);

  Matvec(Matvec&&) noexcept;
  Matvec& operator=(Matvec&&) noexcept;
  ~Matvec();

 private:
  struct State;
  Matvec() = default;
  std::unique_ptr<State> st_;
};

}  // namespace trove::ops
