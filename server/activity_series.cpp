#include "server/activity_series.h"

#include <algorithm>

namespace trove::server {

namespace {
// A counter that went backwards (it cannot, but a zero baseline after a reset must not underflow).
uint64_t delta(uint64_t now, uint64_t before) { return now >= before ? now - before : 0; }
}  // namespace

ActivitySeries::ActivitySeries(std::chrono::seconds window)
    : window_(window), last_time_(std::chrono::system_clock::now()) {}

void ActivitySeries::observe_ttft(double seconds) {
  std::lock_guard<std::mutex> lock(mu_);
  ++ttft_count_;
  ttft_sum_ += seconds;
  ttft_max_ = std::max(ttft_max_, seconds);
}

void ActivitySeries::sample(std::chrono::system_clock::time_point now, const ActivityTotals& t,
                            const ActivityGauges& gauges) {
  std::lock_guard<std::mutex> lock(mu_);
  ActivitySample s;
  s.unix_ms = std::chrono::duration_cast<std::chrono::milliseconds>(now.time_since_epoch()).count();
  // since() relies on increasing times; a wall clock set back must not break that.
  if (!samples_.empty()) s.unix_ms = std::max(s.unix_ms, samples_.back().unix_ms + 1);
  s.seconds = std::max(0.0, std::chrono::duration<double>(now - last_time_).count());
  s.prefill_tokens = delta(t.prefill_tokens, last_.prefill_tokens);
  s.decode_tokens = delta(t.decode_tokens, last_.decode_tokens);
  s.gpu_hit_tokens = delta(t.gpu_hit_tokens, last_.gpu_hit_tokens);
  s.store_hit_tokens = delta(t.store_hit_tokens, last_.store_hit_tokens);
  s.store_block_reads = delta(t.store_block_reads, last_.store_block_reads);
  s.store_blocks_written = delta(t.store_blocks_written, last_.store_blocks_written);
  s.ttft_count = ttft_count_;
  s.ttft_mean = ttft_count_ ? ttft_sum_ / ttft_count_ : 0;
  s.ttft_max = ttft_max_;
  s.gauges = gauges;
  ttft_count_ = 0;
  ttft_sum_ = ttft_max_ = 0;
  last_ = t;
  last_time_ = now;
  samples_.push_back(s);
  const int64_t oldest = s.unix_ms - std::chrono::duration_cast<std::chrono::milliseconds>(window_).count();
  while (!samples_.empty() && samples_.front().unix_ms <= oldest) samples_.pop_front();
}

std::vector<ActivitySample> ActivitySeries::since(int64_t after_unix_ms) const {
  std::lock_guard<std::mutex> lock(mu_);
  auto it = std::upper_bound(samples_.begin(), samples_.end(), after_unix_ms,
                             [](int64_t t, const ActivitySample& s) { return t < s.unix_ms; });
  return {it, samples_.end()};
}

ActivityTotals ActivitySeries::totals() const {
  std::lock_guard<std::mutex> lock(mu_);
  return last_;
}

}  // namespace trove::server
