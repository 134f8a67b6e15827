// kernels/ops/attention.h — paged causal grouped-query attention on the GPU, one sequence per record().
//
// Contract: the KV pool is one f16 buffer in the layout of kernels/kv_layout.h (written by the KV
// write op; PagedKvShape in kernels/ref/attention_ref.h gives the same offsets), the
// block table is int32 (logical block -> physical block, covering start_pos + n_tokens positions),
// q/out are f32 [n_tokens][n_heads][head_dim]. Decode is n_tokens = 1; prefill uses start_pos > 0
// when a prefix is already in the pool. head_dim must be even and <= 256, n_heads a multiple of
// n_kv_heads. The block table contents are not validated on the GPU (the caller owns them; the
// reference checks them). record() only records; the caller submits. Checked against
// kernels/ref/attention_ref.h.
// Short queries over a long KV (decode: n_tokens <= 4, more than 512 keys) are split-K: up to 32
// workgroups per head each walk a slice of the keys into a scratch buffer the op owns, and a combine
// dispatch merges them. record() then ends with a barrier, because the next call reuses the scratch.
// Prefill (n_tokens >= kPrefillMinTokens) with head_dim 128 goes through a flash-attention kernel that
// walks tiles of query rows (token × the query heads sharing one KV head) against 64-key tiles:
// on the matrix units (attention_prefill_coopmat.comp: f16 Q and P, f32 scores and accumulation) when
// the device offers 16×16×16 f16 subgroup matrices, 32-wide subgroups and 44 KiB of shared memory, the
// block size is a multiple of 16 and TROVE_NO_COOPMAT is unset; otherwise the tiled f32 kernel
// (attention_prefill_tiled.comp). Other head dims keep the per-token kernel. Long prefill walks with
// few workgroups are split over key slices like decode (the same scratch and combine pass, and then
// the same closing barrier).
// A third prefill kernel runs on NV cooperative matrix 2 (attention_prefill_cm2.comp: workgroup-scope
// matrices, the online softmax in matrix registers, 64-row query tiles against 64-key tiles) where
// the device has VK_NV_cooperative_matrix2 with reductions, conversions and per-element operations
// and a 128-invocation f16 workgroup shape, for head_dim 128 and block sizes that are a multiple of
// 64 (TROVE_ATTENTION_CM2_ROWS=128 takes 128-row tiles over 256 invocations instead). kAuto takes it
// when kPrefillCm2Auto is true (the default since it was measured on the H200) or TROVE_ATTENTION=cm2;
// TROVE_ATTENTION=cm2|khr|tiled forces the prefill kernel kAuto picks where a call fits it (create()
// fails naming the reason when the device cannot run the one asked for).
// On a CPU device (lavapipe, features().is_cpu) prefill from kPrefillTiledMinTokens tokens takes
// attention_prefill_cpu.comp instead when head_dim is a multiple of 16 up to 256: one invocation per
// (a token or two, one or two heads of a KV head) walking the keys alone
// with an online softmax, no shared memory or barriers, never split (docs/kernels.md). Forcing
// kPrefillTiled / kPerToken still runs those kernels there (the tests do).
// Decode (n_tokens below the prefill kernels' threshold) goes through attention_decode.comp when the
// shape allows (G = n_heads / n_kv_heads in 1, 2, 4, 8, 16; head_dim a power of two from 8 to 256;
// G · head_dim <= 2048): one workgroup per (key slice, KV head, token) serving the G query heads of
// the KV head, the keys cut into as many slices as bring the grid to kDecodeTargetGroups, merged by
// the combine pass. Other shapes keep the per-token kernel.
// Decode v2 (attention_decode_v2.comp, kAuto's decode kernel on GPUs; v1, the above, on CPU devices and
// with TROVE_ATTENTION_DECODE=v1): one pass with an online softmax, kL lanes reading a K/V row together with
// 16-byte loads, several keys in flight per lane, Q·K summed by subgroup shuffles; key slices of a
// length fixed by the token's key count (kDecodeV2SplitKeys, doubled at depth: decode_v2_slice_keys;
// one slice, no combine dispatch, up to that many keys) merged by attention_combine_v2.comp (the splits spread over the workgroup): each token gets the same numbers
// whatever the number of tokens in its step. Needs subgroup shuffles; same G / head_dim limits as v1 with
// G · head_dim / kL <= 128 (the accumulators live in registers).
#pragma once

#include <array>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <span>

#include "kernels/ref/attention_ref.h"
#include "kernels/vk/runtime.h"

namespace trove::ops {

// Which kernel runs a call: kAuto picks as described above; the others force one (tests and the
// benchmark compare them), and record() fails naming the path when the shape or device cannot take it.
enum class AttentionPath { kAuto, kPerToken, kPrefillTiled, kPrefillCoopmat, kDecode, kPrefillCpu, kPrefillCm2,
                           kDecodeV2 };

struct AttentionCall {
  kernels::ref::PagedKvShape shape;
  uint32_t n_heads = 0;
  uint32_t start_pos = 0;
  uint32_t n_tokens = 0;
  float scale = 1.0f;
  AttentionPath path = AttentionPath::kAuto;
};

// Decode replay (engine/runtime: a decode step recorded once and submitted again): the decode kernels
// (kDecode, kDecodeV2) read the first query's position from buffer[index] (int32, the engine's
// per-token positions) instead of baking AttentionCall::start_pos into the recording. start_pos must
// still be the position now: it sizes the grid (slices), which a replay keeps — replay_key() says
// when two calls may share a recording. Other paths refuse a buffer.
struct AttentionPositions {
  vk::BufferRange buffer;
  uint32_t index = 0;
};

// record_decode_rows(): a step's sequences, in row order — sequence i's tokens are the step's rows
// first_row .. first_row + n_tokens (of q and out), its token t at position start_pos + t; each
// sequence's rows follow the previous one's.
struct AttentionSeq {
  uint32_t start_pos = 0;
  uint32_t n_tokens = 0;
  uint32_t first_row = 0;
};
// What the kernel reads per row, int32, written by the caller before the recording runs (and before
// each replay of it): the row's position at buffer[positions_at + row] and the offset, in entries, of
// its sequence's block table in the tables binding at buffer[tables_at + row].
struct AttentionRows {
  vk::BufferRange buffer;
  uint32_t positions_at = 0;
  uint32_t tables_at = 0;
};

class PagedAttention {
 public:
  // scratch_bytes: the split partials' buffer (0: the default, kPrefillScratchBytes; tests pass a small
  // one to reach the paths that fill it).
  static Result<PagedAttention> create(vk::Device& dev, uint64_t scratch_bytes = 0);
  Status record(vk::CommandStream& s, const AttentionCall& call, vk::BufferRange pool,
                vk::BufferRange block_table, vk::BufferRange q, vk::BufferRange out,
                const AttentionPositions& positions = {}) const;
  // For a call that record() would take through a decode kernel reading its position from a buffer
  // (AttentionPositions): what its recording fixes besides the buffers — the path, the slice
  // length and count of each pass, the pipelined form — as one number; equal numbers (and equal
  // buffers, heads, tokens) mean a recording of one call serves the other. nullopt: the call would take
  // another path (a prefill kernel, the per-token one), which has no position-from-buffer form.
  std::optional<uint64_t> replay_key(const AttentionCall& call) const;
  // Decode v2 workgroups per KV head for G = `group` query heads per KV head: TROVE_ATTENTION_HEAD_GROUPS,
  // or auto (at most 4 heads a workgroup), never under 2 heads a workgroup where G has 2+.
  uint32_t decode_v2_head_groups(uint32_t group) const;
  // Decode attention of a step's sequences in one dispatch (TROVE_ATTENTION_STEP=batched in the engine):
  // decode v2's kRows form over every row of the step, one slices dispatch per run of rows that share a
  // slice length and form (one run where the sequences' depths are alike), their combines after one
  // barrier, then a barrier — where record() per sequence records a dispatch, and with several slices a
  // barrier, a combine and a barrier, for each. Each token gets the bits record() gives it on its
  // sequence alone (kDecodeV2): the same slices, the same kernel form; slices past its keys are empty.
  // Refused (InvalidArgument, naming why) where a sequence would not fit kDecodeV2 or the rows are not
  // contiguous. `tables` is bound whole: AttentionRows gives each row's table offset in it.
  Status record_decode_rows(vk::CommandStream& s, const kernels::ref::PagedKvShape& shape, uint32_t n_heads, float scale,
                            std::span<const AttentionSeq> seqs, vk::BufferRange pool, vk::BufferRange tables,
                            vk::BufferRange q, vk::BufferRange out, const AttentionRows& rows) const;

  static constexpr uint32_t kMaxSplits = 32, kMaxSplitTokens = 4, kMaxSplitHeads = 64;
  // Token counts from which kAuto takes a prefill kernel (measured on the H100 at depth 4096,
  // docs/performance.md): the cooperative-matrix one is 2x faster than the per-token split-K kernel
  // from 4 tokens (2 and 3 not measured), the tiled f32 one equal at 4 tokens and 5x faster at 8.
  static constexpr uint32_t kPrefillMinTokens = 4, kPrefillTiledMinTokens = 8;
  // Steps of up to this many tokens (a speculative verification of up to 7 drafts) take the decode
  // kernel even where a matrix-unit prefill kernel could run from kPrefillMinTokens: the decode kernels
  // give each token the numbers of a one-token step (v2: bit for bit), so greedy verification is exact,
  // and on the H200 (2026-12-03, bench_spec --verify-cost at depth 4096, 8B) a 4-token step took 7.7 ms
  // against 24.0 through the cm2 prefill kernel. TROVE_ATTENTION_DECODE_TOKENS=N changes it.
  static constexpr uint32_t kDecodeMaxTokens = 8;
  // Prefill split-K: at most kPrefillMaxSplits key slices of >= kPrefillMinSplitKeys keys, as many as
  // bring the grid to kPrefillTargetGroups workgroups; partials share the scratch (its size bounds the
  // slices). A 512-token chunk (256 workgroups for 32 heads) is not split: splitting it in 2-4 was
  // measured 2-20% slower up to depth 4096 and 3-6% faster at 16384; an 8-token chunk at depth 4096
  // runs 7x faster over 9 slices.
  static constexpr uint32_t kPrefillMaxSplits = 16, kPrefillMinSplitKeys = 512, kPrefillTargetGroups = 256;
  static constexpr uint64_t kPrefillScratchBytes = 40ull << 20;
  // Decode kernel: key slices of 32..2048/G keys, as many as bring the grid to this many workgroups
  // (two per SM of an H200-class GPU).
  static constexpr uint32_t kDecodeTargetGroups = 264, kDecodeMinSplitKeys = 32, kDecodeScores = 2048;
  // Decode v2: key slices of kDecodeV2SplitKeys keys, doubled while the token's keys make more than
  // kDecodeV2MostSlices slices (and longer where the pool holds more than kDecodeV2MaxSplits of them,
  // the combine's shared memory): 48 to 96 slices from 6,144 keys on. The length depends on the pool
  // and on the token's own key count, never on the other tokens of its step, so a token's result is
  // the same alone and in a step (decode_v2_slice_keys). The 8B on the H200 (2026-12-03, tg64 with one
  // length at every depth): 128 keys best at depth 4096 (32 slices), 256 at 16384, 512 at 32768 (64).
  static constexpr uint32_t kDecodeV2SplitKeys = 128, kDecodeV2MaxSplits = 1024, kDecodeV2MostSlices = 96;
  // The shortest slice decode v2 uses in a pool of this shape (a multiple of 32): min_keys, more where
  // the pool holds more than kDecodeV2MaxSplits slices of it.
  static uint32_t decode_v2_split_keys(const kernels::ref::PagedKvShape& shape, uint32_t min_keys = kDecodeV2SplitKeys);
  // The slice length of a token with `keys` keys (its position + 1) in a pool of this shape, by default.
  static uint32_t decode_v2_slice_keys(const kernels::ref::PagedKvShape& shape, uint32_t keys,
                                       uint32_t min_keys = kDecodeV2SplitKeys);
  // Decode v2 issues each round's K/V loads during the round before (attention_decode_v2.comp kPipe) for
  // a token whose grid (its slices × KV heads) has at most kDecodeV2PipelineGroups workgroups:
  // latency-bound calls gain, bandwidth-bound ones lose (registers). H200, 2026-12-04, bench/engine/ab.sh:
  // 30B-A3B at depth 4096 (128 workgroups) tg64 204.8 / 204.5 against 201.8 / 201.6 tok/s, the 8B's
  // tg128 (8 workgroups) 281.0 / 278.6 against 277.7 / 274.0; the 8B at depth 16384 (512) 201.1 /
  // 200.7 against 216.5 / 214.9. TROVE_ATTENTION_PIPELINE=0|1 forces it off or on.
  static constexpr uint32_t kDecodeV2PipelineGroups = 128;
  enum class Pipelining { kAuto, kNever, kAlways };
  bool decode_v2_pipelined(uint32_t groups) const {
    return decode_v2_pipeline_ == Pipelining::kAlways ||
           (decode_v2_pipeline_ == Pipelining::kAuto && groups <= kDecodeV2PipelineGroups);
  }
  // Whether kAuto's decode kernel is v2 (TROVE_ATTENTION_DECODE=v2 at create()).
  bool decode_v2_default() const { return decode_v2_default_; }
  // The CPU form: queries (tokens x heads of one KV head) per invocation.
  static constexpr uint32_t kCpuQueries = 2;
  // Whether kAuto takes the NV cooperative matrix 2 prefill kernel where a call fits it (block size a
  // multiple of 64, head_dim 128): on since 2026-12-03 (H200: 83-144 TFLOP/s against the KHR kernel's
  // 17-20; 8B prefill to 16k 2561 -> 5472 tok/s; its tests pass there); TROVE_ATTENTION=khr turns it off.
  static constexpr bool kPrefillCm2Auto = true;
  // Whether prefill runs on the cooperative-matrix kernel (device support, TROVE_NO_COOPMAT unset).
  bool prefill_uses_coopmat() const { return has_prefill_coopmat_; }
  // Whether the device runs the NV cooperative matrix 2 prefill kernel (kPrefillCm2 can be forced),
  // and its query rows per workgroup (64, or 128 with TROVE_ATTENTION_CM2_ROWS=128).
  bool has_prefill_cm2() const { return has_prefill_cm2_; }
  uint32_t prefill_cm2_rows() const { return cm2_rows_; }
  // The kernel kAuto picks for this call (never kAuto).
  AttentionPath choose(const AttentionCall& call) const;

 private:
  vk::Pipeline pipeline_;
  vk::Pipeline prefill_tiled_;
  vk::Pipeline prefill_coopmat_;
  bool has_prefill_tiled_ = false;
  bool has_prefill_coopmat_ = false;
  bool has_prefill_cm2_ = false;  // the device runs it; its pipeline is built on first use
  uint32_t cm2_rows_ = 64;        // its query tile: 64 rows (128 invocations) or 128 (256), TROVE_ATTENTION_CM2_ROWS
  Result<const vk::Pipeline*> prefill_cm2_pipeline() const;
  AttentionPath prefill_pick_ = AttentionPath::kAuto;  // TROVE_ATTENTION's prefill kernel (kAuto: unset)
  bool decode_usable(const AttentionCall& c) const;
  bool decode_v2_usable(const AttentionCall& c) const;
  uint32_t decode_v2_lanes(uint32_t head_dim) const;  // kL: lanes per key row
  Status record_decode_v2(vk::CommandStream& s, const AttentionCall& c, vk::BufferRange pool, vk::BufferRange block_table,
                          vk::BufferRange q, vk::BufferRange out, const AttentionPositions& positions) const;
  // Decode v2's slice length and K/V-loads-ahead form for a token with `keys` keys: functions of the
  // pool and of the token's key count alone, so a token takes the same kernel in any step.
  uint32_t decode_v2_token_slice(const kernels::ref::PagedKvShape& shape, uint32_t keys) const;
  bool decode_v2_token_pipelined(const kernels::ref::PagedKvShape& shape, uint32_t keys) const;
  // The decode v2 pipeline for G `group`, head_dim `d`, form `pipe`, the first position from a buffer
  // (`from_buffer`) or every row's position and table from one (`rows`); built on first use, with its
  // other kPipe form where the form is automatic.
  Result<const vk::Pipeline*> decode_v2_pipeline(uint32_t group, uint32_t d, bool pipe, bool from_buffer, bool rows,
                                                 bool fused = false) const;
  bool decode_v2_default_ = false;
  // Steps of at most this many tokens take the decode kernel where a matrix-unit prefill kernel would
  // run (TROVE_ATTENTION_DECODE_TOKENS; default kDecodeMaxTokens).
  uint32_t decode_max_tokens_ = kDecodeMaxTokens;
  Pipelining decode_v2_pipeline_ = Pipelining::kAuto;  // TROVE_ATTENTION_PIPELINE
  // TROVE_ATTENTION_HEAD_GROUPS: decode v2 splits the query heads of a KV head over this many
  // workgroups (1, 2 or 4; 0 = auto, the default: at most 4 heads a workgroup): twice the grid at half
  // the registers for the heads' sums, each workgroup reading the KV head's rows itself. Each
  // workgroup keeps 2+ heads where the KV head has 2+ (decode_v2_head_groups). The same bits for any value.
  uint32_t decode_v2_head_groups_ = 0;
  // TROVE_ATTENTION_MERGE=parallel (the default since 2026-12-05: +1% tg on the 8B and the 30B-A3B,
  // H100): decode v2's subgroups write their sums to copies of their own and add them after one
  // barrier (serial: in turn, a barrier each); the same bits.
  bool decode_v2_merge_parallel_ = true;
  // TROVE_ATTENTION_COMBINE=fused (off: `separate` is the default; on the H100, 2026-12-05, fused made
  // the 8B's tg64 at 16384 tokens 213 -> 178 tok/s and the 30B-A3B's 190 -> 149, docs/kernels.md): a
  // split decode v2 call merges its slices in its own last workgroup per (row, head group) — counted on
  // combine_counts_, attention_decode_v2.comp kFuse — instead of a combine dispatch behind a barrier:
  // one dependent dispatch less a layer at depth. The same bits. Rows × head groups of a call must fit
  // kCombineCounters (else that call takes the separate combine).
  bool decode_v2_fused_ = false;
  static constexpr uint32_t kCombineCounters = 1u << 16;
  vk::Buffer combine_counts_;
  uint32_t decode_v2_fixed_keys_ = 0;  // TROVE_ATTENTION_SPLIT_KEYS: one slice length at every depth (0: by depth)
  bool has_shuffle_ = false;
  uint32_t subgroup_size_ = 0;
  bool prefill_cpu_usable(const AttentionCall& c) const;
  Result<const vk::Pipeline*> prefill_cpu_pipeline(uint32_t head_dim, uint32_t heads, uint32_t tokens) const;
  bool is_cpu_ = false;
  uint32_t cpu_lanes_ = 8;  // invocations per workgroup of the CPU form (the SIMD width)
  Status combine(vk::CommandStream& s, uint32_t head_dim, const AttentionCall& c, uint32_t n_splits,
                 vk::BufferRange out) const;
  Result<const vk::Pipeline*> decode_pipeline(uint32_t group, uint32_t head_dim, bool from_buffer = false) const;
  struct DecodePipelines {
    vk::Device* dev = nullptr;
    std::mutex mu;
    std::map<std::array<uint32_t, 3>, vk::Pipeline> by_shape;  // (G, head_dim, from buffer) -> pipeline
    std::map<std::array<uint32_t, 7>, vk::Pipeline> v2;  // (G, head_dim, kPipe, from buffer, head groups, rows, fused) -> decode v2
    std::map<std::array<uint32_t, 3>, vk::Pipeline> cpu;              // (head_dim, heads, tokens) -> CPU form
    std::unique_ptr<vk::Pipeline> cm2;                                // the cm2 prefill kernel, once built
  };
  std::unique_ptr<DecodePipelines> decode_;
  vk::Pipeline combine_;
  vk::Pipeline combine_v2_;
  vk::Buffer scratch_;  // split partials: [token][head][split][head_dim + 2] f32 (decode and prefill)
};

}  // namespace trove::ops
