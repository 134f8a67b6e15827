#include "kernels/ops/matvec_chain.h"

#include <algorithm>
#include <array>
#include <bit>
#include <cstdlib>
#include <map>
#include <mutex>
#include <string>
#include <string_view>
#include <vector>

#include <fmt/format.h>

namespace trove::ops {
namespace {
using quant::GgmlType;

struct Push {
  uint32_t grid, spin;
  float eps;
  uint32_t flags;  // bit 0: prefetch the next step's first row block while waiting
};

// Polls before a wait gives up: ~25 ms of L2 round trips on an H200, where a resident grid waits at
// most for its slowest workgroup (tens of µs); a grid that is not resident then loses ~25 ms a barrier
// (not seconds, which could trip the driver's watchdog) before timeouts() reports it.
constexpr uint32_t kSpin = 1u << 16;
constexpr uint32_t kStepUints = 13;   // matvec_chain.comp's plan layout
constexpr uint32_t kBindings = 20;    // 8 vectors, 8 weights, ctl, report, plan, scratch (batches)
// The batches' scratch holds x̂ of 8 columns of up to this many values (matvec_q8_parts.glsl's
// MV_Q8_GLOBAL layout: B·T·13/32 + B floats, 852 KiB), made once so that recorded steps never see it move.
constexpr uint32_t kMaxScratchCols = 65536;

bool q8_type(GgmlType t) {
  return t == GgmlType::Q4_K || t == GgmlType::Q5_K || t == GgmlType::Q6_K || t == GgmlType::Q8_0;
}
const char* epilogue_name(MatvecEpilogue e) {
  return e == MatvecEpilogue::kAdd ? "add" : e == MatvecEpilogue::kSwiGlu ? "SwiGLU" : "store";
}
}  // namespace

struct MatvecChain::State {
  vk::Device* dev = nullptr;
  const Matvec* mv = nullptr;
  uint32_t grid = 1;
  bool prefetch = false;  // TROVE_MATVEC_CHAIN_PREFETCH=1
  vk::Buffer ctl;     // device-local: arrivals, exits (the grid barrier spins on them)
  vk::Buffer report;  // host-visible: waits that gave up
  std::mutex mu;      // guards the two maps
  std::map<std::array<uint32_t, 6>, vk::Pipeline> pipelines;  // (workgroup, lanes, tile, type mask, q6 wide, batch)
  std::map<std::vector<uint32_t>, vk::Buffer> plans;            // plan contents -> its device copy
  vk::Buffer scratch;  // batches: x̂ of every column of a step (matvec_chain.glsl), kMaxScratchCols a column
};

MatvecChain::MatvecChain(MatvecChain&&) noexcept = default;
MatvecChain& MatvecChain::operator=(MatvecChain&&) noexcept = default;
MatvecChain::~MatvecChain() = default;

Result<MatvecChain> MatvecChain::create(vk::Device& dev, const Matvec& mv) {
  const Matvec::Q8Config q = mv.q8_config();
  if (!q.supported) {
    return Status::Unsupported("matvec chain: needs the q8 matvec form (integer dot products, subgroup arithmetic and shuffles)");
  }
  MatvecChain op;
  op.st_ = std::make_unique<State>();
  op.st_->dev = &dev;
  op.st_->mv = &mv;
  op.st_->grid = q.cpu ? 1 : std::max<uint32_t>(1, q.sms ? q.sms : 64);
  if (const char* g = std::getenv("TROVE_MATVEC_CHAIN_GRID"); g && *g) {
    char* end = nullptr;
    const unsigned long v = std::strtoul(g, &end, 10);
    if (*end != '\0' || v == 0 || v > 65535) {
      return Status::InvalidArgument(fmt::format("TROVE_MATVEC_CHAIN_GRID='{}' is not a number of workgroups (1..65535)", g));
    }
    op.st_->grid = static_cast<uint32_t>(v);
  }
  if (const char* p = std::getenv("TROVE_MATVEC_CHAIN_PREFETCH"); p && *p) {
    const std::string_view v(p);
    if (v != "0" && v != "1") {
      return Status::InvalidArgument(fmt::format("TROVE_MATVEC_CHAIN_PREFETCH='{}' is not 0 or 1", p));
    }
    op.st_->prefetch = v == "1";
  }
  auto ctl = dev.buffer(16);
  if (!ctl.ok()) return ctl.status();
  TROVE_RETURN_IF_ERROR(ctl->fill(0));
  op.st_->ctl = std::move(*ctl);
  auto report = dev.buffer(16, vk::Memory::kHostVisible);
  if (!report.ok()) return report.status();
  op.st_->report = std::move(*report);
  std::fill_n(static_cast<uint32_t*>(op.st_->report.mapped()), 4, 0u);
  auto scratch = dev.buffer((uint64_t{Matvec::kMaxBatch} * kMaxScratchCols * 13 / 32 + Matvec::kMaxBatch) * 4);
  if (!scratch.ok()) return scratch.status();
  op.st_->scratch = std::move(*scratch);
  return op;
}

uint32_t MatvecChain::grid() const { return st_->grid; }

uint32_t MatvecChain::timeouts() const { return static_cast<const volatile uint32_t*>(st_->report.mapped())[0]; }

Status MatvecChain::record(vk::CommandStream& s, const MatvecChainCall& call) const {
  const Matvec::Q8Config q = st_->mv->q8_config();
  if (call.n_steps == 0 || call.n_steps > MatvecChainCall::kMaxSteps) {
    return Status::InvalidArgument(fmt::format("matvec chain: {} steps (1..{})", call.n_steps, MatvecChainCall::kMaxSteps));
  }
  const uint32_t B = call.batch;
  if (B == 0 || B > Matvec::kMaxBatch) {
    return Status::InvalidArgument(fmt::format("matvec chain: batch {} (1..{})", B, Matvec::kMaxBatch));
  }
  if (q.rows > 2 || q.swiglu_rows != 1) {
    return Status::Unsupported(fmt::format("matvec chain: rows per row group {} (SwiGLU {}); the chain takes 1 or 2 (SwiGLU 1)",
                                           q.rows, q.swiglu_rows));
  }
  const uint32_t groups = q.workgroup / q.lanes;  // row groups per workgroup
  std::vector<uint32_t> plan(1 + kStepUints * call.n_steps, 0);
  plan[0] = call.n_steps;
  uint32_t tile = 256, mask = 0;
  for (uint32_t k = 0; k < call.n_steps; ++k) {
    const MatvecChainStep& st = call.steps[k];
    const bool swiglu = st.epilogue == MatvecEpilogue::kSwiGlu;
    auto bad = [&](const std::string& what) {
      return Status::InvalidArgument(fmt::format("matvec chain step {} ({}, {} columns): {}", k, epilogue_name(st.epilogue),
                                                 st.cols, what));
    };
    if (st.cols == 0 || st.cols % 256 != 0) return bad("cols must be a positive multiple of 256");
    if (st.n_mats == 0 || st.n_mats > 3 || (swiglu && st.n_mats != 2)) return bad(fmt::format("{} matrices (1..3; SwiGLU 2)", st.n_mats));
    if (st.input >= MatvecChainCall::kVectors || st.norm >= static_cast<int32_t>(MatvecChainCall::kVectors)) {
      return bad("vector indices are 0..7");
    }
    auto vec_ok = [&](uint32_t v, uint64_t values, const char* what) -> Status {
      const vk::BufferRange& r = call.vectors[v];
      if (r.buffer == VK_NULL_HANDLE || r.size < values * 4 || r.offset % 16 != 0) {
        return bad(fmt::format("vector {} ({}) holds {} bytes at offset {}, needs {} at a multiple of 16", v, what,
                               r.buffer == VK_NULL_HANDLE ? 0 : r.size, r.offset, values * 4));
      }
      return Status::Ok();
    };
    TROVE_RETURN_IF_ERROR(vec_ok(st.input, uint64_t{B} * st.cols, "input"));
    if (st.norm >= 0) TROVE_RETURN_IF_ERROR(vec_ok(static_cast<uint32_t>(st.norm), st.cols, "norm weights"));
    const uint32_t outs = swiglu ? 1 : st.n_mats;
    for (uint32_t m = 0; m < st.n_mats; ++m) {
      const MatvecChainMatrix& mat = st.mats[m];
      if (mat.weight >= MatvecChainCall::kWeights || mat.output >= MatvecChainCall::kVectors) {
        return bad("weight indices are 0..7, vector indices 0..7");
      }
      if (!q8_type(mat.type)) {
        return bad(fmt::format("matrix {}: weight type {} (the chain takes Q4_K, Q5_K, Q6_K, Q8_0)", m, quant::traits(mat.type)->name));
      }
      if (mat.rows == 0 || (swiglu && mat.rows != st.mats[0].rows)) return bad(fmt::format("matrix {}: {} rows", m, mat.rows));
      const uint64_t rb = quant::row_bytes(mat.type, st.cols);
      const vk::BufferRange& w = call.weights[mat.weight];
      if (w.buffer == VK_NULL_HANDLE || w.size < uint64_t{mat.rows} * rb) {
        return bad(fmt::format("weight {} holds {} bytes, {} rows need {}", mat.weight, w.buffer == VK_NULL_HANDLE ? 0 : w.size,
                               mat.rows, uint64_t{mat.rows} * rb));
      }
      if (m < outs) {
        if (mat.output == st.input || static_cast<int32_t>(mat.output) == st.norm) {
          return bad(fmt::format("the output of matrix {} is the step's input or norm vector (workgroups write it while "
                                 "others read it)", m));
        }
        for (uint32_t n = 0; n < m; ++n) {
          if (st.mats[n].output == mat.output) return bad(fmt::format("matrices {} and {} write one output vector", n, m));
        }
        TROVE_RETURN_IF_ERROR(vec_ok(mat.output, uint64_t{B} * mat.rows, "output"));
      }
      mask |= 1u << static_cast<uint32_t>(mat.type);
      uint32_t* p = &plan[1 + kStepUints * k + 4 + 3 * m];
      p[0] = mat.weight | (mat.output << 4) | (static_cast<uint32_t>(mat.type) << 8);
      p[1] = mat.rows;
      p[2] = static_cast<uint32_t>(rb);
    }
    tile = std::max(tile, st.cols);
    // Rows per row group: a row's sum does not depend on it (each lane walks the same parts of the row
    // whatever the other slots hold), so the chain may take 1 where 2 would leave the grid's last round
    // of row blocks mostly idle (the 8B's q/k/v: 192 blocks of 32 rows for 132 workgroups, 384 of 16).
    uint32_t rows_per_group = swiglu ? 1 : q.rows;
    if (!swiglu && rows_per_group == 2) {
      auto work = [&](uint32_t r) {  // rows a workgroup walks in the busiest one: rounds × rows per block
        uint64_t blocks = 0;
        for (uint32_t m = 0; m < st.n_mats; ++m) blocks += (st.mats[m].rows + groups * r - 1) / (groups * r);
        return (blocks + st_->grid - 1) / st_->grid * r;
      };
      if (work(1) < work(2)) rows_per_group = 1;
    }
    uint32_t* p = &plan[1 + kStepUints * k];
    p[0] = st.cols;
    p[1] = (st.norm >= 0 ? 1u : 0u) | (st.epilogue == MatvecEpilogue::kAdd ? 2u : 0u) | (swiglu ? 4u : 0u) | (rows_per_group << 8);
    p[2] = st.input | (static_cast<uint32_t>(std::max(st.norm, 0)) << 4);
    p[3] = st.n_mats;
  }
  if (B > 1 && tile > kMaxScratchCols) {
    return Status::InvalidArgument(fmt::format("matvec chain: batches of steps of {} columns (at most {})", tile, kMaxScratchCols));
  }
  // Shared memory: the staged tile (11/8 bytes a value; batches: none) and a float per subgroup.
  if ((B == 1 ? uint64_t{tile} * 11 / 8 : 0) + uint64_t{q.workgroup / q.lanes} * 4 > q.shared_bytes) {
    return Status::InvalidArgument(fmt::format("matvec chain: {} staged values do not fit {} bytes of shared memory", tile,
                                               q.shared_bytes));
  }
  const std::array<uint32_t, 6> key = {q.workgroup, q.lanes, tile, mask, q.q6_wide ? 1u : 0u, B};
  const vk::Pipeline* pipe = nullptr;
  const vk::Buffer* plan_buf = nullptr;
  {
    std::lock_guard<std::mutex> lock(st_->mu);
    auto it = st_->pipelines.find(key);
    if (it == st_->pipelines.end()) {
      auto p = B == 1 ? st_->dev->pipeline({"matvec_chain", {key[0], key[1], key[2], key[3], key[4]}, sizeof(Push), kBindings,
                                            q.workgroup})
                      : st_->dev->pipeline({"matvec_chain_b", {key[0], key[1], key[2], key[3], key[4], B}, sizeof(Push),
                                            kBindings, q.workgroup});
      if (!p.ok()) return p.status();
      it = st_->pipelines.emplace(key, std::move(*p)).first;
    }
    pipe = &it->second;
    auto pl = st_->plans.find(plan);
    if (pl == st_->plans.end()) {
      auto b = st_->dev->buffer(plan.size() * 4);
      if (!b.ok()) return b.status();
      TROVE_RETURN_IF_ERROR(b->upload(plan.data(), plan.size() * 4));
      pl = st_->plans.emplace(plan, std::move(*b)).first;
    }
    plan_buf = &pl->second;
  }
  std::array<vk::BufferRange, kBindings> bufs;
  const vk::BufferRange& any_vec = call.vectors[call.steps[0].input];
  const vk::BufferRange& any_w = call.weights[call.steps[0].mats[0].weight];
  for (uint32_t v = 0; v < MatvecChainCall::kVectors; ++v) bufs[v] = call.vectors[v].buffer != VK_NULL_HANDLE ? call.vectors[v] : any_vec;
  for (uint32_t w = 0; w < MatvecChainCall::kWeights; ++w) bufs[8 + w] = call.weights[w].buffer != VK_NULL_HANDLE ? call.weights[w] : any_w;
  bufs[16] = vk::BufferRange(st_->ctl);
  bufs[17] = vk::BufferRange(st_->report);
  bufs[18] = vk::BufferRange(*plan_buf);
  bufs[19] = B > 1 ? vk::BufferRange(st_->scratch) : vk::BufferRange(st_->ctl);  // batch 1 reads no scratch
  const Push push{st_->grid, kSpin, call.eps, st_->prefetch ? 1u : 0u};
  return s.dispatch(*pipe, bufs, &push, sizeof(push), st_->grid);
}

}  // namespace trove::ops
