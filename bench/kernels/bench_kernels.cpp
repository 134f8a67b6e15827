// Kernel benchmark: GPU time per op at the real shapes of Qwen3-8B and Qwen3-30B-A3B layers (batch 1
// = decode, 512 = a prefill chunk), with the achieved GB/s and TFLOP/s beside the ceilings: the
// device-to-device copy bandwidth measured in the same run, after the rows (bytes read + written; the H100's
// was 3025 GB/s, ../shared/docs/TARGETS.md) and 792 TFLOP/s bf16 tensor cores (H100).
//
//   build/bench/kernels/bench_kernels [--reps N] [--quick] [--only TEXT] [--sweep] [--warm-ms MS]
//                                     [--grouped-spread even|skewed] [--gemm-batches N,...]
//
// On a machine just started, some rows of the first run read up to 5x slow (H100, 2026-12-06): run it
// twice and read the second (docs/performance.md).
//
// On a GPU the run starts with --warm-ms (500) of copies, so that the first rows are timed at the
// clocks of a busy GPU (bench_timing.h, warm_clocks).
//
// --only TEXT runs the sections (matmul, matvec, gemm, grouped, attention, elementwise, moe, chain, alu)
// whose name contains TEXT or that TEXT starts with, and of those only the rows whose "op shape" contains
// what follows the section name: `--only matvec`, `--only "matvec head"`, `--only "matvec Q6_K 8B"`.
// The copy row always runs.
// --sweep adds matvec rows for every work split (rows per group × workgroup size, bench_matvec.cpp) and
// MoE rows for the direct expert kernels' work splits (bench_moe.cpp).
//
// Matvec rows (decode, batch 1..8, bench_matvec.cpp): ops::Matvec with the fusions the engine uses
// (fused QKV with the attention norm, gate+up with SwiGLU, down added into the residual), weights
// rotated over enough copies that the L2 cannot hold them; GB/s = weight bytes read / time.
//
// Gemm rows (prefill, bench gemm section): batches 512 and 2048 (--gemm-batches) on every matmul path the device has
// (tiled, khr, cm2), each tile forced and the automatic choice ("tile auto = <choice>"), f16
// activations; the row label is "<path> <tile> <type> <model> <matrix>": `--only "gemm cm2"`,
// `--only "gemm khr large"`. Grouped rows: the 30B-A3B experts of one layer in one dispatch per path,
// slots spread evenly over the experts or (--grouped-spread skewed) as the grouped tests' skewed case.
//
// Attention rows: decode (1 token) at depth, and 512-token prefill chunks at depths 512/4096/16384 on
// each kernel (per-token, prefill tiled, prefill cooperative-matrix where the device has it), plus
// 8..64-token chunks at depth 4096 (where the automatic choice switches to the prefill kernels).
//
// Chain rows (bench_chain.cpp): a chain of 36 dependent steps (each reads all of the step before's
// vector and streams 0 / 9.4 / 14.2 / 56.6 MB of weights) as one dispatch per step behind pipeline
// barriers, or as one dispatch with grid barriers between steps (split: the next step's weights read
// while waiting); µs per step, --chain-grid workgroups (default 132,264: the H200's SMs, once and twice).
//
// ALU rows (ops::AluProbe): the issue rate of an f32 FMA, a u32 multiply-add, the packed int8 dot
// product of the q8 matvecs (dotPacked4x8EXT with its sum) and an f16vec2 FMA, each in 8 independent
// chains per invocation over 4096 workgroups of 256; "G instructions/s", and in the TFLOP/s column their
// operations (2, 2, 8 and 4 an instruction).
//
// Times come from GPU timestamps around N back-to-back dispatches (wall clock when the queue has no
// timestamps). Inputs are constant-filled buffers: speed does not depend on the values.
// docs/performance.md records the table.
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <functional>
#include <random>
#include <string>
#include <vector>

#include <CLI/CLI.hpp>
#include <fmt/format.h>

#include "bench/kernels/bench_chain.h"
#include "kernels/ops/alu_probe.h"
#include "bench/kernels/bench_matvec.h"
#include "bench/kernels/bench_moe.h"
#include "bench/kernels/bench_timing.h"
#include "kernels/ops/attention.h"
#include "kernels/ops/sample.h"
#include "kernels/ops/layer_ops.h"
#include "kernels/ops/matmul.h"

using namespace trove;
using quant::GgmlType;
using bench::filled;
using bench::time_reps;

namespace {

constexpr double kCopyGBs = 3025, kBf16TFlops = 792;

struct Result_ {
  std::string op, shape;
  double us = 0, gbs = 0, tflops = 0;
};



}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"trove kernel benchmark (per op and real shape, beside the H100 ceilings)"};
  int reps = 20;
  bool quick = false;
  app.add_option("--reps", reps, "Dispatches per measurement");
  app.add_flag("--quick", quick, "Small shapes only (a smoke run on a CPU device)");
  std::string only;
  app.add_option("--only", only,
                 "Sections (matmul, matvec, gemm, grouped, attention, elementwise, moe, chain, alu) by "
                 "name or prefix, then rows by "
                                 "substring: 'matvec', 'matvec head', 'matvec Q6_K 8B'");
  bool sweep = false;
  app.add_flag("--sweep", sweep, "Also time every matvec and direct MoE work split (rows per group x workgroup size)");
  double warm_ms = 500;
  app.add_option("--warm-ms", warm_ms, "Milliseconds of copies before the first row, so it runs at a busy GPU's clocks "
                                       "(0: none; CPU devices and --quick: none)");
  std::string spread = "even";
  app.add_option("--grouped-spread", spread,
                 "Slots over the experts in the grouped rows: even (the balanced case) or skewed (|N(0, 40)| "
                 "expert ids, as the grouped tests' 512-token case; closer to the synthetic models' routing)")
      ->check(CLI::IsMember({"even", "skewed"}));
  std::vector<uint32_t> chain_grids = {132, 264};
  app.add_option("--chain-grid", chain_grids, "Workgroups of the chain rows (all must be resident at once: a few per SM)")
      ->delimiter(',');
  std::vector<uint32_t> gemm_batches_arg;
  app.add_option("--gemm-batches", gemm_batches_arg,
                 "Token counts of the gemm rows (default 512,2048; e.g. 8,16,32 for the wide decode steps)")
      ->delimiter(',');
  CLI11_PARSE(app, argc, argv);
  // Section `name` runs when --only is empty, a substring of the name, or starts with the name; the
  // rest of --only (after the name) filters that section's rows by substring.
  auto section = [&](const std::string& name) {
    return only.empty() || name.find(only) != std::string::npos || only.rfind(name, 0) == 0;
  };
  auto row_filter = [&](const std::string& name) {
    std::string rest = only.rfind(name, 0) == 0 ? only.substr(name.size()) : "";
    rest.erase(0, rest.find_first_not_of(' '));
    return [rest](const std::string& label) { return rest.empty() || label.find(rest) != std::string::npos; };
  };

  auto devr = vk::Device::open();
  if (!devr.ok()) {
    std::fprintf(stderr, "bench_kernels: %s\n", devr.status().ToString().c_str());
    return 1;
  }
  vk::Device& dev = **devr;
  std::vector<Result_> rows;
  auto fail = [](const Status& st) {
    std::fprintf(stderr, "bench_kernels: %s\n", st.ToString().c_str());
    return 1;
  };
  if (!quick && !dev.features().is_cpu) {
    if (auto st = bench::warm_clocks(dev, warm_ms); !st.ok()) return fail(st);
  }

  // ---- matmul: (model, name, rows, cols) × type × batch
  struct Mat { const char* model; const char* name; uint32_t rows, cols; };
  std::vector<Mat> mats = {
      {"8B", "attn_q", 4096, 4096},   {"8B", "attn_kv", 1024, 4096},  {"8B", "ffn_gate/up", 12288, 4096},
      {"8B", "ffn_down", 4096, 12288}, {"8B", "head", 151936, 4096},  {"30B-A3B", "attn_q", 4096, 2048},
      {"30B-A3B", "expert gate/up", 768, 2048}, {"30B-A3B", "expert down", 2048, 768},
      {"30B-A3B", "head", 151936, 2048}};
  if (quick) mats = {{"tiny", "q", 512, 256}, {"tiny", "head", 4096, 256}};
  if (!section("matmul")) mats.clear();
  auto keep = row_filter("matmul");
  auto mm = ops::Matmul::create(dev, ops::MatmulPath::kTiled);
  if (!mm.ok()) return fail(mm.status());
  for (const auto& m : mats) {
    for (GgmlType type : {GgmlType::Q4_K, GgmlType::Q6_K}) {
      for (uint32_t batch : {1u}) {
        if (!keep(fmt::format("{} {} {}", quant::traits(type)->name, m.model, m.name))) continue;
        const uint32_t rows_per_call = std::min<uint32_t>(m.rows, 32768);
        const uint64_t wbytes = quant::row_bytes(type, m.cols) * uint64_t{m.rows};
        auto w = filled(dev, wbytes), x = filled(dev, uint64_t{batch} * m.cols * 4, 0x3f800000u),
             y = filled(dev, uint64_t{batch} * m.rows * 4);
        if (!w.ok() || !x.ok() || !y.ok()) return fail(Status::ResourceExhausted("buffers for " + std::string(m.name)));
        auto t = time_reps(dev, reps, [&](vk::CommandStream& s) -> Status {
          const uint64_t rb = quant::row_bytes(type, m.cols);
          for (uint32_t r0 = 0; r0 < m.rows; r0 += rows_per_call) {
            const uint32_t n = std::min(rows_per_call, m.rows - r0);
            vk::BufferRange wr(*w, uint64_t{r0} * rb, (n * rb + 3) / 4 * 4);
            vk::BufferRange yr(*y, uint64_t{r0} * 4, (uint64_t{batch - 1} * m.rows + n) * 4);
            TROVE_RETURN_IF_ERROR(mm->record(s, type, n, m.cols, batch, wr, *x, yr, m.rows));
          }
          return Status::Ok();
        });
        if (!t.ok()) return fail(t.status());
        const double bytes = wbytes + 4.0 * batch * (m.cols + m.rows);
        rows.push_back({fmt::format("matmul {}", quant::traits(type)->name),
                        fmt::format("{} {} {}x{} b{}", m.model, m.name, m.rows, m.cols, batch), *t, bytes / *t / 1e3,
                        2.0 * m.rows * m.cols * batch / *t / 1e6});
      }
    }
  }

  // ---- gemm: batches of 512 and 2048 per matmul path and tile, f16 activations (what prefill feeds)
  struct Gemm { const char* model; const char* name; uint32_t rows, cols; GgmlType type; };
  std::vector<Gemm> gemms = {{"8B", "attn_q/o", 4096, 4096, GgmlType::Q4_K},
                             {"8B", "attn_kv", 1024, 4096, GgmlType::Q4_K},
                             {"8B", "ffn_gate/up", 12288, 4096, GgmlType::Q4_K},
                             {"8B", "ffn_down", 4096, 12288, GgmlType::Q6_K},
                             {"8B", "head", 151936, 4096, GgmlType::Q6_K},
                             {"30B-A3B", "attn_q", 4096, 2048, GgmlType::Q4_K},
                             {"30B-A3B", "router", 128, 2048, GgmlType::F32},
                             // The FFN's weights as f16 (what dequantizing once per prefill step would feed).
                             {"8B", "ffn_gate/up", 12288, 4096, GgmlType::F16},
                             {"8B", "ffn_down", 4096, 12288, GgmlType::F16}};
  std::vector<uint32_t> gemm_batches = {512, 2048};
  if (quick) {
    // The tiny preset's prefill shapes (fused QKV, FFN down), batch 64 and a 512-token chunk.
    gemms = {{"tiny", "qkv", 1024, 256, GgmlType::F32}, {"tiny", "q", 512, 256, GgmlType::Q4_K},
             {"tiny", "ffn_down", 256, 512, GgmlType::Q6_K}};
    gemm_batches = {64, 512};
  }
  if (!gemm_batches_arg.empty()) gemm_batches = gemm_batches_arg;
  // f16 activations (what prefill feeds on matrix units); --quick: f32 (what the engine feeds on lavapipe).
  const bool gemm_x_f16 = !quick;
  std::vector<ops::MatmulPath> gemm_paths = {ops::MatmulPath::kTiled, ops::MatmulPath::kCpu};
  for (auto p : {ops::MatmulPath::kKhr, ops::MatmulPath::kCm2})
    if (ops::Matmul::available(dev, p)) gemm_paths.push_back(p);
  const char* tile_names[] = {"auto", "small", "medium", "large"};
  auto keep_gemm = row_filter("gemm");
  auto keep_grouped = row_filter("grouped");
  // Matrix-unit rows: the better of two timed runs. On the H200 (session 5 baseline) one pipeline timed
  // 345 and 1096 us in two rows of the same run (GPU clocks between rows), so each A/B row gets a
  // second chance right after its first.
  auto time_best = [&](bool twice, const std::function<Status(vk::CommandStream&)>& f) -> Result<double> {
    auto a = time_reps(dev, reps, f);
    if (!a.ok() || !twice) return a;
    auto b = time_reps(dev, reps, f);
    if (!b.ok()) return b;
    return std::min(*a, *b);
  };
  for (ops::MatmulPath path : gemm_paths) {
    if (!section("gemm") && !section("grouped")) break;
    auto op = ops::Matmul::create(dev, path);
    if (!op.ok()) return fail(op.status());
    std::vector<ops::MatmulTile> tiles = {ops::MatmulTile::kAuto};
    if (path == ops::MatmulPath::kKhr) tiles = {ops::MatmulTile::kAuto, ops::MatmulTile::kSmall, ops::MatmulTile::kLarge};
    if (path == ops::MatmulPath::kCm2) {
      tiles = {ops::MatmulTile::kAuto, ops::MatmulTile::kSmall, ops::MatmulTile::kMedium, ops::MatmulTile::kLarge};
    }
    // The CPU form's tiles (rows per invocation x batch columns; 0 x 0 = automatic), the others with --sweep.
    std::vector<std::pair<uint32_t, uint32_t>> cpu_tiles = {{0, 0}};
    if (path == ops::MatmulPath::kCpu && sweep) cpu_tiles = {{0, 0}, {4, 16}, {8, 8}, {8, 16}};
    const std::string pname(ops::matmul_path_name(path));
    // cm2 variants (matmul.h, TROVE_CM2_VARIANT) on the cm2 path, the KHR kernel's prefetch distances
    // (TROVE_KHR_PREFETCH: 1 or 2 steps) on the KHR path: both of each, for A/B in one run.
    std::vector<uint32_t> variants = {0};
    if (path == ops::MatmulPath::kCm2) variants = {0, 1, 2};
    if (path == ops::MatmulPath::kKhr) variants = {1, 2};
    for (const auto& g : gemms) {
      for (uint32_t batch : gemm_batches) {
        for (ops::MatmulTile tile : tiles) {
         for (uint32_t variant : variants) {
         for (auto [cpu_r, cpu_c] : cpu_tiles) {
          op->force_tile(tile);
          op->force_cm2_variant(path == ops::MatmulPath::kCm2 ? variant : 0);
          op->force_khr_prefetch(path == ops::MatmulPath::kKhr ? variant : 1);
          op->force_cpu_tile(cpu_r, cpu_c);
          const ops::MatmulTile used = op->tile_for(std::min<uint32_t>(g.rows, 32768), batch);
          const std::string tname = path == ops::MatmulPath::kCpu
                                        ? (cpu_r ? fmt::format("{}x{}", cpu_r, cpu_c) : std::string("auto"))
                                        : std::string(tile_names[static_cast<int>(tile)]);
          const std::string vname = path == ops::MatmulPath::kCm2   ? fmt::format(" v{}", variant)
                                    : path == ops::MatmulPath::kKhr ? fmt::format(" p{}", variant)
                                                                    : std::string();
          const std::string label = fmt::format("{} {}{} {} {} {}", pname, tname, vname, quant::traits(g.type)->name, g.model, g.name);
          if (!section("gemm") || !keep_gemm(label)) continue;
          const uint32_t rows_per_call = std::min<uint32_t>(g.rows, 32768);
          const uint64_t rb = quant::row_bytes(g.type, g.cols), wbytes = rb * uint64_t{g.rows};
          auto w = filled(dev, wbytes, 0x11111111u), x = filled(dev, uint64_t{batch} * g.cols * (gemm_x_f16 ? 2 : 4), 0x3c003c00u),
               y = filled(dev, uint64_t{batch} * g.rows * 4);
          if (!w.ok() || !x.ok() || !y.ok()) return fail(Status::ResourceExhausted("buffers for gemm " + std::string(g.name)));
          auto t = time_best(op->uses_coopmat(), [&](vk::CommandStream& s) -> Status {
            for (uint32_t r0 = 0; r0 < g.rows; r0 += rows_per_call) {
              const uint32_t n = std::min(rows_per_call, g.rows - r0);
              vk::BufferRange wr(*w, uint64_t{r0} * rb, (n * rb + 3) / 4 * 4);
              vk::BufferRange yr(*y, uint64_t{r0} * 4, (uint64_t{batch - 1} * g.rows + n) * 4);
              TROVE_RETURN_IF_ERROR(op->record(s, g.type, n, g.cols, batch, wr, *x, yr, g.rows, gemm_x_f16));
            }
            return Status::Ok();
          });
          if (!t.ok()) return fail(t.status());
          const double bytes = wbytes + (gemm_x_f16 ? 2.0 : 4.0) * batch * g.cols + 4.0 * batch * g.rows;
          rows.push_back({fmt::format("gemm {}{} {} (tile {}{}) x {}", pname, vname, quant::traits(g.type)->name, tname,
                                      tile == ops::MatmulTile::kAuto && op->uses_coopmat()
                                          ? fmt::format(" = {}", tile_names[static_cast<int>(used)])
                                          : "", gemm_x_f16 ? "f16" : "f32"),
                          fmt::format("{} {} {}x{} b{}", g.model, g.name, g.rows, g.cols, batch), *t, bytes / *t / 1e3,
                          2.0 * g.rows * g.cols * batch / *t / 1e6});
         }
         }
        }
      }
    }
    op->force_tile(ops::MatmulTile::kAuto);
    op->force_cpu_tile(0, 0);
    op->force_cm2_variant(0);
    op->force_khr_prefetch(1);

    // ---- grouped: the 30B-A3B experts of one layer (128 × [768 × 2048] gate or up, 128 × [2048 × 768]
    // down), tokens × 8 slots spread evenly (the balanced case), or with --grouped-spread skewed as the
    // grouped tests' skewed case (the tile choices of 2026-12-06 ranked differently in the engine, whose
    // synthetic routing is not even, than on even rows: docs/performance.md).
    struct Grouped { const char* name; uint32_t rows, cols; GgmlType type; };
    std::vector<Grouped> groups = {{"expert gate/up", 768, 2048, GgmlType::Q4_K},
                                   {"expert down", 2048, 768, GgmlType::Q6_K},
                                   // as f16 (TROVE_PREFILL_WEIGHTS=f16 dequantizes them once per step)
                                   {"expert gate/up", 768, 2048, GgmlType::F16},
                                   {"expert down", 2048, 768, GgmlType::F16}};
    uint32_t n_expert = 128, top_k = 8;
    std::vector<uint32_t> token_counts = {512, 2048};
    if (quick) {
      groups = {{"expert", 64, 256, GgmlType::Q4_K}};
      n_expert = 8;
      token_counts = {16};
    }
    if (path == ops::MatmulPath::kCpu) groups.clear();  // grouped calls take the tiled kernel there
    // cm2 grouped tiles × variants (matmul.h: TROVE_GROUPED_TILE, TROVE_CM2_VARIANT), on the cm2 path.
    // by_slot: x already in slot order (GroupedMatmulCall::x_by_slot, force_by_slot): B as plain tensor
    // loads instead of the per-element gather through row_ids — what the gather costs.
    struct GroupedCfg { uint32_t bm, bn, variant, bk = 0; bool by_slot = false; };
    std::vector<GroupedCfg> gcfgs = {{64, 64, 0}};
    if (path == ops::MatmulPath::kCm2) {
      gcfgs = {{64, 64, 0},  {64, 64, 1},  {64, 64, 2},      {64, 32, 0},   {64, 32, 1},
               {128, 32, 1}, {128, 64, 1}, {128, 64, 1, 32}, {128, 128, 1}, {64, 64, 0, 0, true},
               {64, 64, 2, 0, true}, {128, 128, 2, 0, true}};
    }
    for (const auto& g : groups) {
      for (uint32_t tokens : token_counts) {
       for (const auto& gc : gcfgs) {
        const std::string bk = gc.bk ? fmt::format("x{}", gc.bk) : "";
        const std::string cfg = path == ops::MatmulPath::kCm2
                                    ? fmt::format(" {}x{}{} v{}{}", gc.bm, gc.bn, bk, gc.variant,
                                                  gc.by_slot ? " by-slot x" : "")
                                    : std::string();
        const std::string label = fmt::format("{}{} {} 30B-A3B {}", pname, cfg, quant::traits(g.type)->name, g.name);
        if (!section("grouped") || !keep_grouped(label)) continue;
        const uint32_t slots = tokens * top_k;
        const uint64_t rb = quant::row_bytes(g.type, g.cols), eb = (rb * g.rows + 15) / 16 * 16;
        std::vector<uint32_t> offsets(n_expert + 1), ids(slots);
        if (spread == "even") {
          for (uint32_t e = 0; e <= n_expert; ++e) {
            offsets[e] = static_cast<uint32_t>(uint64_t{slots} * e / n_expert);
          }
        } else {  // skewed: expert |N(0, 40)| (clipped to the last) for every slot, counted
          std::mt19937 rng(7);
          std::normal_distribution<float> nd(0, 40);
          std::vector<uint32_t> counts(n_expert, 0);
          for (uint32_t i = 0; i < slots; ++i) {
            ++counts[std::min<uint32_t>(n_expert - 1, static_cast<uint32_t>(std::abs(nd(rng))))];
          }
          for (uint32_t e = 0; e < n_expert; ++e) offsets[e + 1] = offsets[e] + counts[e];
        }
        for (uint32_t s = 0; s < slots; ++s) ids[s] = gc.by_slot ? s : s / top_k;
        const uint32_t x_rows = gc.by_slot ? slots : tokens;
        auto w = filled(dev, eb * n_expert, 0x11111111u),
             x = filled(dev, uint64_t{x_rows} * g.cols * 2, 0x3c003c00u),
             y = filled(dev, uint64_t{slots} * g.rows * 4);
        auto ob = dev.buffer(offsets.size() * 4), ib = dev.buffer(ids.size() * 4);
        if (!w.ok() || !x.ok() || !y.ok() || !ob.ok() || !ib.ok()) return fail(Status::ResourceExhausted("grouped buffers"));
        if (auto st = ob->upload(offsets.data(), offsets.size() * 4); !st.ok()) return fail(st);
        if (auto st = ib->upload(ids.data(), ids.size() * 4); !st.ok()) return fail(st);
        ops::GroupedMatmulCall call{g.type, g.rows, g.cols, n_expert, eb, slots, x_rows, 0, true, gc.by_slot};
        op->force_grouped_tile(gc.bm, gc.bn, gc.bk);
        op->force_cm2_variant(gc.variant);
        op->force_by_slot(gc.by_slot);
        auto t = time_best(op->uses_coopmat(), [&](vk::CommandStream& s) { return op->record_grouped(s, call, *w, *x, *ob, *ib, *y); });
        op->force_grouped_tile(64, 64);
        op->force_cm2_variant(0);
        op->force_by_slot(false);
        if (!t.ok()) return fail(t.status());
        const double bytes = double(eb) * n_expert + 2.0 * x_rows * g.cols + 4.0 * slots * g.rows;
        rows.push_back({fmt::format("grouped {}{} {} x f16", pname, cfg, quant::traits(g.type)->name),
                        fmt::format("30B-A3B {} {}x{}, {} experts, {} tokens x {}{}", g.name, g.rows, g.cols,
                                    n_expert, tokens, top_k, spread == "even" ? "" : ", skewed"),
                        *t, bytes / *t / 1e3, 2.0 * g.rows * g.cols * slots / *t / 1e6});
       }
      }
    }
  }

  // ---- attention over a paged f16 pool: decode at depth, and a prefill chunk
  auto att = ops::PagedAttention::create(dev);
  if (!att.ok()) return fail(att.status());
  using Path = ops::AttentionPath;
  struct Att { const char* model; uint32_t heads, kv_heads, tokens, depth; Path path; };
  std::vector<Att> atts = {{"8B", 32, 8, 1, 4096, Path::kAuto}, {"8B", 32, 8, 1, 16384, Path::kAuto},
                           {"30B-A3B", 32, 4, 1, 16384, Path::kAuto}};
  std::vector<Path> prefill_paths = {Path::kPerToken, Path::kPrefillTiled};
  if (att->prefill_uses_coopmat()) prefill_paths.push_back(Path::kPrefillCoopmat);
  if (att->has_prefill_cm2()) prefill_paths.push_back(Path::kPrefillCm2);  // NV cooperative matrix 2
  if (dev.features().is_cpu) prefill_paths.push_back(Path::kPrefillCpu);  // slow on GPUs: only where it is chosen
  for (const auto& [model, kvh] : {std::pair<const char*, uint32_t>{"8B", 8}, {"30B-A3B", 4}}) {
    for (uint32_t depth : {512u, 4096u, 16384u}) {
      for (Path p : prefill_paths) atts.push_back({model, 32, kvh, 512, depth, p});
    }
  }
  for (uint32_t tokens : {4u, 8u, 16u, 32u, 64u}) {
    for (Path p : prefill_paths) atts.push_back({"8B", 32, 8, tokens, 4096, p});
  }
  // Decode kernels side by side (v1 and v2, TROVE_ATTENTION_DECODE): one token at depth 512..32768 on
  // both models' heads, and 2..8 tokens (batched decode, speculative verification) at depth 4096.
  const bool has_v2 = dev.features().subgroup_shuffle;
  for (Path p : {Path::kDecode, Path::kDecodeV2}) {
    if (p == Path::kDecodeV2 && !has_v2) continue;
    for (const auto& [model, kvh] : {std::pair<const char*, uint32_t>{"8B", 8}, {"30B-A3B", 4}}) {
      for (uint32_t depth : {512u, 4096u, 16384u, 32768u}) atts.push_back({model, 32, kvh, 1, depth, p});
    }
    for (uint32_t tokens : {2u, 4u, 8u}) atts.push_back({"8B", 32, 8, tokens, 4096, p});
    atts.push_back({"8B", 32, 8, 4, 16384, p});
  }
  if (quick) {
    atts = {{"tiny", 4, 2, 1, 256, Path::kAuto}};
    if (has_v2) atts.push_back({"tiny", 4, 2, 1, 1024, Path::kDecodeV2});
    for (Path p : prefill_paths) atts.push_back({"tiny", 8, 2, 64, 64, p});
    // The tiny preset's prefill chunk deep in the context (what dominates CI's engine tests on lavapipe).
    for (Path p : prefill_paths) atts.push_back({"tiny", 4, 2, 512, 4096, p});
  }
  if (!section("attention")) atts.clear();
  const bool cm2_128 = att->prefill_cm2_rows() == 128;  // TROVE_ATTENTION_CM2_ROWS=128
  auto path_label = [cm2_128](Path p) {
    switch (p) {
      case Path::kAuto: return "attention f16 KV";
      case Path::kPerToken: return "attention f16 KV, per-token";
      case Path::kPrefillTiled: return "attention f16 KV, prefill tiled";
      case Path::kPrefillCoopmat: return "attention f16 KV, prefill coopmat";
      case Path::kPrefillCpu: return "attention f16 KV, prefill CPU";
      case Path::kPrefillCm2: return cm2_128 ? "attention f16 KV, prefill cm2 128-row" : "attention f16 KV, prefill cm2";
      case Path::kDecode: return "attention f16 KV, decode";
      case Path::kDecodeV2: return "attention f16 KV, decode v2";
    }
    return "?";
  };
  const auto keep_att = row_filter("attention");  // --only 'attention prefill cm2': rows by label and shape
  for (const auto& a : atts) {
    const std::string att_shape =
        fmt::format("{} {}q/{}kv heads, {} tokens at depth {}", a.model, a.heads, a.kv_heads, a.tokens, a.depth);
    if (!keep_att(std::string(path_label(a.path)) + " " + att_shape)) continue;
    const uint32_t D = 128, B = 64, total = a.depth + a.tokens, nb = (total + B - 1) / B;
    kernels::ref::PagedKvShape shape{nb, B, a.kv_heads, D};
    auto pool = filled(dev, shape.elements() * 2);
    auto table = dev.buffer(uint64_t{nb} * 4);
    auto q = filled(dev, uint64_t{a.tokens} * a.heads * D * 4, 0x3c23d70au), o = filled(dev, uint64_t{a.tokens} * a.heads * D * 4);
    if (!pool.ok() || !table.ok() || !q.ok() || !o.ok()) return fail(Status::ResourceExhausted("attention buffers"));
    std::vector<int32_t> ids(nb);
    for (uint32_t i = 0; i < nb; ++i) ids[i] = static_cast<int32_t>(i);
    if (auto st = table->upload(ids.data(), ids.size() * 4); !st.ok()) return fail(st);
    ops::AttentionCall call{shape, a.heads, a.depth, a.tokens, 0.088f, a.path};
    auto t = time_reps(dev, reps, [&](vk::CommandStream& s) { return att->record(s, call, *pool, *table, *q, *o); });
    if (!t.ok()) return fail(t.status());
    // K and V read once per query token group: kv bytes of the depth (decode) + q/out.
    const double kv = 2.0 * total * a.kv_heads * D * 2;
    const double flops = 4.0 * a.heads * D * (a.tokens * double(a.depth) + a.tokens * (a.tokens + 1) / 2.0);
    rows.push_back({path_label(a.path), att_shape, *t, kv / *t / 1e3, flops / *t / 1e6});
  }

  // ---- element-wise and norms at batch 1 and 512 (8B widths)
  auto rms = ops::RmsNorm::create(dev);
  auto rope = ops::RopeNeox::create(dev);
  auto swi = ops::SwiGlu::create(dev);
  auto gr = ops::GetRows::create(dev, GgmlType::Q4_K);
  if (!rms.ok() || !rope.ok() || !swi.ok() || !gr.ok()) return fail(Status::Internal("op creation failed"));
  for (uint32_t T : {1u, quick ? 8u : 512u}) {
    if (!section("elementwise")) break;
    const uint32_t E = quick ? 256 : 4096, F = quick ? 512 : 12288;
    auto x = filled(dev, uint64_t{T} * std::max<uint32_t>(F, 32 * 128) * 4, 0x3f800000u), w = filled(dev, uint64_t{F} * 4, 0x3f800000u),
         out = filled(dev, uint64_t{T} * F * 4), up = filled(dev, uint64_t{T} * F * 4, 0x3f800000u);
    auto pos = filled(dev, uint64_t{T} * 4, 0);
    auto table = filled(dev, quant::row_bytes(GgmlType::Q4_K, E) * 1024ull), ids = filled(dev, uint64_t{T} * 4, 7);
    if (!x.ok() || !w.ok() || !out.ok() || !up.ok() || !pos.ok() || !table.ok() || !ids.ok())
      return fail(Status::ResourceExhausted("element-wise buffers"));
    auto add = [&](const char* op, std::string shape, double bytes, const std::function<Status(vk::CommandStream&)>& f) -> bool {
      auto t = time_reps(dev, reps, f);
      if (!t.ok()) { fail(t.status()); return false; }
      rows.push_back({op, std::move(shape), *t, bytes / *t / 1e3, 0});
      return true;
    };
    if (!add("rms_norm", fmt::format("{} rows x {}", T, E), 8.0 * T * E,
             [&](vk::CommandStream& s) { return rms->record(s, *x, *w, *out, T, E, 1e-6f); }))
      return 1;
    if (!add("rope neox", fmt::format("{} tokens x 32 heads x 128", T), 8.0 * T * 32 * 128,
             [&](vk::CommandStream& s) { return rope->record(s, *x, *pos, T, 32, 128, 1e6f); }))
      return 1;
    if (!add("swiglu", fmt::format("{} x {}", T, F), 12.0 * T * F,
             [&](vk::CommandStream& s) { return swi->record(s, *x, *up, *out, T * F); }))
      return 1;
    if (!add("get_rows Q4_K", fmt::format("{} tokens x {}", T, E), (quant::row_bytes(GgmlType::Q4_K, E) + 4.0 * E) * T,
             [&](vk::CommandStream& s) { return gr->record(s, *table, *ids, *out, 1024, E, T); }))
      return 1;
    // Greedy sampling over the Qwen3 head (151,936 logits a row; smaller in quick): 1 and 8 rows.
    const uint32_t V = quick ? 4096 : 151936, AR = std::min(T, 8u);
    auto am = ops::Argmax::create(dev);
    auto logits = filled(dev, uint64_t{AR} * V * 4, 0x3f800000u), picks = filled(dev, uint64_t{AR} * 4);
    if (!am.ok() || !logits.ok() || !picks.ok()) return fail(Status::ResourceExhausted("argmax buffers"));
    if (!add("argmax f32", fmt::format("{} rows x {}", AR, V), 4.0 * AR * V,
             [&](vk::CommandStream& s) { return am->record(s, *logits, *picks, AR, V); }))
      return 1;
    // Stochastic sampling (top-k 40, the engine's default form for a vocabulary-sized row).
    auto sm = ops::Sampler::create(dev);
    if (!sm.ok()) return fail(sm.status());
    const ops::SamplingParams sp{0.7f, 40, 0.95f, 0.0f, 1};
    if (!add("sample f32 top-k 40", fmt::format("{} rows x {}", AR, V), 4.0 * AR * V * 40,
             [&](vk::CommandStream& s) { return sm->record(s, *logits, *picks, AR, V, sp); }))
      return 1;
  }

  // ---- decode matvec rows (bench_matvec.cpp)
  if (section("matvec")) {
    std::vector<bench::KernelRow> mv;
    bench::MatvecBenchOptions mo;
    mo.reps = reps;
    mo.quick = quick;
    mo.sweep = sweep;
    mo.wanted = row_filter("matvec");
    if (auto st = bench::bench_matvec(dev, mo, mv); !st.ok()) return fail(st);
    for (auto& r : mv) rows.push_back({std::move(r.op), std::move(r.shape), r.us, r.gbs, r.tflops});
  }

  // ---- MoE FFN rows (bench_moe.cpp)
  if (section("moe")) {
    std::vector<bench::KernelRow> moe;
    bench::MoeBenchOptions mo;
    mo.reps = reps;
    mo.sweep = sweep;
    mo.quick = quick;
    mo.wanted = row_filter("moe");
    if (auto st = bench::bench_moe(dev, mo, moe); !st.ok()) return fail(st);
    for (auto& r : moe) rows.push_back({std::move(r.op), std::move(r.shape), r.us, r.gbs, r.tflops});
  }

  // ---- dependent steps: one dispatch each, or one dispatch with grid barriers (bench_chain.cpp)
  if (section("chain")) {
    std::vector<bench::KernelRow> ch;
    bench::ChainBenchOptions co;
    co.reps = reps;
    co.quick = quick || dev.features().is_cpu;
    co.grids = chain_grids;
    co.wanted = row_filter("chain");
    if (auto st = bench::bench_chain(dev, co, ch); !st.ok()) return fail(st);
    for (auto& r : ch) rows.push_back({std::move(r.op), std::move(r.shape), r.us, r.gbs, r.tflops});
  }

  // ---- instruction rates: f32 FMA, u32 multiply-add, packed int8 dot product, f16vec2 FMA (ops::AluProbe)
  if (section("alu")) {
    auto probe = ops::AluProbe::create(dev);
    if (!probe.ok()) return fail(probe.status());
    const bool small = quick || dev.features().is_cpu;
    const uint32_t groups = small ? 8 : 4096, iters = small ? 64 : 1024;
    auto out = bench::filled(dev, uint64_t{groups} * ops::AluProbe::kLocal * 4);
    if (!out.ok()) return fail(out.status());
    auto keep_alu = row_filter("alu");
    for (auto op : {ops::AluOp::kFma32, ops::AluOp::kImad, ops::AluOp::kDot4x8, ops::AluOp::kHfma2}) {
      const std::string label = fmt::format("alu {}", ops::alu_op_name(op));
      if (!probe->available(op) || !keep_alu(label)) continue;
      ops::AluProbe::Call c = ops::AluProbe::defaults(op);
      c.out = &*out, c.groups = groups, c.iters = iters;
      auto t = bench::time_reps(dev, reps, [&](vk::CommandStream& s) { return probe->record(s, c); });
      if (!t.ok()) return fail(t.status());
      // Operations an instruction does (the TFLOP/s column): a multiply-add is 2, a 4 x int8 dot product
      // with its sum 8, two f16 multiply-adds 4.
      const double per = op == ops::AluOp::kDot4x8 ? 8 : op == ops::AluOp::kHfma2 ? 4 : 2;
      const double instr = static_cast<double>(ops::AluProbe::instructions(c));
      const std::string shape =
          fmt::format("{} x {} invocations x {} chains x {} steps: {:.0f} G instructions/s", groups,
                      ops::AluProbe::kLocal, ops::AluProbe::kChains, iters, instr / *t / 1e3);
      rows.push_back({label, shape, *t, 0, per * instr / *t / 1e6});
    }
  }

  // ---- the ceiling: device-to-device copy in this run (bytes read + written)
  double copy_gbs = kCopyGBs;
  const char* copy_src = "H100, TARGETS.md";
  const uint64_t copy_bytes = quick ? (64ull << 20) : (1ull << 30);
  if (auto c = bench::measure_copy_gbs(dev, copy_bytes, quick ? 4 : 10); c.ok()) {
    copy_gbs = *c;
    copy_src = "measured copy";
    rows.insert(rows.begin(), {"copy (ceiling)", fmt::format("vkCmdCopyBuffer {} MiB, read + written", copy_bytes >> 20),
                               0, copy_gbs, 0});
  } else {
    std::fprintf(stderr, "bench_kernels: copy ceiling not measured (%s); using %.0f GB/s\n", c.status().ToString().c_str(),
                 kCopyGBs);
  }

  std::printf("device: %s (%s)\n\n", dev.features().name.c_str(), dev.features().driver.c_str());
  std::printf("| op | shape | time (us) | GB/s | %% of %.0f GB/s (%s) | TFLOP/s | %% of %.0f TFLOP/s (bf16 tensor) |\n",
              copy_gbs, copy_src, kBf16TFlops);
  std::printf("|---|---|---|---|---|---|---|\n");
  for (const auto& r : rows) {
    std::printf("| %s | %s | %s | %.1f | %.1f%% | %s | %s |\n", r.op.c_str(), r.shape.c_str(),
                r.us > 0 ? fmt::format("{:.1f}", r.us).c_str() : "—", r.gbs, 100 * r.gbs / copy_gbs,
                r.tflops > 0 ? fmt::format("{:.2f}", r.tflops).c_str() : "—",
                r.tflops > 0 ? fmt::format("{:.2f}%", 100 * r.tflops / kBf16TFlops).c_str() : "—");
  }
  return 0;
}
