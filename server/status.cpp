#include "server/status.h"

#include <cmath>
#include <filesystem>
#include <map>

namespace trove::server {

namespace {

using Clock = std::chrono::steady_clock;

double seconds_between(Clock::time_point from, Clock::time_point to) {
  return std::chrono::duration<double>(to - from).count();
}

bool is_set(Clock::time_point t) { return t != Clock::time_point{}; }

const char* level_name(log::Level l) {
  switch (l) {
    case log::Level::kDebug: return "debug";
    case log::Level::kInfo: return "info";
    case log::Level::kWarn: return "warn";
    case log::Level::kError: return "error";
  }
  return "?";
}

// Segment files of the store (segments/seg-*.trv); 0 when the directory cannot be listed.
uint64_t count_segments(const std::string& dir) {
  std::error_code ec;
  uint64_t n = 0;
  for (std::filesystem::directory_iterator it(std::filesystem::path(dir) / "segments", ec), end; !ec && it != end;
       it.increment(ec)) {
    if (it->path().extension() == ".trv") ++n;
  }
  return n;
}

}  // namespace

StatusJson sequences_json(const std::vector<SequenceInfo>& sequences, Clock::time_point now) {
  StatusJson out = StatusJson::array();
  for (const auto& s : sequences) {
    const bool finished = s.state == SequenceInfo::State::kFinished;
    const Clock::time_point end = finished && is_set(s.ended) ? s.ended : now;
    const uint32_t cached = s.gpu_cached_tokens + s.store_cached_tokens;
    const uint32_t computed = s.prefilled_tokens > cached ? s.prefilled_tokens - cached : 0;
    // The rate of the phase the request is in: prompt tokens computed per second while it prefills,
    // tokens generated per second once it decodes (from the first token on), and the latter when done.
    double rate = 0;
    if (is_set(s.first_token) && s.generated_tokens >= 2) {
      const double t = seconds_between(s.first_token, end);
      rate = t > 0 ? (s.generated_tokens - 1) / t : 0;
    } else if (s.state == SequenceInfo::State::kPrefilling && is_set(s.admitted)) {
      const double t = seconds_between(s.admitted, end);
      rate = t > 0 ? computed / t : 0;
    }
    StatusJson j = {{"id", s.label.id},
                    {"dialect", s.label.dialect},
                    {"user_agent", s.label.user_agent},
                    {"namespace", s.cache_namespace},
                    {"state", sequence_state_name(s.state)},
                    {"finish", finished ? StatusJson(finish_reason_name(s.finish)) : StatusJson(nullptr)},
                    {"prompt_tokens", s.prompt_tokens},
                    {"gpu_cached_tokens", s.gpu_cached_tokens},
                    {"store_cached_tokens", s.store_cached_tokens},
                    {"computed_tokens", computed},
                    {"prefilled_tokens", s.prefilled_tokens},
                    {"generated_tokens", s.generated_tokens},
                    {"tokens_per_second", rate},
                    {"ttft_seconds", is_set(s.first_token) ? StatusJson(seconds_between(s.submitted, s.first_token))
                                                           : StatusJson(nullptr)},
                    {"age_seconds", seconds_between(s.submitted, now)},
                    {"ended_seconds_ago", finished && is_set(s.ended) ? StatusJson(seconds_between(s.ended, now))
                                                                      : StatusJson(nullptr)}};
    out.push_back(std::move(j));
  }
  return out;
}

StatusJson series_json(const std::vector<ActivitySample>& samples) {
  StatusJson t = StatusJson::array(), secs = StatusJson::array(), prefill = StatusJson::array(),
             decode = StatusJson::array(), prefill_tps = StatusJson::array(), decode_tps = StatusJson::array(),
             ttft_count = StatusJson::array(), ttft_mean = StatusJson::array(), ttft_max = StatusJson::array(),
             gpu = StatusJson::array(), store = StatusJson::array(), reads = StatusJson::array(),
             writes = StatusJson::array(), used = StatusJson::array(), cached = StatusJson::array(),
             total = StatusJson::array(), active = StatusJson::array(), queued = StatusJson::array();
  // Rates rounded to 0.01 tok/s and times to 0.1 ms: an hour of samples stays ~300 KB.
  auto round2 = [](double v) { return std::round(v * 100) / 100; };
  auto round4 = [](double v) { return std::round(v * 10000) / 10000; };
  for (const auto& s : samples) {
    t.push_back(s.unix_ms);
    secs.push_back(round4(s.seconds));
    prefill.push_back(s.prefill_tokens);
    decode.push_back(s.decode_tokens);
    prefill_tps.push_back(round2(s.prefill_per_second()));
    decode_tps.push_back(round2(s.decode_per_second()));
    ttft_count.push_back(s.ttft_count);
    ttft_mean.push_back(round4(s.ttft_mean));
    ttft_max.push_back(round4(s.ttft_max));
    gpu.push_back(s.gpu_hit_tokens);
    store.push_back(s.store_hit_tokens);
    reads.push_back(s.store_block_reads);
    writes.push_back(s.store_blocks_written);
    used.push_back(s.gauges.pool_used_blocks);
    cached.push_back(s.gauges.pool_cached_blocks);
    total.push_back(s.gauges.pool_total_blocks);
    active.push_back(s.gauges.active);
    queued.push_back(s.gauges.queued);
  }
  return {{"t", std::move(t)},
          {"seconds", std::move(secs)},
          {"prefill_tokens", std::move(prefill)},
          {"decode_tokens", std::move(decode)},
          {"prefill_tps", std::move(prefill_tps)},
          {"decode_tps", std::move(decode_tps)},
          {"ttft_count", std::move(ttft_count)},
          {"ttft_mean", std::move(ttft_mean)},
          {"ttft_max", std::move(ttft_max)},
          {"gpu_hit_tokens", std::move(gpu)},
          {"store_hit_tokens", std::move(store)},
          {"store_block_reads", std::move(reads)},
          {"store_blocks_written", std::move(writes)},
          {"pool_used_blocks", std::move(used)},
          {"pool_cached_blocks", std::move(cached)},
          {"pool_total_blocks", std::move(total)},
          {"active", std::move(active)},
          {"queued", std::move(queued)}};
}

StatusJson store_json(kv::Store& store, uint64_t budget_bytes, bool namespaces) {
  const kv::Stats st = store.stats();
  StatusJson j = {{"dir", store.dir()},
                  {"block_tokens", store.block_tokens()},
                  {"budget_bytes", budget_bytes},
                  {"blocks", st.blocks},
                  {"stored_bytes", st.stored_bytes},
                  {"logical_bytes", st.logical_bytes},
                  {"segment_bytes", st.segment_bytes},
                  {"segments", count_segments(store.dir())},
                  {"live_share", st.segment_bytes ? static_cast<double>(st.stored_bytes) / st.segment_bytes : 1.0},
                  {"compression_ratio", st.compression_ratio()},
                  {"hits", st.hits},
                  {"misses", st.misses},
                  {"page_cache_reads", st.page_cache_reads},
                  {"direct_reads", st.direct_reads},
                  {"lookups", st.lookups},
                  {"inserts", st.inserts},
                  {"duplicate_inserts", st.duplicate_inserts},
                  {"dropped_inserts", st.dropped_inserts},
                  {"failed_inserts", st.failed_inserts},
                  {"corrupt_blocks", st.corrupt_blocks},
                  {"evictions", st.evictions},
                  {"compactions", st.compactions},
                  {"io_uring", store.using_io_uring()}};
  if (namespaces) {
    struct Group {
      uint64_t blocks = 0, tokens = 0, bytes = 0, hits = 0;
      int64_t last_access = 0;
    };
    std::map<std::pair<std::string, std::string>, Group> groups;
    (void)store.for_each_entry([&](const kv::BlockEntry& e) {
      Group& g = groups[{e.name_space, e.fingerprint}];
      g.blocks += 1;
      g.tokens += e.ref.tokens;
      g.bytes += e.ref.length;
      g.hits += e.hits;
      g.last_access = std::max(g.last_access, e.last_access);
    });
    StatusJson rows = StatusJson::array();
    for (const auto& [k, g] : groups) {
      rows.push_back({{"namespace", k.first}, {"model", k.second}, {"blocks", g.blocks}, {"tokens", g.tokens},
                      {"stored_bytes", g.bytes}, {"hits", g.hits}, {"last_access", g.last_access}});
    }
    j["namespaces"] = std::move(rows);
  }
  return j;
}

StatusJson problems_json(const std::vector<log::TimedRecord>& problems) {
  StatusJson out = StatusJson::array();
  for (const auto& p : problems) {
    out.push_back({{"time", p.unix_ms}, {"level", level_name(p.level)}, {"component", p.component},
                   {"message", p.message}});
  }
  return out;
}

}  // namespace trove::server
