#include "kernels/ops/alu_probe.h"

#include <bit>
#include <cstring>

#include <fmt/format.h>

#include "kernels/quant/quant.h"

namespace trove::ops {
namespace {
struct Push { uint32_t iters, seed, m, c; };

uint32_t f32_bits(float f) { return std::bit_cast<uint32_t>(f); }
float bits_f32(uint32_t u) { return std::bit_cast<float>(u); }
uint32_t start_int(uint32_t j) { return 0x9e3779b9u ^ (j * 2654435761u); }
}  // namespace

const char* alu_op_name(AluOp op) {
  switch (op) {
    case AluOp::kFma32: return "fma f32";
    case AluOp::kImad: return "imad u32";
    case AluOp::kDot4x8: return "dot 4x8 (dotPacked4x8EXT + add)";
    case AluOp::kHfma2: return "fma f16vec2";
  }
  return "?";
}

Result<AluProbe> AluProbe::create(vk::Device& dev) {
  AluProbe op;
  for (uint32_t o = 0; o < 4; ++o) {
    const auto a = static_cast<AluOp>(o);
    if (a == AluOp::kDot4x8 && !dev.features().integer_dot_product) continue;
    if (a == AluOp::kHfma2 && !dev.features().fp16_arithmetic) continue;
    const char* shader =
        a == AluOp::kDot4x8 ? "alu_probe_dot" : a == AluOp::kHfma2 ? "alu_probe_f16" : "alu_probe";
    auto p = a == AluOp::kFma32 || a == AluOp::kImad ? dev.pipeline({shader, {o}, sizeof(Push), 1, kLocal})
                                                      : dev.pipeline({shader, {}, sizeof(Push), 1, kLocal});
    if (!p.ok()) return p.status();
    op.pipelines_[o] = std::move(*p);
    op.has_[o] = true;
  }
  return op;
}

bool AluProbe::available(AluOp op) const { return has_[static_cast<int>(op)]; }

AluProbe::Call AluProbe::defaults(AluOp op) {
  Call c;
  c.op = op;
  switch (op) {
    case AluOp::kFma32: c.m = f32_bits(0.5f), c.c = f32_bits(0.25f); break;
    case AluOp::kImad: c.m = 3, c.c = 7; break;
    case AluOp::kDot4x8: c.m = 0xfc03fe01u; break;  // bytes 1, -2, 3, -4
    case AluOp::kHfma2: {
      const uint32_t m = quant::f32_to_f16(0.5f), a = quant::f32_to_f16(0.25f);
      c.m = m | (m << 16), c.c = a | (a << 16);
      break;
    }
  }
  return c;
}

Status AluProbe::record(vk::CommandStream& s, const Call& c) const {
  if (!available(c.op)) {
    return Status::Unsupported(fmt::format("alu probe: {} needs a device feature this one lacks "
                                           "(integer dot products or f16 arithmetic)", alu_op_name(c.op)));
  }
  if (!c.out || c.groups == 0 || c.groups > 65535 || c.out->size() < uint64_t{c.groups} * kLocal * 4) {
    return Status::InvalidArgument(
        fmt::format("alu probe: {} groups (1..65535) need an output of {} bytes, not {}", c.groups,
                    uint64_t{c.groups} * kLocal * 4, c.out ? c.out->size() : 0));
  }
  const vk::BufferRange out(*c.out);
  const Push push{c.iters, 0, c.m, c.c};
  return s.dispatch(pipelines_[static_cast<int>(c.op)], {&out, 1}, &push, sizeof(push), c.groups);
}

uint32_t AluProbe::reference(const Call& c, uint32_t i) {
  uint32_t r = 0;
  for (uint32_t k = 0; k < kChains; ++k) {
    const uint32_t j = i * kChains + k;
    uint32_t a = 0;
    switch (c.op) {
      case AluOp::kFma32: {
        float f = static_cast<float>(j & 1023u) / 1024.0f;
        for (uint32_t n = 0; n < c.iters; ++n) {
          f = static_cast<float>(static_cast<double>(f) * bits_f32(c.m) + bits_f32(c.c));
        }
        a = f32_bits(f);
        break;
      }
      case AluOp::kImad:
        a = start_int(j);
        for (uint32_t n = 0; n < c.iters; ++n) a = a * c.m + c.c;
        break;
      case AluOp::kDot4x8:
        a = start_int(j);
        for (uint32_t n = 0; n < c.iters; ++n) {
          int32_t d = 0;
          for (int b = 0; b < 4; ++b) d += int32_t(int8_t(a >> (8 * b))) * int32_t(int8_t(c.m >> (8 * b)));
          a += static_cast<uint32_t>(d);
        }
        break;
      case AluOp::kHfma2: {
        float h[2] = {static_cast<float>(j & 63u) / 64.0f, 0.5f - static_cast<float>(j & 7u) / 16.0f};
        for (int l = 0; l < 2; ++l) {
          const float m = quant::f16_to_f32(static_cast<uint16_t>(c.m >> (16 * l))),
                      add = quant::f16_to_f32(static_cast<uint16_t>(c.c >> (16 * l)));
          h[l] = quant::f16_to_f32(quant::f32_to_f16(h[l]));
          for (uint32_t n = 0; n < c.iters; ++n) {
            const float exact = static_cast<float>(static_cast<double>(h[l]) * m + add);
            h[l] = quant::f16_to_f32(quant::f32_to_f16(exact));
          }
        }
        a = uint32_t{quant::f32_to_f16(h[0])} | (uint32_t{quant::f32_to_f16(h[1])} << 16);
        break;
      }
    }
    r += a;
  }
  return r;
}

}  // namespace trove::ops
