#include "server/metrics.h"

#include <fmt/format.h>

namespace trove::server {

void Histogram::observe(double v) {
  size_t i = 0;
  while (i < bounds_.size() && v > bounds_[i]) ++i;
  ++counts_[i];
  sum_ += v;
  ++count_;
}

std::string Histogram::render(const std::string& name, const std::string& help) const {
  std::string out = fmt::format("# HELP {} {}\n# TYPE {} histogram\n", name, help, name);
  uint64_t cumulative = 0;
  for (size_t i = 0; i < bounds_.size(); ++i) {
    cumulative += counts_[i];
    out += fmt::format("{}_bucket{{le=\"{}\"}} {}\n", name, bounds_[i], cumulative);
  }
  cumulative += counts_.back();
  out += fmt::format("{}_bucket{{le=\"+Inf\"}} {}\n{}_sum {}\n{}_count {}\n", name, cumulative, name, sum_, name, count_);
  return out;
}

Metrics::Metrics()
    : ttft_({0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120}),
      inter_token_({0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5}),
      queue_wait_({0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120}) {}

void Metrics::count_request(const std::string& endpoint, int status) {
  std::lock_guard<std::mutex> lock(mu_);
  ++requests_[{endpoint, status}];
}

void Metrics::add_tokens(uint32_t prompt, uint32_t cached, uint32_t generated) {
  std::lock_guard<std::mutex> lock(mu_);
  prompt_tokens_ += prompt;
  cached_tokens_ += cached;
  generated_tokens_ += generated;
}

void Metrics::observe_ttft(double seconds) {
  std::lock_guard<std::mutex> lock(mu_);
  ttft_.observe(seconds);
}

void Metrics::observe_queue_wait(double seconds) {
  std::lock_guard<std::mutex> lock(mu_);
  queue_wait_.observe(seconds);
}

void Metrics::observe_inter_token(double seconds) {
  std::lock_guard<std::mutex> lock(mu_);
  inter_token_.observe(seconds);
}

std::string Metrics::render(const SchedulerStats& s, const kv::Stats* store) const {
  std::lock_guard<std::mutex> lock(mu_);
  std::string out;
  out += "# HELP trove_requests_total HTTP requests by endpoint and status code.\n# TYPE trove_requests_total counter\n";
  for (const auto& [key, n] : requests_) {
    out += fmt::format("trove_requests_total{{endpoint=\"{}\",status=\"{}\"}} {}\n", key.first, key.second, n);
  }
  auto counter = [&](const char* name, const char* help, uint64_t v) {
    out += fmt::format("# HELP {} {}\n# TYPE {} counter\n{} {}\n", name, help, name, name, v);
  };
  auto gauge = [&](const char* name, const char* help, auto v) {
    out += fmt::format("# HELP {} {}\n# TYPE {} gauge\n{} {}\n", name, help, name, name, v);
  };
  counter("trove_prompt_tokens_total", "Prompt tokens of finished requests.", prompt_tokens_);
  counter("trove_cached_tokens_total", "Prompt tokens taken from the prefix cache (both tiers; by tier: trove_prefix_cache_hit_tokens_total).", cached_tokens_);
  counter("trove_generated_tokens_total", "Generated tokens.", generated_tokens_);
  counter("trove_requests_cancelled_total", "Requests cancelled because the client went away.", s.cancelled);
  counter("trove_scheduler_steps_total", "Engine steps run by the scheduler.", s.steps);
  out += ttft_.render("trove_time_to_first_token_seconds", "Time from request to first generated token.");
  out += inter_token_.render("trove_inter_token_latency_seconds", "Time between consecutive generated tokens of one request.");
  out += queue_wait_.render("trove_queue_wait_seconds", "Time a generation request waited for a sequence slot.");
  gauge("trove_queue_depth", "Requests waiting for a sequence slot.", s.queued);
  gauge("trove_active_sequences", "Sequences being prefilled or decoded.", s.active);
  gauge("trove_kv_pool_blocks_used", "KV pool blocks in use.", s.pool.used_blocks);
  gauge("trove_kv_pool_blocks_total", "KV pool blocks.", s.pool.total_blocks);
  out += "# HELP trove_prefix_cache_hit_tokens_total Prompt tokens attached from the prefix cache, by tier: gpu (resident "
         "KV blocks) or store (blocks read from the SSD KV store into the pool).\n"
         "# TYPE trove_prefix_cache_hit_tokens_total counter\n";
  out += fmt::format("trove_prefix_cache_hit_tokens_total{{tier=\"gpu\"}} {}\n", s.cache.gpu_hit_tokens);
  out += fmt::format("trove_prefix_cache_hit_tokens_total{{tier=\"store\"}} {}\n", s.cache.store_hit_tokens);
  counter("trove_store_restored_bytes_total", "KV bytes read from the store into the GPU pool.", s.cache.store_restored_bytes);
  out += "# HELP trove_store_block_reads_total Blocks read from the KV store, by where the bytes came from: page_cache "
         "(buffered read, the OS held them) or disk (O_DIRECT).\n# TYPE trove_store_block_reads_total counter\n";
  out += fmt::format("trove_store_block_reads_total{{source=\"page_cache\"}} {}\n", s.cache.store_page_cache_reads);
  out += fmt::format("trove_store_block_reads_total{{source=\"disk\"}} {}\n", s.cache.store_direct_reads);
  counter("trove_store_read_failures_total", "Stored blocks that could not be read (corrupt or I/O error; the prefix ended there).",
          s.cache.store_read_failures);
  counter("trove_store_blocks_written_total", "Completed KV blocks queued for the store (write-behind).", s.cache.store_blocks_queued);
  counter("trove_store_blocks_dropped_total", "Completed KV blocks the store's write queue had no room for.",
          s.cache.store_blocks_dropped);
  if (store) {
    // The store's write-behind tickets (kv::Stats): a block queued while enqueued was N is durable, or
    // counted in trove_store_write_failures_total, once processed reaches N (docs/reliability.md).
    counter("trove_store_write_enqueued_total", "Blocks the KV store's write-behind queue accepted (its ticket counter).",
            store->enqueued);
    counter("trove_store_write_processed_total",
            "Queued blocks the store's writer has finished, in queue order: durable, or failed and counted.",
            store->processed);
    counter("trove_store_blocks_durable_total", "Blocks made durable (segment and index fsynced) since the store opened.",
            store->inserts);
    counter("trove_store_write_failures_total", "Blocks the store could not write (disk full, I/O error): cache misses later.",
            store->failed_inserts);
    counter("trove_store_index_reopens_total", "Times the store reopened its index after a failed write (writing resumed).",
            store->index_reopens);
    counter("trove_store_corrupt_blocks_total", "Stored blocks that failed verification (served as misses, removed).",
            store->corrupt_blocks);
    counter("trove_store_evictions_total", "Blocks the store evicted to stay within --store-size.", store->evictions);
    counter("trove_store_compactions_total", "Segment files the store compacted away.", store->compactions);
    gauge("trove_store_blocks", "Blocks in the KV store's index.", store->blocks);
  }
  // Speculative decoding, by how the drafts were made: lookup (prompt lookup) or draft (draft model).
  const std::pair<const char*, const engine::SpecCounters*> methods[] = {{"lookup", &s.spec.lookup}, {"draft", &s.spec.draft}};
  auto by_method = [&](const char* name, const char* type, const char* help, auto value) {
    out += fmt::format("# HELP {} {}\n# TYPE {} {}\n", name, help, name, type);
    for (const auto& [m, c] : methods) out += fmt::format("{}{{method=\"{}\"}} {}\n", name, m, value(*c));
  };
  by_method("trove_speculative_drafted_tokens_total", "counter", "Draft tokens the target model verified, by method.",
            [](const engine::SpecCounters& c) { return c.drafted; });
  by_method("trove_speculative_accepted_tokens_total", "counter", "Draft tokens the target model accepted, by method.",
            [](const engine::SpecCounters& c) { return c.accepted; });
  by_method("trove_speculative_steps_total", "counter", "Engine steps that verified drafts, by method (one per sequence).",
            [](const engine::SpecCounters& c) { return c.steps; });
  by_method("trove_speculative_acceptance_rate", "gauge", "Accepted / drafted tokens since start, by method (0 before any draft).",
            [](const engine::SpecCounters& c) { return c.drafted ? double(c.accepted) / double(c.drafted) : 0.0; });
  // What the auto method weighs draft-model rounds by (docs/speculative.md).
  gauge("trove_speculative_draft_step_seconds",
        "One draft-model step, moving average (0: no draft-model step yet).", s.draft_costs.draft_step_s);
  out += "# HELP trove_speculative_target_step_seconds A decode-only step of the model by its tokens (drafts included), "
         "moving average (0: no such step yet).\n# TYPE trove_speculative_target_step_seconds gauge\n";
  for (size_t n = 1; n < s.draft_costs.target_step_s.size(); ++n) {
    out += fmt::format("trove_speculative_target_step_seconds{{tokens=\"{}\"}} {}\n", n, s.draft_costs.target_step_s[n]);
  }
  gauge("trove_speculative_auto_draft_tokens",
        "Draft-model drafts the auto method makes a round at the costs measured so far (0: prompt lookup only, the draft "
        "model does not pay; -1: no draft model, or still measuring).",
        s.auto_draft_tokens);
  return out;
}

}  // namespace trove::server
