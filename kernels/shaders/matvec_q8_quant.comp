#version 460
// The q8p form's activation pass (kernels/ops/matvec.h, TROVE_MATVEC=q8p): one workgroup per batch
// column quantizes x̂ = x·norm_w into the scratch slot matvec_q8p.comp reads — int8 with a scale per
// 32 values (d = max|x̂|/127), d·Σq per 16 values, and the column's inv_rms (RMSNorm prologue; 1
// without it). Slot layout in floats, T = tile (cols rounded up to 256), B = batch: int8 values at 0
// (column b at b·T/4), scales at B·T/4 + b·T/32, sums at B·T·9/32 + b·T/16, inv_rms at B·T·13/32 + b.
//
// Every number is the one the staged q8 kernel (matvec_q8.glsl, stage_block) computes for the same
// column, bit for bit: the same workgroup size and lanes per subgroup (the host passes the q8
// kernel's), the same blocks per invocation, Σ x² summed per 32-value block, then over an
// invocation's blocks, then by subgroupAdd, then over the subgroups in order. Speculative
// verification runs batches through this pass and one-token steps through the staged kernel, and
// greedy decoding must not change with it (H200, 8B at depth 8188: a tree reduction here put Σ x²
// ~1e-7 apart and flipped an argmax two tokens on).
#extension GL_KHR_shader_subgroup_arithmetic : require

layout(local_size_x_id = 0) in;
layout(constant_id = 1) const uint kG = 32u;  // lanes per subgroup (the q8 kernel's row group)
const uint kWG = gl_WorkGroupSize.x;

layout(std430, set = 0, binding = 0) readonly buffer X { vec4 x4[]; };
layout(std430, set = 0, binding = 1) readonly buffer NW { vec4 nw4[]; };
layout(std430, set = 0, binding = 2) writeonly buffer QQ { uvec4 q4[]; };
layout(std430, set = 0, binding = 2) writeonly buffer QF { float qf[]; };

layout(push_constant) uniform P { uint cols; uint flags; float eps; uint batch; uint tile; } pc;

shared float red[kWG / kG];

void main() {
  const uint b = gl_WorkGroupID.x, lid = gl_LocalInvocationID.x;
  const bool norm = (pc.flags & 1u) != 0u;
  const uint T = pc.tile, B = pc.batch;
  float ssq = 0.0;
  for (uint k = lid; k < (pc.cols >> 5u); k += kWG) {
    vec4 v[8];
    float amax = 0.0, bsq = 0.0;
    for (uint i = 0u; i < 8u; ++i) {
      v[i] = x4[b * (pc.cols >> 2u) + 8u * k + i];
      bsq += dot(v[i], v[i]);
      if (norm) v[i] *= nw4[8u * k + i];
      const vec4 a = abs(v[i]);
      amax = max(amax, max(max(a.x, a.y), max(a.z, a.w)));
    }
    const float d = amax / 127.0, id = amax > 0.0 ? 127.0 / amax : 0.0;
    int sum[2] = int[2](0, 0);
    uint words[8];
    for (uint i = 0u; i < 8u; ++i) {
      const ivec4 q = ivec4(round(v[i] * id));
      sum[i >> 2u] += (q.x + q.y) + (q.z + q.w);
      words[i] = (uint(q.x) & 0xFFu) | ((uint(q.y) & 0xFFu) << 8u) | ((uint(q.z) & 0xFFu) << 16u) | (uint(q.w) << 24u);
    }
    const uint base = b * (T / 16u) + 2u * k;
    q4[base] = uvec4(words[0], words[1], words[2], words[3]);
    q4[base + 1u] = uvec4(words[4], words[5], words[6], words[7]);
    qf[B * T / 4u + b * (T / 32u) + k] = d;
    qf[B * T * 9u / 32u + b * (T / 16u) + 2u * k] = d * float(sum[0]);
    qf[B * T * 9u / 32u + b * (T / 16u) + 2u * k + 1u] = d * float(sum[1]);
    ssq += bsq;
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
