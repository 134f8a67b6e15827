// VulkanEngine (vulkan_engine.h): loading a model onto the GPU, sequences, the GPU block cache of
// prefixes and the KV store tier (restores and the write-behind). The forward pass, step(), is in
// forward.cpp.
#include "engine/runtime/vulkan_engine.h"

#include <algorithm>
#include <atomic>
#include <charconv>
#include <chrono>
#include <deque>
#include <future>
#include <initializer_list>
#include <cstdlib>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <optional>
#include <thread>
#include <utility>
#include <unistd.h>

#include <fmt/format.h>
#include <xxhash.h>

#include "common/env.h"
#include "common/log.h"
#include "engine/gguf/gguf.h"
#include "engine/runtime/block_export.h"
#include "engine/runtime/block_pool.h"
#include "engine/runtime/l2_warm_plan.h"
#include "engine/runtime/moe_layer.h"
#include "engine/runtime/router_fold.h"
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

namespace trove::engine {

bool is_eos(const ModelConfig& c, int32_t token) {
  return std::find(c.eos_ids.begin(), c.eos_ids.end(), token) != c.eos_ids.end();
}

namespace internal {
namespace {

Result<Ops> make_ops(vk::Device& dev) {
#define TROVE_OP(field, expr)            \
  {                                      \
    auto r = (expr);                     \
    if (!r.ok()) return r.status();      \
    o.field = std::move(*r);             \
  }
  Ops o;
  TROVE_OP(rms, ops::RmsNorm::create(dev));
  TROVE_OP(swiglu, ops::SwiGlu::create(dev));
  TROVE_OP(rope, ops::RopeNeox::create(dev));
  TROVE_OP(qk_rope_kv, ops::QkNormRopeKv::create(dev));
  TROVE_OP(argmax, ops::Argmax::create(dev));
  TROVE_OP(add, ops::ResidualAdd::create(dev));
  TROVE_OP(matmul, ops::Matmul::create(dev));
  TROVE_OP(matvec, ops::Matvec::create(dev));
  TROVE_OP(rms_f16, ops::RmsNormF16::create(dev));
  TROVE_OP(swiglu_f16, ops::SwiGluF16::create(dev));
  TROVE_OP(attention, ops::PagedAttention::create(dev));
  TROVE_OP(kv_write, ops::KvWrite::create(dev));
  TROVE_OP(sampler, ops::Sampler::create(dev));
#undef TROVE_OP
  return o;
}

// A TROVE_* switch of 0 or 1 (unset or empty: `out` keeps its default); anything else is refused,
// naming what each value does.
Status env_switch(const char* name, bool& out, std::string_view on, std::string_view off) {
  const char* v = std::getenv(name);
  if (!v || !*v) return Status::Ok();
  const std::string_view m = v;
  if (m != "0" && m != "1") {
    return Status::InvalidArgument(fmt::format("{}={} is not a choice: use 1 ({}) or 0 ({})", name, m, on, off));
  }
  out = m == "1";
  return Status::Ok();
}

// NAME=N, a whole number in [lo, hi], into `out` (common/env.h); anything else is refused as
// "NAME=value is not a <kind>: <hint>".
Status env_number(const char* name, uint32_t& out, uint32_t lo, uint32_t hi, std::string_view kind,
                  std::string_view hint) {
  return env_count(name, lo, hi, out, [&](const std::string& v) {
    return fmt::format("{}={} is not a {}: {}", name, v, kind, hint);
  });
}

std::string human_bytes(uint64_t b) {
  if (b >= (1ull << 30)) return fmt::format("{:.2f} GiB", static_cast<double>(b) / (1ull << 30));
  return fmt::format("{:.1f} MiB", static_cast<double>(b) / (1ull << 20));
}

}  // namespace

VulkanEngine::~VulkanEngine() {
  if (dev_) profile_.log(vk::descriptors_name(dev_->descriptors()), stream_options_);  // none if create() failed early
  exporter_.reset();  // every completed block handed to the store before its flush
  if (store_) {
    if (Status st = store_->flush(); !st.ok()) log::warn("engine", "KV store flush: {}", st.message());
  }
}

Result<std::unique_ptr<Engine>> VulkanEngine::create(const EngineOptions& opts) {
  auto file = gguf::GgufFile::open(opts.model_path);
  if (!file.ok()) return file.status();
  auto info = gguf::describe_model(**file);
  if (!info.ok()) return info.status();
  auto e = std::make_unique<VulkanEngine>();
  e->info_ = *info;
  const auto& m = *info;
  ModelConfig& c = e->cfg_;
  c.architecture = m.architecture;
  c.name = m.name.empty() ? std::filesystem::path(opts.model_path).stem().string() : m.name;
  c.synthetic = m.synthetic;
  c.n_layer = m.n_layer;
  c.n_embd = m.n_embd;
  c.n_head = m.n_head;
  c.n_head_kv = m.n_head_kv;
  c.head_dim = m.head_dim;
  c.n_ff = m.n_ff;
  c.n_expert = m.n_expert;
  c.n_expert_used = m.n_expert_used;
  c.n_ff_exp = m.n_ff_exp;
  c.n_vocab = static_cast<uint32_t>(m.vocab_size);
  c.n_ctx_train = m.n_ctx;
  c.rms_eps = static_cast<float>(m.rms_eps);
  c.rope_base = static_cast<float>(m.rope_base);
  c.tied_embeddings = m.tied_embeddings;
  if (c.n_layer == 0 || c.n_embd == 0 || c.n_head == 0 || c.n_head_kv == 0 || c.head_dim == 0 ||
      c.n_head % c.n_head_kv != 0 || c.head_dim % 2 != 0 || c.head_dim > 256) {
    return Status::InvalidArgument(fmt::format(
        "{}: unsupported attention shape (layers {}, embd {}, heads {}/{} KV, head_dim {})", opts.model_path,
        c.n_layer, c.n_embd, c.n_head, c.n_head_kv, c.head_dim));
  }
  if (c.is_moe() && (c.n_expert_used == 0 || c.n_expert_used > 32 || c.n_ff_exp == 0)) {
    return Status::InvalidArgument(fmt::format("{}: unsupported MoE shape ({} experts, {} used, ffn {})",
                                               opts.model_path, c.n_expert, c.n_expert_used, c.n_ff_exp));
  }

  auto tok = tokenizer::Tokenizer::from_gguf(**file);
  if (!tok.ok()) return tok.status();
  e->tok_ = std::move(*tok);
  if (m.eos_id >= 0) c.eos_ids.push_back(static_cast<int32_t>(m.eos_id));
  for (const char* t : {"<|im_end|>", "<|endoftext|>"}) {
    const int32_t id = e->tok_->find(t);
    if (id >= 0 && !is_eos(c, id)) c.eos_ids.push_back(id);
  }
  if (auto tmpl = (*file)->get_string("tokenizer.chat_template"); tmpl.ok()) {
    auto r = chat::select_renderer(*tmpl);
    if (r.ok()) e->renderer_ = std::move(*r);
    else e->renderer_error_ = r.status().message();
  } else {
    e->renderer_error_ = fmt::format("{} has no chat template (tokenizer.chat_template); use --raw", opts.model_path);
  }

  const uint32_t ctx_default = std::min<uint32_t>(c.n_ctx_train ? c.n_ctx_train : 32768, 32768);
  e->n_ctx_ = opts.n_ctx ? opts.n_ctx : ctx_default;
  if (c.n_ctx_train && e->n_ctx_ > c.n_ctx_train) {
    return Status::InvalidArgument(fmt::format("context {} is larger than the model's training context {}",
                                               e->n_ctx_, c.n_ctx_train));
  }
  e->max_tokens_ = std::max<uint32_t>(1, opts.max_batch_tokens);
  const uint32_t nseq = std::max<uint32_t>(1, opts.max_sequences);
  if (opts.block_tokens == 0 || (opts.block_tokens & (opts.block_tokens - 1)) != 0) {
    return Status::InvalidArgument(fmt::format("block size {} must be a power of two", opts.block_tokens));
  }
  e->layout_ = {opts.block_tokens, c.n_head_kv, c.head_dim};
  if (opts.store && opts.store->block_tokens() != opts.block_tokens) {
    return Status::InvalidArgument(fmt::format(
        "the KV store at {} holds blocks of {} tokens but the engine uses {}; use the store's block size",
        opts.store->dir(), opts.store->block_tokens(), opts.block_tokens));
  }
  e->store_ = opts.store;
  e->restore_group_blocks_ = opts.restore_group_blocks;

  if (const char* d = std::getenv("TROVE_DECODE"); d && *d) {
    const std::string v = d;
    if (v != "matmul" && v != "matvec") {
      return Status::InvalidArgument(fmt::format(
          "TROVE_DECODE={} is not a decode path: use matvec (the default: steps of <= {} tokens through the fused "
          "decode matvec) or matmul (every step through the tiled matmul, for A/B comparisons)", v,
          ops::Matvec::kMaxBatch));
    }
    e->matvec_decode_ = v == "matvec";
  }
  TROVE_RETURN_IF_ERROR(env_number(
      "TROVE_PREFILL_F16_MIN", e->f16_resident_min_tokens_, ops::Matvec::kMaxBatch + 1, kPrefillF16MinTokens,
      "token count",
      fmt::format("give the fewest tokens ({}..{}) of a step that reads the resident f16 rows on matrix "
                  "units (default {})",
                  ops::Matvec::kMaxBatch + 1, kPrefillF16MinTokens, kPrefillF16ResidentMinTokens)));
  const char* pieces_env = std::getenv("TROVE_STEP_PIECES_MAX");
  TROVE_RETURN_IF_ERROR(env_number(
      "TROVE_STEP_PIECES_MAX", e->step_pieces_max_, 0, 64, "token count",
      fmt::format("give the largest one-sequence step (0..64) run as pieces of <= {} tokens on the decode "
                  "matvecs (default {} with matrix units, else 0: never)",
                  ops::Matvec::kMaxBatch, VulkanEngine::kStepPiecesMax)));
  TROVE_RETURN_IF_ERROR(env_number("TROVE_TEST_FAIL_STEP", e->fail_step_, 1, 1000000, "step number",
                                   "give N >= 1 (the engine's N-th GPU step fails on purpose, for tests of "
                                   "the error paths), or unset it"));
  if (const char* r = std::getenv("TROVE_ROPE_KV"); r && *r) {
    const std::string v = r;
    if (v != "fused" && v != "separate") {
      return Status::InvalidArgument(fmt::format(
          "TROVE_ROPE_KV={} is not a choice: use fused (the default: q/k norm, RoPE and the KV write in one dispatch "
          "per layer) or separate (three ops, for A/B comparisons)", v));
    }
    e->fused_rope_kv_ = v == "fused";
  }
  TROVE_RETURN_IF_ERROR(env_switch("TROVE_DECODE_REPLAY", e->decode_replay_,
                                   "the default: decode steps of one token a sequence are recorded once per sequences, "
                                   "sampling and attention slicing, and submitted again",
                                   "every step is recorded"));
  if (const char* v = std::getenv("TROVE_ATTENTION_STEP"); v && *v) {
    const std::string_view m = v;
    if (m != "batched" && m != "each") {
      return Status::InvalidArgument(fmt::format(
          "TROVE_ATTENTION_STEP={} is not a choice: use batched (the default: the decode tokens of all the step's "
          "sequences in one dispatch per slice length, PagedAttention::record_decode_rows) or each (a decode step's "
          "attention recorded per sequence, for A/B comparisons)", m));
    }
    e->attention_step_batched_ = m == "batched";
  }
  TROVE_RETURN_IF_ERROR(env_switch("TROVE_MOE_F16", e->moe_f16_,
                                   "the default: the MoE prefill's expert GEMMs read the FFN input rounded to f16 once",
                                   "they read it as f32 and round it per tile, for A/B comparisons"));
  // TROVE_PREFILL_WEIGHTS: unset or `auto`, f16-dense-resident (else f16-dense) where the matmul steps
  // run on matrix units and the rows fit beside the KV pool (resolved in the memory plan, below), quant
  // elsewhere.
  bool prefill_weights_auto = true;
  if (const char* v = std::getenv("TROVE_PREFILL_WEIGHTS"); v && *v && std::string_view(v) != "auto") {
    const PrefillWeightsMode* mode = prefill_weights_mode(v);
    if (!mode) {
      return Status::InvalidArgument(fmt::format(
          "TROVE_PREFILL_WEIGHTS={} is not a choice: use auto (the default: on a GPU with matrix units "
          "f16-dense-resident where its rows fit beside the KV pool, else f16-dense; quant elsewhere), quant "
          "(prefill GEMMs decode the weights as stored, per element), f16 "
          "(each layer's weights dequantized to f16 rows once per prefill step, beside other work, and read "
          "by the GEMMs as f16; needs one layer's weights in f16 of device memory, e.g. ~390 MB for "
          "Qwen3-8B, ~1.3 GB for Qwen3-30B-A3B with its experts), f16-dense (the same but a MoE layer's "
          "experts stay as stored) or f16-resident (every layer's weights, experts too, dequantized once at "
          "load and kept: every layer's matrices again in f16 of device memory, e.g. 13.9 GB for Qwen3-8B) "
          "or "
          "f16-dense-resident (the same without a MoE layer's experts: ~1.8 GB for Qwen3-30B-A3B)",
          v));
    }
    prefill_weights_auto = false;
    e->set_prefill_weights(*mode);
  }
  std::optional<std::vector<L2WarmItem>> warm_env;
  if (const char* v = std::getenv("TROVE_L2_WARM"); v && *v) {
    auto items = parse_l2_warm(v);
    if (!items.ok()) return items.status();
    warm_env = std::move(*items);
  }
  auto dev = vk::Device::open();
  if (!dev.ok()) return dev.status();
  e->dev_ = std::move(*dev);
  // None by default: on the H200 (docs/performance.md, 2026-12-04) no placement paid on the 8B, and
  // the 30B-A3B's o projection warmed beside decode attention gained 5% near depth 0 but lost 3% at
  // depth 4096 (the warm-up competes with attention's KV reads), where coding agents decode.
  if (warm_env) e->l2_warm_ = std::move(*warm_env);
  // Decode steps poll the fence on GPUs (a step is a few ms; the host is back ~130 µs sooner than
  // from a sleeping wait: H200, 8B tg128 251 → 261 tok/s); a CPU device needs the core.
  if (!e->dev_->features().is_cpu) e->decode_wait_ = vk::CommandStream::Wait::kSpin;
  if (const char* v = std::getenv("TROVE_VK_WAIT"); v && *v) {
    const std::string_view w(v);
    if (w != "spin" && w != "block") {
      return Status::InvalidArgument(fmt::format("TROVE_VK_WAIT='{}' is not spin or block (how decode steps wait for the GPU)", v));
    }
    e->decode_wait_ = w == "spin" ? vk::CommandStream::Wait::kSpin : vk::CommandStream::Wait::kBlock;
  }
  if (!e->l2_warm_.empty()) {
    auto op = ops::L2Warm::create(*e->dev_);
    if (!op.ok()) return op.status();
    e->l2_warm_op_ = std::move(*op);
    auto out = e->dev_->buffer(uint64_t{65536} * 4);
    if (!out.ok()) return out.status();
    e->l2_warm_out_ = std::move(*out);
  }
  // A step in pieces (vk::StreamOptions): the first piece goes to the GPU after kFirstPiece
  // dispatches, later ones after twice as many as the one before, up to kMaxPiece — the GPU starts on
  // the first layers while the host records the rest, and a decode step costs a handful of submits.
  // TROVE_VK_CHUNK=N[:M] sets first and largest piece, 0 records a step in one piece (A/B).
  constexpr uint32_t kFirstPiece = 16, kMaxPiece = 128;
  e->stream_options_ = {kFirstPiece, kMaxPiece};
  if (const char* v = std::getenv("TROVE_VK_CHUNK"); v && *v) {
    const std::string_view text(v);
    const size_t colon = text.find(':');
    auto number = [](std::string_view t, uint32_t* out) {
      auto [end, ec] = std::from_chars(t.data(), t.data() + t.size(), *out);
      return ec == std::errc() && end == t.data() + t.size() && !t.empty();
    };
    uint32_t first = 0, most = 0;
    if (!number(text.substr(0, colon), &first) || (colon != std::string_view::npos && !number(text.substr(colon + 1), &most))) {
      return Status::InvalidArgument(fmt::format("TROVE_VK_CHUNK='{}' is not N or N:M (dispatches in the first and "
                                                 "the largest piece of a step; 0: a step in one piece)", v));
    }
    e->stream_options_ = {first, colon == std::string_view::npos ? first : most};
  }
  // TROVE_VK_SKIP_BARRIERS=1: measurement only, wrong results (vk::StreamOptions::skip_barriers).
  if (const char* v = std::getenv("TROVE_VK_SKIP_BARRIERS"); v && std::string_view(v) == "1") {
    log::warn("engine", "TROVE_VK_SKIP_BARRIERS=1: steps record no barriers; every result is wrong (a measurement)");
    e->stream_options_.skip_barriers = true;
  }
  auto ops = make_ops(*e->dev_);
  if (!ops.ok()) return ops.status();
  e->ops_ = std::move(*ops);
  // Pieces pay against the matrix units' tiles (measured there); on other devices (lavapipe's CPU matmul)
  // a step stays whole unless TROVE_STEP_PIECES_MAX says otherwise.
  if (!pieces_env || !*pieces_env) e->step_pieces_max_ = e->ops_.matmul.uses_coopmat() ? kStepPiecesMax : 0;

  // The router beside O needs its weights folded at load (router_fold.h): f32 routers only.
  if (c.is_moe()) {
    auto mode = moe_router_mode_from_env();
    if (!mode.ok()) return mode.status();
    const auto* router = (*file)->find_tensor("blk.0.ffn_gate_inp.weight");
    e->fold_router_ = *mode == MoeRouterMode::kBeside && e->ops_.matvec && router &&
                      router->type == quant::GgmlType::F32;
  }
  // Memory plan: weights + KV pool + scratch must fit the device.
  uint64_t weight_bytes = 0;
  for (const auto& t : (*file)->tensors()) weight_bytes += t.n_bytes;
  if (e->fold_router_)
    weight_bytes += uint64_t{c.n_layer} * c.n_expert * (c.n_embd + uint64_t{c.n_head} * c.head_dim) * 4;
  if (const auto* t = (*file)->find_tensor("token_embd.weight"); t && t->n_dims >= 2) {
    // Rows on the GPU when GetRows reads the type and the table fits one buffer (as upload() cuts it);
    // otherwise an untied table stays on the host.
    const uint64_t rb = quant::row_bytes(t->type, static_cast<int64_t>(t->ne[0]));
    const uint64_t piece_rows = std::max<uint64_t>(64, (e->dev_->max_buffer_bytes() - 4) / std::max<uint64_t>(rb, 1) / 64 * 64);
    if (t->ne[1] <= piece_rows) {
      if (auto g = ops::GetRows::create(*e->dev_, t->type); g.ok()) {
        e->get_rows_.emplace(std::move(*g));
        e->embd_on_gpu_ = true;
      }
    }
    if (!c.tied_embeddings && !e->embd_on_gpu_) weight_bytes -= t->n_bytes;  // kept on the host
  }
  const uint64_t blocks_per_seq = (e->n_ctx_ + opts.block_tokens - 1) / opts.block_tokens;
  const uint64_t block_all_layers = e->layout_.block_bytes() * c.n_layer;
  uint64_t pool_blocks = opts.kv_pool_bytes ? opts.kv_pool_bytes / block_all_layers : blocks_per_seq * nseq;
  const uint64_t T = e->max_tokens_;
  const uint64_t ff = std::max<uint64_t>(c.n_ff, uint64_t{c.n_ff_exp});
  uint64_t scratch = 4 * (T * (4ull * c.n_embd + 3ull * c.n_head * c.head_dim +
                               2ull * c.n_head_kv * c.head_dim + 3 * ff + 3ull * c.n_expert + 4) +
                          T * c.n_expert_used * (2ull * c.n_embd + 3 * ff + 2) + 2ull * nseq * c.n_vocab);
  const uint64_t have = e->dev_->features().device_local_bytes;
  if (prefill_weights_auto) {
    // The default (docs/engine.md). H100: with cm2 variant 2 from 512 tokens the 8B's pp512 / pp4096 went
    // 9486 / 9966 -> 11042 / 12914 tok/s with f16-dense (2026-12-05) and 10924 / 12851 -> 13520 / 13470
    // resident (2026-12-06); the 30B-A3B's experts in f16 (`f16`, `f16-resident`) made its prefill
    // 2.2-2.7x slower (on grouped variant 0; 2026-12-06 on variant 1: pp512 5526 vs 6828), so they stay
    // quantized. The default's f16 rows never cut the KV pool below what was asked for (every context,
    // or --kv-pool): the rows are a speed-up, the pool is capacity.
    const uint64_t pool_want = pool_blocks * block_all_layers, resident = e->prefill_f16_bytes(false, true),
                   step = e->prefill_f16_bytes(false, false);
    const bool matrix_units = e->ops_.matmul.uses_coopmat();
    const PrefillWeightsMode& pick = auto_prefill_weights(matrix_units, e->max_tokens_, have, weight_bytes,
                                                          scratch, resident, step, pool_want);
    e->set_prefill_weights(pick);
    if (matrix_units && e->max_tokens_ >= kPrefillF16MinTokens && !pick.resident) {
      log::info("engine", "prefill weights {}: f16 rows of {} would leave the KV pool less than the {} asked "
                "for on {}", pick.f16 ? "f16-dense, per step" : "as stored",
                human_bytes(pick.f16 ? resident : step), human_bytes(pool_want), e->dev_->features().name);
    }
  }
  if (e->prefill_f16_) scratch += e->prefill_f16_bytes();
  if (have && weight_bytes + scratch < have && !opts.kv_pool_bytes) {
    // Never plan the pool past 90% of what is left after weights and scratch.
    const uint64_t room = (have - weight_bytes - scratch) / 10 * 9;
    pool_blocks = std::min<uint64_t>(pool_blocks, room / block_all_layers);
  }
  if (pool_blocks < blocks_per_seq && pool_blocks < 1) pool_blocks = 0;
  const uint64_t pool_bytes = pool_blocks * block_all_layers;
  if (pool_blocks == 0 || (have && weight_bytes + pool_bytes + scratch > have)) {
    return Status::ResourceExhausted(fmt::format(
        "{} does not fit on {}: weights {} + KV pool {} + scratch {} > device memory {}. Use a smaller "
        "quantization, a shorter --ctx or fewer --parallel sequences.",
        opts.model_path, e->dev_->features().name, human_bytes(weight_bytes), human_bytes(pool_bytes),
        human_bytes(scratch), human_bytes(have)));
  }
  if (pool_blocks * e->layout_.block_bytes() > e->dev_->max_buffer_bytes()) {
    pool_blocks = e->dev_->max_buffer_bytes() / e->layout_.block_bytes();  // one buffer per layer
  }
  e->blocks_ = std::make_unique<BlockPool>(static_cast<uint32_t>(pool_blocks));
  e->seqs_.resize(nseq);

  TROVE_RETURN_IF_ERROR(e->load_weights(**file, opts.progress));
  (*file)->release_mapping();
  for (uint32_t l = 0; l < c.n_layer; ++l) {
    auto b = e->dev_->buffer(pool_blocks * e->layout_.block_bytes());
    if (!b.ok()) return b.status();
    e->kv_.push_back(std::move(*b));
  }
  TROVE_RETURN_IF_ERROR(e->alloc_scratch());
  if (e->prefill_f16_resident_) TROVE_RETURN_IF_ERROR(e->fill_f16_resident());
  log::info("engine",
            "{}: {} layers, {} on {}; KV pool {} blocks of {} tokens ({}), context {}; prefill weights {}",
            c.name, c.n_layer, human_bytes(weight_bytes), e->dev_->features().name, pool_blocks,
            opts.block_tokens, human_bytes(pool_bytes), e->n_ctx_, e->prefill_weights_name());
  return std::unique_ptr<Engine>(std::move(e));
}

Result<Weight> VulkanEngine::upload(const gguf::GgufFile& f, const std::string& name, bool to_f32,
                                    Progress& bar) {
  const auto* t = f.find_tensor(name);
  if (!t) return Status::NotFound(fmt::format("{}: tensor {} is missing", f.path(), name));
  Weight w;
  w.type = t->type;
  w.cols = t->ne[0];
  w.rows = t->n_dims >= 2 ? t->ne[1] : 1;
  w.experts = t->n_dims >= 3 ? t->ne[2] : 1;
  if (!quant::traits(t->type)) {
    return Status::Unsupported(fmt::format("{}: tensor {} has type {}, not supported (supported: {})", f.path(),
                                           name, quant::ggml_type_name(static_cast<uint32_t>(t->type)),
                                           quant::supported_type_names()));
  }
  if (weights_hash_) {  // the model fingerprint: every tensor's name and bytes, in upload order
    XXH3_128bits_update(weights_hash_, name.data(), name.size());
    XXH3_128bits_update(weights_hash_, t->data, t->n_bytes);
  }
  std::vector<uint8_t> host;
  const uint8_t* src = t->data;
  uint64_t bytes = t->n_bytes;
  if (to_f32 && t->type != GgmlType::F32) {
    host.resize(t->n_elements * 4);
    const uint64_t rb = quant::row_bytes(t->type, static_cast<int64_t>(w.cols));
    for (uint64_t r = 0; r < t->n_elements / w.cols; ++r) {
      quant::dequantize_row(t->type, src + r * rb, reinterpret_cast<float*>(host.data()) + r * w.cols,
                            static_cast<int64_t>(w.cols));
    }
    w.type = GgmlType::F32;
    src = host.data();
    bytes = host.size();
  }
  w.row_bytes = quant::row_bytes(w.type, static_cast<int64_t>(w.cols));
  const uint64_t all_rows = w.rows * w.experts;
  uint64_t piece_rows = std::max<uint64_t>(64, (dev_->max_buffer_bytes() - 4) / w.row_bytes / 64 * 64);
  if (w.experts > 1) piece_rows = piece_rows / w.rows * w.rows;
  if (piece_rows == 0) {
    return Status::ResourceExhausted(fmt::format("{}: one expert of {} ({} bytes) exceeds the device's largest buffer",
                                                 f.path(), name, w.expert_bytes()));
  }
  constexpr uint64_t kSlice = 64ull << 20;  // upload in slices so the staging buffer stays bounded
  for (uint64_t r0 = 0; r0 < all_rows; r0 += piece_rows) {
    const uint64_t n = std::min(piece_rows, all_rows - r0), nbytes = n * w.row_bytes;
    auto b = dev_->buffer((nbytes + 3) / 4 * 4);
    if (!b.ok()) return b.status();
    const uint8_t* p = src + r0 * w.row_bytes;
    for (uint64_t off = 0; off < nbytes; off += kSlice) {
      const uint64_t k = std::min(kSlice, nbytes - off);
      TROVE_RETURN_IF_ERROR(b->upload(p + off, k, off));
      bar.add(k * bytes / std::max<uint64_t>(1, all_rows * w.row_bytes));
    }
    w.pieces.push_back({r0, n, std::move(*b)});
  }
  return w;
}

// The router beside O: every MoE layer's R̃ and M (router_fold.h) computed on the host's cores, a layer
// per task, then uploaded.
Status VulkanEngine::fold_routers(gguf::GgufFile& f) {
  const ModelConfig& c = cfg_;
  const uint32_t q_dim = c.n_head * c.head_dim;
  std::vector<RouterFold> folds(c.n_layer);
  std::vector<Status> errors(c.n_layer, Status::Ok());
  std::atomic<uint32_t> next{0};
  auto work = [&] {
    for (uint32_t l; (l = next.fetch_add(1)) < c.n_layer;) {
      const std::string b = fmt::format("blk.{}.", l);
      const auto *r = f.find_tensor(b + "ffn_gate_inp.weight"), *n = f.find_tensor(b + "ffn_norm.weight"),
                 *o = f.find_tensor(b + "attn_output.weight");
      if (!r || !n || !o || r->type != quant::GgmlType::F32 || r->ne[0] != c.n_embd ||
          r->ne[1] != c.n_expert || n->ne[0] != c.n_embd || o->ne[0] != q_dim || o->ne[1] != c.n_embd) {
        errors[l] =
            Status::InvalidArgument(fmt::format("{}: {}ffn_gate_inp, ffn_norm or attn_output cannot be "
                                                "folded for the router beside O (f32 router of "
                                                "[{}][{}] needed); use TROVE_MOE_ROUTER=fused",
                                                f.path(), b, c.n_expert, c.n_embd));
        continue;
      }
      std::vector<float> norm(c.n_embd);
      quant::dequantize_row(n->type, n->data, norm.data(), c.n_embd);
      folds[l] = fold_router(reinterpret_cast<const float*>(r->data), norm.data(), c.n_expert, c.n_embd,
                             o->type, o->data, q_dim);
    }
  };
  const uint32_t n_threads = std::clamp<uint32_t>(std::thread::hardware_concurrency(), 1, c.n_layer);
  std::vector<std::thread> threads;
  for (uint32_t i = 1; i < n_threads; ++i) threads.emplace_back(work);
  work();
  for (auto& t : threads) t.join();
  for (uint32_t l = 0; l < c.n_layer; ++l) {
    TROVE_RETURN_IF_ERROR(errors[l]);
    Layer& L = layers_[l];
    for (auto [buf, v] : {std::pair{&L.router_n, &folds[l].rn}, std::pair{&L.router_o, &folds[l].m}}) {
      auto b = dev_->buffer(v->size() * 4);
      if (!b.ok()) return b.status();
      TROVE_RETURN_IF_ERROR(b->upload(v->data(), v->size() * 4, 0));
      *buf = std::move(*b);
    }
    L.moe.router_n = L.router_n;
    L.moe.router_o = L.router_o;
    L.moe.q_dim = q_dim;
  }
  return Status::Ok();
}

Status VulkanEngine::load_weights(gguf::GgufFile& f, bool progress) {
  uint64_t total = 0;
  for (const auto& t : f.tensors()) total += t.n_bytes;
  Progress bar(progress, total);
  weights_hash_ = XXH3_createState();
  XXH3_128bits_reset(weights_hash_);
  struct FreeState {
    XXH3_state_t*& st;
    ~FreeState() { XXH3_freeState(st); st = nullptr; }
  } free_state{weights_hash_};
  auto get = [&](const std::string& name, bool to_f32, Weight& out) -> Status {
    auto w = upload(f, name, to_f32, bar);
    if (!w.ok()) return w.status();
    out = std::move(*w);
    return Status::Ok();
  };
  const ModelConfig& c = cfg_;
  layers_.resize(c.n_layer);
  for (uint32_t i = 0; i < c.n_layer; ++i) {
    Layer& L = layers_[i];
    const std::string b = fmt::format("blk.{}.", i);
    TROVE_RETURN_IF_ERROR(get(b + "attn_norm.weight", true, L.attn_norm));
    TROVE_RETURN_IF_ERROR(get(b + "attn_q.weight", false, L.q));
    TROVE_RETURN_IF_ERROR(get(b + "attn_k.weight", false, L.k));
    TROVE_RETURN_IF_ERROR(get(b + "attn_v.weight", false, L.v));
    TROVE_RETURN_IF_ERROR(get(b + "attn_output.weight", false, L.o));
    TROVE_RETURN_IF_ERROR(get(b + "attn_q_norm.weight", true, L.q_norm));
    TROVE_RETURN_IF_ERROR(get(b + "attn_k_norm.weight", true, L.k_norm));
    TROVE_RETURN_IF_ERROR(get(b + "ffn_norm.weight", true, L.ffn_norm));
    if (c.is_moe()) {
      TROVE_RETURN_IF_ERROR(get(b + "ffn_gate_inp.weight", false, L.router));
      TROVE_RETURN_IF_ERROR(get(b + "ffn_gate_exps.weight", false, L.gate_exps));
      TROVE_RETURN_IF_ERROR(get(b + "ffn_up_exps.weight", false, L.up_exps));
      TROVE_RETURN_IF_ERROR(get(b + "ffn_down_exps.weight", false, L.down_exps));
      if (L.gate_exps.experts != c.n_expert || L.gate_exps.rows != c.n_ff_exp || L.down_exps.rows != c.n_embd ||
          L.up_exps.experts != c.n_expert || L.up_exps.rows != c.n_ff_exp || L.down_exps.experts != c.n_expert ||
          L.router.rows != c.n_expert || L.router.cols != c.n_embd) {
        return Status::InvalidArgument(fmt::format("{}: {}ffn_*_exps shapes disagree with the metadata", f.path(), b));
      }
      // The MoE kernels read a layer's experts by expert id from one buffer each.
      for (const auto& [w, name] : {std::pair{&L.gate_exps, "ffn_gate_exps"}, std::pair{&L.up_exps, "ffn_up_exps"},
                                    std::pair{&L.down_exps, "ffn_down_exps"}, std::pair{&L.router, "ffn_gate_inp"}}) {
        if (w->pieces.size() != 1) {
          return Status::Unsupported(fmt::format(
              "{}: {}{}.weight takes {} bytes, more than the largest buffer {} allows ({} bytes); trove's MoE kernels "
              "need each layer's experts in one buffer. Use a smaller quantization of the model.",
              f.path(), b, name, w->expert_bytes() * w->experts, dev_->features().name, dev_->max_buffer_bytes()));
        }
      }
      auto stacked = [](const Weight& w) {
        return ops::StackedExperts{w.type, w.whole(), static_cast<uint32_t>(w.rows), static_cast<uint32_t>(w.cols),
                                   static_cast<uint32_t>(w.experts)};
      };
      L.moe = {stacked(L.gate_exps),
               stacked(L.up_exps),
               stacked(L.down_exps),
               L.router.type,
               L.router.whole(),
               {},
               {},
               0};  // router_n / router_o: fold_routers()
    } else {
      TROVE_RETURN_IF_ERROR(get(b + "ffn_gate.weight", false, L.gate));
      TROVE_RETURN_IF_ERROR(get(b + "ffn_up.weight", false, L.up));
      TROVE_RETURN_IF_ERROR(get(b + "ffn_down.weight", false, L.down));
    }
    if (L.q.cols != c.n_embd || L.q.rows != uint64_t{c.n_head} * c.head_dim ||
        L.k.rows != uint64_t{c.n_head_kv} * c.head_dim || L.o.rows != c.n_embd) {
      return Status::InvalidArgument(fmt::format("{}: {}attn_* shapes disagree with the metadata", f.path(), b));
    }
  }
  if (fold_router_) TROVE_RETURN_IF_ERROR(fold_routers(f));
  TROVE_RETURN_IF_ERROR(get("output_norm.weight", true, output_norm_));
  const auto* embd = f.find_tensor("token_embd.weight");
  if (!embd) return Status::NotFound(fmt::format("{}: tensor token_embd.weight is missing", f.path()));
  if (embd->ne[0] != c.n_embd || embd->ne[1] < c.n_vocab) {
    return Status::InvalidArgument(fmt::format("{}: token_embd.weight shape disagrees with the metadata", f.path()));
  }
  cfg_.n_vocab = static_cast<uint32_t>(embd->ne[1]);
  embd_type_ = embd->type;
  embd_row_bytes_ = quant::row_bytes(embd->type, static_cast<int64_t>(c.n_embd));
  if (!embd_on_gpu_) embd_host_.assign(embd->data, embd->data + embd->n_bytes);
  if (!c.tied_embeddings) {
    if (embd_on_gpu_) {
      // Not hashed here: the fingerprint takes token_embd's bytes last, below, whichever way it is kept.
      XXH3_state_t* hash = std::exchange(weights_hash_, nullptr);
      auto w = upload(f, "token_embd.weight", false, bar);
      weights_hash_ = hash;
      if (!w.ok()) return w.status();
      embd_gpu_ = std::move(*w);
    } else {
      bar.add(embd->n_bytes);
    }
    TROVE_RETURN_IF_ERROR(get("output.weight", false, head_));
  } else {
    TROVE_RETURN_IF_ERROR(get("token_embd.weight", false, head_));
  }
  if (embd_on_gpu_ && (c.tied_embeddings ? head_ : embd_gpu_).pieces.size() != 1) {
    return Status::Internal("token_embd.weight was planned into one buffer but upload() split it");
  }
  XXH3_128bits_update(weights_hash_, embd->data, embd->n_bytes);
  // Why the KV dtype and layout are in it too: the same weights with another block size or KV type
  // produce blocks of another shape, which must never be mistaken for these.
  const XXH128_hash_t h = XXH3_128bits_digest(weights_hash_);
  fingerprint_ = fmt::format("w{:016x}{:016x}/kv-f16/bt{}/kvh{}/hd{}/l{}", h.high64, h.low64, layout_.block_tokens,
                             c.n_head_kv, c.head_dim, c.n_layer);
  return Status::Ok();
}

std::string VulkanEngine::prefill_weights_name() const {
  if (!prefill_f16_) return "as stored";
  for (const auto& m : kPrefillWeightsModes) {
    if (m.f16 && m.experts == prefill_f16_experts_ && m.resident == prefill_f16_resident_) {
      return fmt::format("{} ({} of f16 rows)", m.name, human_bytes(prefill_f16_bytes()));
    }
  }
  return "f16";  // not reached: every combination the modes set is in the table
}

uint64_t VulkanEngine::prefill_f16_bytes(bool experts, bool resident) const {
  const ModelConfig& c = cfg_;
  const uint64_t E = c.n_embd, q = uint64_t{c.n_head} * c.head_dim, kv = uint64_t{c.n_head_kv} * c.head_dim;
  const uint64_t ffn = c.is_moe() ? (experts ? 3ull * c.n_expert * c.n_ff_exp * E : 0) : 3ull * c.n_ff * E;
  const uint64_t layer =
      2 * ((q + 2 * kv) * E + E * q + ffn) + 8 * 256;  // each of its 7 weights rounded up to 256 bytes
  return resident ? layer * c.n_layer : layer;
}

const VulkanEngine::PrefillWeightsMode* VulkanEngine::prefill_weights_mode(std::string_view name) {
  for (const auto& m : kPrefillWeightsModes) {
    if (m.name == name) return &m;
  }
  return nullptr;
}

const VulkanEngine::PrefillWeightsMode& VulkanEngine::auto_prefill_weights(
    bool matrix_units, uint32_t max_tokens, uint64_t have, uint64_t weights, uint64_t scratch,
    uint64_t resident, uint64_t step, uint64_t pool) {
  const char* name = "quant";
  if (matrix_units && max_tokens >= kPrefillF16MinTokens) {
    if (pool_fits(have, weights, scratch + resident, pool)) {
      name = "f16-dense-resident";
    } else if (pool_fits(have, weights, scratch + step, pool)) {
      name = "f16-dense";
    }
  }
  return *prefill_weights_mode(name);  // every name here is in the table
}

Status VulkanEngine::alloc_scratch() {
  const ModelConfig& c = cfg_;
  const uint64_t T = max_tokens_, S = logit_rows_ = std::max<uint32_t>(static_cast<uint32_t>(seqs_.size()), std::min<uint32_t>(64, max_tokens_));
  const uint64_t qw = uint64_t{c.n_head} * c.head_dim, kw = uint64_t{c.n_head_kv} * c.head_dim;
  const uint64_t ff = c.is_moe() ? c.n_ff_exp : c.n_ff;
  table_stride_ = static_cast<uint32_t>(((n_ctx_ + layout_.block_tokens - 1) / layout_.block_tokens + 63) / 64 * 64);
  struct Want {
    vk::Buffer* b;
    uint64_t bytes;
    vk::Memory mem;
  };
  const auto dl = vk::Memory::kDeviceLocal, hv = vk::Memory::kHostVisible;
  std::vector<Want> want = {
      {&x_in_, embd_on_gpu_ ? 16 : T * c.n_embd * 4, hv}, {&ids_, T * 4, hv}, {&x_, T * c.n_embd * 4, dl}, {&xn_, T * c.n_embd * 4, dl},
      {&xnh_, T * c.n_embd * 2, dl},
      {&q_, T * qw * 4, dl}, {&k_, T * kw * 4, dl}, {&v_, T * kw * 4, dl}, {&attn_, T * qw * 4, dl},
      {&o_, T * c.n_embd * 4, dl}, {&positions_, 2 * T * 4, hv}, {&slots_, T * 4, hv},
      {&tables_, seqs_.size() * table_stride_ * 4, hv}, {&hs_, S * c.n_embd * 4, dl}, {&logits_, S * c.n_vocab * 4ull, dl},
      {&tokens_out_, S * 4, dl}, {&tokens_host_, S * 4, hv}, {&logits_host_, S * c.n_vocab * 4ull, hv},
      {&seeds_, S * 4, hv}};
  if (c.is_moe()) {
    auto moe = MoeLayer::create(*dev_, {c.n_embd, c.n_ff_exp, c.n_expert, c.n_expert_used}, max_tokens_);
    if (!moe.ok()) return moe.status();
    moe_.emplace(std::move(*moe));
    if (profile_.routing()) want.push_back({&routing_host_, uint64_t{c.n_layer} * (c.n_expert + 1) * 4, hv});
  } else {
    want.insert(want.end(), {{&gate_, T * ff * 4, dl}, {&up_, T * ff * 4, dl}, {&h_, T * ff * 4, dl}, {&hh_, T * ff * 2, dl}});
  }
  if (prefill_f16_) {  // the f16 rows of each slot's largest layer (TROVE_PREFILL_WEIGHTS=f16)
    // What each slot needs for a layer (the experts' only where they are read as f16).
    auto need = [&](const Layer& L, int i) {
      return i == kSlotExperts && !prefill_f16_experts_ ? 0 : f16_slot_bytes(L, static_cast<PrefillSlot>(i));
    };
    uint64_t slot[kPrefillSlots] = {};
    for (const Layer& L : layers_) {
      for (int i = 0; i < kPrefillSlots; ++i) slot[i] = std::max(slot[i], need(L, i));
    }
    if (slot[kSlotExperts] > dev_->max_buffer_bytes()) {
      return Status::Unsupported(fmt::format(
          "TROVE_PREFILL_WEIGHTS=f16: a layer's experts take {} as f16, more than the largest buffer {} "
          "allows ({}); "
          "use TROVE_PREFILL_WEIGHTS=f16-dense (experts as stored) or leave it unset",
          human_bytes(slot[kSlotExperts]), dev_->features().name, human_bytes(dev_->max_buffer_bytes())));
    }
    if (prefill_f16_resident_) {
      prefill_f16_layers_.resize(layers_.size());
      for (size_t l = 0; l < layers_.size(); ++l) {
        for (int i = 0; i < kPrefillSlots; ++i) want.push_back({&prefill_f16_layers_[l][i], need(layers_[l], i), dl});
      }
    } else {
      for (int i = 0; i < kPrefillSlots; ++i) want.push_back({&prefill_f16_slots_[i], slot[i], dl});
    }
    auto op = ops::DequantF16::create(*dev_);
    if (!op.ok()) return op.status();
    dequant_f16_.emplace(std::move(*op));
  }
  for (auto& w : want) {
    auto b = dev_->buffer(std::max<uint64_t>(w.bytes, 16), w.mem);
    if (!b.ok()) return b.status();
    *w.b = std::move(*b);
  }
  return Status::Ok();
}

Status VulkanEngine::fill_f16_resident() {
  auto s = stream();
  if (!s.ok()) return s.status();
  for (uint32_t l = 0; l < layers_.size(); ++l) {
    const Layer& L = layers_[l];
    // Every role the layer has (f16-resident: its experts too; f16-dense-resident: not them).
    for (int slot = 0; slot < kPrefillSlots; ++slot) {
      if (slot == kSlotExperts && !prefill_f16_experts_) continue;
      for (const Weight* w : f16_slot_weights(L, static_cast<PrefillSlot>(slot))) {
        if (w && w->rows) TROVE_RETURN_IF_ERROR(record_dequant_f16(**s, L, l, *w));
      }
    }
  }
  Status st = (*s)->submit_and_wait();
  if (!st.ok()) stream_.reset();
  return st;
}

Result<SeqId> VulkanEngine::open_sequence() {
  for (SeqId i = 0; i < seqs_.size(); ++i) {
    if (!seqs_[i].open) {
      seqs_[i] = Sequence{};
      seqs_[i].open = true;
      return i;
    }
  }
  return Status::ResourceExhausted(fmt::format("all {} sequence slots are busy", seqs_.size()));
}

Result<uint32_t> VulkanEngine::attach_prefix(SeqId seq, std::span<const int32_t> tokens, std::string_view name_space) {
  auto now = begin_attach(seq, tokens, name_space);
  if (!now.ok()) return now.status();
  while (restoring(seq)) pump_restores(/*wait=*/true);
  return length(seq);
}

Result<uint32_t> VulkanEngine::begin_attach(SeqId seq, std::span<const int32_t> tokens, std::string_view name_space) {
  if (seq >= seqs_.size() || !seqs_[seq].open) return Status::NotFound(fmt::format("sequence {} is not open", seq));
  Sequence& sq = seqs_[seq];
  if (!sq.tokens.empty() || restoring(seq)) {
    return Status::InvalidArgument(fmt::format("attach_prefix: sequence {} already holds {} tokens; attach to an empty one",
                                               seq, sq.tokens.size()));
  }
  sq.caching = true;
  sq.name_space = std::string(name_space);
  const uint32_t bt = layout_.block_tokens;
  const size_t limit = std::min<size_t>(tokens.size(), n_ctx_) / bt;
  kv::BlockKey parent;
  for (size_t i = 0; i < limit; ++i) {
    const kv::BlockKey key = kv::block_key(parent, fingerprint_, sq.name_space, tokens.subspan(i * bt, bt));
    const auto b = blocks_->find(key);
    if (!b) break;
    blocks_->retain(*b);
    sq.blocks.push_back(*b);
    sq.keys.push_back(key);
    parent = key;
  }
  cache_stats_.gpu_hit_tokens += sq.blocks.size() * bt;
  sq.tokens.assign(tokens.begin(), tokens.begin() + static_cast<ptrdiff_t>(sq.blocks.size() * bt));
  if (store_ && sq.blocks.size() < limit) {
    // The store's index is in memory: the lookup is cheap; only the reads are worth doing in the
    // background.
    const auto t0 = std::chrono::steady_clock::now();
    const kv::PrefixMatch m = store_->lookup(sq.name_space, fingerprint_, tokens.first(limit * bt));
    const size_t have = sq.blocks.size();
    if (m.blocks.size() > have && (have == 0 || m.blocks[have - 1].key == sq.keys[have - 1])) {
      Restore job;
      job.seq = seq;
      job.tokens.assign(tokens.begin(), tokens.begin() + static_cast<ptrdiff_t>(m.blocks.size() * bt));
      const uint64_t per_block = block_all_layers();
      for (size_t i = have; i < m.blocks.size() && m.blocks[i].raw_size == per_block; ++i) job.want.push_back(m.blocks[i]);
      job.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
      if (!job.want.empty()) restores_.push_back(std::move(job));
    }
  }
  return static_cast<uint32_t>(sq.tokens.size());
}

bool VulkanEngine::restoring(SeqId seq) const {
  for (const auto& r : restores_) {
    if (r.seq == seq) return true;
  }
  return false;
}

Result<vk::CommandStream*> VulkanEngine::stream() {
  if (!stream_) {
    replays_.clear();  // captured steps belong to the stream they were captured in
    auto s = dev_->stream(stream_options_);
    if (!s.ok()) return s.status();
    stream_.emplace(std::move(*s));
  }
  return &*stream_;
}

Status VulkanEngine::ensure_staging() {
  if (staging_blocks_) return Status::Ok();
  // About 128 MiB per half, at least one block, never more than the pool.
  const uint64_t per_block = block_all_layers();
  uint64_t n = std::clamp<uint64_t>(restore_group_blocks_ ? restore_group_blocks_ : (128ull << 20) / per_block, 1,
                                    std::max<uint32_t>(1, blocks_->total()));
  n = std::min<uint64_t>(n, dev_->max_buffer_bytes() / (2 * per_block));
  if (n == 0) return Status::ResourceExhausted("one KV block of every layer exceeds the device's largest buffer");
  auto b = dev_->buffer(2 * n * per_block, vk::Memory::kHostCached);
  if (!b.ok()) return b.status();
  staging_ = std::move(*b);
  staging_blocks_ = static_cast<uint32_t>(n);
  return Status::Ok();
}

// Restores go one at a time through the two halves of the staging buffer: the reads of a group of
// blocks fill one half (kv::Store::read_async, on the store's threads) while the GPU copies the
// previous group from the other half into free pool blocks. pump_restores() moves the front job on by
// every group whose reads are done (all of them, waiting, when `wait`); the job ends after its last
// group, at the first block that cannot be read (corrupt, I/O error: the match ends there) or placed
// (pool full), or when its sequence is closed. Its sequence then holds the restored blocks.
void VulkanEngine::start_group(Restore& r) {
  const size_t G = staging_blocks_, first = r.next_group * G, n = std::min(r.want.size(), first + G) - first;
  auto* host = static_cast<uint8_t*>(staging_.mapped());
  const uint64_t per_block = block_all_layers();
  std::vector<kv::BlockRef> refs(r.want.begin() + static_cast<ptrdiff_t>(first),
                                 r.want.begin() + static_cast<ptrdiff_t>(first + n));
  std::vector<std::span<uint8_t>> out;
  for (size_t j = 0; j < n; ++j) out.emplace_back(host + ((r.next_group % 2) * G + j) * per_block, per_block);
  r.reading.push_back(store_->read_async(std::move(refs), std::move(out)));
  ++r.next_group;
}

void VulkanEngine::finish_restore() {
  Restore& r = restores_.front();
  for (auto& f : r.reading) f.wait();  // the staging buffer must not be written after the job ends
  Sequence& sq = seqs_[r.seq];
  if (sq.open) {
    sq.tokens.assign(r.tokens.begin(), r.tokens.begin() + static_cast<ptrdiff_t>(sq.blocks.size() * layout_.block_tokens));
  }
  cache_stats_.store_hit_tokens += r.restored * layout_.block_tokens;
  cache_stats_.store_restore_seconds += r.seconds;
  restores_.pop_front();
}

void VulkanEngine::pump_restores(bool wait) {
  while (!restores_.empty()) {
    Restore& r = restores_.front();
    const auto t0 = std::chrono::steady_clock::now();
    struct AddTime {
      std::chrono::steady_clock::time_point t0;
      double& to;
      ~AddTime() { to += std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count(); }
    } add_time{t0, r.seconds};
    if (!seqs_[r.seq].open || r.ended) {
      finish_restore();
      continue;
    }
    if (Status st = ensure_staging(); !st.ok()) {
      log::warn("engine", "KV store restore skipped: {}", st.message());
      r.ended = true;
      continue;
    }
    const size_t G = staging_blocks_;
    if (r.reading.empty()) start_group(r);
    auto& front = r.reading.front();
    if (!wait && front.wait_for(std::chrono::seconds(0)) != std::future_status::ready) return;
    const std::vector<Status> got = front.get();
    r.reading.pop_front();
    {  // where this group's bytes came from (the store counts it; once per group, not per step)
      const kv::Stats ks = store_->stats();
      cache_stats_.store_page_cache_reads = ks.page_cache_reads;
      cache_stats_.store_direct_reads = ks.direct_reads;
    }
    const size_t group = r.next_group - 1 - r.reading.size();
    if (group + 1 < (r.want.size() + G - 1) / G && r.reading.empty()) start_group(r);  // the other half
    size_t ok = 0;
    while (ok < got.size() && got[ok].ok()) ++ok;
    if (ok < got.size()) {
      ++cache_stats_.store_read_failures;
      // Once per run of failures (a failing disk would log on every request); /metrics counts them all.
      if (!store_reads_failing_) {
        log::warn("engine", "KV store block {} unreadable ({}); prefix restored up to it. Further unreadable blocks are "
                  "counted (trove_store_read_failures_total) and not logged until a read succeeds",
                  r.want[group * G + ok].key.hex(), got[ok].message());
      }
      store_reads_failing_ = true;
    } else if (store_reads_failing_ && ok > 0) {
      log::info("engine", "KV store reads succeed again");
      store_reads_failing_ = false;
    }
    Sequence& sq = seqs_[r.seq];
    std::vector<uint32_t> placed;
    while (placed.size() < ok) {
      const auto b = blocks_->allocate();
      if (!b) break;
      placed.push_back(*b);
    }
    const uint64_t per_block = block_all_layers();
    auto stream = this->stream();
    Status st = stream.ok() ? Status::Ok() : stream.status();
    if (st.ok()) {
      for (size_t j = 0; j < placed.size(); ++j) {
        for (uint32_t l = 0; l < cfg_.n_layer; ++l) {
          (*stream)->copy(staging_, ((group % 2) * G + j) * per_block + l * layout_.block_bytes(), kv_[l],
                          placed[j] * layout_.block_bytes(), layout_.block_bytes());
        }
      }
      st = (*stream)->submit_and_wait();
    }
    if (!st.ok()) {
      stream_.reset();
      log::warn("engine", "KV store restore: copying blocks into the pool failed: {}", st.message());
      for (uint32_t b : placed) blocks_->release(b);
      placed.clear();
    }
    for (size_t j = 0; j < placed.size(); ++j) {
      const kv::BlockKey& key = r.want[group * G + j].key;
      (void)blocks_->register_key(placed[j], key);
      sq.blocks.push_back(placed[j]);
      sq.keys.push_back(key);
      cache_stats_.store_restored_bytes += per_block;
      ++r.restored;
    }
    if (placed.size() < got.size() || group * G + got.size() >= r.want.size()) r.ended = true;
  }
}

CacheStats VulkanEngine::cache_stats() const {
  CacheStats s = cache_stats_;
  if (exporter_) {
    const BlockExporter::Counters c = exporter_->counters();
    s.store_blocks_queued = c.queued;
    s.store_blocks_dropped = c.dropped;
    s.store_export_worker_seconds = c.seconds + c.wait_seconds;
    s.store_export_wait_seconds = c.wait_seconds;
  }
  return s;
}

Status VulkanEngine::ensure_exporter() {
  if (exporter_) return Status::Ok();
  // The blocks of a quarter more than one full step (the 8B's 2048-token step: 128 blocks, ~300 MB;
  // 160 slots), so that a step waits for the worker only when it is still behind with the step before;
  // never more than the pool. With EngineOptions::restore_group_blocks (tests), twice that many.
  const uint64_t per_block = block_all_layers();
  const uint64_t step_blocks = (max_tokens_ + layout_.block_tokens - 1) / layout_.block_tokens;
  uint64_t n = std::clamp<uint64_t>(restore_group_blocks_ ? 2ull * restore_group_blocks_ : step_blocks * 5 / 4 + 1, 1,
                                    std::max<uint32_t>(1, blocks_->total()));
  n = std::min<uint64_t>(n, dev_->max_buffer_bytes() / per_block);
  if (n == 0) return Status::ResourceExhausted("one KV block of every layer exceeds the device's largest buffer");
  auto b = dev_->buffer(n * per_block, vk::Memory::kHostCached);
  if (!b.ok()) return b.status();
  export_staging_ = std::move(*b);
  exporter_ = std::make_unique<BlockExporter>(
      store_, BlockExporter::Format{fingerprint_, layout_.block_tokens, static_cast<uint16_t>(cfg_.n_layer)},
      static_cast<const uint8_t*>(export_staging_.mapped()), per_block, static_cast<uint32_t>(n));
  return Status::Ok();
}

// Copies the blocks registered during this step into export slots and hands them to the exporter's
// worker, which queues them for the store after the step has returned. Waits only for the GPU copies,
// and for free slots when the worker still holds all of them.
void VulkanEngine::export_to_store() {
  if (to_store_.empty()) return;
  const auto t0 = std::chrono::steady_clock::now();
  struct AddTime {
    std::chrono::steady_clock::time_point t0;
    double& to;
    ~AddTime() { to += std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count(); }
  } add_time{t0, cache_stats_.store_export_seconds};
  std::vector<Export> pending = std::move(to_store_);
  to_store_.clear();
  if (Status st = ensure_exporter(); !st.ok()) {
    log::warn("engine", "KV store write skipped: {}", st.message());
    return;
  }
  const uint64_t per_block = block_all_layers();
  for (size_t first = 0; first < pending.size();) {
    const std::vector<uint32_t> slots = exporter_->acquire(pending.size() - first);
    auto stream = this->stream();
    Status st = stream.ok() ? Status::Ok() : stream.status();
    if (st.ok()) {
      for (size_t j = 0; j < slots.size(); ++j) {
        for (uint32_t l = 0; l < cfg_.n_layer; ++l) {
          (*stream)->copy(kv_[l], pending[first + j].block * layout_.block_bytes(), export_staging_,
                          slots[j] * per_block + l * layout_.block_bytes(), layout_.block_bytes());
        }
      }
      st = (*stream)->submit_and_wait();
    }
    if (!st.ok()) {
      exporter_->release(slots);
      stream_.reset();
      log::warn("engine", "KV store write: copying blocks from the pool failed: {}", st.message());
      return;
    }
    std::vector<BlockExporter::Block> blocks;
    blocks.reserve(slots.size());
    for (size_t j = 0; j < slots.size(); ++j) {
      Export& e = pending[first + j];
      blocks.push_back({slots[j], e.key, e.parent, std::move(e.name_space), std::move(e.tokens)});
    }
    exporter_->hand_over(std::move(blocks));
    first += slots.size();
  }
}

// Registers the blocks the sequence has filled since the last call (a block is final once full: later
// tokens go to later blocks, and truncate() into it copies before writing, see BlockPool::must_copy).
// Tokens at sq.accepted and after (drafts, StepInput::provisional) wait for truncate() to keep them.
void VulkanEngine::register_full_blocks(Sequence& sq) {
  if (!sq.caching) return;
  const uint32_t bt = layout_.block_tokens;
  const std::span<const int32_t> toks(sq.tokens);
  while (sq.keys.size() < std::min(sq.tokens.size(), sq.accepted) / bt) {
    const size_t i = sq.keys.size();
    const kv::BlockKey parent = i == 0 ? kv::BlockKey{} : sq.keys.back();
    const kv::BlockKey key = kv::block_key(parent, fingerprint_, sq.name_space, toks.subspan(i * bt, bt));
    // False when another sequence registered the same content first: that block stays the cached one.
    const bool fresh = blocks_->register_key(sq.blocks[i], key);
    if (fresh && store_ && !store_->contains(key)) {
      auto bt_tokens = toks.subspan(i * bt, bt);
      to_store_.push_back({sq.blocks[i], key, parent, sq.name_space, {bt_tokens.begin(), bt_tokens.end()}});
    }
    sq.keys.push_back(key);
  }
}

void VulkanEngine::close_sequence(SeqId seq) {
  if (seq >= seqs_.size() || !seqs_[seq].open) return;
  for (auto it = restores_.begin(); it != restores_.end(); ++it) {
    if (it->seq != seq) continue;
    for (auto& f : it->reading) f.wait();  // reads in flight still write the staging buffer
    cache_stats_.store_hit_tokens += it->restored * layout_.block_tokens;
    cache_stats_.store_restore_seconds += it->seconds;
    restores_.erase(it);
    break;
  }
  for (uint32_t b : seqs_[seq].blocks) blocks_->release(b);
  seqs_[seq] = Sequence{};
}

Status VulkanEngine::truncate(SeqId seq, uint32_t n) {
  if (seq >= seqs_.size() || !seqs_[seq].open) return Status::NotFound(fmt::format("sequence {} is not open", seq));
  Sequence& s = seqs_[seq];
  if (restoring(seq)) {
    return Status::InvalidArgument(fmt::format("sequence {} is still restoring its prefix from the KV store", seq));
  }
  if (n > s.tokens.size()) {
    return Status::InvalidArgument(fmt::format("truncate to {} tokens: sequence {} has only {}", n, seq, s.tokens.size()));
  }
  drop_after(s, n);
  s.accepted = SIZE_MAX;  // what is kept is accepted
  register_full_blocks(s);
  return Status::Ok();
}

void VulkanEngine::drop_after(Sequence& s, uint32_t n) {
  s.tokens.resize(n);
  if (s.keys.size() > n / layout_.block_tokens) s.keys.resize(n / layout_.block_tokens);
  const size_t keep = (n + layout_.block_tokens - 1) / layout_.block_tokens;
  while (s.blocks.size() > keep) {
    blocks_->release(s.blocks.back());
    s.blocks.pop_back();
  }
}

void VulkanEngine::embed(int32_t token, float* out) const {
  quant::dequantize_row(embd_type_, embd_host_.data() + static_cast<uint64_t>(token) * embd_row_bytes_, out,
                        cfg_.n_embd);
}

}  // namespace internal

Result<std::unique_ptr<Engine>> Engine::load(const EngineOptions& opts) { return internal::VulkanEngine::create(opts); }

}  // namespace trove::engine
