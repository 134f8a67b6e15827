#version 460
// Greedy sampling: out[r] = index of the largest logit of row r (ties → smallest index; NaN never
// wins; a row of NaN gives 0xffffffff). One workgroup per row. When ncols is a multiple of 4 the row
// is read as vec4, 8 loads in flight per invocation (the 151,936-entry head row was 593 dependent
// scalar loads per invocation); each invocation visits its indices in increasing order, so a strict
// > keeps its first maximum, and the tree below breaks ties by index.
#extension GL_EXT_control_flow_attributes : require
layout(local_size_x = 256) in;
layout(std430, binding = 0) readonly buffer L { float l[]; };
layout(std430, binding = 0) readonly buffer L4 { vec4 l4[]; };
layout(std430, binding = 1) writeonly buffer O { uint o[]; };
layout(push_constant) uniform P { uint ncols; } pc;
const uint kWG = 256u, kU = 8u, kNone = 0xffffffffu;
shared float bv[kWG];
shared uint bi[kWG];

void take(float v, uint i, inout float best, inout uint besti) {
  if (v > best || (besti == kNone && !isnan(v))) { best = v; besti = i; }
}

void main() {
  const uint row = gl_WorkGroupID.x, t = gl_LocalInvocationID.x;
  float best = -1.0 / 0.0;
  uint besti = kNone;
  if (pc.ncols % 4u == 0u) {
    const uint n4 = pc.ncols / 4u, base4 = row * n4;
    for (uint i0 = t; i0 < n4; i0 += kWG * kU) {
      vec4 v[kU];
      [[unroll]] for (uint u = 0u; u < kU; ++u) {
        const uint i = i0 + u * kWG;
        v[u] = i < n4 ? l4[base4 + i] : vec4(0.0);
      }
      [[unroll]] for (uint u = 0u; u < kU; ++u) {
        const uint i = i0 + u * kWG;
        if (i < n4) {
          take(v[u].x, 4u * i, best, besti);
          take(v[u].y, 4u * i + 1u, best, besti);
          take(v[u].z, 4u * i + 2u, best, besti);
          take(v[u].w, 4u * i + 3u, best, besti);
        }
      }
    }
  } else {
    const uint base = row * pc.ncols;
    for (uint i = t; i < pc.ncols; i += kWG) take(l[base + i], i, best, besti);
  }
  bv[t] = best;
  bi[t] = besti;
  barrier();
  for (uint stride = kWG / 2u; stride > 0u; stride >>= 1) {
    if (t < stride) {
      const float v2 = bv[t + stride];
      const uint i2 = bi[t + stride];
      if (i2 != kNone && (bi[t] == kNone || v2 > bv[t] || (v2 == bv[t] && i2 < bi[t]))) { bv[t] = v2; bi[t] = i2; }
    }
    barrier();
  }
  if (t == 0u) o[row] = bi[0];
}
