#include "engine/runtime/step_profile.h"

#include <fmt/format.h>

#include <algorithm>
#include <bit>
#include <cstdlib>
#include <string>

#include "common/log.h"

namespace trove::engine {

namespace {

constexpr const char* kOpNames[kOpKinds] = {"embed",
                                            "qkv (+norm)",
                                            "q/k norm",
                                            "rope",
                                            "(q/k norm+rope+) kv write",
                                            "attention",
                                            "o (+add)",
                                            "ffn norm",
                                            "ffn gate/up (+norm)",
                                            "ffn down (+add) / dense ffn",
                                            "moe router (+norm, +routing)",
                                            "moe routing",
                                            "moe gate/up (+norm)",
                                            "moe swiglu (prefill)",
                                            "moe down (prefill)",
                                            "moe down (+add) / combine / ffn",
                                            "head",
                                            "argmax/sample+copy"};

double median_us(std::vector<double> v) {
  if (v.empty()) return 0.0;
  std::nth_element(v.begin(), v.begin() + v.size() / 2, v.end());
  return v[v.size() / 2] / 1e3;
}

}  // namespace

StepProfile::StepProfile() {
  const char* e = std::getenv("TROVE_PROFILE");
  const std::string_view v = e ? std::string_view(e) : std::string_view();
  host_ = !v.empty();
  ops_ = v == "ops";
  steps_ = v == "steps";
  routing_ = v == "routing";
  phases_ = host_ && !ops_ && !steps_ && !routing_;
}

void StepProfile::add_step(const vk::CommandStream& s, const vk::StreamCounters& before, uint32_t T,
                           bool compiled, const std::vector<uint8_t>& marks) {
  const bool decode = T <= ops::Matvec::kMaxBatch;
  if (host_) {
    const vk::StreamCounters& now = s.counters();
    Host& p = host_by_kind_[decode ? 0 : 1];
    p.sum.dispatches += now.dispatches - before.dispatches;
    p.sum.barriers += now.barriers - before.barriers;
    p.sum.copies += now.copies - before.copies;
    p.sum.submits += now.submits - before.submits;
    p.sum.waits += now.waits - before.waits;
    p.sum.sets_written += now.sets_written - before.sets_written;
    p.record_ns.push_back(now.record_ns - before.record_ns);
    p.lead_ns.push_back(now.lead_ns - before.lead_ns);
    p.wait_ns.push_back(now.wait_ns - before.wait_ns);
    p.steps += 1;
    p.tokens += T;
    if (const std::vector<double> ts = s.timestamps_ns(); ts.size() >= 2 && (steps_ || ops_)) {
      p.gpu_ns.push_back(ts.back() - ts.front());
    }
  }
  if (ops_) {
    const std::vector<double> ts = s.timestamps_ns();
    Ops& p = decode ? ops_by_size_[T] : ops_prefill_[std::bit_ceil(T)];
    if (compiled) {
      // The host compiled pipelines mid-step and the GPU waited for the pieces behind them: that
      // wait would land on whichever op follows (e.g. 2.8 ms a step of "kv write" on the 30B-A3B).
      p.compile_steps += 1;
    } else if (ts.size() == marks.size()) {  // else the query pool ran out: the step is not counted
      for (size_t i = 1; i < ts.size(); ++i) p.ns[marks[i]] += ts[i] - ts[i - 1];
      p.steps += 1;
      p.tokens += T;
    }
  }
}

void StepProfile::add_step_time(uint32_t T, double ns) {
  if (host_) host_by_kind_[T <= ops::Matvec::kMaxBatch ? 0 : 1].step_ns.push_back(ns);
}

void StepProfile::add_routing(uint32_t T, const uint32_t* offsets, uint32_t layers, uint32_t n_expert) {
  Routing& r = routing_by_size_[std::bit_ceil(T)];
  r.steps += 1;
  r.tokens += T;
  for (uint32_t l = 0; l < layers; ++l) {
    const uint32_t* o = offsets + uint64_t{l} * (n_expert + 1);
    uint32_t most = 0;
    for (uint32_t e = 0; e < n_expert; ++e) {
      const uint32_t n = o[e + 1] - o[e];
      const int b =
          n == 0 ? 0 : std::min(kRoutingBuckets - 1, 1 + static_cast<int>(std::bit_width((n - 1) / 16)));
      r.experts_in[b] += 1;
      r.slots_in[b] += n;
      most = std::max(most, n);
    }
    r.layers += 1;
    r.experts += n_expert;
    r.slots += o[n_expert] - o[0];
    r.max_sum += most;
  }
}

void StepProfile::log(std::string_view descriptors, const vk::StreamOptions& pieces) const {
  if (ops_) log_ops();
  if (routing_) log_routing();
  if (host_) log_host(descriptors, pieces);
}

void StepProfile::log_routing() const {
  static constexpr const char* kBucket[kRoutingBuckets] = {"0",      "1-16",    "17-32", "33-64",
                                                           "65-128", "129-256", "257+"};
  for (const auto& [hi, r] : routing_by_size_) {
    if (r.layers == 0) continue;
    const uint32_t lo = std::max(hi / 2 + 1, ops::Matvec::kMaxBatch + 1);
    std::string table;
    for (int b = 0; b < kRoutingBuckets; ++b) {
      if (r.experts_in[b] == 0) continue;
      const double of_slots = r.slots ? 100.0 * r.slots_in[b] / r.slots : 0.0;
      table += fmt::format("\n  {:>7} slots: {:5.1f}% of experts, {:5.1f}% of slots", kBucket[b],
                           100.0 * r.experts_in[b] / r.experts, of_slots);
    }
    log::info("engine",
              "TROVE_PROFILE=routing, prefill steps of {}-{} tokens ({} steps, {} tokens, {} step-layers): "
              "{:.1f} slots a layer, {:.2f} slots an expert (mean), the largest expert {:.1f} (mean over "
              "step-layers){}",
              lo, hi, r.steps, r.tokens, r.layers, static_cast<double>(r.slots) / r.layers,
              static_cast<double>(r.slots) / r.experts, static_cast<double>(r.max_sum) / r.layers, table);
  }
}

void StepProfile::log_ops() const {
  // Decode steps by size, then the longer ones by power-of-two class (pp512's 512-token step apart
  // from the 2048-token steps of a long prompt).
  std::vector<std::pair<std::string, const Ops*>> tables;
  for (uint32_t k = 1; k <= ops::Matvec::kMaxBatch; ++k) {
    tables.emplace_back(fmt::format("decode steps of {} token{}", k, k == 1 ? "" : "s"), &ops_by_size_[k]);
  }
  for (const auto& [hi, p] : ops_prefill_) {
    const uint32_t lo = std::max(hi / 2 + 1, ops::Matvec::kMaxBatch + 1);
    tables.emplace_back(fmt::format("prefill steps of {}-{} tokens", lo, hi), &p);
  }
  for (const auto& [kind, pp] : tables) {
    const Ops& p = *pp;
    if (p.steps == 0 && p.compile_steps == 0) continue;
    double total = 0;
    for (double v : p.ns) total += v;
    const std::string left_out =
        p.compile_steps ? fmt::format(" ({} steps that compiled pipelines left out)", p.compile_steps)
                        : std::string();
    if (p.steps == 0) {
      log::info("engine", "TROVE_PROFILE=ops, {}: every one compiled pipelines{}", kind, left_out);
      continue;
    }
    std::string table;
    for (int i = 0; i < kOpKinds; ++i) {
      if (p.ns[i] == 0) continue;
      table += fmt::format("\n  {:<20} {:9.1f} us/step {:5.1f}%", kOpNames[i], p.ns[i] / 1e3 / p.steps,
                           100 * p.ns[i] / total);
    }
    log::info("engine", "TROVE_PROFILE=ops, {} ({} steps, {} tokens{}): {:.1f} us GPU per step{}", kind,
              p.steps, p.tokens, left_out, total / 1e3 / p.steps, table);
  }
}

void StepProfile::log_host(std::string_view descriptors, const vk::StreamOptions& pieces) const {
  for (int k = 0; k < 2; ++k) {
    const Host& p = host_by_kind_[k];
    if (p.steps == 0) continue;
    const double n = static_cast<double>(p.steps);
    const vk::StreamCounters& c = p.sum;
    log::info(
        "engine",
        "TROVE_PROFILE: {} steps ({} steps, {} tokens), per step (mean): {:.1f} dispatches, {:.1f} barriers, "
        "{:.1f} copies, {:.2f} submits, {:.2f} descriptor sets written ({} descriptors, pieces {}:{}); host "
        "(median) {:.1f} us a step: {:.1f} us recording (first command → last submit; the GPU gets its first "
        "piece after {:.1f} us), {:.1f} us last submit + wait; GPU (median) {}",
        k == 0 ? "decode" : "prefill", p.steps, p.tokens, c.dispatches / n, c.barriers / n, c.copies / n,
        c.submits / n, c.sets_written / n, descriptors, pieces.chunk_dispatches, pieces.max_chunk_dispatches,
        median_us(p.step_ns), median_us(p.record_ns), median_us(p.lead_ns), median_us(p.wait_ns),
        p.gpu_ns.empty() ? std::string("not measured (TROVE_PROFILE=steps or ops)")
                         : fmt::format("{:.1f} us (first → last timestamp)", median_us(p.gpu_ns)));
  }
}

}  // namespace trove::engine
