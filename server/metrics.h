// server/metrics.h — the counters and histograms behind GET /metrics (Prometheus text format 0.0.4).
//
// Contract: every method is thread-safe (one mutex; the HTTP threads and the scheduler thread both
// record). render() writes the text exposition: requests by endpoint and status, prompt / cached /
// generated token totals, time-to-first-token and inter-token latency histograms, and the gauges the
// caller passes in (queue depth, active sequences, KV pool blocks, prefix cache hits by tier and KV
// store traffic from the engine's CacheStats), and, when the server has a KV store, the store's own
// counters (its write-behind tickets, durable blocks, write failures, corrupt blocks, evictions).
#pragma once

#include <cstdint>
#include <map>
#include <mutex>
#include <string>
#include <utility>
#include <vector>

#include "kvstore/store.h"
#include "server/scheduler.h"

namespace trove::server {

class Histogram {
 public:
  explicit Histogram(std::vector<double> bounds) : bounds_(std::move(bounds)), counts_(bounds_.size() + 1) {}
  void observe(double v);
  std::string render(const std::string& name, const std::string& help) const;

 private:
  std::vector<double> bounds_;
  std::vector<uint64_t> counts_;  // per bucket (not cumulative); last = +Inf
  double sum_ = 0;
  uint64_t count_ = 0;
};

class Metrics {
 public:
  Metrics();
  void count_request(const std::string& endpoint, int status);
  void add_tokens(uint32_t prompt, uint32_t cached, uint32_t generated);
  void observe_ttft(double seconds);
  void observe_queue_wait(double seconds);  // submit → admitted, per finished generation request
  void observe_inter_token(double seconds);
  // store: the KV store's stats, or null without a store.
  std::string render(const SchedulerStats& scheduler, const kv::Stats* store = nullptr) const;

 private:
  mutable std::mutex mu_;
  std::map<std::pair<std::string, int>, uint64_t> requests_;
  uint64_t prompt_tokens_ = 0, cached_tokens_ = 0, generated_tokens_ = 0;
  Histogram ttft_, inter_token_, queue_wait_;
};

}  // namespace trove::server
