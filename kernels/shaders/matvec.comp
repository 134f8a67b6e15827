#version 460
#extension GL_GOOGLE_include_directive : require
#extension GL_EXT_control_flow_attributes : require
// Decode matvec, batch 1..8 (contract: kernels/ops/matvec.h; per-type inner loops: matvec_core.glsl).
//
//   y_m[b][r] (= or +=) inv_rms[b] · Σ_c W_m[r][c] · x[b][c] · norm_w[c]    for 1..3 matrices W_m
//   sharing x (without the RMSNorm prologue norm_w = 1 and inv_rms = 1); SwiGLU: y_0 = silu(g) · u
//   with g and u the products of W_0 (gate) and W_1 (up).
//
// Work split. A workgroup of kWG invocations = kWG/32 row groups of kG = 32 lanes; each row group
// owns kR consecutive rows of one matrix (SwiGLU: kR gate rows and the same kR up rows), so a
// workgroup covers kWG/32 · kR rows. The workgroup walks x in tiles of kTileVals values per batch
// column: stage x·norm_w (f32) and the sum of every 8 staged values in shared memory, barrier, every
// row group adds the tile's share of its rows (lanes stride over parts of the rows, all slots
// reusing the same staged values), barrier, next tile. inv_rms factors out of the dot product
// (Σ W·x·w·s = s · Σ W·x·w): Σ x² is accumulated while staging and applied at the end, so x is read
// once per workgroup whatever the tile count.
//
// End of a workgroup: the lanes' partial sums go to shared memory (the tile area, reused) and one
// lane per (batch column, row) adds its row group's 32 partials and writes the output — one barrier
// and no log-step tree; no subgroup operations, so the same kernel runs on every Vulkan 1.2 device.
// (subgroupAdd per value would be as cheap on a GPU, but its code grows with batch × rows and
// lavapipe's LLVM takes seconds per such pipeline: measured ~1 s of a 1.9 s compile at batch 8.)
//
// Specialization on the matrices' types and count: a pipeline carries only the code its call needs
// (every type path and every 3-way binding choice costs registers on GPUs and seconds of compile
// time on lavapipe).
//
// Bytes per call: Σ_m rows_m · row_bytes_m (weights, read once) + workgroups · batch · cols · 4 (x,
// from L2: ~30% of the weights at 16 Q4_K rows per workgroup) + batch · rows · 4 per output (twice
// for kAdd).

layout(local_size_x_id = 0) in;
layout(constant_id = 1) const uint kG = 32u;           // lanes per row group
layout(constant_id = 2) const uint kNB = 1u;           // batch columns
layout(constant_id = 3) const uint kR = 2u;            // rows per row group (per matrix)
layout(constant_id = 4) const uint kSwiGlu = 0u;       // 1: slots kR.. are the up rows of slots 0..kR-1
layout(constant_id = 5) const uint kTileVals = 4096u;  // staged values per batch column (multiple of 256)
layout(constant_id = 6) const uint kMats = 3u;         // weight bindings in use (1..3)
layout(constant_id = 7) const uint kType0 = 12u;       // weight type id of each matrix (ggml ids)
layout(constant_id = 8) const uint kType1 = 12u;
layout(constant_id = 9) const uint kType2 = 12u;
layout(constant_id = 10) const uint kMvUnrollCols = 1u;  // 0 on CPU devices (matvec_core.glsl: MV_COLS)
const uint kMvTypeMask = (1u << kType0) | (1u << kType1) | (1u << kType2);  // code compiled in
const uint kWG = gl_WorkGroupSize.x;
const uint kGroups = kWG / kG;
const uint kNS = kR * (kSwiGlu + 1u);    // row slots per row group
const uint kNV = kNS * kNB + kNB;        // values per lane at the end: the slots' sums and Σ x²

layout(std430, set = 0, binding = 0) readonly buffer X { vec4 x4[]; };
layout(std430, set = 0, binding = 1) readonly buffer NW { vec4 nw4[]; };
layout(std430, set = 0, binding = 2) readonly buffer W0q { uvec4 w0q[]; };
layout(std430, set = 0, binding = 2) readonly buffer W0w { uint w0w[]; };
layout(std430, set = 0, binding = 3) readonly buffer W1q { uvec4 w1q[]; };
layout(std430, set = 0, binding = 3) readonly buffer W1w { uint w1w[]; };
layout(std430, set = 0, binding = 4) readonly buffer W2q { uvec4 w2q[]; };
layout(std430, set = 0, binding = 4) readonly buffer W2w { uint w2w[]; };
layout(std430, set = 0, binding = 5) buffer Y0 { float y0[]; };
layout(std430, set = 0, binding = 6) buffer Y1 { float y1[]; };
layout(std430, set = 0, binding = 7) buffer Y2 { float y2[]; };

// flags: bit 0 RMSNorm prologue, bit 1 add into y (kAdd). wg_end[m]: workgroups of matrices 0..m.
// type: the matrices' type ids (informational: the code is specialized on kType0..2).
layout(push_constant) uniform P {
  uint cols; uint flags; float eps; uint n_mats;
  uint ntiles; uint tile_vals; uint groups_x; uint pad;
  uvec4 type; uvec4 rows; uvec4 y_stride; uvec4 row_bytes; uvec4 wg_end;
} pc;

// Shared memory, as vec4: while tiles are processed, [0, kXs) staged values (column b at
// b·kTileVals/4) and then the 8-value sums (column b at float b·kTileVals/8); at the end the lanes'
// partial sums [(group·kNV + v)·kG + lane] and then the per-group Σ x² [group·kNB + b] (floats).
const uint kXs = kNB * kTileVals / 4u;
const uint kStageVec4 = kXs + kNB * kTileVals / 32u;
const uint kRedVec4 = (kWG * kNV + kGroups * kNB + 3u) / 4u;
shared vec4 sm[kStageVec4 > kRedVec4 ? kStageVec4 : kRedVec4];

float mv_acc[kNB][kNS];
uint mv_row[kNS];
uint mv_mat[kNS];
bool mv_live[kNS];

uvec4 mv_wq(uint m, uint i) {
  if (kMats == 1u || m == 0u) return w0q[i];
  if (kMats == 2u || m == 1u) return w1q[i];
  return w2q[i];
}
uint mv_ww(uint m, uint i) {
  if (kMats == 1u || m == 0u) return w0w[i];
  if (kMats == 2u || m == 1u) return w1w[i];
  return w2w[i];
}
vec4 mv_x4(uint b, uint v) { return sm[b * (kTileVals / 4u) + v]; }
float sm_f(uint i) { return sm[i >> 2u][i & 3u]; }
float mv_xs(uint b, uint e) { return sm_f(4u * kXs + b * (kTileVals / 8u) + e); }

#include "matvec_core.glsl"

float mv_ssq[kNB];  // this invocation's share of Σ x² per batch column

// Stages x·norm_w of column b for tile values first .. first+nvals, 8 per invocation, and their sums.
void stage_column(uint b, uint first, uint nvals, bool norm) {
  const uint lid = gl_LocalInvocationID.x;
  for (uint e = lid; e < (nvals >> 3u); e += kWG) {
    const uint gi = b * (pc.cols >> 2u) + (first >> 2u) + 2u * e;
    vec4 a = x4[gi], c = x4[gi + 1u];
    mv_ssq[b] += dot(a, a) + dot(c, c);
    if (norm) {
      a *= nw4[(first >> 2u) + 2u * e];
      c *= nw4[(first >> 2u) + 2u * e + 1u];
    }
    sm[b * (kTileVals / 4u) + 2u * e] = a;
    sm[b * (kTileVals / 4u) + 2u * e + 1u] = c;
    const uint si = 4u * kXs + b * (kTileVals / 8u) + e;
    sm[si >> 2u][si & 3u] = dot(a + c, vec4(1.0));
  }
}

// Stores this lane's partial sums of column b: value v = s·kNB + b (slot-major, so the up row of
// output task (s, b) is v + kR·kNB), then kNS·kNB + b for Σ x².
void store_partials(uint b, uint base) {
  [[unroll]] for (uint s = 0u; s < kNS; ++s) {
    const uint i = base + (s * kNB + b) * kG;
    sm[i >> 2u][i & 3u] = mv_acc[b][s];
  }
  const uint i = base + (kNS * kNB + b) * kG;
  sm[i >> 2u][i & 3u] = mv_ssq[b];
}

void main() {
  const uint wg = gl_WorkGroupID.x + gl_WorkGroupID.y * pc.groups_x;
  if (wg >= pc.wg_end[pc.n_mats - 1u]) return;  // grid padding: whole workgroups, before any barrier
  const uint m = wg < pc.wg_end.x ? 0u : (wg < pc.wg_end.y ? 1u : 2u);
  const uint wg0 = m == 0u ? 0u : pc.wg_end[m - 1u];
  const uint lid = gl_LocalInvocationID.x, group = lid / kG, lane = lid % kG;
  const uint r0 = ((wg - wg0) * kGroups + group) * kR;
  [[unroll]] for (uint s = 0u; s < kNS; ++s) {
    mv_mat[s] = kSwiGlu != 0u ? s / kR : m;
    const uint r = r0 + s % kR;
    mv_live[s] = r < pc.rows[mv_mat[s]];
    mv_row[s] = mv_live[s] ? r * pc.row_bytes[mv_mat[s]] : 0u;
    [[unroll]] for (uint b = 0u; b < kNB; ++b) mv_acc[b][s] = 0.0;
  }
  bool live[kNS];
  [[unroll]] for (uint s = 0u; s < kNS; ++s) live[s] = mv_live[s];

  const bool norm = (pc.flags & 1u) != 0u;
  [[unroll]] for (uint b = 0u; b < kNB; ++b) mv_ssq[b] = 0.0;
  for (uint t = 0u; t < pc.ntiles; ++t) {
    const uint first = t * pc.tile_vals, nvals = min(pc.tile_vals, pc.cols - first);
    if (t > 0u) barrier();  // every row group is done with the previous tile
    MV_COLS(stage_column(b, first, nvals, norm))
    barrier();
    // The row groups' passes over the tile: one, or two when SwiGLU's gate and up differ in type.
    // The matrix index of every slot is set to a constant right before each instance of mv_tile, so
    // that its weight loads compile to one binding (no 3-way choice per load).
    if (kSwiGlu == 0u) {
      if (kMats == 1u || m == 0u) {
        [[unroll]] for (uint s = 0u; s < kNS; ++s) mv_mat[s] = 0u;
        mv_tile(kType0, first, nvals, lane);
      } else if (kMats == 2u || m == 1u) {
        [[unroll]] for (uint s = 0u; s < kNS; ++s) mv_mat[s] = 1u;
        mv_tile(kType1, first, nvals, lane);
      } else {
        [[unroll]] for (uint s = 0u; s < kNS; ++s) mv_mat[s] = 2u;
        mv_tile(kType2, first, nvals, lane);
      }
    } else if (kType0 == kType1) {
      mv_tile(kType0, first, nvals, lane);
    } else {
      [[unroll]] for (uint s = 0u; s < kNS; ++s) mv_live[s] = live[s] && s < kR;
      mv_tile(kType0, first, nvals, lane);
      [[unroll]] for (uint s = 0u; s < kNS; ++s) mv_live[s] = live[s] && s >= kR;
      mv_tile(kType1, first, nvals, lane);
      [[unroll]] for (uint s = 0u; s < kNS; ++s) mv_live[s] = live[s];
    }
  }

  // Partial sums to shared memory.
  barrier();  // the last tile is no longer read
  MV_COLS(store_partials(b, group * kNV * kG + lane))
  barrier();
  // Σ x² of each row group (lanes b < kNB), then inv_rms over the groups.
  const uint red2 = kWG * kNV;  // float offset of the per-group Σ x²
  float ssq_group = 0.0;
  if (norm && lane < kNB) {
    const uint v0 = (group * kNV + kNS * kNB + lane) * kG;  // a multiple of 4: kG is
    for (uint k = 0u; k < kG; k += 4u) ssq_group += dot(sm[(v0 + k) >> 2u], vec4(1.0));
  }
  if (norm && lane < kNB) {  // past the partial sums: no hazard with the reads above
    const uint i = red2 + group * kNB + lane;
    sm[i >> 2u][i & 3u] = ssq_group;
  }
  barrier();
  // Output tasks (s, b), s < kR: one lane each.
  const bool add = (pc.flags & 2u) != 0u;
  for (uint task = lane; task < kR * kNB; task += kG) {
    const uint s = task / kNB, b = task % kNB, r = r0 + s;
    if (r >= pc.rows[m]) continue;
    float inv = 1.0;
    if (norm) {
      float total = 0.0;
      for (uint g = 0u; g < kGroups; ++g) total += sm_f(red2 + g * kNB + b);
      inv = inversesqrt(total / float(pc.cols) + pc.eps);
    }
    float v = 0.0;
    const uint vg = (group * kNV + task) * kG;
    for (uint k = 0u; k < kG; k += 4u) v += dot(sm[(vg + k) >> 2u], vec4(1.0));
    v *= inv;
    const uint i = b * pc.y_stride[m] + r;
    if (kSwiGlu != 0u) {
      float u = 0.0;
      const uint vu = vg + kR * kNB * kG;
      for (uint k = 0u; k < kG; k += 4u) u += dot(sm[(vu + k) >> 2u], vec4(1.0));
      y0[i] = v / (1.0 + exp(-v)) * (u * inv);
    } else if (kMats == 1u || m == 0u) {
      y0[i] = add ? y0[i] + v : v;
    } else if (kMats == 2u || m == 1u) {
      y1[i] = add ? y1[i] + v : v;
    } else {
      y2[i] = add ? y2[i] + v : v;
    }
  }
}
