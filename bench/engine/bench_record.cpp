// Host cost of recording and submitting a decode-sized step, per descriptor mode and piece size —
// the runtime half of "where a decode step goes" without a model (issue 15, item 2).
//
//   build/bench/engine/bench_record [--layers 36] [--per-layer 8] [--steps 50] [--elements 4096]
//                                   [--pieces 0 16:128 ...] [--modes pool cached push]
//
// A step is `layers` x `per_layer` dispatches of the residual add (out = x + w[layer][j]; each layer
// binds its own "weight" buffers, as a model's layers do) with a barrier after each, then
// submit_and_wait(). For each descriptor mode (vk::Descriptors: cached, push, pool — each on its own
// Device, as the mode is per device) and each piece setting (N[:M] as TROVE_VK_CHUNK; 0: one piece)
// it prints medians over `steps` steps after one warm-up step:
//   record   host time from the first command to the last submit (what a step's recording costs);
//            min/dispatch: the fastest step's per dispatch (least disturbed by other load)
//   lead     host time before the GPU gets its first piece (the GPU idles meanwhile)
//   wait     the last submit + waiting for the fence
//   step     wall time of the whole step; gpu: first to last timestamp
// step - gpu is the host's share of the critical path. On lavapipe the "GPU" is the same CPU, so
// only record / dispatch (µs) carries over to other devices.
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <string>
#include <vector>

#include <CLI/CLI.hpp>

#include "kernels/ops/add.h"
#include "kernels/vk/runtime.h"

using namespace trove;

namespace {

double median(std::vector<double> v) {
  if (v.empty()) return 0;
  std::nth_element(v.begin(), v.begin() + v.size() / 2, v.end());
  return v[v.size() / 2];
}

struct Config {
  uint32_t layers = 36, per_layer = 8, steps = 50, elements = 4096;
};

Status run(const Config& cfg, vk::Descriptors mode, vk::StreamOptions pieces) {
  vk::DeviceOptions dopt;
  dopt.descriptors = mode;
  auto dev = vk::Device::open(dopt);
  if (!dev.ok()) return dev.status();
  vk::Device& d = **dev;
  auto add = ops::ResidualAdd::create(d);
  if (!add.ok()) return add.status();
  const uint64_t bytes = uint64_t{cfg.elements} * 4;
  auto x = d.buffer(bytes);
  if (!x.ok()) return x.status();
  TROVE_RETURN_IF_ERROR(x->fill(0));
  std::vector<vk::Buffer> w;
  for (uint32_t i = 0; i < cfg.layers * cfg.per_layer; ++i) {
    auto b = d.buffer(bytes);
    if (!b.ok()) return b.status();
    TROVE_RETURN_IF_ERROR(b->fill(0));
    w.push_back(std::move(*b));
  }
  auto s = d.stream(pieces);
  if (!s.ok()) return s.status();
  std::vector<double> record, lead, wait, step, gpu;
  for (uint32_t it = 0; it <= cfg.steps; ++it) {
    const vk::StreamCounters before = s->counters();
    const auto t0 = std::chrono::steady_clock::now();
    s->timestamp();
    for (uint32_t i = 0; i < cfg.layers * cfg.per_layer; ++i) {
      TROVE_RETURN_IF_ERROR(add->record(*s, *x, w[i], *x, cfg.elements));
      s->barrier();
    }
    s->timestamp();
    TROVE_RETURN_IF_ERROR(s->submit_and_wait());
    const double wall = std::chrono::duration<double, std::micro>(std::chrono::steady_clock::now() - t0).count();
    if (it == 0) continue;  // warm-up: the cache's sets are written here
    const vk::StreamCounters& now = s->counters();
    record.push_back((now.record_ns - before.record_ns) / 1e3);
    lead.push_back((now.lead_ns - before.lead_ns) / 1e3);
    wait.push_back((now.wait_ns - before.wait_ns) / 1e3);
    step.push_back(wall);
    if (auto ts = s->timestamps_ns(); ts.size() == 2) gpu.push_back(ts[1] / 1e3);
  }
  const vk::StreamCounters& c = s->counters();
  const double dispatches = cfg.layers * cfg.per_layer;
  std::printf("| %-6s | %3u:%-3u | %5.2f | %8.1f | %6.3f | %6.3f | %7.1f | %8.1f | %8.1f | %8.1f | %5.1f |\n",
              vk::descriptors_name(d.descriptors()), pieces.chunk_dispatches, pieces.max_chunk_dispatches,
              static_cast<double>(c.submits) / (cfg.steps + 1), median(record), median(record) / dispatches,
              *std::min_element(record.begin(), record.end()) / dispatches,
              median(lead), median(wait), median(step), median(gpu),
              static_cast<double>(c.sets_written) / (cfg.steps + 1));
  return Status::Ok();
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"host cost of recording a decode-sized step, per descriptor mode and piece size"};
  Config cfg;
  app.add_option("--layers", cfg.layers, "Layers per step")->check(CLI::Range(1u, 1000u));
  app.add_option("--per-layer", cfg.per_layer, "Dispatches per layer")->check(CLI::Range(1u, 100u));
  app.add_option("--steps", cfg.steps, "Measured steps (after one warm-up)")->check(CLI::Range(1u, 100000u));
  app.add_option("--elements", cfg.elements, "float32 elements per dispatch")->check(CLI::Range(1u, 1u << 26));
  std::vector<std::string> piece_args{"0", "16:128"}, mode_args{"pool", "cached", "push"};
  app.add_option("--pieces", piece_args, "Piece settings N[:M] (first and largest piece; 0: one piece)");
  app.add_option("--modes", mode_args, "Descriptor modes: pool cached push");
  CLI11_PARSE(app, argc, argv);
  std::vector<vk::StreamOptions> pieces;
  for (const auto& a : piece_args) {
    unsigned first = 0, most = 0;
    const int got = std::sscanf(a.c_str(), "%u:%u", &first, &most);
    if (got < 1) {
      std::fprintf(stderr, "bench_record: --pieces '%s' is not N or N:M\n", a.c_str());
      return 2;
    }
    pieces.push_back({first, got == 2 ? most : first});
  }
  std::vector<vk::Descriptors> modes;
  for (const auto& m : mode_args) {
    if (m == "pool") modes.push_back(vk::Descriptors::kPerDispatch);
    else if (m == "cached") modes.push_back(vk::Descriptors::kCached);
    else if (m == "push") modes.push_back(vk::Descriptors::kPush);
    else {
      std::fprintf(stderr, "bench_record: --modes '%s' is not pool, cached or push\n", m.c_str());
      return 2;
    }
  }
  std::printf("%u dispatches + %u barriers a step, %u elements each; medians over %u steps (us)\n\n",
              cfg.layers * cfg.per_layer, cfg.layers * cfg.per_layer, cfg.elements, cfg.steps);
  std::printf("| descriptors | pieces | submits | record | record/dispatch | min/dispatch | lead | wait | step | gpu | sets written |\n");
  std::printf("|---|---|---|---|---|---|---|---|---|---|---|\n");
  for (vk::Descriptors mode : modes) {
    for (vk::StreamOptions p : pieces) {
      if (Status st = run(cfg, mode, p); !st.ok()) {
        std::fprintf(stderr, "bench_record: %s (pieces %u:%u): %s\n", vk::descriptors_name(mode), p.chunk_dispatches,
                     p.max_chunk_dispatches, st.ToString().c_str());
        if (mode != vk::Descriptors::kPush) return 1;  // push may be missing on a device: go on
      }
    }
  }
  return 0;
}
