#version 460
// Greedy sampling: out[r] = index of the largest logit of row r (ties → smallest index; NaN never
// wins). One workgroup per row.
layout(local_size_x = 256) in;
layout(std430, binding = 0) readonly buffer L { float l[]; };
layout(std430, binding = 1) writeonly buffer O { uint o[]; };
layout(push_constant) uniform P { uint ncols; } pc;
shared float bv[256];
shared uint bi[256];
void main() {
  uint row = gl_WorkGroupID.x;
  uint base = row * pc.ncols;
  float best = -1.0 / 0.0;
  uint besti = 0xffffffffu;
  for (uint i = gl_LocalInvocationID.x; i < pc.ncols; i += 256u) {
    float v = l[base + i];
    if (v > best || (besti == 0xffffffffu && !isnan(v))) { best = v; besti = i; }
  }
  bv[gl_LocalInvocationID.x] = best;
  bi[gl_LocalInvocationID.x] = besti;
  barrier();
  for (uint stride = 128u; stride > 0u; stride >>= 1) {
    uint a = gl_LocalInvocationID.x;
    if (a < stride) {
      float v2 = bv[a + stride]; uint i2 = bi[a + stride];
      if (i2 != 0xffffffffu && (bi[a] == 0xffffffffu || v2 > bv[a] || (v2 == bv[a] && i2 < bi[a]))) { bv[a] = v2; bi[a] = i2; }
    }
    barrier();
  }
  if (gl_LocalInvocationID.x == 0u) o[row] = bi[0];
}
