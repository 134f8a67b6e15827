// kernels/ops/matmul.h — weight × activation products on the GPU: y[b][r] = sum_c W[r][c] * x[b][c],
// and the grouped form over MoE experts.
//
// Contract (Matmul): W is a GGUF weight matrix (rows × cols, input dim contiguous, row_bytes(type,
// cols) bytes per row) in a device buffer padded to a multiple of 4 bytes (the shaders read whole
// words); x is f32 [batch][cols] (f16 with x_f16); y is f32 [batch][y_stride] (y_stride 0 = rows;
// larger when a big matrix is computed in row ranges). record() only records into the stream (one
// dispatch; a split call two and a barrier, below); the caller submits. Every kernels/quant type (F32
// F16 BF16 Q8_0 Q4_K Q5_K Q6_K); other type ids are a named Unsupported error. Checked against
// kernels/ref/matmul_ref.h.
//
// Paths (docs/kernels.md): batches below matrix_min_batch() (kCoopmatMinBatch, TROVE_MATRIX_MIN_BATCH)
// always take matmul_tiled.comp (f32 math). Larger ones take the path chosen at create(): KHR cooperative
// matrix (matmul_coopmat.comp, any GPU with a 16×16×16 f16 shape and 32-wide subgroups), else tiled.
// NV cooperative matrix 2 (matmul_cm2.comp, NVIDIA), where the device has it, takes the automatic path's
// large dense calls (auto_cm2_tile below) and its grouped calls; TROVE_MATMUL=cm2 forces it for every
// call (docs/performance.md has the measurements). The matrix paths round activations and dequantized
// weights to f16 and accumulate in f32 (bound: 2e-3 of the output norm). On a CPU device (lavapipe,
// features().is_cpu) the automatic path is kCpu: matmul_cpu.comp for every batch, f32 math like the tiled
// kernel but one invocation per (rows, batch columns) tile walking K alone — no shared memory, no barriers,
// activation loads uniform across the SIMD lanes (docs/kernels.md; any device can run it, only CPU
// devices are fast on it). TROVE_MATMUL=cm2|khr|tiled|cpu forces a path (for tests and benchmarks;
// tiled keeps CI testing matmul_tiled.comp on lavapipe); a forced path the device lacks makes
// create() fail with the reason.
// Matrix-unit pipelines are built on first use (one per weight type, activation type and tile), so
// record() may create a pipeline; a Matmul is used from one thread at a time.
//
// Split K (split_k): a dense call on the KHR kernel with few tiles — 9 to a few hundred columns: a
// follow-up's tokens, several streams — has too few workgroups to keep loads in flight on every SM (the 8B's
// 32-token step read its f16 rows at ~0.5 TB/s on the H100). A call of fewer than N tiles (N =
// kSplitTargetWorkgroups = 512, TROVE_MATMUL_SPLIT_WGS sets another) has its K cut into S ranges of 512+
// values (S up to kMaxSplits, so that S times the tiles reach N). On by default since 2026-12-07: on the H100
// it took the 8B's steps of 25-64 tokens after 4096 from 27.0-28.5 to 20.7-22.2 ms. Its results are the
// unsplit call's to f32 rounding (1e-6 relative on the H100: Matmul.SplitKEqualsTheUnsplitSumsToF32Rounding);
// in the engine, whose activations are f16 on the matrix units, such a change flips some operands' f16
// rounding and so moves the logits by as much as another path would
// (Engine.SplitKPrefillGivesTheUnsplitLogits: 1.3e-3 against 3.8e-3 between the KHR kernel and the CPU
// form). Workgroup z of the grid sums range z into a scratch buffer the Matmul owns, then — after a barrier
// record() records — matmul_split_sum.comp adds the S partials in order into y (two dispatches,
// deterministic sums). The scratch has two halves taken in turn, so a call's sum runs beside the next
// call's products; streams that run at the same time must not share a Matmul (or its copies).
// TROVE_MATMUL_SPLIT_K=N forces N ranges (at most cols/256) on every dense KHR or CPU call of 256+ columns
// (1: never split); the CPU form splits only when forced (CI's test of it).
//
// Contract (grouped, record_grouped): MoE prefill in one dispatch over all experts of a layer.
//  - w: the stacked expert matrices [n_expert][rows][cols], expert e at byte e·expert_bytes
//    (expert_bytes a multiple of 16; for a GGUF *_exps tensor, rows·row_bytes).
//  - x: f16 (x_f16, the default) or f32 activation rows [x_rows][cols].
//  - expert_offsets: uint32 [n_expert + 1], non-decreasing, expert_offsets[0] = 0; slots
//    expert_offsets[e] .. expert_offsets[e+1] belong to expert e (slots sorted by expert).
//    expert_offsets[n_expert] must equal `slots`.
//  - row_ids: uint32 [slots]; slot s multiplies x row row_ids[s] (< x_rows).
//  - y: f32 [slots][y_stride]: row s = W[e] · x[row_ids[s]].
// Both lists live on the GPU (written by the routing pass); the host passes only `slots`, which it
// knows without reading anything back (tokens × experts per token). Experts with no slots cost
// (almost) nothing: their workgroups return at once.
// On the KHR path a grouped call runs the cm2 grouped kernel where the device has NV cooperative
// matrix 2 (it passed the grouped reference test on the H200), else the tiled grouped kernel: the KHR
// grouped kernel (matmul_coopmat_grouped.comp) failed GroupedMatmul.MatchesReferenceForAdversarialRoutings
// on the H200 (2026-12-02: relative error 0.34-0.39 on every type; the dense KHR kernel passed) and
// stays off until that is found. TROVE_GROUPED_KHR=1 runs it anyway (to debug it on a GPU); =2 runs
// it with no early return for the surplus workgroups (they stay through the barriers, doing nothing):
// if 2 passes where 1 fails, the fault is the return before the barriers, not the data path; =3 finds
// each workgroup's (expert, tile) by a serial walk in one invocation (no subgroup operations).
//
// cm2 variants (for A/B on the GPU; defaults are the measured ones):
//  - TROVE_CM2_VARIANT=0|1|2 (force_cm2_variant): 0 = K-quant scales fetched into shared memory at each
//    256-value block; 1 = Q4_K/Q5_K scales prefetched a block ahead, Q6_K scales read in the decode
//    function and its quants as 16-bit words, K steps unrolled per 256-value block, activation rows
//    (and plain weights' rows) declared 16-byte aligned; grouped: slot tiles with at most BN/2 slots on
//    a BN/2-wide accumulator; 2 = 1 plus, for dense calls, interior tiles told apart once per workgroup
//    (two branch-free K loops instead of a clamp test per K step) and plain / Q8_0 weights 8 K steps an
//    outer step, and for all calls Q4_K quants read as 16-bit words and the shared scales at a row
//    stride of BM + 2 — the differences from llama.cpp's cm2 kernel read in its source (2026-12-05),
//    measured on the H100 2026-12-05: the 8B's pp4096 8886 -> 9965 tok/s, and with f16 weights 9631 ->
//    13019 (matmul_cm2_tile.glsl). Unset, the automatic path's dense cm2 calls take 2
//    (kCm2AutoVariant) and grouped calls 0 — 1 for plain (F16, BF16, F32) experts, 4x faster there
//    (H100 2026-12-05); set, every cm2 call takes it.
//  - TROVE_MATMUL_ACC=f16|f32 (force_acc_f16): the accumulators of the cm2 kernels (dense and grouped)
//    and of the dense KHR kernel (default f32). f16 halves their registers (a 128×256 f32 cm2 tile is
//    128 registers a lane over 256 lanes), as llama.cpp's matrix-unit kernels do by default, at f16
//    precision of the sums (clamped to ±65504 before the f32 store). On the KHR path it needs a
//    16×16×16 f16 × f16 → f16 subgroup shape (create() refuses it otherwise). Off by default: on the
//    H100 (2026-12-05) the 8B's greedy output after a 4096-token prompt left f32's after 7 tokens.
//  - TROVE_GROUPED_TILE=BMxBN[xBK] (force_grouped_tile): the cm2 grouped tile, BM 64 or 128 weight
//    rows × BN 32, 64 or 128 slots, K step BK 32 or 64 (default 64 where cols allows); a tile the
//    device's granularity refuses is an error. Unset: 64x64, and 128x128 for slot-ordered calls of at
//    least kGroupedLargeSlotsPerExpert slots an expert (grouped_tile).
//  - TROVE_CM2_MIN_BATCH=N (force_cm2_min_batch): dense calls of N+ columns (default 512,
//    kCm2AutoMinBatch; 2048 before 2026-12-05) on the automatic path of a device with both kinds go to
//    cm2: the large tile where TROVE_CM2_MIN_TILES of it fill the SMs, and below 2048 columns also the
//    medium tile where TROVE_CM2_MIN_MEDIUM_TILES of it (default 64) fill them (auto_cm2_tile), as
//    llama.cpp's cm2 path does at 512 tokens; calls of at most TROVE_CM2_SMALL_MAX_ROWS rows (default
//    128: the MoE router) and below 1024 columns take the small tile.
//  - TROVE_CM2_LARGE=BMxBN (force_cm2_large): the cm2 large tile (default 128x256), for A/B.
//  - TROVE_KHR_LARGE=WGxSGM: the KHR dense kernel's 128×128 tile over WG invocations (128 or 256) with
//    SGM subgroups along the rows (default 256x2: 8 subgroups of 64×32 each); e.g. 128x2 gives 4
//    subgroups of 64×64 (16 accumulators each: more products per shared-memory fragment load).
#pragma once

#include <memory>
#include <optional>
#include <string_view>
#include <utility>
#include <vector>

#include "kernels/quant/quant.h"
#include "kernels/vk/runtime.h"

namespace trove::ops {

enum class MatmulPath : uint8_t { kAuto, kTiled, kKhr, kCm2, kCpu };
std::string_view matmul_path_name(MatmulPath p);  // "auto" "tiled" "khr" "cm2" "cpu"

// Tile of the matrix-unit paths; kAuto picks per shape. KHR: small 64×64, large 128×128 (medium
// means large). cm2: small 64×64, medium 128×128, large 128×256. Forcible for benchmarks.
enum class MatmulTile : uint8_t { kAuto, kSmall, kMedium, kLarge };

struct GroupedMatmulCall {
  quant::GgmlType type;
  uint32_t rows = 0, cols = 0;     // of one expert matrix
  uint32_t n_expert = 0;
  uint64_t expert_bytes = 0;       // bytes between consecutive experts in w
  uint32_t slots = 0;              // = expert_offsets[n_expert]
  uint32_t x_rows = 0;             // rows of x (row_ids are below it)
  uint32_t y_stride = 0;           // 0 = rows
  bool x_f16 = true;
  // x is in slot order: row_ids[s] == s for every slot (the caller's row_ids must still say so; MoE
  // down reads the SwiGLU rows it wrote per slot). The cm2 kernel then loads x rows as they lie,
  // without the per-element gather (unless TROVE_GROUPED_BY_SLOT=0 or force_by_slot(false)); the other
  // kernels read row_ids as always. Needs x_rows >= slots.
  bool x_by_slot = false;
};

class Matmul {
 public:
  // path kAuto: TROVE_MATMUL if set (cm2, khr, tiled or cpu; TROVE_NO_COOPMAT=1 means tiled on a
  // GPU), else the best path the device has (kCpu on a CPU device). A path the device lacks is an Unsupported error naming what is missing.
  static Result<Matmul> create(vk::Device& dev, MatmulPath path = MatmulPath::kAuto);
  // Whether `path` can run on `dev`; when not, `why` says what is missing.
  static bool available(const vk::Device& dev, MatmulPath path, std::string* why = nullptr);

  Status record(vk::CommandStream& s, quant::GgmlType type, uint32_t rows, uint32_t cols, uint32_t batch,
                vk::BufferRange w, vk::BufferRange x, vk::BufferRange y, uint32_t y_stride = 0,
                bool x_f16 = false) const;
  Status record_grouped(vk::CommandStream& s, const GroupedMatmulCall& call, vk::BufferRange w, vk::BufferRange x,
                        vk::BufferRange expert_offsets, vk::BufferRange row_ids, vk::BufferRange y) const;

  // The path of batches >= matrix_min_batch() (and of every grouped call).
  MatmulPath path() const { return path_; }
  // The fewest columns a call needs to take the matrix path (kCoopmatMinBatch, or TROVE_MATRIX_MIN_BATCH
  // at create(): for A/B and as a way back). On the tiled and CPU paths every batch runs there anyway.
  uint32_t matrix_min_batch() const { return matrix_min_batch_; }
  bool uses_coopmat() const { return path_ == MatmulPath::kKhr || path_ == MatmulPath::kCm2; }
  // The tile record() would use for this shape on the matrix path (kAuto on the tiled path).
  MatmulTile tile_for(uint32_t rows, uint32_t batch, bool grouped = false) const;
  void force_tile(MatmulTile t) { forced_tile_ = t; }  // benchmarks
  // cm2 variant (0 or 1) and grouped tile (bm 64|128, bn 32|64|128); see the contract above. Set from
  // TROVE_CM2_VARIANT / TROVE_GROUPED_TILE at create(); for benchmarks and tests.
  void force_cm2_variant(uint32_t v) { forced_cm2_variant_ = v; }
  // f16 accumulators in the matrix-unit kernels (TROVE_MATMUL_ACC=f16; see the contract above).
  void force_acc_f16(bool on) { acc_f16_ = on; }
  // The dense KHR kernel's prefetch distance (1 or 2 steps; matmul_coopmat_tile.glsl kPrefetch). For
  // benchmarks and tests; anything else makes record() fail.
  void force_khr_prefetch(uint32_t steps) { khr_prefetch_ = steps; }
  void force_grouped_tile(uint32_t bm, uint32_t bn, uint32_t bk = 0) {
    grouped_bm_ = bm, grouped_bn_ = bn, grouped_bk_ = bk, grouped_tile_forced_ = true;
  }
  // Unforced, slot-ordered grouped calls (x_by_slot with force_by_slot on) of at least this many slots
  // an expert on average take 128 × 128 cm2 tiles, the others 64 × 64: H100, 2026-12-06, 30B-A3B in
  // 2048-token steps (128 slots an expert), pp4096 10705–10733 -> 11126–11148 tok/s; at 512 tokens (32
  // an expert) the large tile lost 10% (7447–7535 -> 6739–6750). 64 to 127 an expert: not measured.
  static constexpr uint32_t kGroupedLargeSlotsPerExpert = 128;
  // The cm2 grouped tile (BM, BN) of a call: the forced one (TROVE_GROUPED_TILE, force_grouped_tile), else
  // by the rule above.
  std::pair<uint32_t, uint32_t> grouped_tile(const GroupedMatmulCall& c) const;
  // Whether the cm2 grouped kernel loads slot-ordered x as it lies (GroupedMatmulCall::x_by_slot).
  void force_by_slot(bool on) { by_slot_ = on; }
  // Whether grouped calls of slot-ordered x run as plain loads here (the cm2 grouped kernel with
  // by_slot): then putting x in slot order first pays (MoeFfn's gather of the gate/up rows).
  bool grouped_loads_slot_order() const;
  // Whether grouped calls run the cm2 grouped kernel on this path and device (their type and expert
  // stride permitting).
  bool grouped_on_cm2() const;
  // The variant of grouped cm2 calls (TROVE_GROUPED_VARIANT; unset: TROVE_CM2_VARIANT, else by the call).
  void force_grouped_variant(uint32_t v) { forced_grouped_variant_ = v; }
  // The CPU form's tile: rows per invocation (1..8) and batch columns per workgroup (1..16); 0 =
  // automatic. For benchmarks; an invalid tile makes record() fail.
  void force_cpu_tile(uint32_t rows, uint32_t cols) { cpu_rows_ = rows, cpu_cols_ = cols; }
  // The first batch past the engine's matvecs (ops::Matvec::kMaxBatch = 8). Up to 2026-12-06 it was 32,
  // and steps of 9-31 tokens (a short follow-up message, a prompt's last piece) ran the tiled kernel's f32
  // math: 75 ms of GPU for the 8B's 16-token step on the H100 (docs/performance.md, 2026-12-06 04:45),
  // where a KHR tile of 64 columns mostly reads each weight once.
  static constexpr uint32_t kCoopmatMinBatch = 9;
  // The automatic path on a device with KHR and NV cm2 cooperative matrices runs dense calls of
  // kCm2AutoMinBatch columns or more (TROVE_CM2_MIN_BATCH) on cm2, variant kCm2AutoVariant
  // (TROVE_CM2_VARIANT), where its tiles cover the SMs: from kCm2LargeBatch columns the large tile
  // only, below it also the medium one (auto_cm2_tile). H100, 2026-12-05 (docs/performance.md): the
  // 8B's pp512 7664 -> 9486 tok/s with cm2 from 512 columns and variant 2, 11042 with f16 weights too.
  static constexpr uint32_t kCm2LargeBatch = 2048;
  static constexpr uint32_t kCm2AutoMinBatch = 512;
  static constexpr uint32_t kCm2AutoVariant = 2;
  // Dense calls of kCm2AutoMinBatch to 2·kCm2AutoMinBatch − 1 columns and at most this many rows (the MoE
  // router's 128) take the small cm2 tile on the automatic path (TROVE_CM2_SMALL_MAX_ROWS; 0: none).
  static constexpr uint32_t kCm2SmallMaxRows = 128;
  // Whether a dense call of `rows` × `batch` runs there (never with a forced tile or path), and on
  // which cm2 tile (kLarge, kMedium or kSmall; kAuto: not on cm2). From kCm2LargeBatch columns the
  // large tile where at least TROVE_CM2_MIN_TILES of it fill the SMs (measured); below kCm2LargeBatch,
  // down to TROVE_CM2_MIN_BATCH (force_cm2_min_batch, default kCm2AutoMinBatch), also the medium tile
  // where the large one does not fill and TROVE_CM2_MIN_MEDIUM_TILES of the medium one do — llama.cpp's
  // cm2 choice at 512 tokens; and below 2·kCm2AutoMinBatch columns calls of at most
  // TROVE_CM2_SMALL_MAX_ROWS rows on the small tile (first).
  bool takes_cm2(uint32_t rows, uint32_t batch) const { return auto_cm2_tile(rows, batch) != MatmulTile::kAuto; }
  // K ranges a dense call of this shape is summed in (1: not split; the contract's "Split K").
  uint32_t split_k(uint32_t rows, uint32_t cols, uint32_t batch) const;
  void force_split_k(uint32_t n) { split_forced_ = n; }  // 0: the automatic rule
  void force_split_target(uint32_t workgroups) { split_target_wgs_ = workgroups; }  // 0: no automatic split
  static constexpr uint32_t kMaxSplits = 8;
  static constexpr uint32_t kSplitTargetWorkgroups = 512;  // the default target (TROVE_MATMUL_SPLIT_WGS)
  // Bytes of each scratch half: a call splits only as far as S · batch · rows · 4 bytes fit.
  static constexpr uint64_t kSplitScratchHalf = 16ull << 20;
  MatmulTile auto_cm2_tile(uint32_t rows, uint32_t batch) const;
  // The fewest columns of a dense call the automatic path hands to cm2 (TROVE_CM2_MIN_BATCH, default
  // kCm2AutoMinBatch; at least kCoopmatMinBatch). For benchmarks and tests.
  void force_cm2_min_batch(uint32_t n) { cm2_min_batch_ = n; }
  // The cm2 large tile (TROVE_CM2_LARGE=BMxBN, default 128 × 256; BM and BN 64, 128 or 256): what
  // the automatic path's large calls and a forced large tile take. For A/B: with f16 accumulators a
  // 256 × 256 tile holds as many accumulator registers as the default in f32.
  void force_cm2_large(uint32_t bm, uint32_t bn) { cm2_large_bm_ = bm, cm2_large_bn_ = bn; }

 private:
  struct Cache;  // lazily built matrix-unit pipelines
  vk::Device* dev_ = nullptr;
  MatmulPath path_ = MatmulPath::kTiled;
  MatmulTile forced_tile_ = MatmulTile::kAuto;
  uint32_t cpu_rows_ = 0, cpu_cols_ = 0;
  // The cm2 variant every cm2 call takes when forced; unset, the automatic path's large dense calls
  // take 1, the forced cm2 path and grouped calls 0.
  std::optional<uint32_t> forced_cm2_variant_;
  uint32_t grouped_bm_ = 64, grouped_bn_ = 64, grouped_bk_ = 0;  // bk 0: automatic
  bool grouped_tile_forced_ = false;  // TROVE_GROUPED_TILE / force_grouped_tile: no rule by slots
  bool acc_f16_ = false;           // TROVE_MATMUL_ACC=f16 / force_acc_f16
  uint32_t khr_large_wg_ = 256, khr_large_sgm_ = 2;  // TROVE_KHR_LARGE
  // TROVE_KHR_PREFETCH: steps between a piece's load and its store (dense KHR). 2 since 2026-12-03: on the
  // H200 the 8B's prefill went 6528 → 7455 tok/s (pp512), 6280 → 7085 (pp4096), 5443 → 6053 (to 16384).
  uint32_t khr_prefetch_ = 2;
  bool cm2_grouped_ = false;  // KHR path on a cm2 device: grouped calls take the cm2 grouped kernel
  // takes_cm2(): large cm2 tiles a call needs (TROVE_CM2_MIN_TILES). 128 since 2026-12-05 (132, one per SM,
  // before): the 30B-A3B's attention output at 2048 tokens (128 tiles) moved to cm2, pp4096 9813-9829 ->
  // 10082 tok/s on the H200.
  uint64_t cm2_min_tiles_ = 128;
  // auto_cm2_tile(): medium cm2 tiles (128 × 128) a call of kCm2AutoMinBatch to kCm2LargeBatch − 1 columns
  // needs (TROVE_CM2_MIN_MEDIUM_TILES). 64 since 2026-12-06 (cm2_min_tiles_ before): the 30B-A3B's
  // attention output at 512 tokens (2048 rows: 64 medium tiles) left the KHR small tile, pp512 6974-7039 ->
  // 7143-7151 tok/s on the H100; no call of the 8B has 64-127 of them.
  uint64_t cm2_min_medium_tiles_ = 64;
  uint32_t cm2_small_max_rows_ = kCm2SmallMaxRows;  // TROVE_CM2_SMALL_MAX_ROWS
  uint32_t cm2_min_batch_ = kCm2AutoMinBatch;  // TROVE_CM2_MIN_BATCH
  uint32_t matrix_min_batch_ = kCoopmatMinBatch;  // TROVE_MATRIX_MIN_BATCH
  uint32_t cm2_large_bm_ = 128, cm2_large_bn_ = 256;  // TROVE_CM2_LARGE
  uint32_t split_forced_ = 0;                          // TROVE_MATMUL_SPLIT_K (0: automatic)
  uint32_t split_target_wgs_ = kSplitTargetWorkgroups;  // TROVE_MATMUL_SPLIT_WGS (0: the rule is off)
  // GroupedMatmulCall::x_by_slot honoured by the cm2 kernel (TROVE_GROUPED_BY_SLOT, force_by_slot), on
  // variant 2 unless forced. On since 2026-12-06: with the MoE gate/up rows gathered first (MoeFfn), the
  // 30B-A3B's pp512 7413 -> 7567 and pp4096 10634 -> 10787 tok/s on the H100 (its first form, every
  // tile clamped and on variant 0, had lost 0.8% on the H200 on 2026-12-04).
  bool by_slot_ = true;
  std::optional<uint32_t> forced_grouped_variant_;  // TROVE_GROUPED_VARIANT: grouped cm2 calls only
  bool cm2_large_ = false;    // automatic KHR path on a cm2 device: large batches take cm2 (auto_cm2_tile)
  vk::Pipeline tiled_row_[2];    // one row per invocation (decode); [f32, f16 activations]
  vk::Pipeline tiled_rows4_[2];  // four rows per invocation (batches)
  std::shared_ptr<Cache> cache_;
  Result<const vk::Pipeline*> pipeline(const char* shader, std::vector<uint32_t> spec, uint32_t bindings,
                                       uint32_t local_size) const;
  // A split call (split_k > 1): the products of `splits` K ranges into the scratch (bufs[2] is y on
  // entry), a barrier, their sum into y.
  Status record_split(vk::CommandStream& s, const vk::Pipeline& p, vk::BufferRange (&bufs)[3],
                      uint32_t splits, uint32_t rows, uint32_t cols, uint32_t batch, uint32_t row_bytes,
                      uint32_t y_stride, uint32_t gx, uint32_t gy) const;
};

}  // namespace trove::ops
