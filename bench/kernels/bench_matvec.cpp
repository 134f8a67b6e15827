#include "bench/kernels/bench_matvec.h"

#include <fmt/format.h>

#include <algorithm>
#include <chrono>
#include <numeric>

#include "bench/kernels/bench_timing.h"
#include "kernels/ops/matvec.h"
#include "kernels/quant/quant.h"

namespace trove::bench {
namespace {

using ops::MatvecEpilogue;
using quant::GgmlType;

struct Shape {
  const char* model;
  const char* name;
  std::vector<uint32_t> rows;  // one entry per matrix of the call (SwiGLU: gate, up)
  uint32_t cols;
  MatvecEpilogue epilogue;
  bool norm;
};

std::string rows_label(const Shape& sh) {
  std::string r;
  for (size_t i = 0; i < sh.rows.size(); ++i) r += (i ? "+" : "") + std::to_string(sh.rows[i]);
  return sh.rows.size() > 1 ? "(" + r + ")" : r;
}

// Weight bytes for the measurements: buffers allocated and filled once, their ranges handed out again
// from the start for every measurement. (Each row used to allocate and free its own ~256 MB of weight
// copies; on the H200 a whole section's rows then ran 4-6x slower than the same shape measured
// alone — docs/performance.md, 2026-12-03 — and allocation churn is the suspect.)
class WeightArena {
 public:
  WeightArena(vk::Device& dev, uint64_t chunk) : dev_(dev), chunk_(chunk) {}
  void rewind() { cur_ = 0, off_ = 0; }
  Result<vk::BufferRange> take(uint64_t bytes) {
    const uint64_t need = (bytes + 255) / 256 * 256;
    for (;;) {
      if (cur_ < bufs_.size() && off_ + need <= bufs_[cur_].size()) {
        vk::BufferRange r(bufs_[cur_], off_, (bytes + 3) / 4 * 4);
        off_ += need;
        return r;
      }
      if (cur_ < bufs_.size() && off_ > 0) {  // the rest of this buffer is too small: the next one
        ++cur_, off_ = 0;
        continue;
      }
      // A new buffer here (or a larger one in place of an unused one that is too small).
      auto b = filled(dev_, std::min(dev_.max_buffer_bytes(), std::max(need, chunk_)), 0x3c003c00u);
      if (!b.ok()) return b.status();
      if (b->size() < need) return Status::ResourceExhausted("matvec bench: a weight range beyond one buffer");
      if (cur_ < bufs_.size()) bufs_[cur_] = std::move(*b);
      else bufs_.push_back(std::move(*b));
    }
  }

 private:
  vk::Device& dev_;
  uint64_t chunk_;
  std::vector<vk::Buffer> bufs_;
  size_t cur_ = 0;
  uint64_t off_ = 0;
};

// One (shape, type, batch, tuning) measurement: takes enough copies of the weights from the arena that the L2
// cannot hold them, records one call per copy in turn.
Status measure(vk::Device& dev, ops::Matvec& op, WeightArena& arena, const Shape& sh, GgmlType type, uint32_t batch,
               const MatvecBenchOptions& o, const std::string& op_label, const std::string& shape_label,
               std::vector<KernelRow>& rows) {
  arena.rewind();
  const uint64_t rb = quant::row_bytes(type, sh.cols);
  uint64_t weight_bytes = 0;
  for (uint32_t r : sh.rows) weight_bytes += r * rb;
  // Row pieces for a matrix larger than one buffer (the head on small devices; the engine splits the
  // same way), at multiples of 64 rows.
  const uint64_t max_piece_rows = std::max<uint64_t>(64, dev.max_buffer_bytes() / rb / 64 * 64);
  const uint64_t l2_defeat = o.quick ? (8ull << 20) : (256ull << 20);
  const uint32_t copies =
      static_cast<uint32_t>(std::clamp<uint64_t>((l2_defeat + weight_bytes - 1) / weight_bytes, 1, 32));

  auto x = filled(dev, uint64_t{batch} * sh.cols * 4, 0x3f800000u);  // 1.0
  auto nw = filled(dev, uint64_t{sh.cols} * 4, 0x3f800000u);
  if (!x.ok() || !nw.ok()) return Status::ResourceExhausted("matvec bench: activations");
  std::vector<vk::Buffer> ys;
  for (uint32_t r : sh.rows) {
    auto y = filled(dev, uint64_t{batch} * r * 4, 0);
    if (!y.ok()) return y.status();
    ys.push_back(std::move(*y));
  }
  // calls[c] = the calls of weight copy c (one, or one per row piece).
  std::vector<std::vector<ops::MatvecCall>> calls(copies);
  for (uint32_t c = 0; c < copies; ++c) {
    if (sh.rows.size() == 1 && sh.rows[0] > max_piece_rows) {
      const uint32_t n_rows = sh.rows[0];
      for (uint64_t r0 = 0; r0 < n_rows; r0 += max_piece_rows) {
        const uint32_t n = static_cast<uint32_t>(std::min<uint64_t>(max_piece_rows, n_rows - r0));
        auto w = arena.take(n * rb);
        if (!w.ok()) return w.status();
        ops::MatvecCall call;
        call.cols = sh.cols;
        call.batch = batch;
        call.x = *x;
        if (sh.norm) call.norm_w = *nw;
        call.epilogue = sh.epilogue;
        call.mats[0] = {type, n, *w, vk::BufferRange(ys[0], r0 * 4, (uint64_t{batch - 1} * n_rows + n) * 4), n_rows};
        calls[c].push_back(call);
      }
      continue;
    }
    ops::MatvecCall call;
    call.cols = sh.cols;
    call.batch = batch;
    call.x = *x;
    if (sh.norm) call.norm_w = *nw;
    call.epilogue = sh.epilogue;
    call.n_mats = static_cast<uint32_t>(sh.rows.size());
    for (size_t m = 0; m < sh.rows.size(); ++m) {
      auto w = arena.take(sh.rows[m] * rb);
      if (!w.ok()) return w.status();
      call.mats[m] = {type, sh.rows[m], *w, vk::BufferRange(ys[m]), 0};
    }
    calls[c].push_back(call);
  }
  auto record = [&](vk::CommandStream& s, int rep) -> Status {
    for (const auto& call : calls[static_cast<uint32_t>(rep) % copies])
      TROVE_RETURN_IF_ERROR(op.record(s, call));
    return Status::Ok();
  };
  auto warm = time_reps(dev, static_cast<int>(copies), record);  // pipelines, first touch of every copy
  if (!warm.ok()) return warm.status();
  auto t = time_reps(dev, std::max<int>(o.reps, static_cast<int>(copies)), record);
  if (!t.ok()) return t.status();
  uint64_t out_rows = 0;
  for (size_t m = 0; m < sh.rows.size(); ++m) out_rows += sh.rows[m];
  rows.push_back(
      {op_label, shape_label, *t, weight_bytes / *t / 1e3, 2.0 * out_rows * sh.cols * batch / *t / 1e6});
  return Status::Ok();
}

}  // namespace

Result<double> measure_copy_gbs(vk::Device& dev, uint64_t bytes, int reps) {
  bytes = std::min<uint64_t>(bytes, dev.max_buffer_bytes()) / 256 * 256;
  auto a = filled(dev, bytes, 0x3f800000u);
  auto b = filled(dev, bytes, 0);
  if (!a.ok() || !b.ok())
    return Status::ResourceExhausted("copy bench: two buffers of " + std::to_string(bytes) + " bytes");
  auto t = time_reps(dev, 1, [&](vk::CommandStream& s, int) {
    s.copy(*a, 0, *b, 0, bytes);
    return Status::Ok();
  });
  if (!t.ok()) return t.status();
  t = time_reps(dev, reps, [&](vk::CommandStream& s, int) {
    s.copy(*a, 0, *b, 0, bytes);
    return Status::Ok();
  });
  if (!t.ok()) return t.status();
  return 2.0 * bytes / *t / 1e3;  // read + written, bytes per µs / 1e3 = GB/s
}

Status bench_matvec(vk::Device& dev, const MatvecBenchOptions& o, std::vector<KernelRow>& rows) {
  auto opr = ops::Matvec::create(dev);
  if (!opr.ok()) return opr.status();
  ops::Matvec& op = *opr;
  WeightArena arena(dev, o.quick ? (16ull << 20) : (512ull << 20));
  const auto kStore = MatvecEpilogue::kStore, kAdd = MatvecEpilogue::kAdd, kSwiGlu = MatvecEpilogue::kSwiGlu;
  std::vector<Shape> shapes = {
      {"8B", "attn_q", {4096}, 4096, kStore, true},
      {"8B", "attn_k", {1024}, 4096, kStore, true},
      {"8B", "attn_qkv", {4096, 1024, 1024}, 4096, kStore, true},
      {"8B", "ffn_gate+up", {12288, 12288}, 4096, kSwiGlu, true},
      {"8B", "ffn_down", {4096}, 12288, kAdd, false},
      {"8B", "head", {151936}, 4096, kStore, true},
      {"30B-A3B", "attn_q", {4096}, 2048, kStore, true},
      {"30B-A3B", "attn_qkv", {4096, 512, 512}, 2048, kStore, true},
      {"30B-A3B", "attn_output", {2048}, 4096, kAdd, false},
      {"30B-A3B", "head", {151936}, 2048, kStore, true},
  };
  std::vector<uint32_t> batches = {1, 2, 4, 8};
  if (o.quick) {
    shapes = {{"tiny", "attn_qkv", {512, 128, 128}, 256, kStore, true},
              {"tiny", "ffn_gate+up", {1024, 1024}, 256, kSwiGlu, true},
              {"tiny", "head", {4096}, 256, kStore, true}};
    batches = {1, 8};
  }
  auto label = [](const Shape& sh, uint32_t batch) {
    const char* epi = sh.epilogue == kSwiGlu ? " swiglu" : sh.epilogue == kAdd ? " add" : "";
    return fmt::format("{} {} {}x{}{}{} b{}", sh.model, sh.name, rows_label(sh), sh.cols,
                       sh.norm ? " +norm" : "", epi, batch);
  };
  for (const auto& sh : shapes) {
    // F16: the f16 rows the engine keeps resident for prefill (the direct form reads them; the q8 forms
    // take K-quants and Q8_0 only), against which a wide step's K-quant rows are weighed.
    for (GgmlType type : {GgmlType::Q4_K, GgmlType::Q6_K, GgmlType::F16}) {
      for (uint32_t batch : batches) {
        const std::string opl = fmt::format("matvec {}", quant::traits(type)->name), shl = label(sh, batch);
        if (!o.wanted || o.wanted(opl + " " + shl)) {
          op.set_tuning({});
          TROVE_RETURN_IF_ERROR(measure(dev, op, arena, sh, type, batch, o, opl, shl, rows));
        }
        // The other forms at their defaults: the q8 and q8p forms (TROVE_MATVEC=q8|q8p candidates;
        // "refused" rows where the device lacks integer dot products), staged and direct with --sweep. q8p rows include its activation pass (two dispatches and a barrier a call).
        using Form = ops::MatvecTuning::Form;
        // Without --sweep only at the 8B shapes with Q4_K_M's types (qkv and gate+up Q4_K, down and
        // head Q6_K), to keep the section's device time: 32 rows.
        const std::string nm = sh.name;
        const bool q4km = std::string(sh.model) != "30B-A3B" &&
                          (((nm == "attn_qkv" || nm == "ffn_gate+up") && type == GgmlType::Q4_K) ||
                           ((nm == "ffn_down" || nm == "head") && type == GgmlType::Q6_K));
        std::vector<Form> forms;
        if (q4km) forms = {Form::kQ8, Form::kQ8P};
        if (o.sweep) forms = {Form::kStaged, Form::kDirect, Form::kQ8, Form::kQ8P};
        // The q8 coopmat form (int8 matrix units, Q4_K only) at the 8B's Q4_K shapes but the head, where
        // the device has it (no refused rows: it is an A/B form).
        if (type == GgmlType::Q4_K && std::string(sh.model) == "8B" && nm != "head" &&
            op.q8_coopmat_supported()) {
          forms.push_back(Form::kQ8Coopmat);
        }
        // (q8 rows of calls the q8 form cannot take — batch · cols int8 beyond shared memory, e.g. the
        // 8B's ffn_down at batch >= 3 with 48 KiB — time the direct form it falls back to.)
        for (Form form : forms) {
          const std::string fl = shl + (form == Form::kDirect      ? " direct"
                                        : form == Form::kQ8        ? " q8"
                                        : form == Form::kQ8P       ? " q8p"
                                        : form == Form::kQ8Coopmat ? " q8coopmat"
                                                                   : " staged");
          if (o.wanted && !o.wanted(opl + " " + fl)) continue;
          ops::MatvecTuning t;
          t.form = form;
          op.set_tuning(t);
          if (Status st = measure(dev, op, arena, sh, type, batch, o, opl, fl, rows); !st.ok())
            rows.push_back({opl + " (refused: " + st.message() + ")", fl, 0, 0, 0});
        }
      }
    }
  }
  if (!o.sweep) return Status::Ok();
  // Work splits, for tuning the defaults: rows per 32-lane group × invocations per workgroup.
  for (const auto& sh : shapes) {
    if (std::string(sh.model) != (o.quick ? "tiny" : "8B") || std::string(sh.name) == "attn_q" ||
        std::string(sh.name) == "attn_k") {
      continue;
    }
    for (GgmlType type : {GgmlType::Q4_K, GgmlType::Q6_K}) {
      for (uint32_t batch : {1u, 8u}) {
        for (uint32_t r : {1u, 2u, 4u}) {
          for (uint32_t wg : {64u, 128u, 256u, 512u}) {
            for (auto form : {ops::MatvecTuning::Form::kStaged, ops::MatvecTuning::Form::kDirect, ops::MatvecTuning::Form::kQ8,
                              ops::MatvecTuning::Form::kQ8P}) {
              const bool direct = form == ops::MatvecTuning::Form::kDirect, q8 = form == ops::MatvecTuning::Form::kQ8,
                         q8p = form == ops::MatvecTuning::Form::kQ8P;
              if (!direct && !q8 && !q8p && wg == 64) continue;
              const std::string opl = fmt::format("matvec {}", quant::traits(type)->name),
                                shl = fmt::format("{} split {} R{} wg{}", label(sh, batch),
                                                  direct ? "direct" : q8 ? "q8" : q8p ? "q8p" : "staged", r, wg);
              if (o.wanted && !o.wanted(opl + " " + shl)) continue;
              ops::MatvecTuning t;
              t.form = form;
              t.rows_per_group = r;
              t.workgroup_size = wg;
              op.set_tuning(t);
              Status st = measure(dev, op, arena, sh, type, batch, o, opl, shl, rows);
              if (!st.ok()) rows.push_back({opl + " (refused: " + st.message() + ")", shl, 0, 0, 0});
            }
          }
        }
      }
    }
  }
  op.set_tuning({});
  return Status::Ok();
}

}  // namespace trove::bench
