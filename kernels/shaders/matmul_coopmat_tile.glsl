// matmul_coopmat_tile.glsl — the body of the KHR cooperative-matrix GEMM (matmul_coopmat.comp) and of
// its grouped form over MoE experts (matmul_coopmat_grouped.comp, which defines MATMUL_GROUPED).
//
//   y[b][r] = sum_c W[r][c] * x[b][c]      W: GGUF rows × cols (any kernels/quant type), x: f16 or f32
//
// Tile: a workgroup of WG invocations (WG/32 subgroups of 32) computes BM weight rows × BN batch
// columns of y (specialization constants; kernels/ops/matmul.cpp picks 128×128 over 256 invocations
// for big shapes and 64×64 over 128 for skinny ones). K advances 32 values per step (one Q8_0 block,
// one K-quant sub-block: one scale). Per step:
//  - A (weights): 2·BM pieces of 16 values; every invocation loads its piece(s) with 16-byte loads
//    where the format is 16-byte aligned (F32 F16 BF16 Q4_K Q5_K; Q8_0 and Q6_K blocks are 34 / 210
//    bytes, so word loads), dequantizes them and stores f16 into shared memory.
//  - B (activations): 2·BN pieces of 16 values, 32 bytes (f16, read as they are) or 64 bytes (f32,
//    rounded to f16 here) each, one or more per invocation.
//  - Double buffering: the loads of step k+kPrefetch are issued before the products of step k and land
//    in the other shared buffer after the products of step k+kPrefetch−1, so one barrier per step
//    suffices (a buffer is rewritten only after every subgroup has passed the barrier that ends the
//    step that read it). kPrefetch = 2 (dense default) keeps two register sets in flight.
//  - Subgroup (sgm, sgn) of an SGM × (WG/32/SGM) grid multiplies its WM × WN block as FM × FN
//    16×16×16 f16 products accumulated in f32.
// Output: each 16×16 accumulator goes through a per-subgroup shared staging square, then lanes write
// the in-bounds elements (partial tiles in rows and batch need no padding anywhere).
// Split K (dense only, pc.k_splits > 1; kernels/ops/matmul.h): workgroup z of the grid sums K steps
// z·nk/S .. (z+1)·nk/S − 1 alone and writes its partial sums at y + z·pc.split_stride (the host's
// scratch, rows apart per column); matmul_split_sum.comp adds the S partials in order. A skinny call
// (9–255 columns: a follow-up's tokens, several streams) has too few tiles to keep loads in flight on
// every SM; S times the workgroups do.
//
// Shared memory: (BM + BN)·40 halves × 2 buffers + 1 KiB per subgroup: 48 KiB at 128×128 (the host
// checks maxComputeSharedMemorySize), 24 KiB at 64×64.
// Bytes/flops per step and workgroup: BM·32 weights (18 bytes per 32 at Q4_K) + BN·64 activation
// bytes (f16) against 2·BM·BN·32 flops: at 128×128, 2.3 + 8 KiB per MFLOP, from L2 for the most part
// (every row tile reads the same activations, every batch tile the same weights).
//
// Grouped (MATMUL_GROUPED): W is [n_expert][rows][cols] (expert_bytes apart), the batch columns are
// slots: expert_offsets[e] .. expert_offsets[e+1] are expert e's slots (sorted by expert), slot s
// multiplies x row row_ids[s] and writes y row s. Workgroup y index j is the j-th (expert, slot tile)
// pair over all experts in order; the host dispatches an upper bound (ceil(slots/BN) + n_expert) and
// the surplus workgroups return at once, so experts without slots cost nothing.
#extension GL_KHR_cooperative_matrix : require
#extension GL_KHR_memory_scope_semantics : require
#extension GL_EXT_shader_explicit_arithmetic_types_float16 : require
#extension GL_EXT_control_flow_attributes : require
#extension GL_KHR_shader_subgroup_basic : require
#extension GL_KHR_shader_subgroup_arithmetic : require

layout(local_size_x_id = 4) in;
layout(constant_id = 0) const uint kType = 12u;  // GGML type id of W
layout(constant_id = 1) const uint kXF16 = 0u;   // 1: x is f16
layout(constant_id = 2) const uint BM = 128u;    // weight rows per workgroup
layout(constant_id = 3) const uint BN = 128u;    // batch columns (slots) per workgroup
layout(constant_id = 4) const uint WG = 256u;    // invocations (32 per subgroup)
layout(constant_id = 5) const uint SGM = 2u;     // subgroups along the rows
// Grouped only, debugging switches (TROVE_GROUPED_KHR=2|3, matmul.h), bits: 1 = workgroups past the
// last (expert, slot tile) pair stay, run no K step and store nothing (no return before the
// barriers); 2 = invocation 0 finds the (expert, tile) by a serial walk (no subgroup operations).
// To tell a control-flow or subgroup problem from the data path on the H200.
layout(constant_id = 6) const uint kDebug = 0u;
const uint kStayAll = kDebug & 1u, kSerialSearch = kDebug & 2u;
// Steps between a piece's global load and its store into shared memory (TROVE_KHR_PREFETCH, dense
// only): 1 = the loads of step k+1 fly during step k's products; 2 = the loads of step k+2 are issued
// at the start of step k and stored at the end of step k+1 (two register sets), so two steps of
// products, a store and a barrier cover their latency — with one workgroup per SM (the 8B's
// 4096-row products at 512 tokens: 128 workgroups) nothing else does.
layout(constant_id = 7) const uint kPrefetch = 1u;  // the host sends 2 for dense calls (matmul.h)

const uint BK = 32u;
const uint SK = 10u;  // shared row stride in f16vec4: 32 halves + 8 of padding (80 bytes, no bank conflicts)
const uint NSG = WG / 32u;
const uint SGN = NSG / SGM;
const uint WM = BM / SGM, WN = BN / SGN;  // this subgroup's block
const uint FM = WM / 16u, FN = WN / 16u;  // 16×16 fragments in it
const uint PA = 2u * BM / WG;             // weight pieces (16 values) per invocation and step
const uint PB = 2u * BN / WG;             // activation pieces per invocation and step

layout(std430, set = 0, binding = 0) readonly buffer W { uint w[]; };
layout(std430, set = 0, binding = 0) readonly buffer W4 { uvec4 w4[]; };
layout(std430, set = 0, binding = 1) readonly buffer X4 { uvec4 x4[]; };
layout(std430, set = 0, binding = 2) writeonly buffer Y { float y[]; };
#ifdef MATMUL_GROUPED
layout(std430, set = 0, binding = 3) readonly buffer Offsets { uint expert_offsets[]; };
layout(std430, set = 0, binding = 4) readonly buffer RowIds { uint row_ids[]; };
#endif
layout(push_constant) uniform P {
  uint rows; uint cols; uint batch; uint row_bytes; uint y_stride; uint n_expert; uint expert_bytes; uint x_rows;
  uint k_splits; uint split_stride;  // split K (dense): 0 or 1 = none
} pc;

#include "dequant_chunk.glsl"

shared f16vec4 As[2u * BM * SK];  // [buffer][row][k/4]
shared f16vec4 Bs[2u * BN * SK];  // [buffer][batch column][k/4]: B (k × n) column-major
shared float Cs[NSG * 256u];      // per-subgroup 16×16 output staging, column-major

// Raw bytes of one piece, held in registers from the load to the store (see raw layouts in load_a);
// set 1 only with kPrefetch = 2 (the set index is a constant at every call: registers, not memory).
uvec4 ra[2][PA][4];
bool va[2][PA];
uvec4 rb[2][PB][4];
bool vb[2][PB];
uint w_base = 0u;   // byte offset of this workgroup's expert in W (grouped), else 0
uint k_base = 0u;   // this workgroup's first K step (split K), added to the step of every load

// Piece i of this invocation for step k: row (t + i·WG)/2, values 16·h .. 16·h+15 of the chunk.
void load_a(uint set, uint i, uint r0, uint k) {
  k += k_base;
  uint p = gl_LocalInvocationID.x + i * WG, r = r0 + (p >> 1), h = p & 1u;
  va[set][i] = r < pc.rows;
  if (!va[set][i]) return;
  uint base = w_base + r * pc.row_bytes;
  if (kType == kF32) {  // rows of 4·cols bytes: 16-byte aligned
    uint q = (base >> 4) + 8u * k + 4u * h;
    ra[set][i][0] = w4[q]; ra[set][i][1] = w4[q + 1u]; ra[set][i][2] = w4[q + 2u]; ra[set][i][3] = w4[q + 3u];
  } else if (kType == kF16 || kType == kBF16) {
    uint q = (base >> 4) + 4u * k + 2u * h;
    ra[set][i][0] = w4[q]; ra[set][i][1] = w4[q + 1u];
  } else if (kType == kQ8_0) {  // 34-byte blocks: word loads at any alignment
    uint blk = base + k * 34u, o = blk + 2u + 16u * h;
    ra[set][i][0] = uvec4(u32at(o), u32at(o + 4u), u32at(o + 8u), u32at(o + 12u));
    ra[set][i][1].x = u32at(blk);  // d in the low half
  } else if (kType == kQ4_K || kType == kQ5_K) {  // 144 / 176-byte blocks: 16-byte aligned
    uint blk = base + (k >> 3) * (kType == kQ4_K ? 144u : 176u), sb = k & 7u;
    ra[set][i][1] = w4[blk >> 4];  // d, dmin, scales[12]
    ra[set][i][0] = w4[(blk + (kType == kQ4_K ? 16u : 48u) + 32u * (sb >> 1) + 16u * h) >> 4];  // qs
    if (kType == kQ5_K) ra[set][i][2] = w4[(blk + 16u + 16u * h) >> 4];                        // qh
  } else {  // Q6_K, 210-byte blocks
    uint blk = base + (k >> 3) * 210u, sb = k & 7u, n = sb >> 2, g = sb & 3u;
    uint ql = blk + n * 64u + ((g & 1u) << 5) + 16u * h, qh = blk + 128u + n * 32u + 16u * h;
    ra[set][i][0] = uvec4(u32at(ql), u32at(ql + 4u), u32at(ql + 8u), u32at(ql + 12u));
    ra[set][i][1] = uvec4(u32at(qh), u32at(qh + 4u), u32at(qh + 8u), u32at(qh + 12u));
    ra[set][i][2].x = u32at(blk + 192u + n * 8u + 2u * g + h);  // this half's int8 scale in the low byte
    ra[set][i][2].y = u32at(blk + 208u);                        // d in the low half
  }
}

f16vec4 f16x4(uint a, uint b) { return f16vec4(unpackFloat2x16(a), unpackFloat2x16(b)); }
f16vec4 bf16x4(uint a, uint b) {
  return f16vec4(uintBitsToFloat(uvec4(a << 16u, a & 0xffff0000u, b << 16u, b & 0xffff0000u)));
}

void store_a(uint set, uint i, uint k, uint buf) {
  k += k_base;
  uint p = gl_LocalInvocationID.x + i * WG, row = p >> 1, h = p & 1u;
  uint s = (buf * BM + row) * SK + 4u * h;
  f16vec4 v[4];
  if (!va[set][i]) {
    for (uint j = 0u; j < 4u; ++j) v[j] = f16vec4(0.0);
  } else if (kType == kF32) {
    for (uint j = 0u; j < 4u; ++j) v[j] = f16vec4(uintBitsToFloat(ra[set][i][j]));
  } else if (kType == kF16) {
    v[0] = f16x4(ra[set][i][0].x, ra[set][i][0].y); v[1] = f16x4(ra[set][i][0].z, ra[set][i][0].w);
    v[2] = f16x4(ra[set][i][1].x, ra[set][i][1].y); v[3] = f16x4(ra[set][i][1].z, ra[set][i][1].w);
  } else if (kType == kBF16) {
    v[0] = bf16x4(ra[set][i][0].x, ra[set][i][0].y); v[1] = bf16x4(ra[set][i][0].z, ra[set][i][0].w);
    v[2] = bf16x4(ra[set][i][1].x, ra[set][i][1].y); v[3] = bf16x4(ra[set][i][1].z, ra[set][i][1].w);
  } else if (kType == kQ8_0) {
    float d = unpackHalf2x16(ra[set][i][1].x).x;
    for (uint j = 0u; j < 4u; ++j) v[j] = f16vec4(d * sbytes4(ra[set][i][0][j]));
  } else if (kType == kQ4_K || kType == kQ5_K) {
    uvec4 hd = ra[set][i][1];
    uint sb = k & 7u, j4 = sb & 3u, sc, mn;
    vec2 dm = unpackHalf2x16(hd.x);
    if (sb < 4u) {
      sc = bitfieldExtract(hd.y, int(8u * j4), 6);
      mn = bitfieldExtract(hd.z, int(8u * j4), 6);
    } else {
      uint a = bitfieldExtract(hd.w, int(8u * j4), 8);
      sc = (a & 15u) | (bitfieldExtract(hd.y, int(8u * j4 + 6u), 2) << 4);
      mn = (a >> 4) | (bitfieldExtract(hd.z, int(8u * j4 + 6u), 2) << 4);
    }
    float scale = dm.x * float(sc), mins = dm.y * float(mn);
    uint shift = 4u * (sb & 1u);
    for (uint j = 0u; j < 4u; ++j) {
      uint q = (ra[set][i][0][j] >> shift) & 0x0f0f0f0fu;
      if (kType == kQ5_K) q |= ((ra[set][i][2][j] >> sb) & 0x01010101u) << 4;
      v[j] = f16vec4(scale * bytes4(q) - mins);
    }
  } else {  // Q6_K
    uint sb = k & 7u, g = sb & 3u, lshift = g < 2u ? 0u : 4u, hshift = 2u * g;
    float scale = unpackHalf2x16(ra[set][i][2].y).x * float(bitfieldExtract(int(ra[set][i][2].x), 0, 8));
    for (uint j = 0u; j < 4u; ++j) {
      uint q = ((ra[set][i][0][j] >> lshift) & 0x0f0f0f0fu) | (((ra[set][i][1][j] >> hshift) & 0x03030303u) << 4);
      v[j] = f16vec4(scale * (bytes4(q) - 32.0));
    }
  }
  for (uint j = 0u; j < 4u; ++j) As[s + j] = v[j];
}

// Activation piece i for step k: batch column (t + i·WG)/2 of this tile, values 16·h .. 16·h+15.
// `xrow` maps the column to a row of x (and says whether it exists).
void load_b(uint set, uint i, uint k, uint xrow, bool valid) {
  k += k_base;
  uint h = (gl_LocalInvocationID.x + i * WG) & 1u;
  vb[set][i] = valid;
  if (!valid) return;
  uint e = xrow * pc.cols + 32u * k + 16u * h;  // first value
  if (kXF16 != 0u) {
    uint q = e >> 3;
    rb[set][i][0] = x4[q]; rb[set][i][1] = x4[q + 1u];
  } else {
    uint q = e >> 2;
    rb[set][i][0] = x4[q]; rb[set][i][1] = x4[q + 1u]; rb[set][i][2] = x4[q + 2u]; rb[set][i][3] = x4[q + 3u];
  }
}

void store_b(uint set, uint i, uint buf) {
  uint p = gl_LocalInvocationID.x + i * WG, n = p >> 1, h = p & 1u;
  uint s = (buf * BN + n) * SK + 4u * h;
  f16vec4 v[4];
  if (!vb[set][i]) {
    for (uint j = 0u; j < 4u; ++j) v[j] = f16vec4(0.0);
  } else if (kXF16 != 0u) {
    v[0] = f16x4(rb[set][i][0].x, rb[set][i][0].y); v[1] = f16x4(rb[set][i][0].z, rb[set][i][0].w);
    v[2] = f16x4(rb[set][i][1].x, rb[set][i][1].y); v[3] = f16x4(rb[set][i][1].z, rb[set][i][1].w);
  } else {
    for (uint j = 0u; j < 4u; ++j) v[j] = f16vec4(uintBitsToFloat(rb[set][i][j]));
  }
  for (uint j = 0u; j < 4u; ++j) Bs[s + j] = v[j];
}

// The products of one K step from shared buffer CUR into this subgroup's accumulators `acc` (a macro:
// arrays of cooperative matrices do not pass as function arguments).
#define MMA_STEP(CUR)                                                                                          \
  [[unroll]] for (uint kk = 0u; kk < BK / 4u; kk += 4u) { /* two 16-deep products (in f16vec4 units) */        \
    coopmat<float16_t, gl_ScopeSubgroup, 16, 16, gl_MatrixUseA> a[FM];                                         \
    coopmat<float16_t, gl_ScopeSubgroup, 16, 16, gl_MatrixUseB> b[FN];                                         \
    [[unroll]] for (uint fm = 0u; fm < FM; ++fm)                                                               \
      coopMatLoad(a[fm], As, ((CUR) * BM + sgm * WM + 16u * fm) * SK + kk, SK, gl_CooperativeMatrixLayoutRowMajor);     \
    [[unroll]] for (uint fn = 0u; fn < FN; ++fn)                                                               \
      coopMatLoad(b[fn], Bs, ((CUR) * BN + sgn * WN + 16u * fn) * SK + kk, SK, gl_CooperativeMatrixLayoutColumnMajor); \
    [[unroll]] for (uint fm = 0u; fm < FM; ++fm)                                                               \
      [[unroll]] for (uint fn = 0u; fn < FN; ++fn) acc[fm * FN + fn] = coopMatMulAdd(a[fm], b[fn], acc[fm * FN + fn]); \
  }

// One step K of the two-steps-ahead loop (kPrefetch = 2) on buffer and register set SET (OTHER = the
// other one): the loads of step K+2 into set SET, the products of step K, set OTHER (step K+1, loaded
// a step earlier) stored into buffer OTHER, the barrier. A macro, so the sets are constants (registers).
#define PREFETCH2_STEP(SET, OTHER, K)                                                                          \
  if ((K) + 2u < nk) {                                                                                         \
    for (uint i = 0u; i < PA; ++i) load_a(SET, i, r0, (K) + 2u);                                               \
    for (uint i = 0u; i < PB; ++i) load_b(SET, i, (K) + 2u, xrow[i], xvalid[i]);                               \
  }                                                                                                            \
  MMA_STEP(SET)                                                                                                \
  if ((K) + 1u < nk) {                                                                                         \
    for (uint i = 0u; i < PA; ++i) store_a(OTHER, i, (K) + 1u, OTHER);                                         \
    for (uint i = 0u; i < PB; ++i) store_b(OTHER, i, OTHER);                                                   \
  }                                                                                                            \
  barrier();

#ifdef MATMUL_GROUPED
shared uint s_expert, s_tile;
uint tiles_of(uint e) { return (expert_offsets[e + 1u] - expert_offsets[e] + BN - 1u) / BN; }
#endif

void main() {
  const uint t = gl_LocalInvocationID.x, sg = gl_SubgroupID, lane = gl_SubgroupInvocationID;
  const uint r0 = gl_WorkGroupID.x * BM;
  uint col0 = gl_WorkGroupID.y * BN, col_end = pc.batch;  // this tile's batch columns (slots)
#ifdef MATMUL_GROUPED
  // Which (expert, slot tile) is workgroup j? Subgroup 0 counts tiles per expert, each lane over a
  // contiguous run of experts, and the lane whose run holds j walks it.
  const uint j = gl_WorkGroupID.y, none = 0xffffffffu;
  if (kSerialSearch != 0u) {
    if (t == 0u) {
      s_expert = none;
      uint acc = 0u;
      for (uint e = 0u; e < pc.n_expert; ++e) {
        uint tl = tiles_of(e);
        if (j < acc + tl) {
          s_expert = e;
          s_tile = j - acc;
          break;
        }
        acc += tl;
      }
    }
  } else if (sg == 0u) {
    if (lane == 0u) s_expert = none;
    subgroupMemoryBarrierShared();
    subgroupBarrier();
    uint per = (pc.n_expert + 31u) / 32u, e0 = lane * per, mine = 0u;
    for (uint i = 0u; i < per; ++i)
      if (e0 + i < pc.n_expert) mine += tiles_of(e0 + i);
    uint before = subgroupExclusiveAdd(mine);
    if (j >= before && j < before + mine) {
      uint acc = before;
      for (uint i = 0u; i < per; ++i) {
        uint tl = tiles_of(e0 + i);
        if (j < acc + tl) {
          s_expert = e0 + i;
          s_tile = j - acc;
          break;
        }
        acc += tl;
      }
    }
  }
  barrier();
  const uint expert = s_expert;
  if (kStayAll == 0u && expert == none) return;  // beyond the last tile: the whole workgroup leaves
  const bool idle = expert == none;
  col0 = idle ? 0u : expert_offsets[expert] + s_tile * BN;
  col_end = idle ? 0u : expert_offsets[expert + 1u];
  w_base = idle ? 0u : expert * pc.expert_bytes;
#else
  const bool idle = false;
#endif

  // The x row of each activation piece, fixed for the whole K loop.
  uint xrow[PB];
  bool xvalid[PB];
  for (uint i = 0u; i < PB; ++i) {
    uint c = col0 + ((t + i * WG) >> 1);
    xvalid[i] = c < col_end;
#ifdef MATMUL_GROUPED
    xrow[i] = xvalid[i] ? row_ids[c] : 0u;
#else
    xrow[i] = c;
#endif
  }

  const uint sgm = sg % SGM, sgn = sg / SGM;
  // f32 accumulators, or f16 where the including shader defines KHR_ACC_F16 (matmul_coopmat_f16acc.comp,
  // TROVE_MATMUL_ACC=f16: half the registers, f16 sums; kernels/ops/matmul.h).
#ifdef KHR_ACC_F16
#define KHR_ACC_T float16_t
#else
#define KHR_ACC_T float
#endif
  coopmat<KHR_ACC_T, gl_ScopeSubgroup, 16, 16, gl_MatrixUseAccumulator> acc[FM * FN];
  [[unroll]] for (uint f = 0u; f < FM * FN; ++f) acc[f] = coopmat<KHR_ACC_T, gl_ScopeSubgroup, 16, 16, gl_MatrixUseAccumulator>(0.0);

  uint nk = idle ? 0u : pc.cols / BK;
  uint y_base = 0u;  // where this workgroup's sums go in y
  if (pc.k_splits > 1u) {  // split K: steps z·nk/S .. (z+1)·nk/S − 1 (the host keeps every range non-empty)
    const uint z = gl_WorkGroupID.z;
    k_base = z * nk / pc.k_splits;
    nk = (z + 1u) * nk / pc.k_splits - k_base;
    y_base = z * pc.split_stride;
  }
  for (uint i = 0u; i < PA; ++i) load_a(0u, i, r0, 0u);
  for (uint i = 0u; i < PB; ++i) load_b(0u, i, 0u, xrow[i], xvalid[i]);
  for (uint i = 0u; i < PA; ++i) store_a(0u, i, 0u, 0u);
  for (uint i = 0u; i < PB; ++i) store_b(0u, i, 0u);
  if (kPrefetch == 2u && nk > 1u) {
    for (uint i = 0u; i < PA; ++i) load_a(1u, i, r0, 1u);
    for (uint i = 0u; i < PB; ++i) load_b(1u, i, 1u, xrow[i], xvalid[i]);
  }
  barrier();
  if (kPrefetch == 2u) {
    // Two steps per iteration: buffer 0 and register set 0 serve the even steps, buffer 1 and set 1
    // the odd ones. Step k issues the loads of step k+2 into its own set (stored at the end of step
    // k+1) and stores set k+1 (loaded at the start of step k−1) into the other buffer.
    for (uint k = 0u; k < nk; k += 2u) {
      PREFETCH2_STEP(0u, 1u, k)
      if (k + 1u >= nk) break;
      PREFETCH2_STEP(1u, 0u, k + 1u)
    }
  } else {
    for (uint k = 0u; k < nk; ++k) {
      const uint cur = k & 1u;
      const bool more = k + 1u < nk;
      if (more) {
        for (uint i = 0u; i < PA; ++i) load_a(0u, i, r0, k + 1u);
        for (uint i = 0u; i < PB; ++i) load_b(0u, i, k + 1u, xrow[i], xvalid[i]);
      }
      MMA_STEP(cur)
      if (more) {
        for (uint i = 0u; i < PA; ++i) store_a(0u, i, k + 1u, cur ^ 1u);
        for (uint i = 0u; i < PB; ++i) store_b(0u, i, cur ^ 1u);
      }
      barrier();
    }
  }

  // Out through this subgroup's staging square: 16 lanes per column write 16 consecutive rows.
  const uint cs = sg * 256u;
  [[unroll]] for (uint fm = 0u; fm < FM; ++fm) {
    [[unroll]] for (uint fn = 0u; fn < FN; ++fn) {
#ifdef KHR_ACC_F16
      coopmat<KHR_ACC_T, gl_ScopeSubgroup, 16, 16, gl_MatrixUseAccumulator> ah = acc[fm * FN + fn];
      [[unroll]] for (uint i = 0u; i < ah.length(); ++i) ah[i] = clamp(ah[i], float16_t(-65504.0), float16_t(65504.0));
      coopMatStore(coopmat<float, gl_ScopeSubgroup, 16, 16, gl_MatrixUseAccumulator>(ah), Cs, cs, 16u,
                   gl_CooperativeMatrixLayoutColumnMajor);
#else
      coopMatStore(acc[fm * FN + fn], Cs, cs, 16u, gl_CooperativeMatrixLayoutColumnMajor);
#endif
      subgroupMemoryBarrierShared();
      subgroupBarrier();
      const uint rbase = r0 + sgm * WM + 16u * fm, cbase = col0 + sgn * WN + 16u * fn;
      for (uint e = lane; e < 256u; e += 32u) {
        uint r = rbase + (e & 15u), c = cbase + (e >> 4);
        if (r < pc.rows && c < col_end) y[y_base + c * pc.y_stride + r] = Cs[cs + e];
      }
      subgroupMemoryBarrierShared();
      subgroupBarrier();
    }
  }
}
