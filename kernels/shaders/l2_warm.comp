#version 460
// L2 warm-up (kernels/ops/l2_warm.h): reads words [first, first + n) of a buffer — 16-byte words,
// four loads in flight per invocation — so that a later dispatch finds them in the GPU's L2 cache.
// Recorded beside a dispatch that leaves the memory bus idle (decode attention, the RoPE/KV write),
// it moves the next matvec's weight reads off that matvec's critical path. The reads must not be
// optimised away, so each workgroup writes the XOR of the words it read to out[workgroup]: the XOR of
// all out[] is the XOR of the range (what the kernel test checks), a value no one else reads.
#extension GL_EXT_control_flow_attributes : require
layout(local_size_x = 256) in;
layout(std430, set = 0, binding = 0) readonly buffer W { uvec4 w[]; };
layout(std430, set = 0, binding = 1) writeonly buffer O { uint o[]; };
layout(push_constant) uniform P { uint first; uint n; uint grid; } pc;
shared uint red[256];

void main() {
  const uint lid = gl_LocalInvocationID.x, stride = pc.grid * 256u;
  uvec4 a = uvec4(0u);
  for (uint i = gl_WorkGroupID.x * 256u + lid; i < pc.n; i += 4u * stride) {
    uvec4 v[4];
    [[unroll]] for (uint u = 0u; u < 4u; ++u) {
      const uint j = i + u * stride;
      v[u] = j < pc.n ? w[pc.first + j] : uvec4(0u);
    }
    [[unroll]] for (uint u = 0u; u < 4u; ++u) a ^= v[u];
  }
  red[lid] = a.x ^ a.y ^ a.z ^ a.w;
  barrier();
  for (uint s = 128u; s > 0u; s >>= 1u) {
    if (lid < s) red[lid] ^= red[lid + s];
    barrier();
  }
  if (lid == 0u) o[gl_WorkGroupID.x] = red[0];
}
