#version 460
// Chain probe (kernels/ops/chain_probe.h): a measurement of what a dependent step of a decode-like
// chain costs, not a kernel the engine runs. Phase p of a chain of `phases`:
//   weights  each workgroup g streams its share of phase p's weight words (16-byte words, four loads
//            in flight per invocation, as a matvec's weight reads) and sums them: s_g (uint add);
//   vector   every workgroup reads all of y_p (n words, as a matvec stages its input), sums it: S_p,
//            and writes its share of y_{p+1}[i] = y_p[i]·3 + S_p + s_g + i (uint arithmetic).
// y_{p+1} depends on every workgroup's writes of y_p, so phases are ordered the way a decode step's
// dispatches are. Three ways of ordering them (spec constant kMode):
//   0  one phase per dispatch (pc.first), the host records a pipeline barrier between dispatches;
//   1  one dispatch runs every phase, workgroups meet at a grid barrier between phases (an atomic
//      counter in ctl[0]; every workgroup must be resident at once: the grid is the caller's choice);
//   2  as 1 with the barrier split: a workgroup arrives once its share of y_{p+1} is written, streams
//      phase p+1's weights (which depend on nothing), then waits for the others — the overlap a
//      persistent decode kernel would get from loading the next weights before the previous result.
// ctl: [0] arrivals, [1] exits (the last workgroup out resets both, so the next dispatch starts at 0),
// [2] timeouts: waits that gave up after pc.spin polls (workgroups not resident together); the host
// reads it and refuses the result.
#extension GL_EXT_control_flow_attributes : require
#extension GL_KHR_shader_subgroup_basic : require
#extension GL_KHR_shader_subgroup_arithmetic : require

layout(local_size_x = 256) in;
layout(constant_id = 0) const uint kMode = 0u;

layout(std430, set = 0, binding = 0) readonly buffer W { uvec4 w[]; };
layout(std430, set = 0, binding = 1) coherent buffer Y { uint y[]; };
layout(std430, set = 0, binding = 2) volatile coherent buffer C { uint ctl[]; };
layout(push_constant) uniform P {
  uint n;       // words of each vector
  uint phases;  // phases this dispatch runs (kMode 0: 1)
  uint first;   // first phase (kMode 0: the phase)
  uint words;   // weight words (16 bytes) of each phase
  uint grid;    // workgroups of the dispatch
  uint spin;    // polls before a wait gives up
} pc;

shared uint red[32];  // per-subgroup sums

uint wg_sum(uint v) {
  v = subgroupAdd(v);
  if (subgroupElect()) red[gl_SubgroupID] = v;
  barrier();
  uint t = 0u;
  for (uint i = 0u; i < gl_NumSubgroups; ++i) t += red[i];
  barrier();  // before red is written again
  return t;
}

uint weights(uint p) {
  const uint per = (pc.words + pc.grid - 1u) / pc.grid;
  const uint lo = min(gl_WorkGroupID.x * per, pc.words), hi = min(lo + per, pc.words);
  const uint base = p * pc.words;
  uvec4 a = uvec4(0u);
  for (uint i = lo + gl_LocalInvocationID.x; i < hi; i += 4u * 256u) {
    uvec4 v[4];
    [[unroll]] for (uint u = 0u; u < 4u; ++u) {
      const uint j = i + u * 256u;
      v[u] = j < hi ? w[base + j] : uvec4(0u);
    }
    [[unroll]] for (uint u = 0u; u < 4u; ++u) a += v[u];
  }
  return wg_sum(a.x + a.y + a.z + a.w);
}

void vector_step(uint p, uint s) {
  const uint prev = p * pc.n, next = prev + pc.n;
  uint t = 0u;
  for (uint i = gl_LocalInvocationID.x; i < pc.n; i += 256u) t += y[prev + i];
  const uint total = wg_sum(t);
  const uint per = (pc.n + pc.grid - 1u) / pc.grid;
  const uint lo = min(gl_WorkGroupID.x * per, pc.n), hi = min(lo + per, pc.n);
  for (uint i = lo + gl_LocalInvocationID.x; i < hi; i += 256u) y[next + i] = y[prev + i] * 3u + total + s + i;
}

void arrive() {
  memoryBarrierBuffer();  // each invocation's writes of this phase made visible before ...
  barrier();              // ... the workgroup's arrival is counted
  if (gl_LocalInvocationID.x == 0u) atomicAdd(ctl[0], 1u);
}

void wait_for(uint arrivals) {
  if (gl_LocalInvocationID.x == 0u) {
    uint polls = 0u;
    while (ctl[0] < arrivals && polls < pc.spin) ++polls;
    if (ctl[0] < arrivals) atomicAdd(ctl[2], 1u);
    memoryBarrierBuffer();
  }
  barrier();
}

void main() {
  if (kMode == 0u) {
    vector_step(pc.first, weights(pc.first));
    return;
  }
  uint s = kMode == 2u ? weights(pc.first) : 0u;
  for (uint k = 0u; k < pc.phases; ++k) {
    const uint p = pc.first + k;
    if (kMode == 1u) s = weights(p);
    vector_step(p, s);
    if (k + 1u == pc.phases) break;
    arrive();
    if (kMode == 2u) s = weights(p + 1u);
    wait_for(pc.grid * (k + 1u));
  }
  barrier();
  if (gl_LocalInvocationID.x == 0u && atomicAdd(ctl[1], 1u) == pc.grid - 1u) {
    atomicExchange(ctl[0], 0u);  // every workgroup is past its last wait
    atomicExchange(ctl[1], 0u);
  }
}
