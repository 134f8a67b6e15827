// The Vulkan engine's internals (engine.h is the interface): the weights, scratch and sequences of
// VulkanEngine, shared by engine.cpp (loading, sequences, the GPU block cache and the KV store tier)
// and forward.cpp (step(): the forward pass recorded into the engine's command stream).
#pragma once

#include "engine/runtime/engine.h"

#include <array>
#include <cstdint>
#include <cstdio>
#include <deque>
#include <future>
#include <initializer_list>
#include <memory>
#include <map>
#include <optional>
#include <string>
#include <string_view>
#include <vector>
#include <unistd.h>

#include <xxhash.h>

#include "engine/gguf/gguf.h"
#include "engine/runtime/block_export.h"
#include "engine/runtime/block_pool.h"
#include "engine/runtime/l2_warm_plan.h"
#include "engine/runtime/moe_layer.h"
#include "engine/runtime/step_profile.h"
#include "kernels/ops/add.h"
#include "kernels/ops/attention.h"
#include "kernels/ops/l2_warm.h"
#include "kernels/ops/layer_ops.h"
#include "kernels/ops/matmul.h"
#include "kernels/ops/matvec.h"
#include "kernels/ops/routing_kv.h"
#include "kernels/ops/sample.h"
#include "kernels/vk/runtime.h"

namespace trove::engine::internal {

using quant::GgmlType;

constexpr uint32_t kMaxMatmulRows = 32768;  // per dispatch; the head (vocab rows) is split
constexpr uint64_t kMaxMatvecBytes = 0xF0000000ull;  // weight bytes per Matvec call (it takes < 4 GiB)

struct Weight {
  GgmlType type = GgmlType::F32;
  uint64_t cols = 0;   // ne[0]
  uint64_t rows = 0;   // ne[1]
  uint64_t experts = 1;  // ne[2] for stacked expert tensors
  uint64_t row_bytes = 0;
  uint64_t expert_bytes() const { return row_bytes * rows; }
  // The rows of all experts, [experts * rows], cut into buffers no larger than the device allows (a
  // piece holds whole experts when there are several).
  struct Piece {
    uint64_t first_row = 0, rows = 0;
    vk::Buffer buf;
  };
  std::vector<Piece> pieces;
  const vk::Buffer& whole() const { return pieces.front().buf; }  // small tensors: one piece
};

struct Layer {
  Weight attn_norm, q, k, v, o, q_norm, k_norm, ffn_norm;
  Weight gate, up, down;                            // dense FFN
  Weight router, gate_exps, up_exps, down_exps;     // MoE
  MoeLayerWeights moe;                              // views of the four above for MoeLayer
  vk::Buffer router_n, router_o;                    // MoE, router beside O: folded at load (router_fold.h)
};

// One weight of a Matvec call and where its rows go (y[b * rows + r]).
struct MatvecOut {
  const Weight* w;
  vk::BufferRange y;
};

struct Sequence {
  bool open = false;
  std::vector<int32_t> tokens;
  std::vector<uint32_t> blocks;
  bool caching = false;          // attach_prefix() was called: completed blocks get registered
  std::string name_space;
  std::vector<kv::BlockKey> keys;  // keys of the first keys.size() (full) blocks
  size_t accepted = SIZE_MAX;      // tokens from here on are provisional drafts: not registered yet
};

struct Ops {
  ops::RmsNorm rms;
  ops::SwiGlu swiglu;
  ops::RopeNeox rope;
  ops::Argmax argmax;
  ops::ResidualAdd add;
  ops::Matmul matmul;
  std::optional<ops::Matvec> matvec;  // steps of <= Matvec::kMaxBatch tokens (decode), see step()
  ops::RmsNormF16 rms_f16;      // prefill: f16 activations for the matrix-unit matmuls
  ops::SwiGluF16 swiglu_f16;
  ops::PagedAttention attention;
  ops::KvWrite kv_write;
  ops::QkNormRopeKv qk_rope_kv;  // q/k norm + RoPE + KV write in one dispatch (TROVE_ROPE_KV=separate: the three ops)
  ops::Sampler sampler;
};

// A progress bar on stderr, only when stderr is a terminal.
class Progress {
 public:
  Progress(bool enabled, uint64_t total) : on_(enabled && isatty(2)), total_(total) {}
  void add(uint64_t n) {
    done_ += n;
    if (!on_) return;
    const int pct = total_ ? static_cast<int>(100 * done_ / total_) : 100;
    if (pct == last_) return;
    last_ = pct;
    const int w = 40, fill = pct * w / 100;
    std::fprintf(stderr, "\rloading weights [%s%s] %3d%%", std::string(fill, '#').c_str(),
                 std::string(w - fill, ' ').c_str(), pct);
    if (done_ >= total_) std::fprintf(stderr, "\n");
  }

 private:
  bool on_;
  uint64_t total_, done_ = 0;
  int last_ = -1;
};

class VulkanEngine final : public Engine {
 public:
  static Result<std::unique_ptr<Engine>> create(const EngineOptions& opts);
  // Whether weights, scratch and a KV pool of `pool` bytes fit `have` bytes of device memory the way the
  // memory plan fills it (the pool gets at most 90% of what weights and scratch leave). The default
  // prefill weights (`auto`) keep their f16 rows only where this holds with them: they never take memory
  // the requested KV pool needs.
  static bool pool_fits(uint64_t have, uint64_t weights, uint64_t scratch, uint64_t pool) {
    return have == 0 || (weights + scratch < have && (have - weights - scratch) / 10 * 9 >= pool);
  }
  // A value of TROVE_PREFILL_WEIGHTS and the flags it sets (kPrefillWeightsModes).
  struct PrefillWeightsMode {
    std::string_view name;
    bool f16, experts, resident;
  };
  // What the default prefill weights (`auto`) resolve to: on matrix units with steps of
  // kPrefillF16MinTokens or more, `f16-dense-resident` where its rows (resident_rows) fit beside the
  // requested pool, else `f16-dense` where one layer's rows (step_rows) do, else `quant`; `quant` without
  // matrix units. H100, 2026-12-06 (docs/performance.md): resident rows took the 8B's pp512 from 10924
  // to 13520 tok/s; the 30B-A3B's dense rows resident 6828 -> 6936.
  static const PrefillWeightsMode& auto_prefill_weights(bool matrix_units, uint32_t max_tokens,
                                                        uint64_t have, uint64_t weights, uint64_t scratch,
                                                        uint64_t resident_rows, uint64_t step_rows,
                                                        uint64_t pool);

  const ModelConfig& config() const override { return cfg_; }
  const gguf::ModelInfo& info() const override { return info_; }
  const tokenizer::Tokenizer& tokenizer() const override { return *tok_; }
  Result<const chat::ChatRenderer*> renderer() const override {
    if (!renderer_) return Status::Unsupported(renderer_error_);
    return renderer_.get();
  }
  uint32_t n_ctx() const override { return n_ctx_; }
  uint32_t max_sequences() const override { return static_cast<uint32_t>(seqs_.size()); }
  uint32_t max_batch_tokens() const override { return max_tokens_; }
  uint32_t max_logit_rows() const override { return logit_rows_; }
  std::string device_name() const override { return dev_->features().name; }

  Result<SeqId> open_sequence() override;
  void close_sequence(SeqId seq) override;
  uint32_t length(SeqId seq) const override {
    return seq < seqs_.size() ? static_cast<uint32_t>(seqs_[seq].tokens.size()) : 0;
  }
  std::vector<int32_t> tokens(SeqId seq) const override {
    return seq < seqs_.size() ? seqs_[seq].tokens : std::vector<int32_t>{};
  }
  Status truncate(SeqId seq, uint32_t n) override;
  Result<std::vector<StepOutput>> step(std::span<const StepInput> inputs) override;
  bool verifies_drafts() const override { return true; }
  PoolStats pool_stats() const override {
    return {blocks_->total(), blocks_->used(), layout_.block_tokens,
            layout_.block_bytes() * blocks_->total() * cfg_.n_layer, blocks_->cached_count(),
            blocks_->evictions()};
  }
  std::string fingerprint() const override { return fingerprint_; }
  Result<uint32_t> attach_prefix(SeqId seq, std::span<const int32_t> tokens, std::string_view name_space) override;
  Result<uint32_t> begin_attach(SeqId seq, std::span<const int32_t> tokens, std::string_view name_space) override;
  bool restoring(SeqId seq) const override;
  void pump_restores(bool wait) override;
  CacheStats cache_stats() const override;
  void wait_for_store_writes() override {
    if (exporter_) exporter_->drain();
  }
  StoreWriteProgress store_write_progress() const override {
    if (!exporter_) return {};
    const BlockExporter::Counters c = exporter_->counters();
    return {c.handed, c.done};
  }
  ~VulkanEngine() override;

 private:
  Status load_weights(gguf::GgufFile& f, bool progress);
  Status fold_routers(gguf::GgufFile& f);  // fold_router_: every MoE layer's router folded through W_o
  Result<Weight> upload(const gguf::GgufFile& f, const std::string& name, bool to_f32, Progress& bar);
  Status alloc_scratch();
  Status record_matmul(vk::CommandStream& s, const Weight& w, uint64_t expert, uint32_t batch,
                       vk::BufferRange x, vk::BufferRange y, bool x_f16 = false);
  Status record_matvec(vk::CommandStream& s, std::initializer_list<MatvecOut> outs, uint32_t batch,
                       vk::BufferRange x, vk::BufferRange norm_w, ops::MatvecEpilogue epilogue,
                       bool batch1_bits);
  void embed(int32_t token, float* out) const;
  // Newly registered blocks the store does not hold yet go to to_store_ (exported after the step).
  void register_full_blocks(Sequence& sq);
  void drop_after(Sequence& s, uint32_t n);  // truncate() without accepting or registering
  uint64_t block_all_layers() const { return layout_.block_bytes() * cfg_.n_layer; }
  Status ensure_staging();
  // The engine's command stream (its pool, fence, query pool and descriptor sets live as long as the
  // engine: a decode step binds the same buffers every time, so after the first step no descriptor set
  // is written): step(), restores and exports record into it and submit_and_wait() before returning.
  // After a failure it is dropped (it may hold half a recording; its destructor waits for pieces in
  // flight) and the next call makes a fresh one. Host inputs of a step (mapped buffers) are written
  // before its first command is recorded: a piece may run before the step's last command is recorded.
  Result<vk::CommandStream*> stream();
  vk::StreamOptions stream_options_;  // pieces: TROVE_VK_CHUNK, else by device (see create())
  struct Restore;
  void start_group(Restore& r);
  void finish_restore();
  void export_to_store();

  std::unique_ptr<vk::Device> dev_;
  std::optional<vk::CommandStream> stream_;  // see stream(); destroyed before dev_
  Ops ops_;
  ModelConfig cfg_;
  gguf::ModelInfo info_;
  std::unique_ptr<tokenizer::Tokenizer> tok_;
  std::unique_ptr<chat::ChatRenderer> renderer_;
  std::string renderer_error_;
  uint32_t n_ctx_ = 0, max_tokens_ = 0, logit_rows_ = 0;
  StepProfile profile_;  // TROVE_PROFILE (engine/runtime/step_profile.h)
  // Steps of <= Matvec::kMaxBatch tokens (decode) run their dense products through ops::Matvec with the
  // norms, residual adds and SwiGLU fused in; TROVE_DECODE=matmul keeps them on the Matmul path (A/B).
  bool matvec_decode_ = true;
  // A step of one sequence with kMaxBatch+1 .. step_pieces_max_ tokens (nothing asked per token) runs as
  // pieces of at most kMaxBatch tokens on the decode matvecs, which read each weight once for all their
  // columns, where the matmuls' matrix tiles of 64+ columns mostly wait on their K loops (the 8B's
  // 16-token step: 31 ms on the KHR tile, H100 2026-12-06). Default kStepPiecesMax with matrix units,
  // else 0 (never); TROVE_STEP_PIECES_MAX=N sets it.
  uint32_t step_pieces_max_ = 0;
  static constexpr uint32_t kStepPiecesMax = 24;
  // TROVE_TEST_FAIL_STEP=N (tests only): the N-th GPU step since load fails after its inputs were placed
  // (KV blocks taken, tokens appended), as a lost device would, so that tests reach the paths that undo
  // a step (step()'s undo, step_in_order's cut back). 0: never. gpu_steps_ counts them.
  uint32_t fail_step_ = 0, gpu_steps_ = 0;
  Result<std::vector<StepOutput>> step_in_pieces(const StepInput& in);
  // Likewise a step of several sequences with at most kMaxBatch tokens each (concurrent decode streams):
  // groups of whole inputs of at most kMaxBatch tokens.
  Result<std::vector<StepOutput>> step_in_groups(std::span<const StepInput> inputs);
  // The pieces' and groups' steps in turn; one that fails cuts every sequence they touch back.
  Result<std::vector<std::vector<StepOutput>>> step_in_order(
      const std::vector<std::vector<StepInput>>& steps);
  // q/k norm, RoPE and the KV write as one dispatch per layer; TROVE_ROPE_KV=separate records the three
  // ops (A/B, and test_engine's check that both give the same tokens).
  bool fused_rope_kv_ = true;
  // MoE prefill on the matrix units: the FFN norm also writes f16 rows (xnh_) that the experts' grouped
  // GEMMs read (the router keeps the f32 rows); TROVE_MOE_F16=0 leaves them on the f32 rows (A/B).
  bool moe_f16_ = true;
  // Decode replay (on by default since 2026-12-05's H200 A/B; TROVE_DECODE_REPLAY=0 records every step): a decode step of
  // 1..8 tokens in all (one token for each of several sequences, or a sequence's verification of drafted
  // tokens), no profile of its ops, no KV block to copy, is captured once
  // (vk::CommandStream::begin_capture) under a key of what the recording fixes — the sequences, what
  // each asks for and its sampling parameters, and each attention call's slicing
  // (PagedAttention::replay_key, with its position read from positions_; the sampler's seed from
  // seeds_) — and later steps with the same key are submitted again as they are (one submit, nothing
  // recorded). replays_ maps keys to capture ids of stream_ (cleared with it).
  bool decode_replay_ = true;
  // TROVE_ATTENTION_STEP=batched (the default since 2026-12-05; `each` for A/B): a step whose sequences
  // all take decode v2 records their attention in one PagedAttention::record_decode_rows call (a
  // dispatch per slice length, their combines after one barrier) instead of one record() per sequence
  // (a dispatch each, and with several slices a barrier, a combine and a barrier each). 8 streams from
  // 4096-token prompts on the H100: 8B 548 → 712 tok/s, 30B-A3B 420 → 566 (docs/performance.md). Each
  // row's position is positions_[row] and its block table's offset in tables_ positions_[max_tokens_ + row].
  bool attention_step_batched_ = true;
  // TROVE_PREFILL_WEIGHTS=f16 / f16-dense (`quant` for A/B; the default `auto`: auto_prefill_weights): the
  // matmul steps of 256+ tokens on the matrix units (every matmul
  // step on a device without them) read the dense weights as f16 rows (ops::DequantF16) instead of decoding
  // K-quants per element. Each layer's Q/K/V, O, gate/up and down go to their own f16 buffer
  // (prefill_f16_slots_), each written in the barrier interval before the one whose GEMM reads it (beside
  // other work: see step()), so the dequantization overlaps the matrix units' products instead of preceding
  // them.
  // `f16` also dequantizes MoE layers' stacked experts (gate, up and down of every expert: ~1.2 GB for
  // Qwen3-30B-A3B) beside attention, for the grouped GEMMs; `f16-dense` leaves the experts as stored.
  // `f16-resident`: every layer's weights (experts too) dequantized once, at load, into buffers of their
  // own (every layer's matrices again in f16: 13.9 GB for Qwen3-8B) — steps then dequantize nothing;
  // `f16-dense-resident` the same without a MoE layer's experts (they stay as stored): the default where
  // its rows fit beside the requested KV pool.
  // TROVE_PREFILL_WEIGHTS's values besides `auto`, and the flags each sets (parsed, picked and named from
  // here; PrefillWeightsMode, above); prefill_weights_mode: the one of that name (nullptr: none);
  // set_prefill_weights: its flags.
  static const PrefillWeightsMode* prefill_weights_mode(std::string_view name);
  void set_prefill_weights(const PrefillWeightsMode& m) {
    prefill_f16_ = m.f16;
    prefill_f16_experts_ = m.experts;
    prefill_f16_resident_ = m.resident;
  }
  static constexpr PrefillWeightsMode kPrefillWeightsModes[] = {
      {"quant", false, false, false},       {"f16", true, true, false},
      {"f16-dense", true, false, false},    {"f16-resident", true, true, true},
      {"f16-dense-resident", true, false, true}};
  enum PrefillSlot : uint8_t { kSlotQkv, kSlotO, kSlotGateUp, kSlotDown, kSlotExperts, kPrefillSlots };
  bool prefill_f16_ = false, prefill_f16_experts_ = false, prefill_f16_resident_ = false;
  bool fold_router_ = false;  // MoE, TROVE_MOE_ROUTER=beside with an f32 router: Layer::router_n / router_o
  std::optional<ops::DequantF16> dequant_f16_;
  vk::Buffer prefill_f16_slots_[kPrefillSlots];
  std::vector<std::array<vk::Buffer, kPrefillSlots>> prefill_f16_layers_;  // f16-resident: per layer
  const vk::Buffer& f16_slot(uint32_t layer, PrefillSlot slot) const {
    return prefill_f16_resident_ ? prefill_f16_layers_[layer][slot] : prefill_f16_slots_[slot];
  }
  Status fill_f16_resident();  // f16-resident: every layer's f16 rows, once (at load)
  // The load log's name of the prefill weights: "as stored", or the f16 mode and its bytes.
  std::string prefill_weights_name() const;
  // Whether the step of T tokens (not through the matvec) reads f16 weights: T of kPrefillF16MinTokens
  // or more on matrix units (the f16 default's steps), every matmul step without them.
  static constexpr uint32_t kPrefillF16MinTokens = 256;
  bool prefill_f16_step(uint32_t T) const;
  // With the rows resident, the fewest tokens of such a step: the first step size above the pieces
  // (kStepPiecesMax + 1), or TROVE_PREFILL_F16_MIN (9..256). Nothing is written for them, so they pay
  // from there: one step of 25–128 tokens after 4096 took 17–19% less than on the quantized GEMMs (8B)
  // and 1–2% less (30B-A3B); below 21 tokens the pieces are the faster (H100 2026-12-06 21:51).
  static constexpr uint32_t kPrefillF16ResidentMinTokens = kStepPiecesMax + 1;
  uint32_t f16_resident_min_tokens_ = kPrefillF16ResidentMinTokens;
  // The f16 layout, defined once (f16_slot_weights): each slot holds a layer's weights of one role one
  // after the other, each 256-byte aligned — Q, K, V | O | gate, up | down | gate, up, down experts (a
  // role the layer lacks is an empty Weight: 0 bytes). f16_place: a weight's slot and byte offset;
  // f16_slot_bytes: what a slot needs for the layer.
  struct F16Place {
    PrefillSlot slot;
    uint64_t at;
  };
  static std::array<const Weight*, 3> f16_slot_weights(const Layer& L, PrefillSlot slot);
  static F16Place f16_place(const Layer& L, const Weight& w);
  static uint64_t f16_slot_bytes(const Layer& L, PrefillSlot slot);
  static uint64_t f16_bytes(const Weight& w) { return (w.experts * w.rows * w.cols * 2 + 255) / 256 * 256; }
  // A MoE layer's experts as their f16 rows in kSlotExperts.
  MoeLayerWeights experts_f16(const Layer& L, uint32_t layer) const;
  // The f16 rows' size from the model's shapes (the memory plan, before loading): one layer's slots, or
  // every layer's when resident; experts included or not. Without arguments, for the mode set.
  uint64_t prefill_f16_bytes(bool experts, bool resident) const;
  uint64_t prefill_f16_bytes() const {
    return prefill_f16_bytes(prefill_f16_experts_, prefill_f16_resident_);
  }
  // Layer L's weight `w` dequantized into its place (nothing for F16 weights, which the GEMM reads where
  // they are), and the GEMM reading it from there.
  Status record_dequant_f16(vk::CommandStream& s, const Layer& L, uint32_t layer, const Weight& w);
  Status record_matmul_f16(vk::CommandStream& s, const Layer& L, uint32_t layer, const Weight& w, uint32_t batch,
                           vk::BufferRange x, vk::BufferRange y, bool x_f16 = false);
  std::map<std::array<uint64_t, 3>, uint32_t> replays_;
  static constexpr size_t kMaxReplays = 64;  // past this many keys the captures are dropped and made anew
  // L2 warm-ups in decode steps (matvec path; engine/runtime/l2_warm_plan.h): none unless TROVE_L2_WARM
  // sets a plan. record_l2_warm() records the plan's items for dispatch `at` of `layer`; `done` holds
  // the words of each weight read so far in the layer.
  std::vector<L2WarmItem> l2_warm_;
  std::optional<ops::L2Warm> l2_warm_op_;
  vk::Buffer l2_warm_out_;
  Status record_l2_warm(vk::CommandStream& s, WarmAt at, uint32_t layer, uint64_t (&done)[kWarmWhats]);
  // How decode steps wait for the GPU (vk::CommandStream::Wait): spin on GPUs, block on CPU devices;
  // TROVE_VK_WAIT=spin|block.
  vk::CommandStream::Wait decode_wait_ = vk::CommandStream::Wait::kBlock;

  std::vector<Layer> layers_;
  Weight output_norm_, head_;
  GgmlType embd_type_ = GgmlType::F32;
  uint64_t embd_row_bytes_ = 0;
  // Embedding rows on the GPU (ops::GetRows from token_embd as stored: the head's buffer when tied,
  // embd_gpu_ otherwise) when its type is one GetRows reads and it fits one buffer; else dequantized on
  // the host from embd_host_ (the file's bytes) and copied in through x_in_.
  bool embd_on_gpu_ = false;
  Weight embd_gpu_;
  std::optional<ops::GetRows> get_rows_;
  std::vector<uint8_t> embd_host_;

  kv::KvLayout layout_;
  std::vector<vk::Buffer> kv_;  // one pool buffer per layer
  std::unique_ptr<BlockPool> blocks_;
  std::vector<Sequence> seqs_;

  // Scratch, sized for max_tokens_ rows (and max_sequences_ output rows).
  vk::Buffer x_in_, x_, xn_, q_, k_, v_, attn_, o_, gate_, up_, h_;
  vk::Buffer xnh_, hh_;  // f16 copies of xn_ / h_ that large-batch (matrix-unit) matmuls read
  vk::Buffer ids_;  // int32 token ids of the step (GPU embedding rows)
  vk::Buffer positions_, slots_, tables_, hs_, logits_, tokens_out_, logits_host_, tokens_host_;
  vk::Buffer routing_host_;  // TROVE_PROFILE=routing: each MoE layer's expert offsets of the last step
  vk::Buffer seeds_;  // decode replay: the sampler's seed per output row, written before each step
  std::optional<MoeLayer> moe_;  // MoE models: the routed-expert FFN and its scratch (shared by all layers)
  uint32_t table_stride_ = 0;  // int32 entries per sequence in tables_ (aligned)
  XXH3_state_t* weights_hash_ = nullptr;  // live only while loading
  std::string fingerprint_;

  // KV store tier.
  std::shared_ptr<kv::Store> store_;
  struct Export {
    uint32_t block;
    kv::BlockKey key, parent;
    std::string name_space;
    std::vector<int32_t> tokens;
  };
  std::vector<Export> to_store_;  // registered during the current step, copied back at its end
  Status ensure_exporter();
  // A sequence's blocks being read from the store (front: the one in progress).
  struct Restore {
    SeqId seq = 0;
    std::vector<int32_t> tokens;  // the prompt's tokens up to the end of the stored chain
    std::vector<kv::BlockRef> want;  // the blocks after the GPU match
    size_t next_group = 0;           // next group of staging_blocks_ blocks to read
    std::deque<std::future<std::vector<Status>>> reading;  // at most 2: one per staging half
    size_t restored = 0;
    bool ended = false;
    double seconds = 0;
  };
  std::deque<Restore> restores_;
  vk::Buffer staging_;            // host-cached, 2 * staging_blocks_ pool blocks (all layers)
  uint32_t staging_blocks_ = 0;   // blocks per half (reads fill one half while the GPU copies the other)
  uint32_t restore_group_blocks_ = 0;  // EngineOptions::restore_group_blocks
  // The write-behind: export_to_store() copies completed blocks into slots of export_staging_ (host-cached,
  // its own so that restores never wait for it) and exporter_'s worker queues them in the store.
  vk::Buffer export_staging_;
  std::unique_ptr<BlockExporter> exporter_;  // after export_staging_: stops (drained) before it is freed
  CacheStats cache_stats_;
  bool store_reads_failing_ = false;  // the last store read failed (logged once until one succeeds)
};

}  // namespace trove::engine::internal
