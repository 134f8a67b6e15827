// engine/runtime/engine.h — a loaded Qwen3 / Qwen3-MoE model on the GPU, its paged KV pool, and the
// batched forward step everything above it (trove run, the server's scheduler) drives.
//
// Contract:
//  - Engine::load() reads a GGUF (qwen3 or qwen3moe), checks that weights + KV pool + scratch fit the
//    device (a clear error naming the three sizes otherwise), uploads every weight once (the file's
//    mapping is released afterwards) and builds the tokenizer and the chat renderer from the file.
//  - A sequence is a slot with a list of KV blocks (block table). open_sequence() takes a free slot;
//    close_sequence() returns its blocks to the pool. Positions are implicit: a sequence's next token
//    goes at position length(seq).
//  - step() runs ONE forward pass over a batch: for each input, its new tokens are appended to its
//    sequence (prefill chunk or one decode token) and, when asked, the next token is chosen from the
//    logits after the input's last token (greedy when sampling.temperature <= 0) and/or those logits
//    are returned. Several sequences' tokens go through the matmuls together.
//  - Prefix cache: attach_prefix() makes an empty sequence share the longest run of resident full KV
//    blocks whose content key (kv::block_key chained over the model fingerprint, the cache namespace
//    and the block's token ids: the same keys the KV store uses) matches `tokens`; from then on every
//    block that sequence completes is registered under its key. A closed sequence's registered blocks
//    stay resident unreferenced and are evicted least recently used first, only when the pool needs
//    room. A sequence never attached (the opt-out) neither reads nor registers blocks.
//  - KV store tier (EngineOptions::store): attach_prefix() continues the GPU match with the store's
//    longest stored chain (kv::Store::lookup), reads those blocks (checksummed; a bad block ends the
//    match there) into free pool blocks and registers them, so later requests find them on the GPU.
//    Every block a caching sequence completes that the store does not hold yet is copied back from the
//    GPU at the end of that step and queued for the store (write-behind: kv::Store::insert never
//    blocks on I/O). A block's store payload is the pool block of every layer in layer order (for each
//    layer: K then V, [kv_head][token][head_dim] f16 — kernels/kv_layout.h), dtype f16.
//  - Errors (the pool is full, a sequence would exceed the context, an unknown sequence) leave every
//    sequence as it was before the call.
// Thread-safety: one thread drives an Engine (the scheduler's loop); const accessors are safe anywhere.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "common/status.h"
#include "engine/chat/render.h"
#include "engine/gguf/model_info.h"
#include "engine/tokenizer/tokenizer.h"
#include "kvstore/store.h"

namespace trove::engine {

// Hyper-parameters of the loaded model, all read from the GGUF metadata.
struct ModelConfig {
  std::string architecture;     // "qwen3" or "qwen3moe"
  std::string name;             // general.name (or the file's stem)
  bool synthetic = false;       // written by `trove mkmodel` (random weights)
  uint32_t n_layer = 0, n_embd = 0, n_head = 0, n_head_kv = 0, head_dim = 0, n_ff = 0;
  uint32_t n_expert = 0, n_expert_used = 0, n_ff_exp = 0;  // 0 for dense models
  uint32_t n_vocab = 0;
  uint32_t n_ctx_train = 0;
  float rms_eps = 1e-6f;
  float rope_base = 1e6f;
  bool tied_embeddings = false;
  std::vector<int32_t> eos_ids;  // eos_token_id, <|im_end|> and <|endoftext|> when present
  bool is_moe() const { return n_expert > 0; }
  // KV bytes per token over all layers (f16 K and V).
  uint64_t kv_bytes_per_token() const { return uint64_t{n_layer} * n_head_kv * head_dim * 2 * 2; }
};

struct EngineOptions {
  std::string model_path;
  uint32_t n_ctx = 0;            // max tokens per sequence; 0 = the model's training context (capped at 32768)
  uint32_t max_sequences = 4;    // concurrent sequences (slots)
  uint32_t block_tokens = 64;    // KV pool block size; equals the KV store's block size
  uint64_t kv_pool_bytes = 0;    // 0 = enough for max_sequences full contexts (capped by device memory)
  // Largest number of tokens one step() takes (prefill chunk bound). 2048: on the H200 the 8B's
  // prefill to 16384 tokens ran at 7081 tok/s in 2048-token steps against 6087 in 512-token ones
  // (2026-12-03; the matrix products take the NV cm2 GEMM from 2048 rows of a batch, matmul.h).
  uint32_t max_batch_tokens = 2048;
  bool progress = false;         // progress bar on stderr while uploading weights
  // The SSD tier of the prefix cache (optional). Its block size must equal block_tokens. The engine
  // flushes it when destroyed.
  std::shared_ptr<kv::Store> store;
  // Blocks per half of the restore staging buffer (0: about 128 MiB). Tests set it small to cover the
  // double buffering.
  uint32_t restore_group_blocks = 0;
};

using SeqId = uint32_t;

struct Sampling {
  float temperature = 0.0f;  // <= 0: greedy (argmax)
  uint32_t top_k = 40;       // 1..64 when sampling
  float top_p = 1.0f;
  float min_p = 0.0f;
  uint64_t seed = 0;
};

struct StepInput {
  SeqId seq = 0;
  std::span<const int32_t> tokens;  // appended at positions length(seq) ...
  bool sample = true;               // choose the next token after the last of `tokens`
  bool want_logits = false;         // return the full logits row after the last token
  bool all_logits = false;          // with want_logits: rows after EVERY token (tests; at most
                                    // max_logit_rows() rows per step in total)
  // Verification of drafted tokens (speculative decoding): StepOutput::tokens gets the greedy (argmax)
  // token after EVERY token of `tokens`, chosen on the GPU (4 bytes per position come back, not the
  // logits). Counts tokens.size() rows against max_logit_rows().
  bool all_tokens = false;
  // The last `provisional` tokens are drafts that may be rolled back: the KV blocks they complete are
  // not registered in the prefix cache (nor queued for the KV store) until truncate() keeps them.
  uint32_t provisional = 0;
  Sampling sampling;
};

struct StepOutput {
  int32_t token = -1;          // chosen next token (-1 when !sample)
  std::vector<float> logits;   // n_vocab floats when want_logits (tokens.size() * n_vocab with all_logits)
  std::vector<int32_t> tokens; // with all_tokens: the argmax after each input token (the last one is
                               // `token` instead when sample with temperature > 0)
};

struct PoolStats {
  uint32_t total_blocks = 0;
  uint32_t used_blocks = 0;
  uint32_t block_tokens = 0;
  uint64_t bytes = 0;
  uint32_t cached_blocks = 0;   // registered, unreferenced, resident (evictable)
  uint64_t evictions = 0;       // cached blocks reused for new content since load
};

// Prefix cache counters since load.
struct CacheStats {
  uint64_t gpu_hit_tokens = 0;        // tokens attached from GPU-resident blocks
  uint64_t store_hit_tokens = 0;      // tokens attached from blocks restored from the KV store
  uint64_t store_restored_bytes = 0;  // payload bytes read from the store into the pool
  uint64_t store_read_failures = 0;   // stored blocks that could not be read (corrupt, I/O): a miss
  uint64_t store_blocks_queued = 0;   // completed blocks copied back and queued for the store (write-behind)
  uint64_t store_blocks_dropped = 0;  // ... that the store refused (write-behind queue full)
  uint64_t store_page_cache_reads = 0;  // store blocks read buffered, the page cache holding them (the store's count)
  uint64_t store_direct_reads = 0;      // store blocks read O_DIRECT from the disk (the store's count)
  double store_restore_seconds = 0;   // time spent in lookup + read + upload
  double store_export_seconds = 0;    // time steps spent copying completed blocks back (GPU → host slots)
  double store_export_worker_seconds = 0;  // the write-behind worker's time: slots → store queue, off the steps
  double store_export_wait_seconds = 0;    // ... of which waiting for room in the store's queue (disk slower)
};

class Engine {
 public:
  static Result<std::unique_ptr<Engine>> load(const EngineOptions& opts);
  virtual ~Engine() = default;

  virtual const ModelConfig& config() const = 0;
  virtual const gguf::ModelInfo& info() const = 0;
  virtual const tokenizer::Tokenizer& tokenizer() const = 0;
  // The chat renderer for the model's template (Qwen3 or Qwen3-Coder); error when the template is not
  // one trove renders.
  virtual Result<const chat::ChatRenderer*> renderer() const = 0;
  virtual uint32_t n_ctx() const = 0;
  virtual uint32_t max_sequences() const = 0;
  virtual uint32_t max_batch_tokens() const = 0;
  virtual uint32_t max_logit_rows() const { return max_sequences(); }
  virtual std::string device_name() const = 0;

  virtual Result<SeqId> open_sequence() = 0;   // ResourceExhausted when every slot is busy
  virtual void close_sequence(SeqId seq) = 0;  // frees its KV blocks; unknown ids ignored
  virtual uint32_t length(SeqId seq) const = 0;
  // The token ids the sequence holds (its KV), in order.
  virtual std::vector<int32_t> tokens(SeqId seq) const { (void)seq; return {}; }
  // Drops tokens after the first n (n <= length): the next step continues from position n. The kept
  // tokens count as accepted: full blocks among them that a step held back as provisional (drafts)
  // are registered in the prefix cache now (truncate(seq, length(seq)) keeps every draft).
  virtual Status truncate(SeqId seq, uint32_t n) = 0;

  // True when step() honours StepInput::all_tokens and provisional (verification of drafted tokens);
  // speculative decoding drafts nothing for an engine that does not.
  virtual bool verifies_drafts() const { return false; }
  // One forward pass. outputs[i] belongs to inputs[i]. Total tokens <= max_batch_tokens(); each
  // sequence at most once per call.
  virtual Result<std::vector<StepOutput>> step(std::span<const StepInput> inputs) = 0;

  virtual PoolStats pool_stats() const = 0;

  // Identity of the weights (XXH3-128 over every tensor's bytes as uploaded), the KV dtype and the KV
  // layout: two engines share cached blocks only when their fingerprints are equal.
  virtual std::string fingerprint() const { return {}; }
  // Attaches to the EMPTY sequence `seq` the longest run of cached full blocks that hold a prefix of
  // `tokens` under `name_space` (whole blocks only, never more than tokens.size() tokens: pass the
  // prompt less its last token when the logits after the prompt are wanted) and enables registering
  // the blocks it completes. Returns how many tokens the sequence now holds (0 on a miss).
  virtual Result<uint32_t> attach_prefix(SeqId seq, std::span<const int32_t> tokens, std::string_view name_space) {
    (void)seq, (void)tokens, (void)name_space;
    return 0u;
  }
  // attach_prefix() in two halves, so the caller's other sequences keep stepping while the store is
  // read: begin_attach() attaches the GPU-resident blocks at once (returns the tokens attached so far)
  // and queues the restore of the store's blocks after them; the sequence is restoring() — it may not
  // step or truncate — until pump_restores() has placed them (or the chain ended at an unreadable
  // block). pump_restores(false) does whatever reads have finished and returns; pump_restores(true)
  // waits for the front restore's next group. attach_prefix() = begin_attach() + pump until done.
  virtual Result<uint32_t> begin_attach(SeqId seq, std::span<const int32_t> tokens, std::string_view name_space) {
    return attach_prefix(seq, tokens, name_space);
  }
  virtual bool restoring(SeqId seq) const { (void)seq; return false; }
  virtual void pump_restores(bool wait) { (void)wait; }
  // store_blocks_queued / _dropped count the blocks the write-behind has handed to the store so far: a
  // worker thread does that after the step that completed them returned. wait_for_store_writes()
  // returns once it has handed over every block completed by the steps before the call.
  virtual CacheStats cache_stats() const { return {}; }
  virtual void wait_for_store_writes() {}
  // The write-behind's progress in blocks: handed to the worker by the steps so far, and finished
  // (queued in the store or refused by it) in that order — the blocks of the steps before a reading
  // of `handed` are all in the store's queue once `done` reaches it (the scheduler holds a request's
  // end until then).
  struct StoreWriteProgress {
    uint64_t handed = 0, done = 0;
  };
  virtual StoreWriteProgress store_write_progress() const { return {}; }
};

// True when `token` ends generation for this model (one of config().eos_ids).
bool is_eos(const ModelConfig& c, int32_t token);

}  // namespace trove::engine
