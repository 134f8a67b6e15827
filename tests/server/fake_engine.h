// A scripted stand-in for engine::Engine (with a paged KV pool of `total_blocks` blocks), for the scheduler and HTTP-layer unit tests.
//
// Contract: the real Qwen3 tokenizer (from node_modules) and Qwen3 chat renderer, `max_sequences` slots, `max_batch_tokens`
// per step. A sequence's replies come from `script`: the n-th token sampled after the prompt is
// script[n] (EOS once the script is exhausted). Every step is recorded (which sequences, how many
// tokens) so tests can check batching, chunking and when a cancelled sequence stopped appearing.
#pragma once

#include <atomic>
#include <chrono>
#include <map>
#include <mutex>
#include <thread>

#include "engine/chat/render.h"
#include "engine/runtime/engine.h"
#include "tests/tokenizer/tokenizer_test_model.h"

namespace trove::server::testing {

class FakeEngine : public engine::Engine {
 public:
  struct StepRecord {
    std::vector<std::pair<engine::SeqId, size_t>> inputs;  // (seq, tokens)
  };

  FakeEngine(uint32_t max_sequences, uint32_t max_batch_tokens, uint32_t n_ctx = 4096)
      : max_seq_(max_sequences), max_batch_(max_batch_tokens), n_ctx_(n_ctx) {
    config_.name = "fake";
    config_.eos_ids = {tokenizer().find("<|im_end|>")};
    slots_.resize(max_sequences);
  }

  std::vector<int32_t> script;
  std::chrono::milliseconds step_delay{0};
  static constexpr uint32_t kBlockTokens = 16;
  uint32_t total_blocks = 1u << 20;  // KV pool size in blocks of kBlockTokens

  const engine::ModelConfig& config() const override { return config_; }
  const gguf::ModelInfo& info() const override { return info_; }
  const tokenizer::Tokenizer& tokenizer() const override { return tokenizer::testing::qwen3(); }
  Result<const chat::ChatRenderer*> renderer() const override { return renderer_.get(); }
  uint32_t n_ctx() const override { return n_ctx_; }
  uint32_t max_sequences() const override { return max_seq_; }
  uint32_t max_batch_tokens() const override { return max_batch_; }
  std::string device_name() const override { return "fake"; }

  Result<engine::SeqId> open_sequence() override {
    std::lock_guard<std::mutex> lock(mu_);
    for (engine::SeqId i = 0; i < slots_.size(); ++i) {
      if (!slots_[i].open) {
        slots_[i] = Slot{};
        slots_[i].open = true;
        return i;
      }
    }
    return Status::ResourceExhausted("every slot is busy");
  }
  void close_sequence(engine::SeqId seq) override {
    std::lock_guard<std::mutex> lock(mu_);
    if (seq < slots_.size()) slots_[seq].open = false;
  }
  uint32_t length(engine::SeqId seq) const override {
    std::lock_guard<std::mutex> lock(mu_);
    return static_cast<uint32_t>(slots_[seq].tokens.size());
  }
  Status truncate(engine::SeqId seq, uint32_t n) override {
    std::lock_guard<std::mutex> lock(mu_);
    slots_[seq].tokens.resize(n);
    return Status::Ok();
  }
  Result<std::vector<engine::StepOutput>> step(std::span<const engine::StepInput> inputs) override {
    if (step_delay.count() > 0) std::this_thread::sleep_for(step_delay);
    std::lock_guard<std::mutex> lock(mu_);
    size_t total = 0;
    uint64_t blocks = used_blocks_locked();
    for (const auto& in : inputs) {
      if (in.seq >= slots_.size() || !slots_[in.seq].open) return Status::InvalidArgument("unknown sequence");
      const size_t len = slots_[in.seq].tokens.size();
      if (len + in.tokens.size() > n_ctx_) return Status::InvalidArgument("past the context");
      blocks += blocks_for(len + in.tokens.size()) - blocks_for(len);
      total += in.tokens.size();
    }
    if (total > max_batch_) return Status::InvalidArgument("batch larger than max_batch_tokens");
    // Like the real engine: a failed step leaves every sequence as it was.
    if (blocks > total_blocks) return Status::ResourceExhausted("the KV pool is full");
    StepRecord rec;
    std::vector<engine::StepOutput> out(inputs.size());
    for (size_t i = 0; i < inputs.size(); ++i) {
      const auto& in = inputs[i];
      rec.inputs.emplace_back(in.seq, in.tokens.size());
      Slot& s = slots_[in.seq];
      s.tokens.insert(s.tokens.end(), in.tokens.begin(), in.tokens.end());
      if (in.sample) {
        out[i].token = s.sampled < script.size() ? script[s.sampled] : config_.eos_ids[0];
        ++s.sampled;
      }
    }
    steps_.push_back(std::move(rec));
    step_count_.fetch_add(1);
    return out;
  }
  engine::PoolStats pool_stats() const override {
    std::lock_guard<std::mutex> lock(mu_);
    engine::PoolStats p;
    p.total_blocks = total_blocks;
    p.used_blocks = static_cast<uint32_t>(used_blocks_locked());
    p.block_tokens = kBlockTokens;
    return p;
  }

  std::vector<StepRecord> steps() const {
    std::lock_guard<std::mutex> lock(mu_);
    return steps_;
  }
  uint64_t step_count() const { return step_count_.load(); }
  uint32_t open_count() const {
    std::lock_guard<std::mutex> lock(mu_);
    uint32_t n = 0;
    for (const auto& s : slots_) n += s.open ? 1 : 0;
    return n;
  }

 private:
  static uint64_t blocks_for(size_t tokens) { return (tokens + kBlockTokens - 1) / kBlockTokens; }
  uint64_t used_blocks_locked() const {
    uint64_t n = 0;
    for (const auto& s : slots_) n += s.open ? blocks_for(s.tokens.size()) : 0;
    return n;
  }
  struct Slot {
    bool open = false;
    std::vector<int32_t> tokens;
    size_t sampled = 0;
  };
  uint32_t max_seq_, max_batch_, n_ctx_;
  engine::ModelConfig config_;
  std::unique_ptr<chat::ChatRenderer> renderer_ = chat::make_qwen3_renderer();
  gguf::ModelInfo info_;
  mutable std::mutex mu_;
  std::vector<Slot> slots_;
  std::vector<StepRecord> steps_;
  std::atomic<uint64_t> step_count_{0};
};

}  // namespace trove::server::testing
