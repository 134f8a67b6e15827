#include "kernels/ops/moe_ffn.h"

#include <fmt/format.h>

namespace trove::ops {
namespace {
struct CombinePush { uint32_t n, hidden; };
}  // namespace

Result<MoeFfn> MoeFfn::create(vk::Device& dev) {
  auto mm = Matmul::create(dev);
  if (!mm.ok()) return mm.status();
  auto sw = SwiGlu::create(dev);
  if (!sw.ok()) return sw.status();
  auto cb = dev.pipeline({"moe_combine", {}, sizeof(CombinePush), 4, 256});
  if (!cb.ok()) return cb.status();
  MoeFfn op;
  op.matmul_ = std::move(*mm);
  op.swiglu_ = std::move(*sw);
  op.combine_ = std::move(*cb);
  return op;
}

Status MoeFfn::run(vk::Device& dev, const std::vector<ExpertBuffers>& experts, uint32_t hidden, uint32_t ffn,
                   uint32_t tokens, uint32_t top_k, const std::vector<int32_t>& ids,
                   const std::vector<float>& weights, const vk::Buffer& x, vk::Buffer& out) const {
  const size_t n_route = size_t{tokens} * top_k;
  if (experts.empty() || tokens == 0 || top_k == 0 || ids.size() != n_route || weights.size() != n_route) {
    return Status::InvalidArgument(fmt::format(
        "moe_ffn: {} experts, tokens {}, top_k {}, {} ids and {} weights (need tokens*top_k = {} each)",
        experts.size(), tokens, top_k, ids.size(), weights.size(), n_route));
  }
  for (size_t i = 0; i < n_route; ++i) {
    if (ids[i] < 0 || static_cast<size_t>(ids[i]) >= experts.size()) {
      return Status::InvalidArgument(fmt::format("moe_ffn: route {} (token {}) selects expert {}, only {} exist", i,
                                                 i / top_k, ids[i], experts.size()));
    }
  }
  const uint64_t row = uint64_t{hidden} * 4;
  if (x.size() < row * tokens || out.size() < row * tokens) {
    return Status::InvalidArgument(fmt::format("moe_ffn: x {} / out {} bytes, need {}", x.size(), out.size(),
                                               row * tokens));
  }
  TROVE_RETURN_IF_ERROR(out.fill(0u));
  auto s = dev.stream();
  if (!s.ok()) return s.status();
  std::vector<vk::Buffer> scratch;  // alive until submit_and_wait below
  auto make = [&](uint64_t bytes, vk::Memory kind = vk::Memory::kDeviceLocal) -> Result<vk::Buffer*> {
    auto b = dev.buffer(bytes, kind);
    if (!b.ok()) return b.status();
    scratch.push_back(std::move(*b));
    return &scratch.back();
  };
  scratch.reserve(experts.size() * 8);
  for (size_t e = 0; e < experts.size(); ++e) {
    std::vector<uint32_t> tok;
    std::vector<float> wt;
    for (size_t i = 0; i < n_route; ++i) {
      if (ids[i] == static_cast<int32_t>(e)) {
        tok.push_back(static_cast<uint32_t>(i / top_k));
        wt.push_back(weights[i]);
      }
    }
    if (tok.empty()) continue;  // unselected experts cost nothing
    const uint32_t n = static_cast<uint32_t>(tok.size());
    auto xg = make(row * n), g = make(uint64_t{n} * ffn * 4), u = make(uint64_t{n} * ffn * 4),
         h = make(uint64_t{n} * ffn * 4), d = make(row * n), tb = make(n * 4ull), wb = make(n * 4ull);
    for (auto* r : {&xg, &g, &u, &h, &d, &tb, &wb}) {
      if (!r->ok()) return r->status();
    }
    TROVE_RETURN_IF_ERROR((*tb)->upload(tok.data(), n * 4ull));
    TROVE_RETURN_IF_ERROR((*wb)->upload(wt.data(), n * 4ull));
    for (uint32_t j = 0; j < n; ++j) s->copy(x, tok[j] * row, **xg, j * row, row);
    s->barrier();
    const ExpertBuffers& ex = experts[e];
    if (!ex.gate || !ex.up || !ex.down) return Status::InvalidArgument(fmt::format("moe_ffn: expert {} has a null buffer", e));
    TROVE_RETURN_IF_ERROR(matmul_.record(*s, ex.type, ffn, hidden, n, *ex.gate, **xg, **g));
    TROVE_RETURN_IF_ERROR(matmul_.record(*s, ex.type, ffn, hidden, n, *ex.up, **xg, **u));
    s->barrier();
    TROVE_RETURN_IF_ERROR(swiglu_.record(*s, **g, **u, **h, n * ffn));
    s->barrier();
    TROVE_RETURN_IF_ERROR(matmul_.record(*s, ex.type, hidden, ffn, n, *ex.down, **h, **d));
    s->barrier();
    CombinePush push{n, hidden};
    vk::BufferRange bufs[4] = {**d, **tb, **wb, out};
    TROVE_RETURN_IF_ERROR(s->dispatch(combine_, bufs, &push, sizeof(push), (hidden + 255) / 256, n));
    s->barrier();  // the next expert's combine adds into the same rows
  }
  return s->submit_and_wait();
}

}  // namespace trove::ops
