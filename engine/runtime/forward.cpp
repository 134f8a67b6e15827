// The Qwen3 / Qwen3-MoE forward pass on the Vulkan ops of kernels/.
//
// One step() records the whole batch into the engine's command stream (made once, reused by every
// step): embedding rows (ops::GetRows from token_embd on the GPU; dequantized on the host only when the
// table cannot be one GPU buffer of a type GetRows reads), then per layer RMSNorm → Q/K/V →
// QK-norm → RoPE → KV write → paged attention per sequence → output projection + residual → RMSNorm →
// SwiGLU FFN or routed experts + residual, then the final norm and the head for the rows that need a
// next token. MoE layers record their routed experts into the same stream (engine/runtime/moe_layer.h:
// routing, grouping and expert matvecs on the GPU), so a step is one submission for every model —
// cut into pieces on a GPU (vk::StreamOptions, TROVE_VK_CHUNK): the GPU runs the first layers while the
// host records the next ones.
// Steps of at most ops::Matvec::kMaxBatch tokens (decode of 1..8 sequences, short prompts) run the
// dense products through ops::Matvec with the RMSNorms, residual adds and SwiGLU fused into them (QKV,
// O+residual, gate/up+SwiGLU, down+residual: 4 dispatches instead of 12 per dense layer; the head with
// the final norm). Longer steps use ops::Matmul. TROVE_DECODE=matmul sends every step through Matmul.
#include <algorithm>
#include <bit>
#include <chrono>
#include <cmath>
#include <vector>

#include <fmt/format.h>

#include "common/log.h"
#include "engine/runtime/vulkan_engine.h"

namespace trove::engine::internal {

Status VulkanEngine::record_matmul(vk::CommandStream& s, const Weight& w, uint64_t expert, uint32_t batch,
                                   vk::BufferRange x, vk::BufferRange y, bool x_f16) {
  const uint64_t g0 = expert * w.rows;  // first global row of this expert
  for (const auto& p : w.pieces) {
    if (g0 >= p.first_row && g0 + w.rows <= p.first_row + p.rows && w.rows <= kMaxMatmulRows) {
      vk::BufferRange wr(p.buf, (g0 - p.first_row) * w.row_bytes, 0);
      wr.size = std::min<uint64_t>((w.expert_bytes() + 3) / 4 * 4, p.buf.size() - wr.offset);
      return ops_.matmul.record(s, w.type, static_cast<uint32_t>(w.rows), static_cast<uint32_t>(w.cols), batch, wr, x, y, 0,
                                x_f16);
    }
  }
  // Row-split (the vocabulary head, or a matrix spread over several buffers): one dispatch per row
  // range, all batch rows at once, writing into the full-width output rows (y stride = w.rows). Piece
  // and range starts are multiples of 64 rows, so the output offsets stay 256-byte aligned.
  for (const auto& p : w.pieces) {
    const uint64_t lo = std::max(g0, p.first_row), hi = std::min(g0 + w.rows, p.first_row + p.rows);
    for (uint64_t r0 = lo; r0 < hi; r0 += kMaxMatmulRows) {
      const uint64_t n = std::min<uint64_t>(kMaxMatmulRows, hi - r0);
      vk::BufferRange wr(p.buf, (r0 - p.first_row) * w.row_bytes, 0);
      wr.size = std::min<uint64_t>((n * w.row_bytes + 3) / 4 * 4, p.buf.size() - wr.offset);
      vk::BufferRange yr = y;
      yr.offset += (r0 - g0) * 4;
      yr.size = (uint64_t{batch - 1} * w.rows + n) * 4;
      TROVE_RETURN_IF_ERROR(ops_.matmul.record(s, w.type, static_cast<uint32_t>(n), static_cast<uint32_t>(w.cols), batch,
                                               wr, x, yr, static_cast<uint32_t>(w.rows), x_f16));
    }
  }
  return Status::Ok();
}

// Every layer's weights are written as f16 each step (13.9 GB for Qwen3-8B: ~4–5 ms of writes at the
// H200's copy bandwidth, an estimate): only steps long enough for that to be a few percent of their GEMMs (256+ tokens)
// take it on matrix units; on devices without them every matmul step does (the tests' way in). With
// the rows resident nothing is written: every step above the pieces reads them (f16_resident_min_tokens_,
// TROVE_PREFILL_F16_MIN).
bool VulkanEngine::prefill_f16_step(uint32_t T) const {
  const uint32_t min_tokens = prefill_f16_resident_ ? f16_resident_min_tokens_ : kPrefillF16MinTokens;
  return prefill_f16_ && T > ops::Matvec::kMaxBatch && (T >= min_tokens || !ops_.matmul.uses_coopmat());
}

// A dense weight of one piece of at most kMaxMatmulRows rows (every Qwen3 projection and FFN matrix)
// takes the f16 form; anything else (none today) keeps its own.
namespace {
bool f16_eligible(const Weight& w) {
  return w.experts == 1 && w.rows <= kMaxMatmulRows && w.pieces.size() == 1 && w.cols % 32 == 0;
}
// A MoE layer's stacked experts (one buffer, as the MoE kernels need) as rows of f16.
bool experts_f16_eligible(const Weight& w) {
  return w.pieces.size() == 1 && w.cols % 32 == 0;
}
}  // namespace

std::array<const Weight*, 3> VulkanEngine::f16_slot_weights(const Layer& L, PrefillSlot slot) {
  switch (slot) {
    case kSlotQkv: return {&L.q, &L.k, &L.v};
    case kSlotO: return {&L.o, nullptr, nullptr};
    case kSlotGateUp: return {&L.gate, &L.up, nullptr};
    case kSlotDown: return {&L.down, nullptr, nullptr};
    case kSlotExperts: return {&L.gate_exps, &L.up_exps, &L.down_exps};
    case kPrefillSlots: break;
  }
  return {nullptr, nullptr, nullptr};
}

VulkanEngine::F16Place VulkanEngine::f16_place(const Layer& L, const Weight& w) {
  for (int slot = 0; slot < kPrefillSlots; ++slot) {
    uint64_t at = 0;
    for (const Weight* p : f16_slot_weights(L, static_cast<PrefillSlot>(slot))) {
      if (p == &w) return {static_cast<PrefillSlot>(slot), at};
      if (p) at += f16_bytes(*p);
    }
  }
  return {kPrefillSlots, 0};  // not one of the layer's weights (callers pass only theirs)
}

uint64_t VulkanEngine::f16_slot_bytes(const Layer& L, PrefillSlot slot) {
  uint64_t n = 0;
  for (const Weight* p : f16_slot_weights(L, slot)) n += p ? f16_bytes(*p) : 0;
  return n;
}

Status VulkanEngine::record_dequant_f16(vk::CommandStream& s, const Layer& L, uint32_t layer, const Weight& w) {
  const F16Place place = f16_place(L, w);
  if (w.type == GgmlType::F16 || !(place.slot == kSlotExperts ? experts_f16_eligible(w) : f16_eligible(w))) {
    return Status::Ok();
  }
  const vk::Buffer& wb = w.whole();
  const uint64_t rows = w.experts * w.rows;
  return dequant_f16_->record(
      s, w.type, vk::BufferRange(wb, 0, std::min<uint64_t>((rows * w.row_bytes + 3) / 4 * 4, wb.size())),
      static_cast<uint32_t>(rows), static_cast<uint32_t>(w.cols),
      vk::BufferRange(f16_slot(layer, place.slot), place.at, rows * w.cols * 2));
}

MoeLayerWeights VulkanEngine::experts_f16(const Layer& L, uint32_t layer) const {
  MoeLayerWeights m = L.moe;
  for (auto [w, e] :
       {std::pair{&L.gate_exps, &m.gate}, std::pair{&L.up_exps, &m.up}, std::pair{&L.down_exps, &m.down}}) {
    if (w->type != GgmlType::F16 && experts_f16_eligible(*w)) {
      e->type = GgmlType::F16;
      e->w = vk::BufferRange(f16_slot(layer, kSlotExperts), f16_place(L, *w).at, w->experts * w->rows * w->cols * 2);
    }
  }
  return m;
}

Status VulkanEngine::record_matmul_f16(vk::CommandStream& s, const Layer& L, uint32_t layer, const Weight& w,
                                       uint32_t batch, vk::BufferRange x, vk::BufferRange y, bool x_f16) {
  if (w.type == GgmlType::F16 || !f16_eligible(w)) return record_matmul(s, w, 0, batch, x, y, x_f16);
  const F16Place place = f16_place(L, w);
  return ops_.matmul.record(s, GgmlType::F16, static_cast<uint32_t>(w.rows), static_cast<uint32_t>(w.cols),
                            batch, vk::BufferRange(f16_slot(layer, place.slot), place.at, w.rows * w.cols * 2), x,
                            y, 0, x_f16);
}

Status VulkanEngine::record_l2_warm(vk::CommandStream& s, WarmAt at, uint32_t layer, uint64_t (&done)[kWarmWhats]) {
  for (const L2WarmItem& it : l2_warm_) {
    if (it.at != at) continue;
    const bool next = it.what == kWarmWqkv;
    if (next && layer + 1 >= layers_.size()) continue;
    const Layer& L = layers_[next ? layer + 1 : layer];
    std::vector<const Weight*> ws;
    switch (it.what) {
      case kWarmWo: ws = {&L.o}; break;
      case kWarmWgu: ws = {&L.gate, &L.up}; break;
      case kWarmWdown: ws = {&L.down}; break;
      case kWarmWqkv: ws = {&L.q, &L.k, &L.v}; break;
      case kWarmWhats: break;
    }
    // The same share of each weight (gate and up are read side by side), from where the layer's
    // earlier items stopped.
    uint64_t total = 0;
    for (const Weight* w : ws) total += w->pieces.empty() ? 0 : w->whole().size() / 16;
    if (total == 0) continue;
    uint64_t& from = done[it.what];
    const uint64_t want = it.bytes == 0 ? total : std::min<uint64_t>(total, from + it.bytes / 16);
    for (const Weight* w : ws) {
      if (w->pieces.empty()) continue;
      const uint64_t words = w->whole().size() / 16;
      const uint64_t a = from * words / total, b = want * words / total;
      if (b > a) TROVE_RETURN_IF_ERROR(l2_warm_op_->record(s, w->whole(), a, b - a, l2_warm_out_));
    }
    from = want;
  }
  return Status::Ok();
}

// W·x̂ for 1..3 weights sharing x through ops::Matvec (batch <= Matvec::kMaxBatch; norm_w empty = no
// RMSNorm prologue). One dispatch when every weight lies in one buffer; a weight spread over several
// buffers (the vocabulary head of a large model) goes one row range at a time, each call writing its
// slice of the full-width output (y stride = the weight's rows). kSwiGlu's gate and up (equal rows) are
// cut at the same rows; other epilogues cut each weight on its own. batch1_bits: ops::MatvecCall's.
Status VulkanEngine::record_matvec(vk::CommandStream& s, std::initializer_list<MatvecOut> outs,
                                   uint32_t batch, vk::BufferRange x, vk::BufferRange norm_w,
                                   ops::MatvecEpilogue epilogue, bool batch1_bits) {
  ops::MatvecCall call;
  call.cols = static_cast<uint32_t>(outs.begin()->w->cols);
  call.batch = batch;
  call.x = x;
  call.norm_w = norm_w;
  call.eps = cfg_.rms_eps;
  call.epilogue = epilogue;
  call.batch1_bits = batch1_bits;
  bool whole = true;
  for (const MatvecOut& o : outs) whole &= o.w->pieces.size() == 1 && o.w->rows * o.w->row_bytes <= kMaxMatvecBytes;
  if (whole) {
    uint32_t m = 0;
    for (const MatvecOut& o : outs) {
      const vk::Buffer& b = o.w->whole();
      call.mats[m++] = {o.w->type, static_cast<uint32_t>(o.w->rows),
                        vk::BufferRange(b, 0, std::min<uint64_t>((o.w->expert_bytes() + 3) / 4 * 4, b.size())), o.y, 0};
    }
    call.n_mats = m;
    return ops_.matvec->record(s, call);
  }
  // Row ranges [r0, r1): inside one piece of every weight of the group, below kMaxMatvecBytes, starting
  // at multiples of 64 rows (piece starts are), so the output offsets stay 256-byte aligned.
  auto group = [&](std::span<const MatvecOut> g) -> Status {
    const uint64_t rows = g.front().w->rows;
    for (uint64_t r0 = 0; r0 < rows;) {
      uint64_t r1 = rows;
      const Weight::Piece* at[2] = {nullptr, nullptr};
      for (size_t m = 0; m < g.size(); ++m) {
        const Weight& w = *g[m].w;
        for (const auto& p : w.pieces) {
          if (r0 >= p.first_row && r0 < p.first_row + p.rows) at[m] = &p;
        }
        if (!at[m]) return Status::Internal(fmt::format("matvec: row {} of a {}-row weight is in none of its buffers", r0, rows));
        r1 = std::min({r1, at[m]->first_row + at[m]->rows, r0 + std::max<uint64_t>(64, kMaxMatvecBytes / w.row_bytes / 64 * 64)});
      }
      const uint64_t n = r1 - r0;
      for (size_t m = 0; m < g.size(); ++m) {
        const Weight& w = *g[m].w;
        vk::BufferRange wr(at[m]->buf, (r0 - at[m]->first_row) * w.row_bytes, 0);
        wr.size = std::min<uint64_t>((n * w.row_bytes + 3) / 4 * 4, at[m]->buf.size() - wr.offset);
        vk::BufferRange yr = g[m].y;
        if (yr.buffer != VK_NULL_HANDLE) {
          yr.offset += r0 * 4;
          yr.size = (uint64_t{batch - 1} * rows + n) * 4;
        }
        call.mats[m] = {w.type, static_cast<uint32_t>(n), wr, yr, static_cast<uint32_t>(rows)};
      }
      call.n_mats = static_cast<uint32_t>(g.size());
      TROVE_RETURN_IF_ERROR(ops_.matvec->record(s, call));
      r0 = r1;
    }
    return Status::Ok();
  };
  const std::vector<MatvecOut> all(outs);
  if (epilogue == ops::MatvecEpilogue::kSwiGlu) return group(all);
  for (size_t m = 0; m < all.size(); ++m) TROVE_RETURN_IF_ERROR(group(std::span(all).subspan(m, 1)));
  return Status::Ok();
}

namespace {

// Head rows (logits, argmax) an input asks for: every token's with all_tokens or all_logits, else the last.
uint32_t head_rows(const StepInput& in, uint32_t n) {
  return in.all_tokens || (in.want_logits && in.all_logits) ? n : 1;
}

}  // namespace

// Runs `steps` in order, each a step() of its own, and returns each one's outputs. step() validated
// the whole of them first (context, token ids, KV blocks), so one fails only on the GPU; then every
// sequence they touch is cut back to its length before the first, and the error returned.
Result<std::vector<std::vector<StepOutput>>> VulkanEngine::step_in_order(
    const std::vector<std::vector<StepInput>>& steps) {
  std::vector<std::pair<SeqId, uint32_t>> starts;
  for (const auto& st : steps) {
    for (const StepInput& in : st) {
      starts.emplace_back(in.seq, static_cast<uint32_t>(seqs_[in.seq].tokens.size()));
    }
  }
  std::vector<std::vector<StepOutput>> outs;
  for (const auto& st : steps) {
    auto out = step(st);
    if (!out.ok()) {
      // The first recorded length of a sequence is its length before the first step (reverse order).
      for (auto it = starts.rbegin(); it != starts.rend(); ++it) drop_after(seqs_[it->first], it->second);
      return out.status();
    }
    outs.push_back(std::move(*out));
  }
  return outs;
}

// The pieces are as even as kMaxBatch allows (16 tokens: 8 + 8; 20: 7 + 7 + 6); only the last samples or
// returns logits.
Result<std::vector<StepOutput>> VulkanEngine::step_in_pieces(const StepInput& in) {
  const uint32_t n = static_cast<uint32_t>(in.tokens.size());
  const uint32_t pieces = (n + ops::Matvec::kMaxBatch - 1) / ops::Matvec::kMaxBatch;
  std::vector<std::vector<StepInput>> steps;
  for (uint32_t p = 0, off = 0; p < pieces; ++p) {
    const uint32_t len = (n - off + (pieces - p) - 1) / (pieces - p);
    const bool last = p + 1 == pieces;
    StepInput piece = in;
    piece.tokens = in.tokens.subspan(off, len);
    piece.sample = last && in.sample;
    piece.want_logits = last && in.want_logits;
    steps.push_back({piece});
    off += len;
  }
  auto outs = step_in_order(steps);
  if (!outs.ok()) return outs.status();
  return std::move(outs->back());
}

// Several sequences' inputs of at most kMaxBatch tokens each (concurrent decode streams, verifications)
// go whole into groups of at most kMaxBatch tokens, in order (16 one-token streams: 8 + 8); each input
// keeps all it asks for, and the outputs come back in the inputs' order.
Result<std::vector<StepOutput>> VulkanEngine::step_in_groups(std::span<const StepInput> inputs) {
  std::vector<std::vector<StepInput>> steps;
  for (size_t i = 0, n = ops::Matvec::kMaxBatch; i < inputs.size(); ++i) {
    if (n + inputs[i].tokens.size() > ops::Matvec::kMaxBatch) {
      steps.emplace_back();
      n = 0;
    }
    steps.back().push_back(inputs[i]);
    n += inputs[i].tokens.size();
  }
  auto outs = step_in_order(steps);
  if (!outs.ok()) return outs.status();
  std::vector<StepOutput> all;
  for (auto& group : *outs) {
    for (auto& o : group) all.push_back(std::move(o));
  }
  return all;
}

Result<std::vector<StepOutput>> VulkanEngine::step(std::span<const StepInput> inputs) {
  const auto step_start = std::chrono::steady_clock::now();
  const ModelConfig& c = cfg_;
  // Validate everything before touching any state.
  uint32_t T = 0;
  uint32_t need_blocks = 0, rows = 0;
  std::vector<bool> seen(seqs_.size(), false);
  for (const StepInput& in : inputs) {
    if (in.seq >= seqs_.size() || !seqs_[in.seq].open) return Status::NotFound(fmt::format("sequence {} is not open", in.seq));
    if (seen[in.seq]) return Status::InvalidArgument(fmt::format("sequence {} appears twice in one step", in.seq));
    if (restoring(in.seq)) {
      return Status::InvalidArgument(fmt::format("sequence {} is still restoring its prefix from the KV store", in.seq));
    }
    seen[in.seq] = true;
    if (in.tokens.empty()) return Status::InvalidArgument(fmt::format("sequence {}: a step needs at least one token", in.seq));
    const Sequence& s = seqs_[in.seq];
    const uint64_t end = s.tokens.size() + in.tokens.size();
    if (end > n_ctx_) {
      return Status::ResourceExhausted(fmt::format("sequence {}: {} tokens exceed the context of {} tokens", in.seq, end, n_ctx_));
    }
    for (int32_t t : in.tokens) {
      if (t < 0 || static_cast<uint32_t>(t) >= c.n_vocab) {
        return Status::InvalidArgument(fmt::format("token id {} is outside the vocabulary (0..{})", t, c.n_vocab - 1));
      }
    }
    if (in.sample && in.sampling.temperature > 0) {
      const auto& p = in.sampling;
      if (!(p.top_p > 0 && p.top_p <= 1) || !(p.min_p >= 0 && p.min_p < 1)) {
        return Status::InvalidArgument(fmt::format("sampling: top_p {} must be in (0, 1] and min_p {} in [0, 1)", p.top_p, p.min_p));
      }
    }
    T += static_cast<uint32_t>(in.tokens.size());
    if (in.provisional > in.tokens.size()) {
      return Status::InvalidArgument(fmt::format("sequence {}: {} provisional tokens in a step of {}", in.seq,
                                                 in.provisional, in.tokens.size()));
    }
    if (in.want_logits || in.sample || in.all_tokens) {
      rows += (in.want_logits && in.all_logits) || in.all_tokens ? static_cast<uint32_t>(in.tokens.size()) : 1;
    }
    const uint64_t have = s.blocks.size() * uint64_t{layout_.block_tokens};
    if (end > have) need_blocks += static_cast<uint32_t>((end - have + layout_.block_tokens - 1) / layout_.block_tokens);
    // Copy-on-write of a shared, partially filled last block.
    if (s.tokens.size() % layout_.block_tokens != 0 && !s.blocks.empty() && blocks_->must_copy(s.blocks.back())) ++need_blocks;
  }
  if (T == 0) return std::vector<StepOutput>{};
  if (T > max_tokens_) return Status::InvalidArgument(fmt::format("a step of {} tokens exceeds the batch limit of {}", T, max_tokens_));
  if (rows > logit_rows_) {
    return Status::InvalidArgument(fmt::format("a step asking for {} logit rows exceeds the limit of {}", rows, logit_rows_));
  }
  if (need_blocks > blocks_->available()) {
    return Status::ResourceExhausted(fmt::format("the KV pool needs {} more blocks but only {} of {} are free", need_blocks,
                                                 blocks_->available(), blocks_->total()));
  }

  if (T > ops::Matvec::kMaxBatch && T <= step_pieces_max_ && matvec_decode_) {
    if (inputs.size() == 1 && !inputs[0].all_logits && !inputs[0].all_tokens && inputs[0].provisional == 0) {
      return step_in_pieces(inputs[0]);
    }
    if (inputs.size() > 1 && std::all_of(inputs.begin(), inputs.end(), [](const StepInput& in) {
          return in.tokens.size() <= ops::Matvec::kMaxBatch;
        })) {
      return step_in_groups(inputs);
    }
  }
  auto stream = this->stream();
  if (!stream.ok()) return stream.status();
  vk::CommandStream& s = **stream;
  // Decode replay (decode_replay_): a decode step (up to Matvec::kMaxBatch tokens: one token for each
  // of several sequences, or a verification of drafted tokens) that records nothing host-chosen but the
  // attention's slicing (its positions come from positions_) — no per-op profile, no KV block to copy
  // first — runs a captured step again when one has its key.
  std::optional<std::array<uint64_t, 3>> replay_key;
  if (decode_replay_ && T <= ops::Matvec::kMaxBatch && matvec_decode_ && embd_on_gpu_ && !profile_.ops() &&
      !profile_.phases() && l2_warm_.empty()) {
    // The key: the sequences in order with their token counts, what each asks for with its sampling
    // parameters, and each attention call's slicing.
    const kernels::ref::PagedKvShape shape{blocks_->total(), layout_.block_tokens, c.n_head_kv, c.head_dim};
    auto mix = [](uint64_t& h, uint64_t v) { h = (h ^ v) * 0x100000001b3ull; };
    std::array<uint64_t, 3> key{0xcbf29ce484222325ull, 0xcbf29ce484222325ull, 0xcbf29ce484222325ull};
    bool ok = true;
    for (const StepInput& in : inputs) {
      const Sequence& sq = seqs_[in.seq];
      const uint32_t start = static_cast<uint32_t>(sq.tokens.size());
      const bool cow = start % layout_.block_tokens != 0 && !sq.blocks.empty() && blocks_->must_copy(sq.blocks.back());
      const uint32_t n = static_cast<uint32_t>(in.tokens.size());
      const auto attn = ops_.attention.replay_key(ops::AttentionCall{shape, c.n_head, start, n, 1.0f, ops::AttentionPath::kAuto});
      if (cow || !attn) {
        ok = false;
        break;
      }
      mix(key[0], in.seq);
      mix(key[0], n);
      mix(key[1], (in.sample ? 1u : 0u) | (in.want_logits ? 2u : 0u) | (in.all_tokens ? 4u : 0u) | (in.all_logits ? 8u : 0u));
      if (in.sample && in.sampling.temperature > 0) {  // the sampler's push constants but the seed
        const Sampling& p = in.sampling;
        for (float v : {p.temperature, p.top_p, p.min_p, static_cast<float>(p.top_k)}) mix(key[1], std::bit_cast<uint32_t>(v));
      }
      mix(key[2], *attn);
    }
    if (ok) replay_key = key;
  }
  const vk::StreamCounters counters_before = s.counters();
  const uint64_t pipelines_before = dev_->pipelines_created();

  // Host inputs: token ids (or embedding rows), positions, KV slots, block tables.
  auto* xin = static_cast<float*>(x_in_.mapped());
  auto* ids = static_cast<int32_t*>(ids_.mapped());
  auto* pos = static_cast<int32_t*>(positions_.mapped());
  auto* slot = static_cast<uint32_t*>(slots_.mapped());
  auto* table = static_cast<int32_t*>(tables_.mapped());
  struct Placed { uint32_t first, n, start; };
  std::vector<Placed> placed;
  uint32_t t = 0;
  for (size_t i = 0; i < inputs.size(); ++i) {
    const StepInput& in = inputs[i];
    Sequence& sq = seqs_[in.seq];
    const uint32_t start = static_cast<uint32_t>(sq.tokens.size());
    if (start % layout_.block_tokens != 0 && blocks_->must_copy(sq.blocks.back())) {
      const uint32_t fresh = *blocks_->allocate();
      for (uint32_t l = 0; l < c.n_layer; ++l) {
        s.copy(kv_[l], sq.blocks.back() * layout_.block_bytes(), kv_[l], fresh * layout_.block_bytes(), layout_.block_bytes());
      }
      blocks_->release(sq.blocks.back());
      sq.blocks.back() = fresh;
      s.barrier();
    }
    while (sq.blocks.size() * layout_.block_tokens < start + in.tokens.size()) sq.blocks.push_back(*blocks_->allocate());
    for (uint32_t j = 0; j < in.tokens.size(); ++j) {
      const uint32_t p = start + j;
      if (embd_on_gpu_) {
        ids[t + j] = in.tokens[j];
      } else {
        embed(in.tokens[j], xin + uint64_t{t + j} * c.n_embd);
      }
      pos[t + j] = static_cast<int32_t>(p);
      pos[max_tokens_ + t + j] = static_cast<int32_t>(in.seq * table_stride_);  // record_decode_rows' table offsets
      slot[t + j] = sq.blocks[p / layout_.block_tokens] * layout_.block_tokens + p % layout_.block_tokens;
    }
    for (size_t b = 0; b < sq.blocks.size(); ++b) table[in.seq * table_stride_ + b] = static_cast<int32_t>(sq.blocks[b]);
    placed.push_back({t, static_cast<uint32_t>(in.tokens.size()), start});
    sq.tokens.insert(sq.tokens.end(), in.tokens.begin(), in.tokens.end());
    t += static_cast<uint32_t>(in.tokens.size());
  }
  // From here on a failure must undo the appends.
  auto undo = [&]() {
    for (size_t i = 0; i < inputs.size(); ++i) drop_after(seqs_[inputs[i].seq], placed[i].start);
  };

  // A fresh draw per position: the sampling seed mixed with the position of the token being chosen.
  auto draw_seed = [&](const StepInput& in) {
    const uint64_t mix = (in.sampling.seed ^ 0x9E3779B97F4A7C15ull) * 0xBF58476D1CE4E5B9ull +
                         seqs_[in.seq].tokens.size() * 0x94D049BB133111EBull;
    return static_cast<uint32_t>(mix ^ (mix >> 31) ^ (mix >> 17));
  };
  std::vector<uint8_t> marks;  // TROVE_PROFILE=ops: the op kind that ends at each timestamp
  auto run = [&]() -> Status {
    if (fail_step_ != 0 && ++gpu_steps_ == fail_step_) {
      return Status::Internal(fmt::format("step {} of {} tokens failed on purpose (TROVE_TEST_FAIL_STEP={})",
                                          gpu_steps_, T, fail_step_));
    }
    auto mark = [&](OpKind k) {
      if (!profile_.ops()) return;
      s.timestamp();
      marks.push_back(k);
    };
    bool capturing = false;
    uint32_t capture_before = vk::CommandStream::kNoCapture;
    if (replay_key) {
      if (auto it = replays_.find(*replay_key); it != replays_.end() && !s.capture_valid(it->second)) {
        s.drop_captures();  // the stream's descriptor cache was emptied: every capture went with it
        replays_.clear();
      } else if (it != replays_.end()) {
        uint32_t row = 0;  // each input's first head row, in order; a sampled input samples at its last
        for (const StepInput& in : inputs) {
          if (!in.sample && !in.want_logits && !in.all_tokens) continue;
          const uint32_t n = head_rows(in, static_cast<uint32_t>(in.tokens.size()));
          if (in.sample && in.sampling.temperature > 0) static_cast<uint32_t*>(seeds_.mapped())[row + n - 1] = draw_seed(in);
          row += n;
        }
        TROVE_RETURN_IF_ERROR(s.replay(it->second, decode_wait_));
        profile_.add_step(s, counters_before, T, false, marks);
        return Status::Ok();
      }
      if (replays_.size() >= kMaxReplays) {
        s.drop_captures();
        replays_.clear();
      }
      capture_before = s.last_capture();
      capturing = s.begin_capture().ok();  // refused (pool descriptors): recorded as usual
      replays_.erase(*replay_key);
    }
    if (profile_.steps()) s.timestamp();
    mark(kOpEmbed);
    const uint32_t H = c.n_head, KVH = c.n_head_kv, D = c.head_dim, E = c.n_embd;
    const uint64_t erow = uint64_t{E} * 4;
    if (embd_on_gpu_) {
      const Weight& table = c.tied_embeddings ? head_ : embd_gpu_;
      TROVE_RETURN_IF_ERROR(get_rows_->record(s, table.whole(), ids_, x_, c.n_vocab, E, T));
    } else {
      s.copy(x_in_, 0, x_, 0, uint64_t{T} * erow);
    }
    s.barrier();
    if (profile_.phases()) s.timestamp();
    mark(kOpEmbed);
    kernels::ref::PagedKvShape shape{blocks_->total(), layout_.block_tokens, KVH, D};
    const float scale = 1.0f / std::sqrt(static_cast<float>(D));
    // Prefill on the matrix units: the norms and SwiGLU before a matmul emit f16 once, which the
    // matmul reads as it is (it rounds its operands to f16 anyway: the same numbers, no re-conversion
    // per row tile). Decode and the tiled path keep f32.
    const bool f16_acts =
        T >= ops_.matmul.matrix_min_batch() && ops_.matmul.uses_coopmat() && E % 2 == 0 && c.n_ff % 2 == 0;
    // Decode (and prompts of a few tokens): the dense products through ops::Matvec, which reads each
    // weight once for all T columns, with the RMSNorms as its prologue and the residual adds and SwiGLU
    // as its epilogues: QKV, O (+x), gate/up (SwiGLU), down (+x) — 4 dispatches where the matmul path
    // records 12. Its inputs are never its outputs (x_ → attn_/o_/v_, attn_ → x_, x_ → h_, h_ → x_).
    const bool mv = matvec_decode_ && T <= ops::Matvec::kMaxBatch;
    // One token of each of several sequences: their columns need not be one-token steps' bits (only a
    // verification's do), so 8 of them may take the q8 coopmat register kernel (ops::MatvecCall).
    const bool batch1_bits = !(mv && T > 1 && inputs.size() == T);
    using Ep = ops::MatvecEpilogue;
    const bool warm = mv && !l2_warm_.empty();
    // TROVE_ATTENTION_STEP=batched (the default): the attention of a step of several sequences, each of
    // which takes decode v2, in one record_decode_rows per layer.
    std::vector<ops::AttentionSeq> attn_rows;
    if (attention_step_batched_ && inputs.size() > 1) {
      for (size_t i = 0; i < inputs.size(); ++i) {
        const ops::AttentionCall call{shape, H, placed[i].start, placed[i].n, scale};
        if (ops_.attention.choose(call) != ops::AttentionPath::kDecodeV2) {
          attn_rows.clear();
          break;
        }
        attn_rows.push_back({placed[i].start, placed[i].n, placed[i].first});
      }
    }
    // TROVE_PREFILL_WEIGHTS=f16: where each layer's weights are dequantized (prefill_f16_ above). The
    // Q/K/V of layer l + 1 are written beside the last GEMM of layer l (down; the O projection in MoE
    // layers), layer 0's beside its attention norm.
    const bool pf = prefill_f16_step(T);
    // TROVE_PROFILE=routing: each MoE layer's expert offsets into routing_host_ (prefill steps).
    const bool routing =
        profile_.routing() && T > ops::Matvec::kMaxBatch && routing_host_.mapped() != nullptr;
    uint32_t routed_layers = 0;
    // f16-resident: the rows are there since loading; nothing to dequantize.
    auto dequant = [&](const Layer& L, uint32_t layer, const Weight& w) {
      return prefill_f16_resident_ ? Status::Ok() : record_dequant_f16(s, L, layer, w);
    };
    auto dequant_qkv = [&](const Layer& L, uint32_t layer) -> Status {
      TROVE_RETURN_IF_ERROR(dequant(L, layer, L.q));
      TROVE_RETURN_IF_ERROR(dequant(L, layer, L.k));
      return dequant(L, layer, L.v);
    };
    for (uint32_t l = 0; l < c.n_layer; ++l) {
      const Layer& L = layers_[l];
      const Layer* next = l + 1 < c.n_layer ? &layers_[l + 1] : nullptr;
      uint64_t warmed[kWarmWhats] = {};  // words of each WarmWhat read into L2 so far in this layer
      auto warm_at = [&](WarmAt at) { return warm ? record_l2_warm(s, at, l, warmed) : Status::Ok(); };
      // MoE decode with the router beside O (MoeLayer::router_beside): R̃ · x here, beside QKV.
      const bool router_beside = mv && c.is_moe() && moe_->router_beside(T, L.moe);
      if (mv) {
        if (router_beside) TROVE_RETURN_IF_ERROR(moe_->record_router_h(s, L.moe, x_, T));  // recorded first
        TROVE_RETURN_IF_ERROR(record_matvec(s, {{&L.q, attn_}, {&L.k, o_}, {&L.v, v_}}, T, x_,
                                            L.attn_norm.whole(), Ep::kStore, batch1_bits));
      } else {
        if (f16_acts) {
          TROVE_RETURN_IF_ERROR(ops_.rms_f16.record(s, x_, L.attn_norm.whole(), xnh_, T, E, c.rms_eps));
        } else {
          TROVE_RETURN_IF_ERROR(ops_.rms.record(s, x_, L.attn_norm.whole(), xn_, T, E, c.rms_eps));
        }
        if (pf && l == 0) TROVE_RETURN_IF_ERROR(dequant_qkv(L, l));
        s.barrier();
        const vk::Buffer& xin = f16_acts ? xnh_ : xn_;
        if (pf) {
          TROVE_RETURN_IF_ERROR(record_matmul_f16(s, L, l, L.q, T, xin, attn_, f16_acts));
          TROVE_RETURN_IF_ERROR(record_matmul_f16(s, L, l, L.k, T, xin, o_, f16_acts));
          TROVE_RETURN_IF_ERROR(
              record_matmul_f16(s, L, l, L.v, T, xin, v_, f16_acts));
          TROVE_RETURN_IF_ERROR(dequant(L, l, L.o));
          if (c.is_moe() && prefill_f16_experts_)
            TROVE_RETURN_IF_ERROR(dequant(L, l, L.gate_exps));
        } else {
          TROVE_RETURN_IF_ERROR(record_matmul(s, L.q, 0, T, xin, attn_, f16_acts));
          TROVE_RETURN_IF_ERROR(record_matmul(s, L.k, 0, T, xin, o_, f16_acts));
          TROVE_RETURN_IF_ERROR(record_matmul(s, L.v, 0, T, xin, v_, f16_acts));
        }
      }
      s.barrier();
      mark(kOpQkv);
      if (fused_rope_kv_) {
        ops::QkNormRopeKv::Call call{&attn_, &o_, &v_, &L.q_norm.whole(), &L.k_norm.whole(), &positions_, &slots_, &kv_[l], &q_};
        call.tokens = T;
        call.n_heads = H;
        call.pool_blocks = blocks_->total();
        call.layout = layout_;
        call.eps = c.rms_eps;
        call.rope_base = c.rope_base;
        TROVE_RETURN_IF_ERROR(warm_at(kWarmRope));
        TROVE_RETURN_IF_ERROR(ops_.qk_rope_kv.record(s, call));
        s.barrier();
        mark(kOpKvWrite);
      } else {
        TROVE_RETURN_IF_ERROR(ops_.rms.record(s, attn_, L.q_norm.whole(), q_, T * H, D, c.rms_eps));
        TROVE_RETURN_IF_ERROR(ops_.rms.record(s, o_, L.k_norm.whole(), k_, T * KVH, D, c.rms_eps));
        s.barrier();
        mark(kOpQkNorm);
        TROVE_RETURN_IF_ERROR(ops_.rope.record(s, q_, positions_, T, H, D, c.rope_base));
        TROVE_RETURN_IF_ERROR(ops_.rope.record(s, k_, positions_, T, KVH, D, c.rope_base));
        s.barrier();
        mark(kOpRope);
        TROVE_RETURN_IF_ERROR(ops_.kv_write.record(s, layout_, k_, v_, slots_, kv_[l], T, blocks_->total()));
        s.barrier();
        mark(kOpKvWrite);
      }
      TROVE_RETURN_IF_ERROR(warm_at(kWarmAttn));
      if (pf && !c.is_moe()) {  // beside attention
        TROVE_RETURN_IF_ERROR(dequant(L, l, L.gate));
        TROVE_RETURN_IF_ERROR(dequant(L, l, L.up));
      }
      // MoE experts (slot free since layer l − 1's FFN ended): gate beside the QKV GEMMs, up beside
      // attention, down beside the O projection — spread so that no interval carries all ~1.2 GB.
      if (pf && c.is_moe() && prefill_f16_experts_) {
        TROVE_RETURN_IF_ERROR(dequant(L, l, L.up_exps));
      }
      if (!attn_rows.empty()) {
        TROVE_RETURN_IF_ERROR(ops_.attention.record_decode_rows(s, shape, H, scale, attn_rows, kv_[l], tables_,
                                                                vk::BufferRange(q_, 0, uint64_t{T} * H * D * 4),
                                                                vk::BufferRange(attn_, 0, uint64_t{T} * H * D * 4),
                                                                {positions_, 0, max_tokens_}));
      }
      for (size_t i = 0; attn_rows.empty() && i < inputs.size(); ++i) {
        const uint64_t qrow = uint64_t{H} * D * 4;
        ops::AttentionCall call{shape, H, placed[i].start, placed[i].n, scale};
        ops::AttentionPositions at;  // captured: the position is read at run time, so the capture serves later tokens
        if (replay_key) at = {positions_, placed[i].first};
        vk::BufferRange tb(tables_, uint64_t{inputs[i].seq} * table_stride_ * 4, uint64_t{table_stride_} * 4);
        TROVE_RETURN_IF_ERROR(ops_.attention.record(s, call, kv_[l], tb,
                                                    vk::BufferRange(q_, placed[i].first * qrow, placed[i].n * qrow),
                                                    vk::BufferRange(attn_, placed[i].first * qrow, placed[i].n * qrow), at));
      }
      s.barrier();
      mark(kOpAttention);
      if (mv) {
        TROVE_RETURN_IF_ERROR(warm_at(kWarmO));
        if (router_beside)
          TROVE_RETURN_IF_ERROR(moe_->record_router_o(s, L.moe, attn_, T));  // + M · attn, top-k
        TROVE_RETURN_IF_ERROR(record_matvec(s, {{&L.o, x_}}, T, attn_, {}, Ep::kAdd, batch1_bits));
      } else if (pf) {
        TROVE_RETURN_IF_ERROR(record_matmul_f16(s, L, l, L.o, T, attn_, o_));
        if (!c.is_moe()) TROVE_RETURN_IF_ERROR(dequant(L, l, L.down));
        if (c.is_moe() && next) TROVE_RETURN_IF_ERROR(dequant_qkv(*next, l + 1));
        if (c.is_moe() && prefill_f16_experts_) {
          TROVE_RETURN_IF_ERROR(
              dequant(L, l, L.down_exps));
        }
        s.barrier();
        TROVE_RETURN_IF_ERROR(ops_.add.record(s, x_, o_, x_, T * E));
      } else {
        TROVE_RETURN_IF_ERROR(record_matmul(s, L.o, 0, T, attn_, o_));
        s.barrier();
        TROVE_RETURN_IF_ERROR(ops_.add.record(s, x_, o_, x_, T * E));
      }
      s.barrier();
      mark(kOpO);
      if (mv && !c.is_moe()) {
        TROVE_RETURN_IF_ERROR(warm_at(kWarmGu));
        TROVE_RETURN_IF_ERROR(record_matvec(s, {{&L.gate, h_}, {&L.up, {}}}, T, x_, L.ffn_norm.whole(),
                                            Ep::kSwiGlu, batch1_bits));
        s.barrier();
        mark(kOpFfnGateUp);
        TROVE_RETURN_IF_ERROR(warm_at(kWarmDown));
        TROVE_RETURN_IF_ERROR(record_matvec(s, {{&L.down, x_}}, T, h_, {}, Ep::kAdd, batch1_bits));
        s.barrier();
        mark(kOpFfn);
        continue;
      }
      if (mv && c.is_moe() && moe_->fuses_norm(T)) {  // decode: the FFN norm folded into router and gate/up
        TROVE_RETURN_IF_ERROR(warm_at(kWarmGu));  // beside the MoE FFN (its first dispatch)
        TROVE_RETURN_IF_ERROR(moe_->record_fused_norm(s, *ops_.matvec, L.moe, L.ffn_norm.whole(), c.rms_eps, x_, T,
                                                      [&](MoeStage st) {
                                                        mark(st == MoeStage::kRouter ? kOpMoeRouter
                                                             : st == MoeStage::kRoute ? kOpMoeRoute
                                                                                      : kOpMoeGateUp);
                                                      },
                                                      router_beside));
        s.barrier();
        mark(kOpMoe);
        continue;
      }
      // Dense FFN on the matrix units: f16 rows only. MoE: f32 rows for the router, and f16 rows too for
      // the experts' grouped GEMMs (moe_f16_).
      const bool ffn_f16 = f16_acts && !c.is_moe();
      const bool moe_f16 = f16_acts && c.is_moe() && moe_f16_;
      if (ffn_f16) {
        TROVE_RETURN_IF_ERROR(ops_.rms_f16.record(s, x_, L.ffn_norm.whole(), xnh_, T, E, c.rms_eps));
      } else {
        TROVE_RETURN_IF_ERROR(ops_.rms.record(s, x_, L.ffn_norm.whole(), xn_, T, E, c.rms_eps));
        if (moe_f16) TROVE_RETURN_IF_ERROR(ops_.rms_f16.record(s, x_, L.ffn_norm.whole(), xnh_, T, E, c.rms_eps));
      }
      s.barrier();
      mark(kOpFfnNorm);
      if (c.is_moe()) {
        TROVE_RETURN_IF_ERROR(moe_->record(
            s, ops_.matmul, pf && prefill_f16_experts_ ? experts_f16(L, l) : L.moe, xn_, x_, T,
            [&](MoeStage st) {
              static constexpr OpKind kind[] = {kOpMoeRouter, kOpMoeRoute, kOpMoeGateUp, kOpMoeSwiglu,
                                                kOpMoeDown};
              mark(kind[static_cast<int>(st)]);
            },
            moe_f16 ? vk::BufferRange(xnh_, 0, uint64_t{T} * E * 2) : vk::BufferRange()));
        s.barrier();
        mark(kOpMoe);
        if (routing) {
          moe_->record_offsets_copy(s, routing_host_, uint64_t{l} * (moe_->shape().n_expert + 1) * 4);
          ++routed_layers;
        }
      } else {
        if (pf) {
          TROVE_RETURN_IF_ERROR(
              record_matmul_f16(s, L, l, L.gate, T, ffn_f16 ? xnh_ : xn_, gate_, ffn_f16));
          TROVE_RETURN_IF_ERROR(record_matmul_f16(s, L, l, L.up, T,
                                                  ffn_f16 ? xnh_ : xn_, up_, ffn_f16));
        } else {
          TROVE_RETURN_IF_ERROR(record_matmul(s, L.gate, 0, T, ffn_f16 ? xnh_ : xn_, gate_, ffn_f16));
          TROVE_RETURN_IF_ERROR(record_matmul(s, L.up, 0, T, ffn_f16 ? xnh_ : xn_, up_, ffn_f16));
        }
        s.barrier();
        if (ffn_f16) {
          TROVE_RETURN_IF_ERROR(ops_.swiglu_f16.record(s, gate_, up_, hh_, T * c.n_ff));
        } else {
          TROVE_RETURN_IF_ERROR(ops_.swiglu.record(s, gate_, up_, h_, T * c.n_ff));
        }
        s.barrier();
        if (pf) {
          TROVE_RETURN_IF_ERROR(
              record_matmul_f16(s, L, l, L.down, T, ffn_f16 ? hh_ : h_, o_, ffn_f16));
          if (next) TROVE_RETURN_IF_ERROR(dequant_qkv(*next, l + 1));
        } else {
          TROVE_RETURN_IF_ERROR(record_matmul(s, L.down, 0, T, ffn_f16 ? hh_ : h_, o_, ffn_f16));
        }
        s.barrier();
        TROVE_RETURN_IF_ERROR(ops_.add.record(s, x_, o_, x_, T * E));
        s.barrier();
        mark(kOpFfn);
      }
    }
    // Head: only the last row of each input that needs a token or logits.
    std::vector<uint32_t> out_rows;  // input index per output row (the input's last row samples)
    std::vector<uint32_t> src_rows;  // the row of x_ each output row is
    for (size_t i = 0; i < inputs.size(); ++i) {
      if (inputs[i].sample || inputs[i].want_logits || inputs[i].all_tokens) {
        const uint32_t n = head_rows(inputs[i], placed[i].n);
        for (uint32_t j = placed[i].first + placed[i].n - n; j < placed[i].first + placed[i].n; ++j) {
          src_rows.push_back(j);
          out_rows.push_back(static_cast<uint32_t>(i));
        }
      }
    }
    const uint32_t R = static_cast<uint32_t>(out_rows.size());
    // Where the output rows are x_'s first R rows (decode: every sequence's one token) the head reads x_
    // itself — the layers' last barrier already ordered it; else the rows are gathered into hs_, one
    // copy per run of consecutive rows, then a barrier.
    bool gathered = false;
    for (uint32_t r = 0; r < R; ++r) gathered = gathered || src_rows[r] != r;
    for (uint32_t r = 0; gathered && r < R;) {
      uint32_t e = r + 1;
      while (e < R && src_rows[e] == src_rows[e - 1] + 1) ++e;
      s.copy(x_, uint64_t{src_rows[r]} * erow, hs_, uint64_t{r} * erow, uint64_t{e - r} * erow);
      r = e;
    }
    const vk::Buffer& head_in = gathered ? hs_ : x_;
    if (R > 0) {
      if (gathered) s.barrier();
      if (profile_.phases()) s.timestamp();
      if (matvec_decode_ && R <= ops::Matvec::kMaxBatch) {
        TROVE_RETURN_IF_ERROR(
            record_matvec(s, {{&head_, logits_}}, R, head_in, output_norm_.whole(), Ep::kStore, batch1_bits));
      } else {
        TROVE_RETURN_IF_ERROR(ops_.rms.record(s, head_in, output_norm_.whole(), xn_, R, E, c.rms_eps));
        s.barrier();
        TROVE_RETURN_IF_ERROR(record_matmul(s, head_, 0, R, xn_, logits_));
      }
      s.barrier();
      if (profile_.phases()) s.timestamp();
      mark(kOpHead);
      const uint64_t vrow = uint64_t{c.n_vocab} * 4;
      TROVE_RETURN_IF_ERROR(ops_.argmax.record(s, logits_, tokens_out_, R, c.n_vocab));
      bool after_argmax = false;  // the barrier that orders the samplers after argmax, recorded once
      for (uint32_t r = 0; r < R; ++r) {
        const StepInput& in = inputs[out_rows[r]];
        const bool last_of_input = r + 1 == R || out_rows[r + 1] != out_rows[r];
        if (!last_of_input || !in.sample || !(in.sampling.temperature > 0)) continue;
        ops::SamplingParams p;
        p.temperature = in.sampling.temperature;
        p.top_k = std::clamp<uint32_t>(in.sampling.top_k == 0 ? 64 : in.sampling.top_k, 1, 64);
        p.top_p = in.sampling.top_p;
        p.min_p = in.sampling.min_p;
        p.seed = draw_seed(in);
        // Overwrites argmax's answer for this row (same element, recorded later: ordered by a barrier).
        // The samplers read only their own logits row and write only their own token (no scratch), so
        // one barrier after argmax orders them all; they run side by side.
        if (!after_argmax) s.barrier();
        after_argmax = true;
        ops::SamplerSeed seed;  // a captured step reads its seed from seeds_, written now and before each replay
        if (replay_key) {
          static_cast<uint32_t*>(seeds_.mapped())[r] = p.seed;
          seed = {seeds_, r};
        }
        TROVE_RETURN_IF_ERROR(ops_.sampler.record(s, vk::BufferRange(logits_, r * vrow, vrow),
                                                  vk::BufferRange(tokens_out_, r * 4ull, 4), 1, c.n_vocab, p,
                                                  ops::SamplerForm::kAuto, seed));
      }
      s.barrier();
      s.copy(tokens_out_, 0, tokens_host_, 0, R * 4ull);
      bool any_logits = false;
      for (uint32_t i : out_rows) any_logits |= inputs[i].want_logits;
      if (any_logits) s.copy(logits_, 0, logits_host_, 0, R * vrow);
      s.barrier();
      if (profile_.phases()) s.timestamp();
      mark(kOpSample);
    }
    if (profile_.steps()) s.timestamp();
    TROVE_RETURN_IF_ERROR(s.submit_and_wait(T <= ops::Matvec::kMaxBatch ? decode_wait_ : vk::CommandStream::Wait::kBlock));
    if (capturing && s.last_capture() != vk::CommandStream::kNoCapture && s.capture_valid(s.last_capture()) &&
        s.last_capture() != capture_before) {
      replays_[*replay_key] = s.last_capture();
    }
    profile_.add_step(s, counters_before, T, dev_->pipelines_created() != pipelines_before, marks);
    if (routing && routed_layers == c.n_layer) {
      profile_.add_routing(T, static_cast<const uint32_t*>(routing_host_.mapped()), c.n_layer, c.n_expert);
    }
    if (profile_.phases() && R > 0) {
      // TROVE_PROFILE=1: GPU time of the step's phases.
      auto ts = s.timestamps_ns();
      if (ts.size() == 4) {
        log::info("engine", "step {} tokens, {} rows: layers {:.2f} ms, head {:.2f} ms, sampling+copy {:.2f} ms", T, R,
                  (ts[1] - ts[0]) / 1e6, (ts[2] - ts[1]) / 1e6, (ts[3] - ts[2]) / 1e6);
      }
    }
    return Status::Ok();
  };
  Status st = run();
  if (!st.ok()) {
    stream_.reset();
    undo();
    return st;
  }
  for (const StepInput& in : inputs) {
    Sequence& sq = seqs_[in.seq];
    if (in.provisional > 0) sq.accepted = std::min(sq.accepted, sq.tokens.size() - in.provisional);
    register_full_blocks(sq);
  }
  std::vector<StepOutput> out(inputs.size());
  // Outputs are read from host buffers below before export_to_store() submits again (it does not touch
  // them, but keeping the step's results first keeps that obvious).
  const auto* toks = static_cast<const uint32_t*>(tokens_host_.mapped());
  const auto* lg = static_cast<const float*>(logits_host_.mapped());
  uint32_t r = 0;
  for (size_t i = 0; i < inputs.size(); ++i) {
    if (!inputs[i].sample && !inputs[i].want_logits && !inputs[i].all_tokens) continue;
    const uint32_t n = head_rows(inputs[i], placed[i].n);
    if (inputs[i].sample) out[i].token = static_cast<int32_t>(toks[r + n - 1]);
    if (inputs[i].all_tokens) out[i].tokens.assign(toks + r, toks + r + n);
    if (inputs[i].want_logits) {
      // With all_tokens but not all_logits, only the last row's logits.
      const uint32_t first = inputs[i].all_logits ? r : r + n - 1;
      out[i].logits.assign(lg + uint64_t{first} * c.n_vocab, lg + uint64_t{r + n} * c.n_vocab);
    }
    r += n;
  }
  export_to_store();
  profile_.add_step_time(T, std::chrono::duration<double, std::nano>(std::chrono::steady_clock::now() - step_start).count());
  return out;
}

}  // namespace trove::engine::internal
