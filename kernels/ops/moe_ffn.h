// kernels/ops/moe_ffn.h — the mixture-of-experts FFN of a Qwen3-MoE layer on the GPU, with no host
// round trip: routing, the per-expert grouping of tokens, the expert matvecs and the weighted combine
// are all recorded into the caller's command stream and read their inputs from device buffers.
//
//   x[t] += sum_j w[t][j] * down_e( silu(gate_e xn[t]) * up_e xn[t] ),   e = ids[t][j], j < k
//
// Two ops, recorded one after the other (the caller puts a barrier between them, as between any two
// recorded steps):
//   MoeRoute  router logits [T][E] → ids [T][k], w [T][k] (top-k, ties → smaller index, softmax over
//             the k chosen) and the routing PLAN (below). One dispatch for T <= kFusedRouteTokens,
//             else routing (many tokens per dispatch) + one plan dispatch. record_plan() builds the
//             plan from ids the caller supplies (tests give adversarial routings this way).
//   MoeFfn    gate/up of every selected expert of every token in ONE expert-indexed dispatch with
//             SwiGLU in its epilogue → h [slot][ffn] (the decode matvec's per-type code,
//             kernels/shaders/matvec_core.glsl, over the plan's entries); then
//               T <= kDecodeMaxTokens: ONE dispatch computing down for all (token, j), multiplying by
//                 w, summing over j and adding into x (a row group owns an output row for all k);
//               larger T: the same expert-indexed kernel for down → d [slot][hidden], then a
//                 scatter-combine adding sum_j w × d into x (one invocation per element of x).
//             Prefill on matrix units (T >= 32 and the caller's Matmul uses cooperative matrices):
//             gate and up as grouped GEMMs (ops::Matmul::record_grouped over the plan's
//             expert_offsets / row_ids) → g, u; SwiGLU → h (f16); down as a grouped GEMM over the
//             slots (row ids = slot_ids) → d; the same scatter-combine. 6 dispatches.
//             Every sum has a fixed order: results do not depend on scheduling.
//
// The routing plan (MoePlanLayout, one uint buffer): the T*k (token, j) pairs (pair = t*k + j) sorted
// by expert into SLOTS, stably (an expert's slots in increasing token order):
//   offsets[E+1]       slots of expert e are offsets[e] .. offsets[e+1]-1        ("expert_offsets")
//   row_ids[slot]      the token of a slot (the activation row a grouped GEMM gathers)
//   slot_ids[slot]     = slot (the rows to gather when the input is already in slot order: down)
//   slot_pair[slot]    the pair of a slot;  pair_slot[pair] its inverse
//   entries, n_entries work items of up to kSlotsPerEntry slots of one expert (uvec2(expert,
//                      first | count << 24)), experts in order; the expert kernels' grid runs over them
// This is the contract of ops::Matmul's grouped GEMM (expert_offsets + row_ids over slots sorted by
// expert); every array starts 256-byte aligned, so each can be bound as its own buffer range.
//
// Weights: each of gate/up/down is the layer's stacked expert tensor [E][rows][cols] (GGUF
// ffn_*_exps: expert e's rows start at e*rows*row_bytes) in ONE buffer range, any kernels/quant type
// (gate and up may differ). Activations f32. Limits: E <= 256, k <= 32, k distinct experts per token,
// cols a multiple of 32 (256 for K-quants), T*k < 2^24, each stacked tensor < 4 GiB (32-bit
// offsets). Pipelines are created on first use per shape and weight type (kernels/shaders/moe_*.comp).
// Checked against kernels/ref (layer_ref.h moe_route, moe_ref.h moe_plan, matmul_ref.h moe_ffn).
// Thread-safety: record() may be called from one thread at a time per op (pipeline cache).
#pragma once

#include <algorithm>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <tuple>
#include <vector>

#include "kernels/ops/matmul.h"
#include "kernels/quant/quant.h"
#include "kernels/vk/runtime.h"

namespace trove::ops {

// Offsets (in uint words) of the routing plan's arrays in its buffer, for steps of up to max_pairs
// (= max tokens × k) pairs. The same layout serves every smaller step.
struct MoePlanLayout {
  static constexpr uint32_t kSlotsPerEntry = 8;  // = kCols in moe_experts.comp
  uint32_t max_pairs = 0, n_expert = 0;
  uint32_t n_entries = 0, offsets = 0, entries = 0, slot_pair = 0, pair_slot = 0, row_ids = 0, slot_ids = 0;
  uint32_t words = 0;
  static MoePlanLayout make(uint32_t max_pairs, uint32_t n_expert);
  uint64_t bytes() const { return uint64_t{words} * 4; }
  // Work entries a step of `pairs` pairs can produce at most: sum_e ceil(n_e / 8) <= pairs/8 + active experts.
  static uint32_t max_entries(uint32_t pairs, uint32_t n_expert) {
    return pairs / kSlotsPerEntry + std::min(pairs, n_expert) + 1;
  }
};

// The router and the routing of a decode-sized step in one dispatch (MoeRoute::record_router): the
// FFN RMSNorm, the router's f32 matvec and the top-k, with the last workgroup of the router routing.
// The other modes split the router around the O projection so that it need not wait for it (the
// "beside" router, engine/runtime/moe_layer.h): with R̃ = router · diag(norm_w) and M = R̃ · W_o,
//   R̃ · x_after_o = R̃ · x_before_o + M · attn,
// so kPlain computes R̃ · x beside the QKV matvec and kBiasRouteRaw adds M · attn beside O and picks
// the top-k; the 1/rms of the complete x, a positive scale that cannot change the choice, is applied
// to the chosen logits by the gate/up kernel (MoeFfnCall::weights_raw).
struct MoeRouterCall {
  enum Mode : uint32_t {
    kNormRoute = 0,     // logits = router · (x · norm_w / rms(x)); ids, weights (softmax over the top-k)
    kPlain = 1,         // logits = router · x; nothing else (norm_w, ids, weights, bias unused)
    kBiasRouteRaw = 2,  // logits = router · x + bias; ids and the chosen logits (raw) in weights
    kBiasLogits = 3,    // logits = router · x + bias; no routing (MoeFfnCall::route_logits routes)
  };
  vk::BufferRange x;        // f32 [tokens][cols]: the residual stream (the norm is applied inside)
  vk::BufferRange norm_w;   // f32 [cols]: the FFN norm's weights
  float eps = 1e-6f;
  vk::BufferRange router;   // f32 [n_experts][cols] (ffn_gate_inp)
  vk::BufferRange logits;   // f32 [tokens][n_experts]: written (the routing reads them)
  vk::BufferRange ids, weights;  // MoeRoute::record's outputs: uint / f32 [tokens][k]
  uint32_t cols = 0, n_experts = 0, tokens = 0, k = 0;
  Mode mode = kNormRoute;
  vk::BufferRange
      bias{};  // kBiasRouteRaw, kBiasLogits: f32 [tokens][n_experts], added to the logits (not `logits`)
};

class MoeRoute {
 public:
  static constexpr uint32_t kRouterMaxTokens = 8;  // record_router: tokens per call (moe_router.comp kMaxT)
  static constexpr uint32_t kFusedRouteTokens = 16;  // routing + plan in one workgroup up to here
  static Result<MoeRoute> create(vk::Device& dev);
  // logits f32 [tokens][n_experts] → ids uint [tokens][k], weights f32 [tokens][k], plan.
  Status record(vk::CommandStream& s, vk::BufferRange logits, vk::BufferRange ids, vk::BufferRange weights,
                vk::BufferRange plan, const MoePlanLayout& layout, uint32_t tokens, uint32_t k) const;
  // Routing alone (ids and weights, no plan), for the pair-indexed decode kernels (MoeFfnCall::by_pair):
  // one subgroup per token, tokens spread over ceil(tokens / subgroups-per-workgroup) workgroups.
  Status record_ids(vk::CommandStream& s, vk::BufferRange logits, vk::BufferRange ids, vk::BufferRange weights,
                    uint32_t n_experts, uint32_t tokens, uint32_t k) const;
  // Router (f32 weights, the FFN norm folded in) and routing in one dispatch: the logits, then ids and
  // weights as record_ids() writes them. Two calls must be separated by a barrier (they share a
  // completion counter; any later reader of the outputs needs one anyway).
  Status record_router(vk::CommandStream& s, const MoeRouterCall& c) const;
  // The plan alone, from ids already in a device buffer (distinct per token, each < n_experts).
  Status record_plan(vk::CommandStream& s, vk::BufferRange ids, vk::BufferRange plan, const MoePlanLayout& layout,
                     uint32_t tokens, uint32_t k) const;

 private:
  Status check(const MoePlanLayout& layout, uint32_t tokens, uint32_t k, vk::BufferRange plan) const;
  vk::Pipeline route_, plan_, router_;
  vk::Buffer count_;  // moe_router.comp's count of finished workgroups, 0 between calls
  uint32_t subgroup_ = 32;
  uint32_t router_wg_ = 128;  // moe_router.comp's workgroup (TROVE_MOE_ROUTER_WG)
  bool router_split_ = true;  // one workgroup per expert row (TROVE_MOE_ROUTER_SPLIT, default 1)
};

// One layer's stacked experts of one kind: [n_expert][rows][cols] GGUF rows of `type`.
struct StackedExperts {
  quant::GgmlType type = quant::GgmlType::F32;
  vk::BufferRange w;
  uint32_t rows = 0, cols = 0, n_expert = 0;
};

// How steps of more than kDecodeMaxTokens tokens run their experts.
enum class MoePrefill : uint8_t {
  kAuto,          // grouped GEMMs when `matmul` is given, uses cooperative matrices and T >= 32
  kExpertMatvec,  // the expert-indexed matvec kernels (8 slots per pass over an expert's weights)
  kGroupedGemm,   // ops::Matmul::record_grouped on whatever path `matmul` has (tests: its tiled form)
};

struct MoeFfnCall {
  StackedExperts gate, up, down;  // gate/up [E][ffn][hidden], down [E][hidden][ffn]
  uint32_t tokens = 0, k = 0;
  vk::BufferRange xn;             // f32 [tokens][hidden]: the FFN input (after the FFN RMSNorm)
  vk::BufferRange ids, weights;   // MoeRoute's outputs
  vk::BufferRange plan;           // MoeRoute's plan, laid out by `layout`
  MoePlanLayout layout;
  vk::BufferRange h;              // scratch f32 [tokens*k][ffn]
  vk::BufferRange d;              // scratch f32 [tokens*k][hidden]; used when tokens > kDecodeMaxTokens
  vk::BufferRange x;              // f32 [tokens][hidden], the residual stream: x += MoE(xn)
  const Matmul* matmul = nullptr; // for the grouped-GEMM prefill (null: expert matvec kernels only)
  MoePrefill prefill = MoePrefill::kAuto;
  vk::BufferRange g, u;           // scratch f32 [tokens*k][ffn] each; the grouped-GEMM prefill only
  // RMSNorm prologue (direct form only, MoeFfn::direct(); not with the grouped GEMMs): when norm_w is
  // given, xn is the residual stream itself and gate/up read xn · norm_w / rms(xn) — the FFN norm's
  // own dispatch disappears (decode). x may then be the same buffer as xn: down runs after gate/up.
  vk::BufferRange norm_w{};       // f32 [hidden]
  float eps = 0;
  // Pair-indexed decode (direct form, tokens <= kDecodeMaxTokens): no plan is read — gate/up runs one
  // grid row per (token, j) pair, expert ids[pair], input row xn[token], output h[pair]; down reads
  // h[pair]. An expert two tokens share is read twice (from L2 the second time), which costs less at
  // decode sizes than building a plan (one workgroup's serial chain, ~12 µs a layer on the H200).
  // `plan` and `layout` are then unused (layout.n_expert must still equal the experts' count).
  bool by_pair = false;
  // `weights` holds, per token, the k chosen router logits before the FFN RMSNorm's 1/rms (MoeRoute's
  // router beside the O projection, MoeRouterCall::kBiasRouteRaw); gate/up turns them into the routing
  // weights in place, softmax(z · 1/rms) over the k, from the 1/rms its prologue computes (by_pair and
  // norm_w required). down reads the weights as usual, after the caller's barrier.
  bool weights_raw = false;
  // Routing in the gate/up kernel (the q8 form only: MoeFfn::routes_in_gate_up(); weights_raw and by_pair
  // required): route_logits holds f32 [tokens][n_expert] router logits before the FFN norm's 1/rms
  // (MoeRouterCall::kBiasLogits); gate/up takes each token's top-k itself (moe_topk.glsl's top_k: the
  // picks MoeRouterCall::kBiasRouteRaw would make), writes ids and the chosen logits to `ids` and
  // `weights` for down, and scales them as weights_raw says. The router's routing tail (a completion
  // count and one workgroup's top-k after all the others) leaves the O projection's barrier interval.
  vk::BufferRange route_logits{};
  // Heard after each barrier inside the grouped-GEMM prefill (0: gate and up, 1: SwiGLU, 2: down; not
  // after the combine, the call's last dispatch): TROVE_PROFILE=ops's timestamps. Empty: nothing.
  std::function<void(uint32_t)> after{};
  // The grouped-GEMM prefill on the matrix units: xn already rounded to f16 ([tokens][hidden], the
  // same values the GEMMs would round it to), which gate and up read instead of xn. Empty: they read
  // xn (f32) and round it per tile. The other forms ignore it.
  vk::BufferRange xn_f16{};
};

// How the expert-matvec kernels run (tests and benchmarks force one; the defaults are measured).
struct MoeTuning {
  // kStaged: moe_experts / moe_down (inputs staged in shared memory, 32-lane row groups); kDirect:
  // moe_experts_direct / moe_down_direct (one subgroup per row group, inputs through the caches, the
  // down kernel spreading the k experts' row parts over the lanes). kAuto: the q8 form (below) on GPUs
  // with integer dot products, else direct on GPUs with subgroup arithmetic (subgroups of 4..64 lanes),
  // staged otherwise; TROVE_MOE=staged|direct|q8 overrides.
  // kQ8: the direct form, except that pair-indexed decode steps (MoeFfnCall::by_pair) with Q4_K, Q5_K,
  // Q6_K or Q8_0 experts run moe_experts_q8 / moe_down_q8 — activations rounded to int8 (a scale per
  // 32 values) in shared memory, integer dot products (the dense q8 matvec's code); needs integer dot
  // products (VK_KHR_shader_integer_dot_product). Each kind (gate/up, down) takes it on its own types.
  enum class Form { kAuto, kStaged, kDirect, kQ8 };
  Form form = Form::kAuto;
  uint32_t gate_up_rows = 0;  // direct and q8 forms: rows per row group (1, 2 or 4; 0 = 1, q8: TROVE_MOE_Q8_ROWS or 1) of gate/up
  uint32_t down_rows = 0;     // direct and q8 forms: rows per row group of down (1, 2 or 4; 0 = 1, q8: as gate/up)
  uint32_t down_split = 0;    // q8 form: subgroups sharing a row group's rows in down (1, 2 or 4; 0 =
                              // TROVE_MOE_Q8_DOWN_SPLIT or 1; moe_down_q8.comp)
  uint32_t workgroup = 0;     // direct form: invocations per workgroup (a multiple of the subgroup, <= 1024; 0 = 128)
  // q8 form: the workgroups aimed at in all (each stages its inputs once and walks row blocks; at
  // least one per (token, j) pair for gate/up, per token for down; at most one per row block);
  // 0 = kQ8Workgroups or TROVE_MOE_Q8_WORKGROUPS on GPUs, one row block per workgroup on CPU devices.
  uint32_t q8_workgroups = 0;
  // q8 form: Q6_K experts in 32-value parts (16-byte runs of the codes, as the dense q8 matvec's
  // default) or 16-value ones; kDefault = wide unless TROVE_MOE_Q6_WIDE=0.
  enum class Q6Parts { kDefault, kNarrow, kWide };
  Q6Parts q6_parts = Q6Parts::kDefault;
};

class MoeFfn {
 public:
  static constexpr uint32_t kDecodeMaxTokens = 8;  // fused down + combine up to here
  // The fewest tokens whose experts run as grouped GEMMs on the matrix units: fewer run the staged
  // expert products. 9, as the dense matmuls' matrix path (Matmul::kCoopmatMinBatch): the 30B-A3B's
  // 16-token step 50.9 ms staged -> 33.3 ms grouped (H100, 2026-12-06; 32 before).
  // TROVE_MOE_GROUPED_MIN sets it for A/B.
  static constexpr uint32_t kGroupedMinTokens = 9;
  // slots_per_pass: slots of a plan entry multiplied per pass over an expert's weights (1..8; the
  // gate/up kernel's batch columns). 0 = min(8, tokens) on GPUs, 1 on CPU devices (lavapipe: fewer
  // pipelines to compile); tests force 2 to cover several columns there.
  // gpu_form: on a CPU device, compile what GPUs run (subgroup reduction stage, unrolled column
  // loops) — slow to compile there; a test runs it once.
  static Result<MoeFfn> create(vk::Device& dev, uint32_t slots_per_pass = 0, bool gpu_form = false);
  // Whether the grouped-GEMM prefill gathers the f16 rows into slot order first (gather_rows_ above).
  void force_gather(bool on) { gather_rows_ = on; }
  // Forces a form or work split (MoeTuning); a direct form the device cannot run is refused by record().
  void set_tuning(const MoeTuning& t) { tuning_ = t; }
  const MoeTuning& tuning() const { return tuning_; }
  // Whether record() runs the direct form with the current tuning (the q8 form counts: it is the direct
  // form with int8 activations where the step and types allow).
  bool direct() const;
  // Whether the q8 form is selected (MoeTuning::Form::kQ8, or TROVE_MOE=q8 with kAuto).
  bool q8() const;
  // Whether the device can run the q8 form (integer dot products, subgroup arithmetic).
  bool q8_supported() const { return q8_ok_; }
  // Whether the gate/up kernel can route this call's tokens itself (MoeFfnCall::route_logits): the q8
  // form's pair-indexed decode with these gate/up types and widths.
  bool routes_in_gate_up(const MoeFfnCall& c) const;
  // q8 form: the grid aimed at (~8 per SM on the H200; at 8 tokens 1024 workgroups took the kernels
  // from 337 to 183 µs a layer against 512, bench_kernels 2026-12-03).
  static constexpr uint32_t kQ8Workgroups = 1024;
  // Records 2 dispatches (tokens <= kDecodeMaxTokens) or 4, with barriers between them, none before
  // the first or after the last.
  Status record(vk::CommandStream& s, const MoeFfnCall& call) const;
  // The two halves of record() on the expert-matvec kernels (benchmarks time them apart; a barrier
  // must separate them): gate/up + SwiGLU → h, and down → (weighted sum, residual add) into x.
  Status record_gate_up(vk::CommandStream& s, const MoeFfnCall& call) const;
  Status record_down(vk::CommandStream& s, const MoeFfnCall& call) const;

 private:
  Status check(const MoeFfnCall& call) const;
  // Whether down runs as the fused decode kernel (<= 8 tokens and k staged rows fit shared memory).
  bool fused_down(uint32_t tokens, uint32_t k) const;
  // Whether the step's experts run as grouped GEMMs (MoePrefill).
  bool grouped(const MoeFfnCall& call) const;
  Status record_grouped(vk::CommandStream& s, const MoeFfnCall& call) const;
  // x[t] += Σ_j w[t][j] · d[pair_slot(t, j)] (moe_combine.comp), after a down that wrote d per slot.
  Status record_combine(vk::CommandStream& s, const MoeFfnCall& call) const;
  Result<const vk::Pipeline*> pipeline(const char* shader, std::vector<uint32_t> spec, uint32_t push_bytes,
                                       uint32_t bindings, uint32_t local) const;
  struct Cache {
    std::mutex mu;
    std::map<std::tuple<std::string, std::vector<uint32_t>>, std::unique_ptr<vk::Pipeline>> pipelines;
  };
  vk::Device* dev_ = nullptr;
  uint32_t shared_bytes_ = 0;    // maxComputeSharedMemorySize
  bool cpu_ = false;             // CPU device: no unrolled column loops, no subgroup operations
  uint32_t subgroup_ = 1;        // subgroup size of the first reduction stage (1: shared memory only)
  uint32_t slots_per_pass_ = 0;  // 0: min(8, tokens)
  uint32_t direct_lanes_ = 0;    // the direct form's row group: the subgroup size (0: no subgroup arithmetic)
  uint32_t grouped_min_tokens_ = kGroupedMinTokens;  // TROVE_MOE_GROUPED_MIN
  bool direct_default_ = false;  // MoeTuning::Form::kAuto means direct (GPU with subgroups; TROVE_MOE)
  bool q8_ok_ = false;           // integer dot products + subgroup arithmetic: the q8 form can run
  bool q8_default_ = false;      // MoeTuning::Form::kAuto means q8 (GPUs with q8_ok_; TROVE_MOE)
  uint32_t q8_workgroups_ = kQ8Workgroups;  // TROVE_MOE_Q8_WORKGROUPS
  uint32_t q8_rows_ = 1;                     // q8 form: rows per row group (TROVE_MOE_Q8_ROWS; moe_ffn.cpp)
  uint32_t q8_down_split_ = 1;               // q8 form: down's split rows (TROVE_MOE_Q8_DOWN_SPLIT; GPUs 2; moe_ffn.cpp)
  uint32_t q8_wg_ = 0;                       // q8 form: workgroup size (TROVE_MOE_Q8_WG; GPUs 256; 0: kDirectWorkgroup)
  uint32_t q8_touch_ = 4;                    // q8 gate/up: weight sectors touched before the staging (TROVE_MOE_Q8_TOUCH)
  bool q6_wide_ = true;                      // q8 form: Q6_K experts in 32-value parts (TROVE_MOE_Q6_WIDE)
  uint32_t q6_wide() const {
    return (tuning_.q6_parts == MoeTuning::Q6Parts::kDefault ? q6_wide_ : tuning_.q6_parts == MoeTuning::Q6Parts::kWide) ? 1 : 0;
  }
  // The q8 form's dispatches, when the call can take them (false: the caller runs the direct form).
  Result<bool> record_gate_up_q8(vk::CommandStream& s, const MoeFfnCall& call) const;
  uint32_t q8_workgroup() const;  // invocations of a q8 gate/up workgroup
  Result<bool> record_down_q8(vk::CommandStream& s, const MoeFfnCall& call) const;
  MoeTuning tuning_;
  std::unique_ptr<Cache> cache_;
  vk::Pipeline combine_;
  vk::Pipeline swiglu_[2];  // moe_swiglu.comp: [f32, f16] output
  vk::Pipeline gather_;     // moe_gather_f16.comp
  // Grouped-GEMM prefill with xn_f16: gate/up read the rows put in slot order by one gather dispatch
  // (into the d scratch, free until down) through plain tile loads, instead of gathering per element
  // (TROVE_MOE_GATHER, force_gather). Unset: where the matmul loads slot-ordered x as it lies
  // (Matmul::grouped_loads_slot_order: the cm2 grouped kernel) — H100, 2026-12-06, 30B-A3B pp512 7413
  // -> 7567, pp4096 10634 -> 10787 tok/s with Matmul's slot-order loads; elsewhere it would only add a copy.
  std::optional<bool> gather_rows_;
};

}  // namespace trove::ops
