#include "kernels/ops/matvec_chain.h"

#include <algorithm>
#include <array>
#include <bit>
#include <cstdlib>
#include <string>
#include <tuple>

#include <fmt/format.h>

namespace trove::ops {
namespace {
using quant::GgmlType;

struct Push {
  uint32_t n_steps, grid, spin;
  float eps;
  uint32_t step[MatvecChainCall::kMaxSteps][8];
};
static_assert(sizeof(Push) == 112);

constexpr uint32_t kSpin = 1u << 22;  // polls before a wait gives up (a resident grid needs a few hundred)

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
  vk::Buffer ctl;     // device-local: arrivals, exits (the grid barrier spins on them)
  vk::Buffer report;  // host-visible: waits that gave up
  mutable std::mutex mu;
  // (workgroup, lanes, tile values, type mask, q6 wide) -> pipeline
  mutable std::map<std::array<uint32_t, 5>, vk::Pipeline> pipelines;
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
  auto ctl = dev.buffer(16);
  if (!ctl.ok()) return ctl.status();
  TROVE_RETURN_IF_ERROR(ctl->fill(0));
  op.st_->ctl = std::move(*ctl);
  auto report = dev.buffer(16, vk::Memory::kHostVisible);
  if (!report.ok()) return report.status();
  op.st_->report = std::move(*report);
  std::fill_n(static_cast<uint32_t*>(op.st_->report.mapped()), 4, 0u);
  return op;
}

uint32_t MatvecChain::grid() const { return st_->grid; }

uint32_t MatvecChain::timeouts() const { return static_cast<const volatile uint32_t*>(st_->report.mapped())[0]; }

Status MatvecChain::record(vk::CommandStream& s, const MatvecChainCall& call) const {
  const Matvec::Q8Config q = st_->mv->q8_config();
  if (call.n_steps == 0 || call.n_steps > MatvecChainCall::kMaxSteps) {
    return Status::InvalidArgument(fmt::format("matvec chain: {} steps (1..{})", call.n_steps, MatvecChainCall::kMaxSteps));
  }
  if (q.rows > 2 || q.swiglu_rows != 1) {
    return Status::Unsupported(fmt::format("matvec chain: rows per row group {} (SwiGLU {}); the chain takes 1 or 2 (SwiGLU 1)",
                                           q.rows, q.swiglu_rows));
  }
  Push push{call.n_steps, st_->grid, kSpin, call.eps, {}};
  uint32_t tile = 256, mask = 0;
  for (uint32_t k = 0; k < call.n_steps; ++k) {
    const MatvecChainStep& st = call.steps[k];
    const bool swiglu = st.epilogue == MatvecEpilogue::kSwiGlu;
    auto bad = [&](const std::string& what) {
      return Status::InvalidArgument(fmt::format("matvec chain step {} ({}, {} x {}): {}", k, epilogue_name(st.epilogue),
                                                 st.rows, st.cols, what));
    };
    if (st.cols == 0 || st.cols % 256 != 0 || st.rows == 0) return bad("cols must be a positive multiple of 256, rows positive");
    if (st.input >= 4 || st.output >= 4 || st.norm >= 4 || st.weight0 >= 4 || st.weight1 >= 4) {
      return bad("vector and weight indices are 0..3");
    }
    if (st.input == st.output) return bad("the input is the output (workgroups write it while others read it)");
    const int n_w = swiglu ? 2 : 1;
    for (int m = 0; m < n_w; ++m) {
      const GgmlType t = m == 0 ? st.type0 : st.type1;
      const vk::BufferRange& w = call.weights[m == 0 ? st.weight0 : st.weight1];
      if (!q8_type(t)) return bad(fmt::format("weight type {} (the chain takes Q4_K, Q5_K, Q6_K, Q8_0)", quant::traits(t)->name));
      const uint64_t rb = quant::row_bytes(t, st.cols);
      if (w.buffer == VK_NULL_HANDLE || w.size < uint64_t{st.rows} * rb) {
        return bad(fmt::format("weight {} holds {} bytes, {} rows need {}", m, w.size, st.rows, uint64_t{st.rows} * rb));
      }
      mask |= 1u << static_cast<uint32_t>(t);
    }
    auto vec_ok = [&](uint32_t v, uint64_t values, const char* what) -> Status {
      const vk::BufferRange& r = call.vectors[v];
      if (r.buffer == VK_NULL_HANDLE || r.size < values * 4 || r.offset % 16 != 0) {
        return bad(fmt::format("vector {} ({}) holds {} bytes at offset {}, needs {} at a multiple of 16", v, what,
                               r.buffer == VK_NULL_HANDLE ? 0 : r.size, r.offset, values * 4));
      }
      return Status::Ok();
    };
    TROVE_RETURN_IF_ERROR(vec_ok(st.input, st.cols, "input"));
    TROVE_RETURN_IF_ERROR(vec_ok(st.output, st.rows, "output"));
    if (st.norm >= 0) TROVE_RETURN_IF_ERROR(vec_ok(static_cast<uint32_t>(st.norm), st.cols, "norm weights"));
    tile = std::max(tile, st.cols);
    const uint32_t rows_per_group = swiglu ? 1 : q.rows;
    const uint32_t flags = (st.norm >= 0 ? 1u : 0u) | (st.epilogue == MatvecEpilogue::kAdd ? 2u : 0u) | (swiglu ? 4u : 0u) |
                           (rows_per_group << 8);
    const uint32_t vecs = st.input | (static_cast<uint32_t>(std::max(st.norm, 0)) << 4) | (st.output << 8);
    push.step[k][0] = st.cols;
    push.step[k][1] = flags;
    push.step[k][2] = vecs;
    push.step[k][3] = st.weight0 | (st.weight1 << 4);
    push.step[k][4] = static_cast<uint32_t>(st.type0) | (static_cast<uint32_t>(swiglu ? st.type1 : st.type0) << 8);
    push.step[k][5] = st.rows;
    push.step[k][6] = static_cast<uint32_t>(quant::row_bytes(st.type0, st.cols));
    push.step[k][7] = static_cast<uint32_t>(quant::row_bytes(swiglu ? st.type1 : st.type0, st.cols));
  }
  // Shared memory: the staged tile (11/8 bytes a value) and a float per subgroup.
  if (uint64_t{tile} * 11 / 8 + uint64_t{q.workgroup / q.lanes} * 4 > q.shared_bytes) {
    return Status::InvalidArgument(fmt::format("matvec chain: {} staged values do not fit {} bytes of shared memory", tile,
                                               q.shared_bytes));
  }
  const std::array<uint32_t, 5> key = {q.workgroup, q.lanes, tile, mask, q.q6_wide ? 1u : 0u};
  const vk::Pipeline* pipe = nullptr;
  {
    std::lock_guard<std::mutex> lock(st_->mu);
    auto it = st_->pipelines.find(key);
    if (it == st_->pipelines.end()) {
      auto p = st_->dev->pipeline({"matvec_chain", {key[0], key[1], key[2], key[3], key[4]}, sizeof(Push), 10, q.workgroup});
      if (!p.ok()) return p.status();
      it = st_->pipelines.emplace(key, std::move(*p)).first;
    }
    pipe = &it->second;
  }
  std::array<vk::BufferRange, 10> bufs;
  for (uint32_t v = 0; v < 4; ++v) bufs[v] = call.vectors[v].buffer != VK_NULL_HANDLE ? call.vectors[v] : call.vectors[call.steps[0].input];
  for (uint32_t w = 0; w < 4; ++w) bufs[4 + w] = call.weights[w].buffer != VK_NULL_HANDLE ? call.weights[w] : call.weights[call.steps[0].weight0];
  bufs[8] = vk::BufferRange(st_->ctl);
  bufs[9] = vk::BufferRange(st_->report);
  return s.dispatch(*pipe, bufs, &push, sizeof(push), st_->grid);
}

}  // namespace trove::ops
