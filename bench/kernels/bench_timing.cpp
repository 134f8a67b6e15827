#include "bench/kernels/bench_timing.h"

#include <algorithm>
#include <chrono>

namespace trove::bench {

Result<double> time_reps(vk::Device& dev, int reps, const std::function<Status(vk::CommandStream&, int)>& record) {
  auto s = dev.stream();
  if (!s.ok()) return s.status();
  const bool ts = dev.features().timestamp_period_ns > 0;
  if (ts) s->timestamp();
  for (int i = 0; i < reps; ++i) {
    TROVE_RETURN_IF_ERROR(record(*s, i));
    s->barrier();
  }
  if (ts) s->timestamp();
  const auto t0 = std::chrono::steady_clock::now();
  TROVE_RETURN_IF_ERROR(s->submit_and_wait());
  const double wall = std::chrono::duration<double, std::micro>(std::chrono::steady_clock::now() - t0).count();
  if (ts) {
    auto t = s->timestamps_ns();
    if (t.size() >= 2) return (t[1] - t[0]) / 1e3 / reps;
  }
  return wall / reps;
}

Result<double> time_reps(vk::Device& dev, int reps, const std::function<Status(vk::CommandStream&)>& record) {
  {  // warm-up
    auto s = dev.stream();
    if (!s.ok()) return s.status();
    TROVE_RETURN_IF_ERROR(record(*s));
    TROVE_RETURN_IF_ERROR(s->submit_and_wait());
  }
  return time_reps(dev, reps, [&](vk::CommandStream& s, int) { return record(s); });
}

Status warm_clocks(vk::Device& dev, double ms) {
  if (ms <= 0) return Status::Ok();
  const uint64_t bytes = std::min<uint64_t>(256ull << 20, dev.max_buffer_bytes()) / 256 * 256;
  auto a = filled(dev, bytes, 0x3f800000u);
  auto b = filled(dev, bytes, 0);
  if (!a.ok()) return a.status();
  if (!b.ok()) return b.status();
  const auto t0 = std::chrono::steady_clock::now();
  while (std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count() < ms) {
    auto s = dev.stream();
    if (!s.ok()) return s.status();
    for (int i = 0; i < 8; ++i) {
      s->copy(*a, 0, *b, 0, bytes);
      s->barrier();
    }
    TROVE_RETURN_IF_ERROR(s->submit_and_wait());
  }
  return Status::Ok();
}

Result<vk::Buffer> filled(vk::Device& dev, uint64_t bytes, uint32_t word) {
  auto b = dev.buffer((std::max<uint64_t>(bytes, 16) + 3) / 4 * 4);
  if (!b.ok()) return b.status();
  TROVE_RETURN_IF_ERROR(b->fill(word));
  return b;
}

}  // namespace trove::bench
