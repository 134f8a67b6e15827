// Runtime tests: device selection, buffers, BufferSet splitting, pipeline cache, and the residual add
// op end to end (the pattern the op tests follow: fresh random inputs, NaN-poisoned outputs,
// compare with the C++ reference). Runs on lavapipe in < 10 s.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <random>

#include "kernels/ops/add.h"
#include "kernels/ref/add_ref.h"
#include "kernels/vk/runtime.h"

using namespace trove;

namespace {
constexpr uint32_t kNaN = 0x7fc00000u;

std::unique_ptr<vk::Device> open_device(const vk::DeviceOptions& o = {}) {
  auto d = vk::Device::open(o);
  if (!d.ok()) {
    ADD_FAILURE() << d.status().ToString();
    return nullptr;
  }
  return std::move(*d);
}
}  // namespace

TEST(VkRuntime, OpensDeviceAndReportsFeatures) {
  auto d = open_device();
  ASSERT_TRUE(d);
  const auto& f = d->features();
  EXPECT_FALSE(f.name.empty());
  EXPECT_GT(f.max_storage_buffer_range, 0u);
  EXPECT_GT(d->max_buffer_bytes(), 0u);
  EXPECT_GT(f.subgroup_size, 0u);
  std::printf("device: %s | driver: %s | fp16 %d int8 %d 16bit-storage %d 8bit-storage %d subgroup %u "
              "arith %d idot %d coopmat %d maxSSBO %llu\n",
              f.name.c_str(), f.driver.c_str(), f.fp16_arithmetic, f.int8_arithmetic, f.storage_16bit,
              f.storage_8bit, f.subgroup_size, f.subgroup_arithmetic, f.integer_dot_product,
              f.cooperative_matrix, static_cast<unsigned long long>(f.max_storage_buffer_range));
  for (const auto& c : f.coopmat_shapes) {
    std::printf("  coopmat %ux%ux%u A %u B %u C %u result %u scope %u\n", c.m, c.n, c.k, c.a, c.b, c.c, c.result,
                c.scope);
  }
#ifdef VK_KHR_cooperative_matrix
  // Built with headers that know the extension: a device that offers it reports its shapes.
  if (f.cooperative_matrix) EXPECT_FALSE(f.coopmat_shapes.empty());
#endif
  if (!f.cooperative_matrix) EXPECT_TRUE(f.coopmat_shapes.empty());
}

// Devices share the process's one VkInstance (per layer set) and only they come and go: the NVIDIA
// driver refused a new instance after ~50 made and destroyed in one process (H100, 2026-12-06). Two
// devices open at once share it, and 64 devices opened and closed in turn all open, on the same one.
TEST(VkRuntime, DevicesShareOneInstanceAcrossManyOpens) {
  auto a = open_device(), b = open_device();
  ASSERT_TRUE(a && b);
  const VkInstance first = a->instance();
  EXPECT_NE(first, VK_NULL_HANDLE);
  EXPECT_EQ(b->instance(), first);
  a.reset();
  b.reset();
  for (int i = 0; i < 64; ++i) {
    auto d = open_device();
    ASSERT_TRUE(d) << "open " << i;
    EXPECT_EQ(d->instance(), first) << "open " << i;
  }
}

TEST(VkRuntime, DeviceSelectionByBadNameNamesTheDevices) {
  setenv("TROVE_VK_DEVICE", "no-such-gpu-xyz", 1);
  auto d = vk::Device::open();
  unsetenv("TROVE_VK_DEVICE");
  ASSERT_FALSE(d.ok());
  EXPECT_NE(d.status().ToString().find("no-such-gpu-xyz"), std::string::npos);
  EXPECT_NE(d.status().ToString().find("TROVE_VK_DEVICE"), std::string::npos);
}

TEST(VkRuntime, DeviceSelectionByIndex) {
  setenv("TROVE_VK_DEVICE", "0", 1);
  auto d = vk::Device::open();
  unsetenv("TROVE_VK_DEVICE");
  ASSERT_TRUE(d.ok()) << d.status().ToString();
}

TEST(VkRuntime, BufferRoundTripAndBounds) {
  auto d = open_device();
  ASSERT_TRUE(d);
  std::vector<uint8_t> in(1 << 20), out(in.size());
  std::mt19937 rng(std::random_device{}());
  for (auto& x : in) x = static_cast<uint8_t>(rng());
  for (auto kind : {vk::Memory::kDeviceLocal, vk::Memory::kHostVisible}) {
    auto b = d->buffer(in.size(), kind);
    ASSERT_TRUE(b.ok()) << b.status().ToString();
    ASSERT_TRUE(b->upload(in.data(), in.size()).ok());
    ASSERT_TRUE(b->download(out.data(), out.size()).ok());
    EXPECT_EQ(in, out);
    EXPECT_FALSE(b->upload(in.data(), 16, in.size() - 8).ok());
  }
  EXPECT_FALSE(d->buffer(0).ok());
}

TEST(VkRuntime, BufferSetPlan) {
  auto p = vk::BufferSet::plan(100, 12, 50);  // chunks are multiples of 12 and <= 50 → 48
  ASSERT_TRUE(p.ok());
  EXPECT_EQ(*p, (std::vector<uint64_t>{48, 48, 4}));
  EXPECT_FALSE(vk::BufferSet::plan(100, 64, 50).ok());
  // A 17 GB model against a 4 GiB limit with 144-byte rows (Q6_K blocks... any row size).
  uint64_t total = 17ull << 30, lim = 4ull << 30;
  auto big = vk::BufferSet::plan(total, 210, lim);
  ASSERT_TRUE(big.ok());
  uint64_t sum = 0;
  for (size_t i = 0; i < big->size(); ++i) {
    EXPECT_LE((*big)[i], lim);
    if (i + 1 < big->size()) EXPECT_EQ((*big)[i] % 210, 0u);
    sum += (*big)[i];
  }
  EXPECT_EQ(sum, total);
}

TEST(VkRuntime, BufferSetSplitsWithLowLimit) {
  vk::DeviceOptions o;
  o.max_buffer_bytes_override = 4096;  // artificially low limit: forces many chunks
  auto d = open_device(o);
  ASSERT_TRUE(d);
  EXPECT_FALSE(d->buffer(8192).ok());  // single buffer beyond the limit is refused with a message
  const uint64_t n = 50000, row = 100;
  auto s = d->buffer_set(n, row);
  ASSERT_TRUE(s.ok()) << s.status().ToString();
  EXPECT_EQ(s->chunks().size(), (n + 3999) / 4000);
  for (const auto& c : s->chunks()) EXPECT_LE(c.buffer.size(), 4096u);
  std::vector<uint8_t> in(n), out(n);
  for (uint64_t i = 0; i < n; ++i) in[i] = static_cast<uint8_t>(i * 7 + 3);
  ASSERT_TRUE(s->upload(in.data(), n).ok());
  ASSERT_TRUE(s->download(out.data(), n).ok());
  EXPECT_EQ(in, out);
  // A range straddling chunk boundaries.
  std::vector<uint8_t> part(9000);
  ASSERT_TRUE(s->download(part.data(), part.size(), 3500).ok());
  EXPECT_EQ(0, std::memcmp(part.data(), in.data() + 3500, part.size()));
  auto [chunk, off] = s->locate(8001);
  ASSERT_NE(chunk, nullptr);
  EXPECT_EQ(chunk->offset, 8000u);
  EXPECT_EQ(off, 1u);
}

TEST(VkRuntime, UnknownShaderIsANamedError) {
  auto d = open_device();
  ASSERT_TRUE(d);
  auto p = d->pipeline({"no_such_shader", {}, 0, 1, 1});
  ASSERT_FALSE(p.ok());
  EXPECT_NE(p.status().ToString().find("no_such_shader"), std::string::npos);
  EXPECT_NE(p.status().ToString().find("add_f32"), std::string::npos);
}

// Moving a pipeline onto one that holds Vulkan objects frees those once and keeps the moved one's
// description: it used to run the destructor on itself and then assign into the destroyed members (a
// double free of the description's heap storage, "malloc(): unaligned tcache chunk" on the H200 when
// ops::PagedAttention was re-created over a live one). The spec-constant lists here live on the heap.
TEST(VkRuntime, PipelineMovedOntoALiveOneFreesItOnce) {
  auto d = open_device();
  ASSERT_TRUE(d);
  const uint32_t push_bytes = 8, bindings = 3, local = 256;  // as ops::ResidualAdd creates add_f32
  for (int round = 0; round < 8; ++round) {
    auto a = d->pipeline({"add_f32", std::vector<uint32_t>(32 + round, 1u), push_bytes, bindings, local});
    auto b = d->pipeline({"add_f32", std::vector<uint32_t>(64 + round, 2u), push_bytes, bindings, local});
    ASSERT_TRUE(a.ok() && b.ok()) << a.status().ToString() << b.status().ToString();
    const VkPipeline moved = b->handle();
    *a = std::move(*b);
    EXPECT_EQ(a->handle(), moved);
    EXPECT_EQ(a->desc().spec_constants.size(), 64u + round);
    EXPECT_EQ(b->handle(), VK_NULL_HANDLE);
    vk::Pipeline c(std::move(*a));
    EXPECT_EQ(c.handle(), moved);
    EXPECT_EQ(c.desc().spec_constants, std::vector<uint32_t>(64 + round, 2u));
  }
}

TEST(VkRuntime, PipelineCacheIsWrittenToTroveHome) {
  auto dir = std::filesystem::temp_directory_path() / ("trove-vk-test-" + std::to_string(getpid()));
  setenv("TROVE_HOME", dir.c_str(), 1);
  {
    auto d = open_device();
    ASSERT_TRUE(d);
    auto op = ops::ResidualAdd::create(*d);
    ASSERT_TRUE(op.ok());
    ASSERT_TRUE(d->save_pipeline_cache().ok());
  }
  unsetenv("TROVE_HOME");
  bool found = false;
  for (auto& e : std::filesystem::directory_iterator(dir / "vk-pipeline-cache"))
    found |= e.path().extension() == ".bin" && std::filesystem::file_size(e.path()) > 0;
  EXPECT_TRUE(found);
  std::filesystem::remove_all(dir);
}

class ResidualAddTest : public ::testing::TestWithParam<uint32_t> {};

TEST_P(ResidualAddTest, MatchesReferenceExactly) {
  auto d = open_device();
  ASSERT_TRUE(d);
  auto op = ops::ResidualAdd::create(*d);
  ASSERT_TRUE(op.ok()) << op.status().ToString();
  const uint32_t n = GetParam();
  std::mt19937 rng(std::random_device{}());
  std::normal_distribution<float> dist(0.f, 3.f);
  std::vector<float> a(n), b(n), want(n), got(n);
  for (auto& x : a) x = dist(rng);
  for (auto& x : b) x = dist(rng);
  ref::add_f32(a.data(), b.data(), want.data(), n);
  auto ba = d->buffer(n * 4ull), bb = d->buffer(n * 4ull), bo = d->buffer(n * 4ull);
  ASSERT_TRUE(ba.ok() && bb.ok() && bo.ok());
  ASSERT_TRUE(ba->upload(a.data(), n * 4ull).ok());
  ASSERT_TRUE(bb->upload(b.data(), n * 4ull).ok());
  ASSERT_TRUE(bo->fill(kNaN).ok());  // poison: an unwritten element fails
  auto s = d->stream();
  ASSERT_TRUE(s.ok());
  s->timestamp();
  ASSERT_TRUE(op->record(*s, *ba, *bb, *bo, n).ok());
  s->timestamp();
  ASSERT_TRUE(s->submit_and_wait().ok());
  ASSERT_TRUE(bo->download(got.data(), n * 4ull).ok());
  for (uint32_t i = 0; i < n; ++i) ASSERT_EQ(std::memcmp(&got[i], &want[i], 4), 0) << "element " << i << " of " << n;
  if (d->features().timestamp_period_ns > 0) {
    auto ts = s->timestamps_ns();
    ASSERT_EQ(ts.size(), 2u);
    EXPECT_GE(ts[1], 0.0);
  }
  // In place (out aliases a), two dependent dispatches separated by a barrier: a + b + b.
  ASSERT_TRUE(op->record(*s, *ba, *bb, *ba, n).ok());
  s->barrier();
  ASSERT_TRUE(op->record(*s, *ba, *bb, *ba, n).ok());
  ASSERT_TRUE(s->submit_and_wait().ok());
  ASSERT_TRUE(ba->download(got.data(), n * 4ull).ok());
  for (uint32_t i = 0; i < n; ++i) ASSERT_EQ(got[i], (a[i] + b[i]) + b[i]) << "element " << i;
  EXPECT_EQ(d->validation_errors(), 0u);
}

// 1, a non-multiple of the workgroup, Qwen3 hidden sizes 2048/4096, and a 512-token batch of 4096
// (2 M elements, > 65535 workgroups' worth in one row? no: 8192 groups; the 2-D grid is covered by
// the 17 M case only with TROVE_KERNEL_FULL).
INSTANTIATE_TEST_SUITE_P(Shapes, ResidualAddTest, ::testing::Values(1u, 1000u, 2048u, 4096u, 512u * 4096u));

TEST(ResidualAdd, RejectsShortBuffers) {
  auto d = open_device();
  ASSERT_TRUE(d);
  auto op = ops::ResidualAdd::create(*d);
  ASSERT_TRUE(op.ok());
  auto small = d->buffer(64);
  auto s = d->stream();
  ASSERT_TRUE(small.ok() && s.ok());
  auto st = op->record(*s, *small, *small, *small, 100);
  ASSERT_FALSE(st.ok());
  EXPECT_NE(st.ToString().find("residual add"), std::string::npos);
}

// ---- Descriptor modes and submission in pieces (issue 15: the host's share of a decode step).

class DescriptorModeTest : public ::testing::TestWithParam<vk::Descriptors> {};

// The same dispatch twice, then a buffer destroyed and a new one of the same size allocated (drivers
// hand the freed VkBuffer handle out again; the cache keys on Buffer::serial(), which is never reused):
// the third dispatch must write into the new buffer, and the cache writes a set only for new ranges.
TEST_P(DescriptorModeTest, RepeatedDispatchHitsTheCacheAndANewBufferIsBoundNotTheOldOne) {
  vk::DeviceOptions o;
  o.descriptors = GetParam();
  auto d = open_device(o);
  ASSERT_TRUE(d);
  ASSERT_EQ(d->descriptors(), GetParam());
  auto op = ops::ResidualAdd::create(*d);
  ASSERT_TRUE(op.ok()) << op.status().ToString();
  constexpr uint32_t n = 1000;
  std::vector<float> a(n), b(n), got(n);
  for (uint32_t i = 0; i < n; ++i) {
    a[i] = static_cast<float>(i);
    b[i] = 0.5f * static_cast<float>(i) + 1;
  }
  auto ba = d->buffer(n * 4ull), bb = d->buffer(n * 4ull);
  auto out = d->buffer(n * 4ull);
  ASSERT_TRUE(ba.ok() && bb.ok() && out.ok());
  ASSERT_TRUE(ba->upload(a.data(), n * 4ull).ok());
  ASSERT_TRUE(bb->upload(b.data(), n * 4ull).ok());
  auto s = d->stream();
  ASSERT_TRUE(s.ok());
  const bool cached = GetParam() == vk::Descriptors::kCached;
  for (int round = 0; round < 2; ++round) {
    ASSERT_TRUE(out->fill(kNaN).ok());
    const uint64_t sets_before = s->counters().sets_written;
    ASSERT_TRUE(op->record(*s, *ba, *bb, *out, n).ok());
    ASSERT_TRUE(s->submit_and_wait().ok());
    ASSERT_TRUE(out->download(got.data(), n * 4ull).ok());
    for (uint32_t i = 0; i < n; ++i) ASSERT_EQ(got[i], a[i] + b[i]) << "round " << round << " element " << i;
    const uint64_t written = s->counters().sets_written - sets_before;
    if (cached) EXPECT_EQ(written, round == 0 ? 1u : 0u) << "round " << round;
    if (GetParam() == vk::Descriptors::kPerDispatch) EXPECT_EQ(written, 1u);
    if (GetParam() == vk::Descriptors::kPush) EXPECT_EQ(written, 0u);
  }
  if (cached) EXPECT_EQ(s->cached_sets(), 1u);
  // Replace the output buffer; a stale set would write the old (freed) one and leave the poison.
  const VkBuffer old_handle = out->handle();
  const uint64_t old_serial = out->serial();
  *out = vk::Buffer();
  auto fresh = d->buffer(n * 4ull);
  ASSERT_TRUE(fresh.ok());
  EXPECT_NE(fresh->serial(), old_serial);
  if (fresh->handle() != old_handle) std::printf("note: the driver gave the new buffer a new handle\n");
  ASSERT_TRUE(fresh->fill(kNaN).ok());
  const uint64_t sets_before = s->counters().sets_written;
  ASSERT_TRUE(op->record(*s, *ba, *bb, *fresh, n).ok());
  ASSERT_TRUE(s->submit_and_wait().ok());
  ASSERT_TRUE(fresh->download(got.data(), n * 4ull).ok());
  for (uint32_t i = 0; i < n; ++i) ASSERT_EQ(got[i], a[i] + b[i]) << "new buffer, element " << i;
  if (cached) {
    EXPECT_EQ(s->counters().sets_written - sets_before, 1u);
    EXPECT_EQ(s->cached_sets(), 2u);  // the stale set stays (unbound) until the cache is emptied
  }
  EXPECT_EQ(d->validation_errors(), 0u);
}

INSTANTIATE_TEST_SUITE_P(Modes, DescriptorModeTest,
                         ::testing::Values(vk::Descriptors::kCached, vk::Descriptors::kPush, vk::Descriptors::kPerDispatch),
                         [](const auto& info) { return std::string(vk::descriptors_name(info.param)); });

TEST(VkRuntime, UnknownDescriptorModeInTheEnvironmentIsANamedError) {
  setenv("TROVE_VK_DESCRIPTORS", "bindless", 1);
  auto d = vk::Device::open();
  unsetenv("TROVE_VK_DESCRIPTORS");
  ASSERT_FALSE(d.ok());
  EXPECT_NE(d.status().ToString().find("TROVE_VK_DESCRIPTORS='bindless'"), std::string::npos) << d.status().ToString();
  EXPECT_NE(d.status().ToString().find("cached, push or pool"), std::string::npos) << d.status().ToString();
}

// x += b, 40 times, a barrier after each: with pieces of 3 then 5 dispatches the chain crosses seven
// piece boundaries, and every step must see the one before (x = 40 b). Timestamps after every add
// come from all pieces on one timebase: 40 of them, in order.
TEST(VkRuntimePieces, ChainOfDependentDispatchesAcrossPiecesIsExact) {
  auto d = open_device();
  ASSERT_TRUE(d);
  auto op = ops::ResidualAdd::create(*d);
  ASSERT_TRUE(op.ok());
  constexpr uint32_t n = 4096, kSteps = 40;
  std::vector<float> b(n), got(n);
  for (uint32_t i = 0; i < n; ++i) b[i] = static_cast<float>(i % 7 + 1);
  auto bx = d->buffer(n * 4ull), bb = d->buffer(n * 4ull);
  ASSERT_TRUE(bx.ok() && bb.ok());
  ASSERT_TRUE(bb->upload(b.data(), n * 4ull).ok());
  auto s = d->stream({3, 5});
  ASSERT_TRUE(s.ok());
  // The second round reuses the command buffers and sets, and polls the fence (Wait::kSpin, what
  // decode steps do on GPUs): it too returns only once every piece has run.
  for (int round = 0; round < 2; ++round) {
    ASSERT_TRUE(bx->fill(0).ok());
    const vk::StreamCounters before = s->counters();
    for (uint32_t k = 0; k < kSteps; ++k) {
      ASSERT_TRUE(op->record(*s, *bx, *bb, *bx, n).ok());
      s->barrier();
      s->timestamp();
    }
    ASSERT_TRUE(s->submit_and_wait(round == 0 ? vk::CommandStream::Wait::kBlock : vk::CommandStream::Wait::kSpin).ok());
    ASSERT_TRUE(bx->download(got.data(), n * 4ull).ok());
    for (uint32_t i = 0; i < n; ++i) ASSERT_EQ(got[i], kSteps * b[i]) << "round " << round << " element " << i;
    const vk::StreamCounters& now = s->counters();
    // Pieces end after dispatches 3, 8, 13, ..., 38; the last two dispatches go with the final submit.
    EXPECT_EQ(now.submits - before.submits, 9u);
    EXPECT_EQ(now.dispatches - before.dispatches, kSteps);
    EXPECT_EQ(now.barriers - before.barriers, kSteps);
    EXPECT_GT(now.record_ns, before.record_ns);
    EXPECT_LT(now.lead_ns - before.lead_ns, now.record_ns - before.record_ns);
    if (d->features().timestamp_period_ns > 0) {
      const auto ts = s->timestamps_ns();
      ASSERT_EQ(ts.size(), kSteps);
      for (uint32_t k = 1; k < kSteps; ++k) EXPECT_GE(ts[k], ts[k - 1]) << "timestamp " << k;
    }
  }
  EXPECT_EQ(d->validation_errors(), 0u);
}

// Replay: x += b five times (barriers between), captured once in a stream that cuts pieces of 2
// dispatches (a capture is one piece), then submitted again with new contents of b: every replay
// computes from what the buffers hold then, counts its dispatches and one submit, writes no sets.
TEST(VkRuntimeReplay, ReplayRunsTheCapturedSubmissionOnTheBuffersAsTheyAreNow) {
  auto d = open_device();
  ASSERT_TRUE(d);
  auto op = ops::ResidualAdd::create(*d);
  ASSERT_TRUE(op.ok());
  constexpr uint32_t n = 2048, kSteps = 5;
  auto bx = d->buffer(n * 4ull), bb = d->buffer(n * 4ull);
  ASSERT_TRUE(bx.ok() && bb.ok());
  std::vector<float> b(n), got(n);
  auto s = d->stream({2, 2});
  ASSERT_TRUE(s.ok());
  EXPECT_EQ(s->last_capture(), vk::CommandStream::kNoCapture);
  EXPECT_EQ(s->replay(0).code(), StatusCode::kFailedPrecondition);  // nothing captured yet
  for (uint32_t i = 0; i < n; ++i) b[i] = static_cast<float>(i % 5 + 1);
  ASSERT_TRUE(bb->upload(b.data(), n * 4ull).ok());
  ASSERT_TRUE(bx->fill(0).ok());
  const vk::StreamCounters c0 = s->counters();
  ASSERT_TRUE(s->begin_capture().ok());
  for (uint32_t k = 0; k < kSteps; ++k) {
    ASSERT_TRUE(op->record(*s, *bx, *bb, *bx, n).ok());
    s->barrier();
  }
  ASSERT_TRUE(s->submit_and_wait().ok());
  const vk::StreamCounters c1 = s->counters();
  EXPECT_EQ(c1.submits - c0.submits, 1u) << "a captured submission is one piece";
  const uint32_t id = s->last_capture();
  ASSERT_NE(id, vk::CommandStream::kNoCapture);
  EXPECT_TRUE(s->capture_valid(id));
  ASSERT_TRUE(bx->download(got.data(), n * 4ull).ok());
  for (uint32_t i = 0; i < n; ++i) ASSERT_EQ(got[i], kSteps * b[i]) << "captured run, element " << i;
  for (int round = 1; round <= 3; ++round) {
    for (uint32_t i = 0; i < n; ++i) b[i] = static_cast<float>((i + round) % 9) - 3.0f;
    ASSERT_TRUE(bb->upload(b.data(), n * 4ull).ok());
    ASSERT_TRUE(bx->fill(0).ok());
    const vk::StreamCounters before = s->counters();
    ASSERT_TRUE(s->replay(id, round == 2 ? vk::CommandStream::Wait::kSpin : vk::CommandStream::Wait::kBlock).ok());
    ASSERT_TRUE(bx->download(got.data(), n * 4ull).ok());
    for (uint32_t i = 0; i < n; ++i) ASSERT_EQ(got[i], kSteps * b[i]) << "replay " << round << ", element " << i;
    const vk::StreamCounters& now = s->counters();
    EXPECT_EQ(now.submits - before.submits, 1u);
    EXPECT_EQ(now.dispatches - before.dispatches, kSteps);
    EXPECT_EQ(now.barriers - before.barriers, kSteps);
    EXPECT_EQ(now.sets_written, before.sets_written);
  }
  // An ordinary submission after it still cuts pieces; replaying while one is open is refused.
  ASSERT_TRUE(op->record(*s, *bx, *bb, *bx, n).ok());
  EXPECT_EQ(s->replay(id).code(), StatusCode::kFailedPrecondition);
  EXPECT_EQ(s->begin_capture().code(), StatusCode::kFailedPrecondition);
  ASSERT_TRUE(s->submit_and_wait().ok());
  s->drop_captures();
  EXPECT_FALSE(s->capture_valid(id));
  EXPECT_EQ(s->replay(id).code(), StatusCode::kFailedPrecondition);
  EXPECT_EQ(d->validation_errors(), 0u);
}

// A capture refers to cached descriptor sets: when the cache is emptied (past kMaxCachedSets sets),
// the capture is no longer valid and replay() refuses it instead of binding freed sets.
TEST(VkRuntimeReplay, EmptyingTheDescriptorCacheInvalidatesCaptures) {
  auto d = open_device();
  ASSERT_TRUE(d);
  if (d->descriptors() != vk::Descriptors::kCached) GTEST_SKIP() << "descriptor mode " << vk::descriptors_name(d->descriptors());
  auto p = d->pipeline({"add_f32", {}, 8, 3, 256});  // out = a + b over n floats (add.cpp's push: n, row groups)
  ASSERT_TRUE(p.ok()) << p.status().ToString();
  constexpr uint32_t n = 64, kRanges = vk::CommandStream::kMaxCachedSets + 8;
  const uint32_t push[2] = {n, 1};
  auto add = [&](vk::CommandStream& st, vk::BufferRange r, vk::BufferRange b) {
    const vk::BufferRange bufs[3] = {r, b, r};
    return st.dispatch(*p, bufs, push, sizeof(push), 1);
  };
  auto big = d->buffer(uint64_t{kRanges} * 256), bb = d->buffer(n * 4ull);
  ASSERT_TRUE(big.ok() && bb.ok());
  ASSERT_TRUE(big->fill(0).ok() && bb->fill(0).ok());
  auto s = d->stream();
  ASSERT_TRUE(s.ok());
  ASSERT_TRUE(s->begin_capture().ok());
  ASSERT_TRUE(add(*s, vk::BufferRange(*big, 0, n * 4), *bb).ok());
  ASSERT_TRUE(s->submit_and_wait().ok());
  const uint32_t id = s->last_capture();
  ASSERT_TRUE(s->capture_valid(id));
  for (uint32_t i = 0; i < kRanges; ++i) {  // a set per range: the cache passes its bound
    const vk::BufferRange r(*big, uint64_t{i} * 256, n * 4);
    ASSERT_TRUE(add(*s, r, *bb).ok());
  }
  ASSERT_TRUE(s->submit_and_wait().ok());
  EXPECT_FALSE(s->capture_valid(id));
  EXPECT_EQ(s->replay(id).code(), StatusCode::kFailedPrecondition);
}

TEST(VkRuntimeReplay, PerDispatchDescriptorsCannotBeCaptured) {
  vk::DeviceOptions o;
  o.descriptors = vk::Descriptors::kPerDispatch;
  auto d = open_device(o);
  ASSERT_TRUE(d);
  auto s = d->stream();
  ASSERT_TRUE(s.ok());
  const Status st = s->begin_capture();
  EXPECT_EQ(st.code(), StatusCode::kFailedPrecondition);
  EXPECT_NE(st.message().find("cached or pushed"), std::string::npos) << st.message();
}

// flush() between two dependent dispatches that have no barrier between them: it ends the piece
// with one, so the second add sees the first.
TEST(VkRuntimePieces, FlushOrdersWhatFollowsAfterWhatCameBefore) {
  auto d = open_device();
  ASSERT_TRUE(d);
  auto op = ops::ResidualAdd::create(*d);
  ASSERT_TRUE(op.ok());
  constexpr uint32_t n = 2048;
  std::vector<float> b(n, 2.0f), got(n);
  auto bx = d->buffer(n * 4ull), bb = d->buffer(n * 4ull);
  ASSERT_TRUE(bx.ok() && bb.ok());
  ASSERT_TRUE(bb->upload(b.data(), n * 4ull).ok());
  ASSERT_TRUE(bx->fill(0).ok());
  auto s = d->stream();  // no automatic pieces: flush() alone cuts
  ASSERT_TRUE(s.ok());
  ASSERT_TRUE(op->record(*s, *bx, *bb, *bx, n).ok());
  ASSERT_TRUE(s->flush().ok());
  ASSERT_TRUE(op->record(*s, *bx, *bb, *bx, n).ok());
  ASSERT_TRUE(s->flush().ok());
  ASSERT_TRUE(s->flush().ok());  // nothing recorded since: no submit
  ASSERT_TRUE(s->submit_and_wait().ok());  // nothing left but the fence
  ASSERT_TRUE(bx->download(got.data(), n * 4ull).ok());
  for (uint32_t i = 0; i < n; ++i) ASSERT_EQ(got[i], 4.0f) << "element " << i;
  EXPECT_EQ(s->counters().barriers, 2u);
  EXPECT_EQ(s->counters().submits, 3u);
  EXPECT_EQ(d->validation_errors(), 0u);
}

// barrier() right after a barrier (timestamps between or not) records nothing: an op ending with its
// own barrier and the caller's barrier after it make one. After a dispatch or a copy it records one, and
// the results are those of every barrier recorded (x += b three times, each add after a barrier).
TEST(VkRuntime, BarrierAfterABarrierIsRecordedOnce) {
  auto d = open_device();
  ASSERT_TRUE(d);
  auto op = ops::ResidualAdd::create(*d);
  ASSERT_TRUE(op.ok());
  constexpr uint32_t n = 1024;
  std::vector<float> b(n, 1.5f), got(n);
  auto bx = d->buffer(n * 4ull), bb = d->buffer(n * 4ull), by = d->buffer(n * 4ull);
  ASSERT_TRUE(bx.ok() && bb.ok() && by.ok());
  ASSERT_TRUE(bb->upload(b.data(), n * 4ull).ok());
  ASSERT_TRUE(bx->fill(0).ok());
  auto s = d->stream();
  ASSERT_TRUE(s.ok());
  ASSERT_TRUE(op->record(*s, *bx, *bb, *bx, n).ok());
  s->barrier();
  s->barrier();                                     // nothing since the last: not recorded
  EXPECT_EQ(s->counters().barriers, 1u);
  ASSERT_TRUE(op->record(*s, *bx, *bb, *bx, n).ok());
  s->barrier();
  s->timestamp();
  s->barrier();                                     // only a timestamp since: not recorded
  EXPECT_EQ(s->counters().barriers, 2u);
  s->copy(*bx, 0, *by, 0, n * 4ull);
  s->barrier();                                     // after a copy: recorded
  EXPECT_EQ(s->counters().barriers, 3u);
  ASSERT_TRUE(op->record(*s, *by, *bb, *bx, n).ok());
  ASSERT_TRUE(s->submit_and_wait().ok());
  ASSERT_TRUE(bx->download(got.data(), n * 4ull).ok());
  for (uint32_t i = 0; i < n; ++i) ASSERT_EQ(got[i], 4.5f) << "element " << i;
  EXPECT_EQ(d->validation_errors(), 0u);
}

// A stream dropped with pieces in flight (an engine step that failed half-way) waits for them before
// its command buffers go (the validation run would flag a pending command buffer freed); the pieces
// submitted ran, the unsubmitted rest did not.
TEST(VkRuntimePieces, AbandonedStreamWaitsForItsPieces) {
  auto d = open_device();
  ASSERT_TRUE(d);
  auto op = ops::ResidualAdd::create(*d);
  ASSERT_TRUE(op.ok());
  constexpr uint32_t n = 4096;
  std::vector<float> b(n, 1.0f), got(n);
  auto bx = d->buffer(n * 4ull), bb = d->buffer(n * 4ull);
  ASSERT_TRUE(bx.ok() && bb.ok());
  ASSERT_TRUE(bb->upload(b.data(), n * 4ull).ok());
  ASSERT_TRUE(bx->fill(0).ok());
  {
    auto s = d->stream({3, 5});
    ASSERT_TRUE(s.ok());
    for (int k = 0; k < 10; ++k) {
      ASSERT_TRUE(op->record(*s, *bx, *bb, *bx, n).ok());
      s->barrier();
    }
  }  // pieces after dispatches 3 and 8 were submitted; 9 and 10 were not
  ASSERT_TRUE(bx->download(got.data(), n * 4ull).ok());
  for (uint32_t i = 0; i < n; ++i) ASSERT_EQ(got[i], 8.0f) << "element " << i;
  EXPECT_EQ(d->validation_errors(), 0u);
}

// TROVE_PIPELINE_STATS=1: pipelines carry the driver's statistics ("name = value"); without it they
// carry none. Lavapipe has VK_KHR_pipeline_executable_properties; a device without it logs a warning
// and the statistics stay empty (then the first half is skipped).
TEST(VkRuntime, PipelineStatisticsWhenAsked) {
  {
    auto d = open_device();
    ASSERT_TRUE(d);
    EXPECT_FALSE(d->pipeline_statistics());
    auto p = d->pipeline({"add_f32", {}, 8, 3, 256});
    ASSERT_TRUE(p.ok()) << p.status().ToString();
    EXPECT_TRUE(p->statistics().empty());
  }
  ::setenv("TROVE_PIPELINE_STATS", "1", 1);
  auto d = open_device();
  ::unsetenv("TROVE_PIPELINE_STATS");
  ASSERT_TRUE(d);
  if (!d->pipeline_statistics()) GTEST_SKIP() << "no VK_KHR_pipeline_executable_properties on " << d->features().name;
  auto p = d->pipeline({"add_f32", {}, 8, 3, 256});
  ASSERT_TRUE(p.ok()) << p.status().ToString();
  ASSERT_FALSE(p->statistics().empty());
  for (const std::string& s : p->statistics()) EXPECT_NE(s.find(" = "), std::string::npos) << s;
  auto q = vk::Pipeline(std::move(*p));
  EXPECT_FALSE(q.statistics().empty());  // moves keep them
}
