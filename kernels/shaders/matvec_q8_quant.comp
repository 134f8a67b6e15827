#version 460
// The q8p form's activation pass (kernels/ops/matvec.h, TROVE_MATVEC=q8p): one workgroup per batch
// column quantizes x̂ = x·norm_w into the scratch slot matvec_q8p.comp reads — int8 with a scale per
// 32 values (d = max|x̂|/127), d·Σq per 16 values, and the column's inv_rms (RMSNorm prologue; 1
// without it). Slot layout in floats, T = tile (cols rounded up to 256), B = batch: int8 values at 0
// (column b at b·T/4), scales at B·T/4 + b·T/32, sums at B·T·9/32 + b·T/16 (half h of 32-value blocks 2j
// and 2j + 1 side by side at 4j + 2h: matvec_q8_parts.glsl's SS), inv_rms at B·T·13/32 + b.
//
// Push flag 4, the q8 coopmat register kernel's layout (matvec_q8_coopmat_regs.comp): the same regions,
// each ordered by block (pair) first and column second, so that what one run of the kernel reads of all
// B columns is contiguous — block k's 32 values of column b at 8·(k·B + b) words, their 4-value words
// permuted (value word 2a + c at word a + 4c: the kernel's A takes a lane's two 4-value groups of a row,
// values k0 and k0 + 16, from 8 adjacent code bytes, so B's row k holds value π(k)); block k's scale at
// B·T/4 + (k/2)·2B + 2b + k % 2; pair p's four sums at B·T·9/32 + p·4B + 4b; inv_rms as above.
//
// Every number is the one the staged q8 kernel (matvec_q8_parts.glsl, stage_half) computes for the same
// column, bit for bit: both quantize a block with q8_half (matvec_q8_block.glsl), half a block per
// invocation, and this pass has the same workgroup size and lanes per subgroup (the host passes the
// q8 kernel's), the same half-blocks per invocation, Σ x² summed per 32-value block, then over the
// blocks of an even invocation, then by subgroupAdd, then over the subgroups in order. Speculative
// verification runs batches through this pass and one-token steps through the staged kernel, and
// greedy decoding must not change with it (H200, 8B at depth 8188: a tree reduction here put Σ x²
// ~1e-7 apart and flipped an argmax two tokens on).
#extension GL_GOOGLE_include_directive : require
#extension GL_KHR_shader_subgroup_arithmetic : require
#include "matvec_q8_block.glsl"

layout(local_size_x_id = 0) in;
layout(constant_id = 1) const uint kG = 32u;  // lanes per subgroup (the q8 kernel's row group)
const uint kWG = gl_WorkGroupSize.x;

layout(std430, set = 0, binding = 0) readonly buffer X { vec4 x4[]; };
layout(std430, set = 0, binding = 1) readonly buffer NW { vec4 nw4[]; };
layout(std430, set = 0, binding = 2) writeonly buffer QQ { uvec4 q4[]; };
layout(std430, set = 0, binding = 2) writeonly buffer QF { float qf[]; };
layout(std430, set = 0, binding = 2) writeonly buffer QU { uint qu[]; };

layout(push_constant) uniform P { uint cols; uint flags; float eps; uint batch; uint tile; } pc;

shared float red[kWG / kG];

void main() {
  const uint b = gl_WorkGroupID.x, lid = gl_LocalInvocationID.x;
  const bool norm = (pc.flags & 1u) != 0u, regs = (pc.flags & 4u) != 0u;
  const uint T = pc.tile, B = pc.batch;
  float ssq = 0.0;
  // Half a block per invocation, as the staged kernel's stage_half (matvec_q8_parts.glsl).
  for (uint h = lid; h < 2u * (pc.cols >> 5u); h += kWG) {
    const uint k = h >> 1u, half_ = h & 1u, at = 8u * k + 4u * half_;
    vec4 v[4], n[4];
    for (uint i = 0u; i < 4u; ++i) {
      v[i] = x4[b * (pc.cols >> 2u) + at + i];
      n[i] = norm ? nw4[at + i] : vec4(1.0);
    }
    const Q8Half o = q8_half(v, n, norm, 1.0);
    if (regs) {
      [[unroll]] for (uint i = 0u; i < 4u; ++i) {
        const uint vw = 4u * half_ + i;
        qu[8u * (k * B + b) + (vw >> 1u) + 4u * (vw & 1u)] = o.w[i];
      }
      if (half_ == 0u) qf[B * T / 4u + (k >> 1u) * 2u * B + 2u * b + (k & 1u)] = o.d;
      qf[B * T * 9u / 32u + (k >> 1u) * 4u * B + 4u * b + 2u * half_ + (k & 1u)] = o.s;
    } else {
      q4[b * (T / 16u) + 2u * k + half_] = uvec4(o.w[0], o.w[1], o.w[2], o.w[3]);
      if (half_ == 0u) qf[B * T / 4u + b * (T / 32u) + k] = o.d;
      // SS(2j + h)[k & 1]
      qf[B * T * 9u / 32u + b * (T / 16u) + 4u * (k >> 1u) + 2u * half_ + (k & 1u)] = o.s;
    }
    ssq += half_ == 0u ? o.ssq : 0.0;
  }
  ssq = subgroupAdd(ssq);
  if (lid % kG == 0u) red[lid / kG] = ssq;
  barrier();
  if (lid == 0u) {
    float t = 0.0;
    for (uint g = 0u; g < kWG / kG; ++g) t += red[g];
    qf[B * T * 13u / 32u + b] = norm ? inversesqrt(t / float(pc.cols) + pc.eps) : 1.0;
  }
}
