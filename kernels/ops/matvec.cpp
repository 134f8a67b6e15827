#include "kernels/ops/matvec.h"

#include <algorithm>
#include <bit>
#include <cstdlib>
#include <cstring>
#include <map>
#include <mutex>
#include <string>
#include <tuple>
#include <vector>

#include <fmt/format.h>

namespace trove::ops {
namespace {

// Mirrors the push-constant block of kernels/shaders/matvec_body.glsl.
struct Push {
  uint32_t cols, flags;
  float eps;
  uint32_t n_mats, ntiles, tile_vals, groups_x, grid;
  uint32_t type[4], rows[4], y_stride[4], row_bytes[4], wg_end[4];
};
static_assert(sizeof(Push) == 112);

constexpr uint32_t kMaxGroupsX = 65535;  // minimum maxComputeWorkGroupCount Vulkan guarantees
constexpr uint32_t kDefaultWorkgroup = 256;
// q8 forms on GPUs: 512 invocations, two workgroups per SM (State::q8_waves). On the H200 (2026-12-04,
// 8B, three interleaved runs) 3717 / 3712 / 3718 µs a decode step against 3792 / 3790 / 3788 with 256
// for the o and down calls (which have too few rows for the older rule below to pick 512).
constexpr uint32_t kQ8Workgroup = 512;
constexpr uint32_t kCpuWorkgroup = 128;   // lavapipe: keeps the shared-memory reduction area small
constexpr uint32_t kDefaultRows = 2;
constexpr uint32_t kUnknownSmCount = 256; // GPUs that do not say: rather too many workgroups than too few

// Bytes of shared memory per staged value and batch column: the f32 value + 1/8 of its 8-value sum.
constexpr double kStagedBytesPerValue = 4.5;

constexpr uint32_t kGroupLanes = 32;  // kG in matvec.comp
constexpr uint32_t kCpuGroupLanes = 1;
constexpr uint32_t kDirectWorkgroup = 128;  // direct form: 4 row groups (subgroups) per workgroup  // kG on CPU devices: one invocation per row group

// One pipeline per distinct specialization: matvec_body.glsl's constant ids 0..11, in this order (kG,
// id 1, is `lanes`: kGroupLanes, or kCpuGroupLanes on CPU devices); sg > 1 selects matvec.comp (subgroupAdd), 1 matvec_nosg.comp.
struct Key {
  uint32_t wg, nb, rows, swiglu, tile, mats, type0, type1, type2, unroll, sg, lanes, direct,
      q6wide = 0, split = 1, scatter = 0, measure = 0, ahead = 0;  // the register kernel's constants 6 and 7
  auto tie() const {
    return std::tie(wg, nb, rows, swiglu, tile, mats, type0, type1, type2, unroll, sg, lanes, direct, q6wide,
                    split, scatter, measure, ahead);
  }
  bool operator<(const Key& o) const { return tie() < o.tie(); }
};

bool has_extension(VkPhysicalDevice pd, const char* name) {
  uint32_t n = 0;
  vkEnumerateDeviceExtensionProperties(pd, nullptr, &n, nullptr);
  std::vector<VkExtensionProperties> ext(n);
  vkEnumerateDeviceExtensionProperties(pd, nullptr, &n, ext.data());
  for (const auto& e : ext)
    if (std::strcmp(e.extensionName, name) == 0) return true;
  return false;
}

// Streaming multiprocessors (compute units) where the driver says (NVIDIA, AMD), else 0.
uint32_t sm_count(VkPhysicalDevice pd) {
  VkPhysicalDeviceProperties2 p2{VK_STRUCTURE_TYPE_PHYSICAL_DEVICE_PROPERTIES_2};
#ifdef VK_NV_shader_sm_builtins
  VkPhysicalDeviceShaderSMBuiltinsPropertiesNV nv{VK_STRUCTURE_TYPE_PHYSICAL_DEVICE_SHADER_SM_BUILTINS_PROPERTIES_NV};
  if (has_extension(pd, VK_NV_SHADER_SM_BUILTINS_EXTENSION_NAME)) {
    p2.pNext = &nv;
    vkGetPhysicalDeviceProperties2(pd, &p2);
    return nv.shaderSMCount;
  }
#endif
#ifdef VK_AMD_shader_core_properties
  VkPhysicalDeviceShaderCorePropertiesAMD amd{VK_STRUCTURE_TYPE_PHYSICAL_DEVICE_SHADER_CORE_PROPERTIES_AMD};
  if (has_extension(pd, VK_AMD_SHADER_CORE_PROPERTIES_EXTENSION_NAME)) {
    p2.pNext = &amd;
    vkGetPhysicalDeviceProperties2(pd, &p2);
    return amd.shaderEngineCount * amd.shaderArraysPerEngineCount * amd.computeUnitsPerShaderArray;
  }
#endif
  return 0;
}

bool ranges_overlap(const vk::BufferRange& a, uint64_t a_bytes, const vk::BufferRange& b, uint64_t b_bytes) {
  if (a.buffer != b.buffer || a.buffer == VK_NULL_HANDLE) return false;
  return a.offset < b.offset + b_bytes && b.offset < a.offset + a_bytes;
}

const char* epilogue_name(MatvecEpilogue e) {
  switch (e) {
    case MatvecEpilogue::kStore: return "kStore";
    case MatvecEpilogue::kAdd: return "kAdd";
    case MatvecEpilogue::kSwiGlu: return "kSwiGlu";
  }
  return "?";
}

}  // namespace

struct Matvec::State {
  vk::Device* dev = nullptr;
  uint32_t shared_bytes = 0;      // maxComputeSharedMemorySize
  bool cpu = false;               // lavapipe & co: no unrolled column loops, no subgroup operations
  uint32_t subgroup = 1;          // subgroup size usable for the first reduction stage (1: none)
  uint32_t sms = 0;               // streaming multiprocessors / compute units (0: the driver does not say)
  uint32_t direct_lanes = 0;      // the direct form's row group: the subgroup size (0: no subgroup arithmetic)
  bool direct = false;            // the direct form by default (GPUs with subgroup arithmetic; TROVE_MATVEC)
  bool q8_ok = false;             // the q8 form can run: integer dot products + subgroup arithmetic and shuffles
  bool q8 = false;                // the q8 form by default (TROVE_MATVEC=q8)
  bool q8_batch1 = false;         // the q8 form for batch-1 calls (GPUs with q8_ok, TROVE_MATVEC unset)
  bool q8p = false;               // the q8p form by default (TROVE_MATVEC=q8p)
  // The form of calls with 2..8 batch columns: TROVE_MATVEC_BATCHED, else q8p where batch 1 runs q8
  // by default (GPUs, TROVE_MATVEC unset), else kSame (the rules above).
  enum class Batched { kSame, kF32, kQ8, kQ8P, kQ8Coopmat };
  std::string q8cm_missing;  // why the q8 coopmat form cannot run here (empty: it can)
  uint32_t q8cm_skip = 0;    // its push flags 4..128 (TROVE_MATVEC_Q8CM_SKIP: a measurement, wrong results)
  // The parts of q8cm_skip the kernels read as push flags (4, 8, 16, 32, 128); 64 is the host's.
  static constexpr uint32_t kQ8cmKernelSkip = 4u | 8u | 16u | 32u | 128u;
  uint32_t q8cm_tiles = 0;   // its tiles of 16 rows a workgroup (TROVE_MATVEC_Q8CM_TILES; 0: 1 for the
                             // register kernel, 2 for the shared-memory one — each one's best, H100)
  // Calls without batch1_bits take the register kernel (GPUs, TROVE_MATVEC_BATCHED unset).
  bool q8cm_streams = false;
  // Its automatic split's target: subgroups per SM (TROVE_MATVEC_Q8CM_WAVES). 24 (H100, 2026-12-08: 8
  // streams of the 8B 1,172-1,182 tok/s against 1,147-1,156 with 16, 1,176-1,179 with 32).
  uint32_t q8cm_waves = 24;
  bool q8cm_regs = false;    // its register kernel (TROVE_MATVEC_Q8CM_REGS=1)
  uint32_t q8cm_ahead = 0;  // the register kernel's next super-block loaded ahead (TROVE_MATVEC_Q8CM_AHEAD=1)
  // The register kernel's element layout table (matvec_q8_coopmat_regs.comp), probed on first use;
  // q8cm_regs_missing says why the kernel cannot run once the probe refused the layout. Guarded by mu.
  bool q8cm_probed = false;
  vk::Buffer q8cm_table;
  std::string q8cm_regs_missing;
  Batched batched = Batched::kSame;
  // q8p scratch: per slot size, a ring of kRingSlots slots taken in turn by the calls (matvec.h).
  static constexpr uint32_t kRingSlots = 64;
  struct Ring {
    vk::Buffer buf;
    uint32_t next = 0;
  };
  std::map<uint64_t, Ring> rings;  // guarded by mu
  uint32_t q8_waves = 4;          // q8 form: workgroups of 256 per SM walking the row blocks, fewer of
                                  // larger ones (TROVE_MATVEC_Q8_WAVES)
  uint32_t q8_wg = 0;             // q8 calls' workgroup size (TROVE_MATVEC_Q8_WG; 0: automatic)
  uint32_t q8p_cols = 0;          // batch-1 q8 calls of >= this many columns run q8p (TROVE_MATVEC_Q8P_COLS; 0: none)
  uint32_t q8_stage_flags = 0;    // q8 form: push flags 4 (stage without loads) or 8 (no staging), TROVE_MATVEC_Q8_STAGE
  bool q6_wide = true;            // q8 forms: Q6_K rows in 32-value parts (TROVE_MATVEC_Q6_WIDE=0: 16-value ones)
  uint32_t batched_rows = 0;      // rows per row group of batch 2..8 q8/q8p calls (TROVE_MATVEC_BATCHED_ROWS; 0: default)
  uint32_t batched_swiglu_rows = 0;  // ... of those with SwiGLU, gate rows (TROVE_MATVEC_BATCHED_SWIGLU_ROWS; 0: as above)
  uint32_t batched_wg = 0;        // the q8p kernel's workgroup size at batch 2..8 (TROVE_MATVEC_BATCHED_WG; 0: q8_wg)
  uint32_t q8_rows = 0;           // ... of batch-1 q8 calls without SwiGLU (TROVE_MATVEC_ROWS; 0: kDefaultRows)
  uint32_t q8_swiglu_rows = 0;    // ... of batch-1 q8 SwiGLU calls, gate rows (TROVE_MATVEC_SWIGLU_ROWS; 0: 1)
  uint32_t q8_split = 0;          // q8 forms: subgroups sharing a row group's rows (TROVE_MATVEC_Q8_SPLIT; 0: automatic)
  uint32_t q8_scatter = 0;        // q8 forms: 1 = row sums by a reduce-scatter (TROVE_MATVEC_REDUCE=scatter)
  uint32_t waves = 8;             // workgroups of 512 invocations per SM when x fits one tile
                                  // (TROVE_MATVEC_WAVES overrides: 0 = one workgroup per row block)
  MatvecTuning tuning;
  std::mutex mu;                  // guards pipelines
  std::map<Key, vk::Pipeline> pipelines;

  // The next scratch slot of `bytes` (a multiple of 256) for a q8p call.
  Result<vk::BufferRange> slot(uint64_t bytes) {
    std::lock_guard<std::mutex> lock(mu);
    Ring& r = rings[bytes];
    if (r.buf.size() == 0) {
      auto b = dev->buffer(bytes * kRingSlots);
      if (!b.ok()) return b.status();
      r.buf = std::move(*b);
      // TROVE_MATVEC_Q8CM_SKIP=64 (no pass writes the slots): zeros, so that the wrong results stay finite.
      if (q8cm_skip & 64u) TROVE_RETURN_IF_ERROR(r.buf.fill(0));
    }
    const uint32_t i = r.next;
    r.next = (r.next + 1) % kRingSlots;
    return vk::BufferRange(r.buf, uint64_t{i} * bytes, bytes);
  }

  // The register kernel's layout table: probed once (matvec_q8_coopmat_probe.comp), then kept.
  Result<vk::BufferRange> q8cm_layout() {
    std::lock_guard<std::mutex> lock(mu);
    if (!q8cm_probed) {
      q8cm_probed = true;
      if (Status st = probe_q8cm_layout(); !st.ok()) q8cm_regs_missing = std::string(st.message());
    }
    if (!q8cm_regs_missing.empty()) {
      return Status::Unsupported(
          fmt::format("matvec: the q8 coopmat register kernel cannot run here: {}", q8cm_regs_missing));
    }
    return vk::BufferRange(q8cm_table);
  }
  Status probe_q8cm_layout();

  // The activation pass (one workgroup a batch column) and the barrier its kernel waits at — or neither
  // with TROVE_MATVEC_Q8CM_SKIP=64 (a measurement: the kernel then reads the slot as it is).
  Status record_pass(vk::CommandStream& s, const vk::Pipeline& pass, const vk::BufferRange (&bufs)[3],
                     const uint32_t (&push)[5], uint32_t batch) const {
    if (q8cm_skip & 64u) return Status::Ok();
    TROVE_RETURN_IF_ERROR(s.dispatch(pass, bufs, push, sizeof(push), batch, 1));
    s.barrier();
    return Status::Ok();
  }

  Result<const vk::Pipeline*> pipeline(const Key& k) {
    std::lock_guard<std::mutex> lock(mu);
    auto it = pipelines.find(k);
    if (it != pipelines.end()) return &it->second;
    if (k.direct == 4) {  // the q8p form's activation pass
      auto p = dev->pipeline({"matvec_q8_quant", {k.wg, k.lanes}, 5 * 4, 3, k.wg});
      if (!p.ok()) return p.status();
      return &pipelines.emplace(k, std::move(*p)).first->second;
    }
    // The q8 coopmat kernels (5: shared memory, 6: registers): constant ids 0..5 of matvec_q8_coopmat.glsl,
    // and the register kernel's 6 and 7 (matvec_q8_coopmat_regs.comp: kMeasure, kAhead).
    if (k.direct == 5 || k.direct == 6) {
      const char* name = k.direct == 5 ? "matvec_q8_coopmat" : "matvec_q8_coopmat_regs";
      std::vector<uint32_t> consts = {k.wg, k.nb, k.swiglu, k.tile, k.mats, k.rows};
      if (k.direct == 6) consts.insert(consts.end(), {k.measure, k.ahead});
      auto p = dev->pipeline({name, consts, sizeof(Push), 8, k.wg});
      if (!p.ok()) return p.status();
      return &pipelines.emplace(k, std::move(*p)).first->second;
    }
    if (k.direct >= 2) {  // q8 (2) and q8p (3) forms: constant ids 0..12 of matvec_q8.glsl
      auto p = dev->pipeline({k.direct == 3 ? "matvec_q8p" : "matvec_q8",
                              {k.wg, k.lanes, k.nb, k.rows, k.swiglu, k.tile, k.mats, k.type0, k.type1, k.type2, k.q6wide,
                               k.split, k.scatter},
                              sizeof(Push), 8, k.wg});
      if (!p.ok()) return p.status();
      return &pipelines.emplace(k, std::move(*p)).first->second;
    }
    auto p = dev->pipeline({k.direct ? "matvec_direct" : k.sg > 1 ? "matvec" : "matvec_nosg",
                            {k.wg, k.lanes, k.nb, k.rows, k.swiglu, k.tile, k.mats, k.type0, k.type1, k.type2, k.unroll, k.sg},
                            sizeof(Push), 8, k.wg});
    if (!p.ok()) return p.status();
    return &pipelines.emplace(k, std::move(*p)).first->second;
  }
};

// Which A and product elements each lane of a subgroup holds (VK_KHR_cooperative_matrix leaves it to the
// implementation), into the table matvec_q8_coopmat_regs.comp reads — or an error saying what the
// register kernel needs that this layout lacks.
Status Matvec::State::probe_q8cm_layout() {
  auto p = dev->pipeline({"matvec_q8_coopmat_probe", {}, 0, 2, 32});
  if (!p.ok()) return p.status();
  std::vector<uint8_t> in(96 * 16);
  for (uint32_t r = 0; r < 16; ++r) {
    for (uint32_t k = 0; k < 32; ++k) {
      in[r * 32 + k] = static_cast<uint8_t>(r);
      in[512 + r * 32 + k] = static_cast<uint8_t>(k);
    }
    for (uint32_t c = 0; c < 8; ++c) {
      const uint32_t v = r * 8 + c;
      std::memcpy(&in[1024 + v * 4], &v, 4);
    }
  }
  auto ib = dev->buffer(in.size());
  auto ob = dev->buffer(642 * 4);
  if (!ib.ok()) return ib.status();
  if (!ob.ok()) return ob.status();
  TROVE_RETURN_IF_ERROR(ib->upload(in.data(), in.size()));
  TROVE_RETURN_IF_ERROR(ob->fill(0xFFFFFFFFu));
  auto s = dev->stream();
  if (!s.ok()) return s.status();
  const vk::BufferRange bufs[2] = {*ib, *ob};
  TROVE_RETURN_IF_ERROR(s->dispatch(*p, bufs, nullptr, 0, 1));
  TROVE_RETURN_IF_ERROR(s->submit_and_wait());
  std::vector<uint32_t> o(642);
  TROVE_RETURN_IF_ERROR(ob->download(o.data(), o.size() * 4));
  auto table = Matvec::q8_coopmat_layout_table(o);
  if (!table.ok()) return table.status();
  auto tb = dev->buffer(table->size() * 4);
  if (!tb.ok()) return tb.status();
  TROVE_RETURN_IF_ERROR(tb->upload(table->data(), table->size() * 4));
  q8cm_table = std::move(*tb);
  return Status::Ok();
}

Result<std::vector<uint32_t>> Matvec::q8_coopmat_layout_table(const std::vector<uint32_t>& o) {
  if (o.size() != 642) {
    return Status::InvalidArgument(fmt::format("the layout probe wrote {} words, not 642", o.size()));
  }
  if (o[640] != 16 || o[641] != 4) {
    return Status::Unsupported(fmt::format(
        "a lane holds {} elements of A and {} of the product (it needs 16 and 4)", o[640], o[641]));
  }
  std::vector<uint32_t> table(257);  // 256: 1 where a lane's A groups 2h, 2h + 1 are one row
  std::vector<int> seen_a(16 * 32, 0), seen_c(16 * 8, 0);
  for (uint32_t l = 0; l < 32; ++l) {
    for (uint32_t g = 0; g < 4; ++g) {
      const uint32_t t0 = o[16 * l + 4 * g], row = t0 & 0xFF, k0 = t0 >> 8;
      for (uint32_t b = 0; b < 4; ++b) {
        const uint32_t t = o[16 * l + 4 * g + b];
        if ((t & 0xFF) != row || (t >> 8) != k0 + b || k0 % 4 != 0 || row >= 16 || k0 + b >= 32) {
          return Status::Unsupported(fmt::format(
              "lane {}'s A elements {}..{} are not 4 consecutive values of one row from a multiple of 4 "
              "(element {}: row {}, value {})",
              l, 4 * g, 4 * g + 3, 4 * g + b, t & 0xFF, t >> 8));
        }
        ++seen_a[row * 32 + k0 + b];
      }
      table[4 * l + g] = row | (k0 << 8);
    }
    // A lane's four groups are two rows' values k0 and k0 + 16 (k0 < 16): groups h and h + 2 of one row,
    // or (adjacent) 2h and 2h + 1 — a row's two groups are then 8 adjacent code bytes in the kernel's
    // permuted K. Every lane in the same order (table[256]).
    auto partners = [&](uint32_t g, uint32_t g16) {
      const uint32_t lo = table[4 * l + g], hi = table[4 * l + g16];
      return (lo >> 8) < 16 && (hi & 0xFF) == (lo & 0xFF) && (hi >> 8) == (lo >> 8) + 16;
    };
    const bool adjacent = partners(0, 1) && partners(2, 3), apart = partners(0, 2) && partners(1, 3);
    if (!adjacent && !apart) {
      return Status::Unsupported(fmt::format(
          "lane {}'s A elements are not two rows' values k0.. and k0 + 16.. in groups of 4 (groups "
          "0..3: {:#x} {:#x} {:#x} {:#x}, row | value << 8)",
          l, table[4 * l], table[4 * l + 1], table[4 * l + 2], table[4 * l + 3]));
    }
    if (l == 0) table[256] = adjacent ? 1 : 0;
    if ((adjacent ? 1u : 0u) != table[256]) {
      return Status::Unsupported(fmt::format("lane {}'s A groups come in another order than lane 0's", l));
    }
    uint32_t rc[4][2];
    for (uint32_t e = 0; e < 4; ++e) {
      const uint32_t v = o[512 + 4 * l + e];
      if (v >= 128) return Status::Unsupported(fmt::format("lane {}'s product element {} reads {}", l, e, v));
      rc[e][0] = v / 8;
      rc[e][1] = v % 8;
      ++seen_c[v];
      table[128 + 4 * l + e] = rc[e][0] | (rc[e][1] << 8);
    }
    if (rc[0][0] != rc[1][0] || rc[2][0] != rc[3][0] || rc[0][1] != rc[2][1] || rc[1][1] != rc[3][1]) {
      return Status::Unsupported(
          fmt::format("lane {}'s product elements are not two rows × two columns ((row, column): ({}, {}) "
                      "({}, {}) ({}, {}) ({}, {}))",
                      l, rc[0][0], rc[0][1], rc[1][0], rc[1][1], rc[2][0], rc[2][1], rc[3][0], rc[3][1]));
    }
  }
  if (std::count(seen_a.begin(), seen_a.end(), 1) != 512 ||
      std::count(seen_c.begin(), seen_c.end(), 1) != 128) {
    return Status::Unsupported("the lanes' elements do not cover A and the product once each");
  }
  return table;
}

Matvec::Matvec(Matvec&&) noexcept = default;
Matvec& Matvec::operator=(Matvec&&) noexcept = default;
Matvec::~Matvec() = default;

Result<Matvec> Matvec::create(vk::Device& dev) {
  Matvec op;
  op.st_ = std::make_unique<State>();
  op.st_->dev = &dev;
  VkPhysicalDeviceProperties props;
  vkGetPhysicalDeviceProperties(dev.physical(), &props);
  op.st_->shared_bytes = props.limits.maxComputeSharedMemorySize;
  const auto& f = dev.features();
  op.st_->cpu = f.is_cpu;
  // The first reduction stage adds within a subgroup, which must tile the 32-lane row group.
  const uint32_t sg = f.subgroup_size;
  if (f.subgroup_arithmetic && sg >= 4 && sg <= kGroupLanes && (sg & (sg - 1)) == 0) op.st_->subgroup = sg;
  op.st_->sms = sm_count(dev.physical());
  // Measured on the H200 (2026-12-02, bench_engine, Qwen3-8B Q4_K_M tg128): two 512-invocation
  // workgroups per SM walking all row blocks left too few loads in flight (decode below the old
  // matmul's 60.6 tok/s); 4, 8 and 16 gave 94.8, 89.9 and 96.0 tok/s. TROVE_MATVEC_WAVES sets the
  // number (0: one workgroup per row block, as when x needs several tiles).
  if (const char* w = std::getenv("TROVE_MATVEC_WAVES"); w && *w) {
    char* end = nullptr;
    const unsigned long v = std::strtoul(w, &end, 10);
    if (*end != '\0' || v > 1024) {
      return Status::InvalidArgument(fmt::format("TROVE_MATVEC_WAVES='{}' is not a number of workgroups per SM (0..1024)", w));
    }
    op.st_->waves = static_cast<uint32_t>(v);
  }
  if (f.subgroup_arithmetic && sg >= 4 && sg <= 64 && (sg & (sg - 1)) == 0) op.st_->direct_lanes = sg;
  op.st_->direct = !f.is_cpu && op.st_->direct_lanes != 0;
  op.st_->q8_ok = f.integer_dot_product && f.subgroup_shuffle && op.st_->direct_lanes != 0;
  // One decode stream on a GPU: the q8 form (H200, 8B tg128 154 -> 212 tok/s), and the q8p form for
  // batches of 2..8 (below): the same int8 numbers at every batch. With the f32 direct form for
  // batches (7636d29) a verification step's argmax differed from one-token steps (H200 30B-A3B at
  // every k >= 2: the router's input ~1% apart flips experts; with TROVE_MATVEC=q8 the 8B from k = 6
  // on, where ffn_down fell back to f32: a near tie at position 6), which greedy speculation forbids.
  // q8p rather than q8 for batches: bench_kernels on the H200 (2026-12-03, µs, direct / q8 / q8p)
  // qkv b4 40.4 / 26.8 / 22.2, b8 72.4 / 220.9 / 150.9, gate+up b8 830.9 / 667.7 / 366.0, down b8
  // 640 / (f32) / 400.7, head b8 3330 / 2053 / 1620; the q8 form stages x in every workgroup.
  op.st_->q8_batch1 = !f.is_cpu && op.st_->q8_ok;
  // The q8 coopmat form: the q8p form's pass, a 16 × 8 × 32 int8 subgroup matrix shape (VkComponentTypeKHR
  // SINT8 = 3, SINT32 = 5; VkScopeKHR SUBGROUP = 3), shaderInt8 and 32-lane subgroups.
  {
    bool shape = false;
    for (const auto& c : f.coopmat_shapes) {
      shape |= c.m == 16 && c.n == 8 && c.k == 32 && c.a == 3 && c.b == 3 && c.c == 5 && c.result == 5 &&
               c.scope == 3;
    }
    std::string& why = op.st_->q8cm_missing;
    if (!vk::find_shader("matvec_q8_coopmat").words) {
      why = "this build has no matvec_q8_coopmat shader (a glslang without GL_KHR_cooperative_matrix)";
    } else if (!op.st_->q8_ok) {
      why =
          "the device lacks integer dot products, subgroup arithmetic or shuffles (the q8p form's pass needs "
          "them)";
    } else if (!shape) {
      why =
          "the device offers no 16x8x32 int8 x int8 -> int32 subgroup matrix shape "
          "(VK_KHR_cooperative_matrix)";
    } else if (!f.int8_arithmetic || f.subgroup_size != 32) {
      why = fmt::format("the shader needs shaderInt8 and 32-lane subgroups (int8 {}, subgroup {})",
                        f.int8_arithmetic ? "yes" : "no", f.subgroup_size);
    }
  }
  // TROVE_MATVEC_BATCHED_ROWS=1|2|4: rows per row group (per matrix; SwiGLU: gate rows) of batch 2..8
  // calls in the q8 and q8p forms, for A/B in the engine: each row a lane holds costs registers for its
  // codes, scales and batch sums (at batch 8 and 2 rows the q8 forms were slower than direct for qkv).
  if (const char* w = std::getenv("TROVE_MATVEC_BATCHED_ROWS"); w && *w) {
    const std::string_view v(w);
    if (v != "1" && v != "2" && v != "4") {
      return Status::InvalidArgument(fmt::format("TROVE_MATVEC_BATCHED_ROWS='{}' is not 1, 2 or 4 (rows per row group)", w));
    }
    op.st_->batched_rows = static_cast<uint32_t>(v[0] - '0');
  }
  // TROVE_MATVEC_BATCHED_SWIGLU_ROWS=1|2|4: the gate rows of batched SwiGLU calls alone (unset: as
  // TROVE_MATVEC_BATCHED_ROWS): their lanes hold gate and up rows, twice the slots of the others.
  if (const char* w = std::getenv("TROVE_MATVEC_BATCHED_SWIGLU_ROWS"); w && *w) {
    const std::string_view v(w);
    if (v != "1" && v != "2" && v != "4") {
      return Status::InvalidArgument(fmt::format("TROVE_MATVEC_BATCHED_SWIGLU_ROWS='{}' is not 1, 2 or 4 (gate rows per row group)", w));
    }
    op.st_->batched_swiglu_rows = static_cast<uint32_t>(v[0] - '0');
  }
  // TROVE_MATVEC_BATCHED_WG=128|256|512|1024: the workgroup size of the q8p kernel at batch 2..8 (its
  // activation pass keeps the q8 size, and the split of a row group's parts is the batch-1 call's,
  // so each column keeps a batch-1 call's bits). With more rows a lane (TROVE_MATVEC_BATCHED_ROWS=4)
  // and half the workgroup, a workgroup keeps its rows and the grid its size while each activation
  // load serves twice the rows: an A/B for the per-column cost of wide steps (H100, 2026-12-05: with
  // 4 rows, 20-50% slower wide steps; docs/performance.md).
  if (const char* w = std::getenv("TROVE_MATVEC_BATCHED_WG"); w && *w) {
    const std::string_view v(w);
    if (v != "128" && v != "256" && v != "512" && v != "1024") {
      return Status::InvalidArgument(fmt::format("TROVE_MATVEC_BATCHED_WG='{}' is not 128, 256, 512 or 1024 (invocations)", w));
    }
    op.st_->batched_wg = static_cast<uint32_t>(std::stoul(std::string(v)));
  }
  // TROVE_MATVEC_ROWS / TROVE_MATVEC_SWIGLU_ROWS=1|2|4: the same for batch-1 calls in the q8 form
  // (without / with the SwiGLU epilogue), for A/B in the engine: more rows a lane holds means more
  // weight loads in flight per lane and fewer workgroups staging x.
  for (auto [name, to] : {std::pair{"TROVE_MATVEC_ROWS", &op.st_->q8_rows},
                          std::pair{"TROVE_MATVEC_SWIGLU_ROWS", &op.st_->q8_swiglu_rows}}) {
    if (const char* w = std::getenv(name); w && *w) {
      const std::string_view v(w);
      if (v != "1" && v != "2" && v != "4") {
        return Status::InvalidArgument(fmt::format("{}='{}' is not 1, 2 or 4 (rows per row group)", name, w));
      }
      *to = static_cast<uint32_t>(v[0] - '0');
    }
  }
  // TROVE_MATVEC_Q8_SPLIT=1|2|4|8|auto: subgroups of a q8 / q8p workgroup that share one row group's
  // rows, each walking a kSplit-th of its parts (matvec_q8.glsl). auto (the default): the fewest that
  // give a call as many row blocks as the q8 grid has workgroups — on the H200 the 8B's QKV 2, o and
  // ffn_down 4, the rest 1: 8B tg128 264 / 267 -> 281 / 278 tok/s (GPU 3709 -> 3549 us a step), 30B-A3B
  // 213 -> 216 (2026-12-04, docs/performance.md); 2 everywhere 277 / 280, 4 everywhere 241 / 260.
  // CPU devices: 1 (one row block per workgroup there already). From the call's rows, not its batch,
  // so that batched calls keep batch-1 numbers.
  if (const char* w = std::getenv("TROVE_MATVEC_Q8_SPLIT"); w && *w) {
    const std::string_view v(w);
    if (v != "1" && v != "2" && v != "4" && v != "8" && v != "auto") {
      return Status::InvalidArgument(fmt::format("TROVE_MATVEC_Q8_SPLIT='{}' is not 1, 2, 4, 8 or auto", w));
    }
    op.st_->q8_split = v == "auto" ? 0u : static_cast<uint32_t>(v[0] - '0');
  }
  // TROVE_MATVEC_REDUCE=add|scatter: how the q8 forms sum a row group's lanes — subgroupAdd of each
  // row and column (add, the default) or one reduce-scatter of all of them (matvec_q8.glsl): at batch 8
  // and 2 rows 16 shuffles instead of 80, the same tree for every value at every batch, so batched and
  // batch-1 calls still agree bit for bit (both take it). An A/B for the cost of wide steps (H100,
  // 2026-12-05: batch 1 0 to -5%, verification 3-9% slower, one rep of 8 streams +8.6%: off, to be
  // measured again).
  if (const char* w = std::getenv("TROVE_MATVEC_REDUCE"); w && *w) {
    const std::string_view v(w);
    if (v != "add" && v != "scatter") {
      return Status::InvalidArgument(fmt::format("TROVE_MATVEC_REDUCE='{}' is not add or scatter", w));
    }
    op.st_->q8_scatter = v == "scatter" ? 1u : 0u;
  }
  if (const char* w = std::getenv("TROVE_MATVEC_Q8_WAVES"); w && *w) {
    char* end = nullptr;
    const unsigned long v = std::strtoul(w, &end, 10);
    if (*end != '\0' || v < 1 || v > 64) {
      return Status::InvalidArgument(fmt::format("TROVE_MATVEC_Q8_WAVES='{}' is not a number of workgroups per SM (1..64)", w));
    }
    op.st_->q8_waves = static_cast<uint32_t>(v);
  }
  // TROVE_MATVEC_Q8_WG=256|512|1024: invocations per workgroup of q8 and q8p calls (a measurement;
  // unset: kQ8Workgroup, 256 on CPU devices). The activation pass of q8p takes the same size, so batched
  // and batch-1 calls stay bit-equal under any of them.
  if (const char* w = std::getenv("TROVE_MATVEC_Q8_WG"); w && *w) {
    const std::string_view v(w);
    if (v != "256" && v != "512" && v != "1024") {
      return Status::InvalidArgument(fmt::format("TROVE_MATVEC_Q8_WG='{}' is not 256, 512 or 1024", w));
    }
    op.st_->q8_wg = static_cast<uint32_t>(std::stoul(std::string(v)));
  }
  // TROVE_MATVEC_Q8P_COLS=N: batch-1 q8 calls of N or more columns take the q8p form (x̂ quantized once
  // by the activation pass instead of by every workgroup; the same numbers). A measurement: unset,
  // only TROVE_MATVEC chooses q8p.
  if (const char* w = std::getenv("TROVE_MATVEC_Q8P_COLS"); w && *w) {
    char* end = nullptr;
    const unsigned long v = std::strtoul(w, &end, 10);
    if (*end != '\0' || v < 32 || v > (1ul << 20)) {
      return Status::InvalidArgument(fmt::format("TROVE_MATVEC_Q8P_COLS='{}' is not a number of columns (32..1048576)", w));
    }
    op.st_->q8p_cols = static_cast<uint32_t>(v);
  }
  // TROVE_MATVEC_Q8CM_SKIP=N — a measurement of where the q8 coopmat form's time goes, with WRONG RESULTS:
  // the sum of the kernels' 4 (no weight loads), 8 (B from shared memory; matvec_q8_coopmat.comp only), 16
  // (no scales), 32 (no MMA), 128 (no A built from the codes; matvec_q8_coopmat_regs.comp only) and the
  // host's 64 (no activation pass before q8 coopmat and q8p calls — the kernel reads the slot as an
  // earlier call left it: what fusing the pass into the op before would save at most).
  if (const char* w = std::getenv("TROVE_MATVEC_Q8CM_SKIP"); w && *w) {
    char* end = nullptr;
    const unsigned long v = std::strtoul(w, &end, 10);
    if (*end != '\0' || v % 4 != 0 || v > 252) {
      return Status::InvalidArgument(
          fmt::format("TROVE_MATVEC_Q8CM_SKIP='{}' is not a sum of 4, 8, 16, 32, 64 and 128 (parts of the q8 "
                      "coopmat form to skip)",
                      w));
    }
    op.st_->q8cm_skip = static_cast<uint32_t>(v);
  }
  // TROVE_MATVEC_Q8CM_REGS=0|1: the q8 coopmat form's register kernel (1) or the shared-memory one (0,
  // the default); matvec.h.
  if (const char* w = std::getenv("TROVE_MATVEC_Q8CM_REGS"); w && *w) {
    const std::string_view v(w);
    if (v != "0" && v != "1") {
      return Status::InvalidArgument(
          fmt::format("TROVE_MATVEC_Q8CM_REGS='{}' is not 0 or 1 (the q8 coopmat form's shared-memory or "
                      "register kernel)",
                      w));
    }
    op.st_->q8cm_regs = v == "1";
  }
  // TROVE_MATVEC_Q8CM_AHEAD=0|1: the register kernel loads the next super-block's headers and first codes
  // while it computes this one's first run (1) or not (0, the default).
  if (const char* w = std::getenv("TROVE_MATVEC_Q8CM_AHEAD"); w && *w) {
    const std::string_view v(w);
    if (v != "0" && v != "1") {
      return Status::InvalidArgument(fmt::format(
          "TROVE_MATVEC_Q8CM_AHEAD='{}' is not 0 or 1 (the register kernel's next super-block loaded ahead)",
          w));
    }
    op.st_->q8cm_ahead = v == "1" ? 1u : 0u;
  }
  // TROVE_MATVEC_Q8CM_TILES=1|2|4: tiles of 16 rows a workgroup of the q8 coopmat form owns (default 1 with
  // the register kernel, 2 with the shared-memory one).
  if (const char* w = std::getenv("TROVE_MATVEC_Q8CM_TILES"); w && *w) {
    const std::string_view v(w);
    if (v != "1" && v != "2" && v != "4") {
      return Status::InvalidArgument(
          fmt::format("TROVE_MATVEC_Q8CM_TILES='{}' is not 1, 2 or 4 (tiles of 16 rows)", w));
    }
    op.st_->q8cm_tiles = static_cast<uint32_t>(v[0] - '0');
  }
  // TROVE_MATVEC_Q8CM_WAVES=N (1..64): the subgroups per SM the q8 coopmat form's automatic split aims at
  // (default 24).
  if (const char* w = std::getenv("TROVE_MATVEC_Q8CM_WAVES"); w && *w) {
    char* end = nullptr;
    const unsigned long v = std::strtoul(w, &end, 10);
    if (*end != '\0' || v < 1 || v > 64) {
      return Status::InvalidArgument(
          fmt::format("TROVE_MATVEC_Q8CM_WAVES='{}' is not 1..64 (subgroups per SM)", w));
    }
    op.st_->q8cm_waves = static_cast<uint32_t>(v);
  }
  // TROVE_MATVEC_Q8_STAGE=noloads|skip — a measurement of what the q8 form's staging of x̂ costs, with
  // WRONG RESULTS (like TROVE_VK_SKIP_BARRIERS): noloads stages constants instead of reading x and the
  // norm weights, skip leaves the staging out. On the H200 (2026-12-03, 8B, depth 4096) tg128 238 / 240
  // → 258 / 257 (noloads) → 274 / 275 (skip), GPU 4015 → 3716 → 3497 µs a step: the staging is ~13%.
  if (const char* w = std::getenv("TROVE_MATVEC_Q8_STAGE"); w && *w) {
    const std::string_view v(w);
    if (v != "noloads" && v != "skip") {
      return Status::InvalidArgument(fmt::format(
          "TROVE_MATVEC_Q8_STAGE='{}' is not noloads or skip (a measurement with wrong results; unset it to decode)", w));
    }
    op.st_->q8_stage_flags = v == "noloads" ? 4u : 8u;
  }
  // TROVE_MATVEC_Q6_WIDE=0|1: the q8 forms walk Q6_K rows in 32-value parts (16-byte runs of the
  // codes, half the parts; the default) or in 16-value ones (0). On the H200 (2026-12-03, 8B Q4_K_M,
  // two interleaved runs each) tg128 209.8 / 211.6 → 240.9 / 222.9 tok/s, tg64 at depth 16384
  // 174.1 / 173.8 → 193.5 / 188.2.
  if (const char* w = std::getenv("TROVE_MATVEC_Q6_WIDE"); w && *w) {
    const std::string_view v(w);
    if (v != "0" && v != "1") {
      return Status::InvalidArgument(fmt::format("TROVE_MATVEC_Q6_WIDE='{}' is not 0 or 1", w));
    }
    op.st_->q6_wide = v == "1";
  }
  // TROVE_MATVEC_BATCHED=f32|q8|q8p|q8coopmat: the form of calls with 2..8 batch columns (speculative
  // verification, several streams), whatever TROVE_MATVEC says for the rest. With q8 at batch 1 (the
  // GPU default) only q8 or q8p give each column the numbers of a one-token step, which greedy
  // speculative decoding needs to be token-for-token exact (docs/kernels.md, "q8 form"); q8coopmat (an
  // A/B form, matvec.h) does not.
  if (const char* v = std::getenv("TROVE_MATVEC_BATCHED"); v && *v) {
    const std::string_view form(v);
    using B = State::Batched;
    if (form == "f32") {
      op.st_->batched = B::kF32;
    } else if (form == "q8" || form == "q8p") {
      if (!op.st_->q8_ok) {
        return Status::Unsupported(fmt::format("TROVE_MATVEC_BATCHED={} needs integer dot products "
                                               "(VK_KHR_shader_integer_dot_product), subgroup arithmetic and subgroup shuffles, which "
                                               "this device lacks; unset TROVE_MATVEC_BATCHED", v));
      }
      op.st_->batched = form == "q8" ? B::kQ8 : B::kQ8P;
    } else if (form == "q8coopmat") {
      if (!op.st_->q8cm_missing.empty()) {
        return Status::Unsupported(fmt::format("TROVE_MATVEC_BATCHED=q8coopmat cannot run here: {}; unset it",
                                               op.st_->q8cm_missing));
      }
      op.st_->batched = B::kQ8Coopmat;
    } else {
      return Status::InvalidArgument(fmt::format(
          "TROVE_MATVEC_BATCHED='{}' is not a form for batches of 2..8 (f32, q8, q8p or q8coopmat)", v));
    }
  }
  if (const char* v = std::getenv("TROVE_MATVEC"); v && *v) {
    const std::string_view form(v);
    op.st_->q8_batch1 = false;
    if (form == "f32") {
      // the device's f32 form (direct on GPUs, staged elsewhere): no q8 at any batch
    } else if (form == "staged") {
      op.st_->direct = false;
    } else if (form == "direct") {
      if (op.st_->direct_lanes == 0) {
        return Status::Unsupported("TROVE_MATVEC=direct needs subgroup arithmetic (subgroups of 4..64 lanes), which this "
                                   "device lacks; unset TROVE_MATVEC");
      }
      op.st_->direct = true;
    } else if (form == "q8") {
      if (!op.st_->q8_ok) {
        return Status::Unsupported("TROVE_MATVEC=q8 needs integer dot products (VK_KHR_shader_integer_dot_product) and "
                                   "subgroup arithmetic and shuffles, which this device lacks; unset TROVE_MATVEC");
      }
      op.st_->q8 = true;
    } else if (form == "q8p") {
      if (!op.st_->q8_ok) {
        return Status::Unsupported("TROVE_MATVEC=q8p needs integer dot products (VK_KHR_shader_integer_dot_product) and "
                                   "subgroup arithmetic and shuffles, which this device lacks; unset TROVE_MATVEC");
      }
      op.st_->q8p = true;
    } else {
      return Status::InvalidArgument(fmt::format("TROVE_MATVEC='{}' is not a matvec form (f32, staged, direct, q8 or q8p)", v));
    }
  }
  if (op.st_->q8_batch1 && op.st_->batched == State::Batched::kSame) {
    op.st_->batched = State::Batched::kQ8P;
    op.st_->q8cm_streams = op.st_->q8cm_missing.empty();  // and the probe accepts the layout (record)
  }
  if (!vk::find_shader("matvec").words || !vk::find_shader("matvec_nosg").words || !vk::find_shader("matvec_direct").words ||
      !vk::find_shader("matvec_q8").words || !vk::find_shader("matvec_q8p").words ||
      !vk::find_shader("matvec_q8_quant").words) {
    return Status::NotFound("matvec: shaders matvec/matvec_nosg/matvec_direct/matvec_q8 are not embedded in this build "
                            "(rebuild trove_kernels)");
  }
  return op;
}

void Matvec::set_tuning(const MatvecTuning& t) { st_->tuning = t; }

bool Matvec::q8_supported() const { return st_->q8_ok; }

bool Matvec::q8_coopmat_regs_supported(std::string* why) const {
  if (!st_->q8cm_missing.empty()) {
    if (why) *why = st_->q8cm_missing;
    return false;
  }
  auto t = st_->q8cm_layout();
  if (why) *why = t.ok() ? std::string() : std::string(t.status().message());
  return t.ok();
}

bool Matvec::q8_coopmat_supported(std::string* why) const {
  if (why) *why = st_->q8cm_missing;
  return st_->q8cm_missing.empty();
}

Status Matvec::record(vk::CommandStream& s, const MatvecCall& call) const {
  using quant::GgmlType;
  const bool swiglu = call.epilogue == MatvecEpilogue::kSwiGlu;
  if (call.batch < 1 || call.batch > kMaxBatch) {
    return Status::InvalidArgument(fmt::format("matvec: batch {} is outside 1..{} (larger batches go through ops::Matmul)",
                                               call.batch, kMaxBatch));
  }
  if (call.n_mats < 1 || call.n_mats > 3) {
    return Status::InvalidArgument(fmt::format("matvec: n_mats {} is outside 1..3", call.n_mats));
  }
  if (swiglu && (call.n_mats != 2 || call.mats[0].rows != call.mats[1].rows)) {
    return Status::InvalidArgument(fmt::format(
        "matvec: kSwiGlu takes 2 matrices (gate, up) with equal rows; got {} matrices with rows {} and {}", call.n_mats,
        call.mats[0].rows, call.n_mats > 1 ? call.mats[1].rows : 0));
  }
  if (call.cols == 0 || call.cols % 32 != 0) {
    return Status::InvalidArgument(fmt::format("matvec: cols {} must be a positive multiple of 32", call.cols));
  }
  const uint64_t x_bytes = uint64_t{call.batch} * call.cols * 4;
  if (call.x.buffer == VK_NULL_HANDLE || call.x.size < x_bytes) {
    return Status::InvalidArgument(fmt::format("matvec: x has {} bytes, batch {} x cols {} f32 need {}", call.x.size,
                                               call.batch, call.cols, x_bytes));
  }
  const bool norm = call.norm_w.buffer != VK_NULL_HANDLE;
  if (norm && call.norm_w.size < uint64_t{call.cols} * 4) {
    return Status::InvalidArgument(fmt::format("matvec: norm_w has {} bytes, cols {} f32 need {}", call.norm_w.size,
                                               call.cols, uint64_t{call.cols} * 4));
  }

  const MatvecTuning& tn = st_->tuning;
  // On a CPU device (lavapipe) one invocation owns a row group's rows and walks every part itself:
  // no partial sums to reduce across lanes, and a workgroup covers 32x the rows, so the barriers and
  // the staging of x (run per workgroup and block, costly there) are paid 32x less often. Measured on
  // lavapipe (2 cores, tiny-coder decode, 2026-12-02): the 151,936-row head 1.3-1.8 s -> ~0.33 s.
  bool direct = st_->direct;
  bool q8 = st_->q8 || (st_->q8_batch1 && call.batch == 1), q8p = st_->q8p;
  // q8cm: the q8 coopmat form.
  bool q8cm = false;
  if (call.batch > 1 && st_->batched != State::Batched::kSame) {  // TROVE_MATVEC_BATCHED
    q8 = st_->batched == State::Batched::kQ8;
    q8p = st_->batched == State::Batched::kQ8P;
    q8cm = st_->batched == State::Batched::kQ8Coopmat;
  }
  if (tn.form == MatvecTuning::Form::kF32) {
    q8 = q8p = q8cm = false;
  } else if (tn.form != MatvecTuning::Form::kAuto) {
    direct = tn.form == MatvecTuning::Form::kDirect;
    q8 = tn.form == MatvecTuning::Form::kQ8;
    q8p = tn.form == MatvecTuning::Form::kQ8P;
    q8cm = tn.form == MatvecTuning::Form::kQ8Coopmat;
  }
  // Several streams' one-token steps of kStreamsCoopmatBatch Q4_K columns: the register kernel where the
  // probe accepts the device's layout (else q8p, as for every other batch).
  bool q8cm_streams = false;
  if (!call.batch1_bits && call.batch >= kStreamsCoopmatBatch && st_->q8cm_streams &&
      tn.form == MatvecTuning::Form::kAuto && q8p) {
    bool q4k = true;
    for (uint32_t m = 0; m < call.n_mats; ++m) q4k &= call.mats[m].type == GgmlType::Q4_K;
    q8cm = q8cm_streams = q4k && st_->q8cm_layout().ok();
  }
  if (q8cm && !st_->q8cm_missing.empty()) {
    return Status::Unsupported(
        fmt::format("matvec: the q8 coopmat form cannot run here: {}", st_->q8cm_missing));
  }
  if (q8cm) {  // Q4_K only; other calls take the q8p form
    for (uint32_t m = 0; m < call.n_mats; ++m) q8cm &= call.mats[m].type == GgmlType::Q4_K;
    q8p = true;
  }
  if (q8 && st_->q8p_cols != 0 && call.batch == 1 && call.cols >= st_->q8p_cols) q8p = true;  // TROVE_MATVEC_Q8P_COLS
  if (q8p) {  // the same kernel reading x̂ from a scratch slot: no shared-memory limit
    q8 = true;
  }
  if (q8 && !st_->q8_ok) {
    return Status::Unsupported("matvec: the q8 form needs integer dot products and subgroup arithmetic and shuffles (use direct or staged)");
  }
  // The q8 form takes Q4_K/Q5_K/Q6_K/Q8_0 weights with batch · cols int8 (+ scales) in shared memory;
  // other calls run the direct form.
  const uint32_t q8_tile = (call.cols + 255) / 256 * 256;
  const uint32_t q8_wg = tn.workgroup_size ? tn.workgroup_size
                         : st_->q8_wg     ? st_->q8_wg
                         : st_->cpu       ? kDefaultWorkgroup
                                          : kQ8Workgroup;
  if (q8) {
    bool types = true;
    for (uint32_t m = 0; m < call.n_mats; ++m) {
      const GgmlType t = call.mats[m].type;
      if (t != GgmlType::Q4_K && t != GgmlType::Q5_K && t != GgmlType::Q6_K && t != GgmlType::Q8_0) types = false;
    }
    // Staged x̂ and Σ x² per subgroup; with split rows (possibly: automatic splits only on GPUs) the
    // subgroups' sums of up to 4 rows.
    const uint32_t want_split = tn.split ? tn.split : st_->q8_split;
    const bool may_split = want_split > 1 || (want_split == 0 && !st_->cpu);
    const uint64_t q8_bytes = uint64_t{call.batch} * q8_tile * 11 / 8 + uint64_t{q8_wg / st_->direct_lanes} * call.batch * 4 +
                              (may_split ? uint64_t{q8_wg / st_->direct_lanes} * 4 * call.batch * 2 * 4 : 0);
    if (!types) {
      q8 = q8p = false;
      direct = true;
    } else if (q8_bytes > st_->shared_bytes) {
      // x̂ does not fit shared memory at this batch (the 8B's ffn_down from batch 3): the q8p form —
      // the same int8 numbers, so each column gets what a batch-1 call gives it. (The f32 direct form
      // here made batched steps differ from one-token steps: test Q8FormColumnsEqualBatchOne.)
      q8p = true;
    }
  }
  if (direct && st_->direct_lanes == 0) {
    return Status::Unsupported("matvec: the direct form needs subgroup arithmetic (use the staged form)");
  }
  // Lanes per row group: the subgroup (direct form), one invocation (CPU devices, staged), else 32.
  const uint32_t g = direct || q8 ? st_->direct_lanes : st_->cpu && !tn.gpu_form ? kCpuGroupLanes : kGroupLanes;
  const bool gpu_form = !st_->cpu || tn.gpu_form;
  const uint32_t sg = direct || q8 ? st_->direct_lanes : gpu_form ? st_->subgroup : 1;
  const uint32_t sms = st_->sms ? st_->sms : kUnknownSmCount;
  const uint32_t rows_per_group = tn.rows_per_group                                 ? tn.rows_per_group
                                  : call.batch > 1 && q8 && swiglu && st_->batched_swiglu_rows != 0 ? st_->batched_swiglu_rows
                                  : call.batch > 1 && q8 && st_->batched_rows != 0 ? st_->batched_rows
                                  : call.batch == 1 && q8 && swiglu && st_->q8_swiglu_rows != 0 ? st_->q8_swiglu_rows
                                  : call.batch == 1 && q8 && !swiglu && st_->q8_rows != 0 ? st_->q8_rows
                                  : swiglu                                         ? 1
                                                                                   : kDefaultRows;
  // Shared memory: a tile of staged activations, and the reduction area — each subgroup's partial
  // sums (every slot and batch column, and Σ x²) and each row group's Σ x² (matvec_body.glsl).
  const uint32_t slots = rows_per_group * (swiglu ? 2 : 1);
  auto red_bytes = [&](uint32_t w) {
    return (uint64_t{w} / sg * (slots * call.batch + call.batch) + w / g * call.batch) * 4;
  };
  uint64_t total_rows = 0;
  for (uint32_t m = 0; m < (swiglu ? 1u : call.n_mats); ++m) total_rows += call.mats[m].rows;
  uint32_t wg = tn.workgroup_size;
  if (wg == 0) {
    // q8 forms: q8_wg (above). Others: 256 invocations (128 on a CPU device); 512 — twice the rows per
    // staged copy of x, which every workgroup reads from L2 — when that still gives every SM a workgroup.
    wg = q8 ? q8_wg : st_->cpu ? kCpuWorkgroup : direct ? kDirectWorkgroup : kDefaultWorkgroup;
    const uint64_t rows_512 = 2 * kDefaultWorkgroup / g * rows_per_group;
    if (!st_->cpu && !direct && !q8 && (total_rows + rows_512 - 1) / rows_512 >= sms &&
        red_bytes(2 * kDefaultWorkgroup) + 1024 * kStagedBytesPerValue * call.batch <= st_->shared_bytes) {
      wg = 2 * kDefaultWorkgroup;
    }
  }
  if ((rows_per_group != 1 && rows_per_group != 2 && rows_per_group != 4) || wg % g != 0 || wg < g || wg > 1024 ||
      (wg & (wg - 1)) != 0) {
    return Status::InvalidArgument(fmt::format("matvec: tuning rows_per_group {} / workgroup_size {} is invalid "
                                               "(1, 2 or 4 rows; a power of two from the row group width {} to 1024)",
                                               rows_per_group, wg, g));
  }
  // q8 forms: subgroups per row group (tuning, TROVE_MATVEC_Q8_SPLIT, else automatic). From the rows a
  // batch-1 call takes per row group, so that batched calls split as batch-1 calls do (same bits).
  uint32_t split = 1;
  if (q8) {
    split = tn.split ? tn.split : st_->q8_split;
    if (split == 0) {
      const uint64_t target = st_->cpu ? 1 : std::max<uint64_t>(1, uint64_t{st_->q8_waves} * 256 / wg) * sms;
      const uint64_t rows1 = uint64_t{wg / g} * (swiglu ? 1 : kDefaultRows);
      split = 1;
      while (split < 8 && split * 2 <= wg / g && (total_rows * split + rows1 - 1) / rows1 < target) split *= 2;
    }
    if ((split & (split - 1)) != 0 || split > 8 || split > wg / g) {
      return Status::InvalidArgument(fmt::format("matvec: q8 split {} is invalid (1, 2, 4 or 8, at most the {} subgroups "
                                                 "of a workgroup)", split, wg / g));
    }
  }
  // TROVE_MATVEC_BATCHED_WG: the q8p kernel of a batched call in workgroups of its own size, with the
  // split above (from the batch-1 size) and the pass at the batch-1 size: the same bits per column.
  uint32_t kernel_wg = wg;
  if (q8p && call.batch > 1 && st_->batched_wg != 0 && !tn.workgroup_size) {
    kernel_wg = st_->batched_wg;
    if (kernel_wg < g || split > kernel_wg / g) {
      return Status::InvalidArgument(fmt::format("matvec: TROVE_MATVEC_BATCHED_WG {} holds fewer than the {} subgroups of {} "
                                                 "lanes that share a row group here; use a larger size", kernel_wg, split, g));
    }
  }
  const uint32_t rows_per_wg = kernel_wg / g / split * rows_per_group;
  const uint32_t q6_wide = (tn.q6_parts == MatvecTuning::Q6Parts::kDefault ? st_->q6_wide
                                                                        : tn.q6_parts == MatvecTuning::Q6Parts::kWide)
                               ? 1u
                               : 0u;

  Push push{};
  push.cols = call.cols;
  push.flags = (norm ? 1u : 0u) | (call.epilogue == MatvecEpilogue::kAdd ? 2u : 0u);
  push.eps = call.eps;
  push.n_mats = call.n_mats;
  vk::BufferRange bufs[8];
  bufs[0] = call.x;
  bufs[1] = norm ? call.norm_w : call.x;
  uint64_t wgs = 0;
  const uint32_t n_work = swiglu ? 1 : call.n_mats;  // SwiGLU: gate and up rows share workgroups
  for (uint32_t m = 0; m < call.n_mats; ++m) {
    const MatvecMatrix& mat = call.mats[m];
    auto t = quant::traits(mat.type);
    if (!t) {
      return Status::Unsupported(fmt::format("matvec: matrix {} has weight type {}, which is not supported (supported: {})",
                                             m, quant::ggml_type_name(static_cast<uint32_t>(mat.type)),
                                             quant::supported_type_names()));
    }
    if (call.cols % static_cast<uint32_t>(t->block_values) != 0) {
      return Status::InvalidArgument(fmt::format("matvec: cols {} is not a multiple of {}'s block of {} values (matrix {})",
                                                 call.cols, t->name, t->block_values, m));
    }
    const uint32_t stride = mat.y_stride ? mat.y_stride : mat.rows;
    const uint64_t rb = quant::row_bytes(mat.type, call.cols);
    const uint64_t w_bytes = (rb * mat.rows + 3) / 4 * 4;
    if (mat.rows == 0 || stride < mat.rows) {
      return Status::InvalidArgument(fmt::format("matvec: matrix {} has rows {} and y stride {} (rows > 0, stride >= rows)",
                                                 m, mat.rows, stride));
    }
    if (rb * mat.rows > 0xFFFFFFF0ull) {
      return Status::InvalidArgument(fmt::format("matvec: matrix {} has {} bytes; split it into row ranges below 4 GiB",
                                                 m, rb * mat.rows));
    }
    if (mat.w.buffer == VK_NULL_HANDLE || mat.w.size < w_bytes) {
      return Status::InvalidArgument(fmt::format("matvec: matrix {} ({} rows of {} x {}) has {} weight bytes, needs {}", m,
                                                 mat.rows, t->name, call.cols, mat.w.size, w_bytes));
    }
    const bool writes_y = !(swiglu && m == 1);
    const uint64_t y_bytes = (uint64_t{call.batch - 1} * stride + mat.rows) * 4;
    if (writes_y) {
      if (mat.y.buffer == VK_NULL_HANDLE || mat.y.size < y_bytes) {
        return Status::InvalidArgument(fmt::format("matvec: output of matrix {} has {} bytes, batch {} x stride {} needs {}",
                                                   m, mat.y.size, call.batch, stride, y_bytes));
      }
      if (ranges_overlap(call.x, x_bytes, mat.y, y_bytes)) {
        return Status::InvalidArgument(fmt::format(
            "matvec: x overlaps the output of matrix {} ({}); workgroups write y while others still read x, so give "
            "x its own buffer range", m, epilogue_name(call.epilogue)));
      }
    }
    push.type[m] = static_cast<uint32_t>(mat.type);
    push.rows[m] = mat.rows;
    push.y_stride[m] = stride;
    push.row_bytes[m] = static_cast<uint32_t>(rb);
    bufs[2 + m] = mat.w;
    bufs[5 + m] = writes_y ? mat.y : call.mats[0].y;
    if (m < n_work) {
      wgs += (mat.rows + rows_per_wg - 1) / rows_per_wg;
      push.wg_end[m] = static_cast<uint32_t>(wgs);
    }
  }
  for (uint32_t m = call.n_mats; m < 3; ++m) {
    bufs[2 + m] = bufs[2];
    bufs[5 + m] = bufs[5];
  }
  for (uint32_t m = n_work; m < 4; ++m) push.wg_end[m] = static_cast<uint32_t>(wgs);
  push.n_mats = n_work;

  if (q8cm) {
    // The pass with its slot laid out for kMaxBatch columns (of which it fills call.batch), a barrier,
    // then 16 · tiles rows per workgroup (tuning rows_per_group, else TROVE_MATVEC_Q8CM_TILES, else 1 for
    // the register kernel and 2 for the shared-memory one): split
    // subgroups of 32 lanes each walking a share of the 64-value runs (tuning split, else
    // TROVE_MATVEC_Q8_SPLIT, else the fewest up to 16 that give q8cm_waves subgroups per SM, with at most
    // 32 A tile pairs — 32 KiB of shared memory — a workgroup; the register kernel's end-of-run sums, 32 KiB
    // at 64).
    const uint64_t T = q8_tile, B = kMaxBatch;
    auto sl = st_->slot(((B * T * 13 / 32 + B) * 4 + 255) / 256 * 256);
    if (!sl.ok()) return sl.status();
    auto qp = st_->pipeline({wg, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, g, 4u});
    if (!qp.ok()) return qp.status();
    const bool regs = q8cm_streams || (tn.q8cm_kernel ? tn.q8cm_kernel == 2 : st_->q8cm_regs);
    const uint32_t tiles = tn.rows_per_group ? tn.rows_per_group
                           : st_->q8cm_tiles ? st_->q8cm_tiles
                           : regs            ? 1
                                             : 2;
    const uint32_t tile_pairs = tiles * (swiglu ? 2 : 1);
    uint64_t blocks = 0;
    for (uint32_t m = 0; m < n_work; ++m) {
      blocks += (call.mats[m].rows + 16 * tiles - 1) / (16 * tiles);
      push.wg_end[m] = static_cast<uint32_t>(blocks);
    }
    for (uint32_t m = n_work; m < 4; ++m) push.wg_end[m] = static_cast<uint32_t>(blocks);
    uint32_t cm_split = tn.split ? tn.split : st_->q8_split;
    if (cm_split == 0) {
      cm_split = 1;
      while (cm_split < 16 && cm_split * tile_pairs < (regs ? 64u : 32u) &&
             blocks * cm_split < uint64_t{st_->q8cm_waves} * sms)
        cm_split *= 2;
    }
    vk::BufferRange layout;
    if (regs) {
      auto t = st_->q8cm_layout();
      if (!t.ok()) return t.status();
      layout = *t;
    }
    // The register kernel's measurement branches only where TROVE_MATVEC_Q8CM_SKIP asks for them.
    const uint32_t measure = regs && (st_->q8cm_skip & State::kQ8cmKernelSkip) != 0 ? 1u : 0u,
                   ahead = regs ? st_->q8cm_ahead : 0u;
    auto p = st_->pipeline({32 * cm_split, call.batch, tiles, swiglu ? 1u : 0u, q8_tile, call.n_mats,
                            push.type[0], call.n_mats > 1 ? push.type[1] : push.type[0],
                            call.n_mats > 2 ? push.type[2] : push.type[0], 0u, 0u, 32u, regs ? 6u : 5u, 0u,
                            1u, 0u, measure, ahead});
    if (!p.ok()) return p.status();
    // Flag 4: the register kernel's slot layout (matvec_q8_quant.comp).
    const uint32_t qpush[5] = {call.cols, push.flags | (regs ? 4u : 0u), std::bit_cast<uint32_t>(call.eps),
                               kMaxBatch, q8_tile};
    const vk::BufferRange qbufs[3] = {call.x, bufs[1], *sl};
    TROVE_RETURN_IF_ERROR(st_->record_pass(s, **qp, qbufs, qpush, call.batch));
    push.ntiles = 1;
    push.tile_vals = q8_tile;
    // TROVE_MATVEC_Q8CM_SKIP: a measurement, wrong results.
    push.flags |= st_->q8cm_skip & State::kQ8cmKernelSkip;
    const uint32_t gx = static_cast<uint32_t>(std::min<uint64_t>(blocks, kMaxGroupsX));
    const uint32_t gy = static_cast<uint32_t>((blocks + gx - 1) / gx);
    if (gy > kMaxGroupsX)
      return Status::InvalidArgument("matvec: too many rows for one dispatch; split the call");
    push.groups_x = gx;
    push.grid = static_cast<uint32_t>(blocks);
    bufs[0] = *sl;
    bufs[1] = regs ? layout : *sl;
    return s.dispatch(**p, bufs, &push, sizeof(push), gx, gy);
  }
  if (q8p) {
    // The activation pass into the next scratch slot, a barrier, then one row block per workgroup.
    const uint64_t T = q8_tile, B = call.batch;
    const uint64_t slot_bytes = ((B * T * 13 / 32 + B) * 4 + 255) / 256 * 256;
    auto sl = st_->slot(slot_bytes);
    if (!sl.ok()) return sl.status();
    // The pass takes the q8 kernel's workgroup size and subgroup lanes: its Σ x² is then summed in the
    // staged kernel's order, and a column's numbers equal a batch-1 call's bit for bit.
    auto qp = st_->pipeline({wg, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, g, 4u});
    if (!qp.ok()) return qp.status();
    auto p = st_->pipeline({kernel_wg, call.batch, rows_per_group, swiglu ? 1u : 0u, q8_tile, call.n_mats, push.type[0],
                            call.n_mats > 1 ? push.type[1] : push.type[0], call.n_mats > 2 ? push.type[2] : push.type[0],
                            1u, sg, g, 3u, q6_wide, split, st_->q8_scatter});
    if (!p.ok()) return p.status();
    const uint32_t qpush[5] = {call.cols, push.flags, std::bit_cast<uint32_t>(call.eps), call.batch, q8_tile};
    const vk::BufferRange qbufs[3] = {call.x, bufs[1], *sl};
    TROVE_RETURN_IF_ERROR(st_->record_pass(s, **qp, qbufs, qpush, call.batch));
    push.ntiles = 1;
    push.tile_vals = q8_tile;
    const uint32_t gx = static_cast<uint32_t>(std::min<uint64_t>(wgs, kMaxGroupsX));
    const uint32_t gy = static_cast<uint32_t>((wgs + gx - 1) / gx);
    if (gy > kMaxGroupsX) return Status::InvalidArgument("matvec: too many rows for one dispatch; split the call");
    push.groups_x = gx;
    push.grid = static_cast<uint32_t>(wgs);
    bufs[0] = *sl;
    bufs[1] = *sl;
    return s.dispatch(**p, bufs, &push, sizeof(push), gx, gy);
  }
  if (q8) {
    push.flags |= st_->q8_stage_flags;  // TROVE_MATVEC_Q8_STAGE: a measurement, wrong results
    // x staged once per workgroup; workgroups of `q8_waves` × 256 invocations per SM walk the row
    // blocks — 2 of 512 by default: what stays resident at the kernel's 48–84 registers, so that no
    // workgroup waits for a second wave (and stages x̂ again). On the H200 (2026-12-04, 8B) 4 of 512
    // for the gate/up, QKV and head calls gave 3818 µs a decode step, 2 of 512 3792 (CPU devices:
    // one block per workgroup, see the staged form's note below).
    push.ntiles = 1;
    push.tile_vals = q8_tile;
    uint64_t grid = wgs;
    if (tn.workgroups) {
      grid = std::min<uint64_t>(wgs, tn.workgroups);
    } else if (!st_->cpu) {
      grid = std::min<uint64_t>(wgs, std::max<uint64_t>(1, uint64_t{st_->q8_waves} * 256 / wg) * sms);
    }
    const uint32_t gx = static_cast<uint32_t>(std::min<uint64_t>(grid, kMaxGroupsX));
    const uint32_t gy = static_cast<uint32_t>((grid + gx - 1) / gx);
    if (gy > kMaxGroupsX) return Status::InvalidArgument("matvec: too many rows for one dispatch; split the call");
    push.groups_x = gx;
    push.grid = static_cast<uint32_t>(grid);
    auto p = st_->pipeline({wg, call.batch, rows_per_group, swiglu ? 1u : 0u, q8_tile, call.n_mats, push.type[0],
                            call.n_mats > 1 ? push.type[1] : push.type[0], call.n_mats > 2 ? push.type[2] : push.type[0],
                            1u, sg, g, 2u, q6_wide, split, st_->q8_scatter});
    if (!p.ok()) return p.status();
    return s.dispatch(**p, bufs, &push, sizeof(push), gx, gy);
  }
  if (direct) {
    // One tile (x read through the caches), one block per workgroup.
    push.ntiles = 1;
    push.tile_vals = call.cols;
    const uint32_t gx = static_cast<uint32_t>(std::min<uint64_t>(wgs, kMaxGroupsX));
    const uint32_t gy = static_cast<uint32_t>((wgs + gx - 1) / gx);
    if (gy > kMaxGroupsX) return Status::InvalidArgument("matvec: too many rows for one dispatch; split the call");
    push.groups_x = gx;
    push.grid = static_cast<uint32_t>(wgs);
    auto p = st_->pipeline({wg, call.batch, rows_per_group, swiglu ? 1u : 0u, 0u, call.n_mats, push.type[0],
                            call.n_mats > 1 ? push.type[1] : push.type[0], call.n_mats > 2 ? push.type[2] : push.type[0],
                            gpu_form ? 1u : 0u, sg, g, 1u});
    if (!p.ok()) return p.status();
    return s.dispatch(**p, bufs, &push, sizeof(push), gx, gy);
  }
  const uint64_t red = red_bytes(wg);
  const uint32_t tile_max =
      red >= st_->shared_bytes ? 0 : static_cast<uint32_t>((st_->shared_bytes - red) / (kStagedBytesPerValue * call.batch)) / 256 * 256;
  if (tile_max < 256) {
    return Status::InvalidArgument(fmt::format(
        "matvec: {} bytes of shared memory cannot hold the reduction of {} invocations x {} values ({} bytes) and 256 "
        "staged values of {} batch columns (use fewer rows or invocations)", st_->shared_bytes, wg,
        slots * call.batch + call.batch, red, call.batch));
  }
  uint32_t tile_cap = tile_max;
  if (tn.tile_values) tile_cap = std::min(tile_cap, std::max<uint32_t>(256, tn.tile_values / 256 * 256));
  const uint32_t ntiles = (call.cols + tile_cap - 1) / tile_cap;
  const uint32_t per_tile = ((call.cols + ntiles - 1) / ntiles + 255) / 256 * 256;
  // Few distinct pipelines (the tile is a specialization constant): a power of two of at least 1024
  // values where shared memory allows, else the even split.
  uint32_t tile = 1024;
  while (tile < per_tile) tile *= 2;
  if (tile > tile_cap) tile = per_tile;
  push.ntiles = (call.cols + tile - 1) / tile;
  push.tile_vals = tile;

  // Workgroups: with x in one tile, `waves` (8) per SM walk all row blocks (x staged once each);
  // otherwise one per block.
  uint64_t grid = wgs;
  if (push.ntiles == 1) {
    if (tn.workgroups) {
      grid = std::min<uint64_t>(wgs, tn.workgroups);
    } else if (!st_->cpu && st_->waves != 0) {
      grid = std::min<uint64_t>(wgs, uint64_t{st_->waves} * sms * std::max<uint32_t>(1, 512 / wg));
    }
    // CPU devices keep one block per workgroup: with 16 workgroups walking ~37 blocks each, lavapipe
    // left rows of the 151,936-row head unwritten at batch 8 from the 30th block on (test
    // Matvec.TinyCoderShapesAtSevenAndEightColumns; cause not found, 6 blocks each were right).
  }
  const uint32_t gx = static_cast<uint32_t>(std::min<uint64_t>(grid, kMaxGroupsX));
  const uint32_t gy = static_cast<uint32_t>((grid + gx - 1) / gx);
  if (gy > kMaxGroupsX) return Status::InvalidArgument("matvec: too many rows for one dispatch; split the call");
  push.groups_x = gx;
  push.grid = static_cast<uint32_t>(grid);

  // Types of unused matrices repeat matrix 0's, so that they add no code.
  auto p = st_->pipeline({wg, call.batch, rows_per_group, swiglu ? 1u : 0u, tile, call.n_mats, push.type[0],
                          call.n_mats > 1 ? push.type[1] : push.type[0], call.n_mats > 2 ? push.type[2] : push.type[0],
                          gpu_form ? 1u : 0u, sg, g, 0u});
  if (!p.ok()) return p.status();
  return s.dispatch(**p, bufs, &push, sizeof(push), gx, gy);
}

}  // namespace trove::ops
