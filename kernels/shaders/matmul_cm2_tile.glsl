// matmul_cm2_tile.glsl — the body of matmul_cm2.comp and, with MATMUL_GROUPED, of
// matmul_cm2_grouped.comp (the grouped GEMM of kernels/ops/matmul.h on NV cooperative matrix 2).
// Matmul on the tensor cores through VK_NV_cooperative_matrix2 (NVIDIA): y[b][r] = sum_c W[r][c] *
// x[b][c], every weight type, for batches. Compiled with --target-env vulkan1.3 (cmake/Glslang.cmake,
// names *cm2*), used only where the runtime enabled the extension's workgroup scope, flexible
// dimensions, tensor addressing and block loads (kernels/ops/matmul.cpp).
//
// Tile: the workgroup (256 invocations) owns one BM × BN block of y as a single workgroup-scope f32
// accumulator; the driver stages the operands through shared memory and splits the products over
// its warps. Per K step of BK values:
//  - A = W[r0 .. r0+BM)[k0 .. k0+BK) is read with coopMatLoadTensorNV through a tensor layout in
//    blocks (1 × 256 for K-quants, 1 × 32 for Q8_0) with a decode function per element that gets a
//    pointer to its block (buffer_reference to the block struct of kernels/quant/quant.h). K-quant
//    sub-block scales and mins are decoded once per 256-value block per row into shared memory
//    (scale × d, min × dmin; Q6_K: d × int8 scale per 16 values), so the per-element decode is a
//    nibble extract and one FMA.
//  - B = x rows b0 .. b0+BN, values k0 .. k0+BK: f16 activations are loaded as they are (a transposed
//    view of the [batch][cols] rows); f32 activations through a decode function that rounds to f16.
// Rows and batch columns past the ends: the last row tile and the last batch tile load through
// clamped layouts (zeros), interior tiles through unclamped ones; the store drops what is outside.
// Bytes per flop as in the KHR kernel (matmul_coopmat_tile.glsl) but tiles up to 128 × 256.

// 256 invocations, fixed: a specialized local size would need LocalSizeId (SPIR-V 1.6), i.e. the
// maintenance4 feature.
layout(local_size_x = 256) in;
layout(constant_id = 0) const uint kType = 12u;
layout(constant_id = 1) const uint kXF16 = 0u;
layout(constant_id = 2) const uint BM = 128u;
layout(constant_id = 3) const uint BN = 128u;
const uint WG = 256u;
layout(constant_id = 5) const uint BK = 32u;   // 32 or 64; cols is a multiple of it (host)
// Variant (TROVE_CM2_VARIANT, kernels/ops/matmul.h): 0 = K-quant scales fetched into shared memory at
// each 256-value block (global load, then two barriers, nothing overlapping the latency); 1 = Q4_K/Q5_K
// block headers (16 bytes: d, dmin, scales) loaded one block ahead into registers and decoded into
// shared memory at the block boundary (the load's latency hidden behind the previous block's
// products), Q6_K with no shared scales at all (d × int8 scale read in the decode function, the
// quants read as 16-bit words so the two values of a pair share the loads) and no barriers; the BK
// steps of a 256-value block unrolled; the activation row stride given as a multiple of 8 (alignment);
// grouped: slot tiles with at most BN/2 slots on a BM × BN/2 accumulator. 2 = variant 1 and (grouped
// calls: only the last two): whether the tile is interior (no clamped loads) decided once per
// workgroup, each case with its own K loop free of branches; unquantized and Q8_0 weights unrolled 8 K
// steps deep (a remainder loop for the rest of K); Q4_K quants read as 16-bit words; the shared scales
// at a row stride of BM + 2 (kScaleStride).
layout(constant_id = 6) const uint kVariant = 0u;
// Grouped only: 1 = x is already in slot order (x row of slot s is s, as for down, whose input the
// SwiGLU wrote per slot): B is a plain tensor load of rows slot0 .. slot0+BN (clamped at x_rows), no
// per-element gather through row_ids. 0 = rows gathered by row_ids (decode_xg16 / decode_xg32).
layout(constant_id = 7) const uint kXBySlot = 0u;
const uint BNH = BN >= 64u ? BN / 2u : BN;  // the narrow grouped accumulator (variant 1)
// The accumulators' type: f32, or f16 where the including shader defines CM2_ACC_F16
// (matmul_cm2_f16acc.comp, matmul_cm2_grouped_f16acc.comp; TROVE_MATMUL_ACC=f16, kernels/ops/matmul.h):
// half the registers per accumulator element, what llama.cpp's cm2 kernels use by default.
#ifdef CM2_ACC_F16
#define ACC_T float16_t
#else
#define ACC_T float
#endif

const uint kF32 = 0u, kF16 = 1u, kQ8_0 = 8u, kQ4_K = 12u, kQ5_K = 13u, kQ6_K = 14u, kBF16 = 30u;

struct BlockQ8_0 { float16_t d; int8_t qs[32]; };                                            // 34 bytes
struct BlockQ4_K { f16vec2 dm; uint8_t scales[12]; uint8_t qs[128]; };                       // 144
struct BlockQ5_K { f16vec2 dm; uint8_t scales[12]; uint8_t qh[32]; uint8_t qs[128]; };       // 176
struct BlockQ6_K { uint8_t ql[128]; uint8_t qh[64]; int8_t scales[16]; float16_t d; };      // 210

// The weight binding seen as each format's elements (one is used per pipeline).
layout(std430, set = 0, binding = 0) readonly buffer WF32 { float wf32[]; };
layout(std430, set = 0, binding = 0) readonly buffer WF16 { float16_t wf16[]; };
layout(std430, set = 0, binding = 0) readonly buffer WBF16 { uint16_t wbf16[]; };
layout(std430, set = 0, binding = 0) readonly buffer WQ8_0 { BlockQ8_0 wq8_0[]; };
layout(std430, set = 0, binding = 0) readonly buffer WQ4_K { BlockQ4_K wq4_k[]; };
layout(std430, set = 0, binding = 0) readonly buffer WQ5_K { BlockQ5_K wq5_k[]; };
layout(std430, set = 0, binding = 0) readonly buffer WQ6_K { BlockQ6_K wq6_k[]; };
layout(std430, set = 0, binding = 0) readonly buffer WU4 { uvec4 wu4[]; };  // Q4_K/Q5_K headers (variant 1)
layout(std430, set = 0, binding = 1) readonly buffer XF16 { float16_t xf16[]; };
layout(std430, set = 0, binding = 1) readonly buffer XF32 { float xf32[]; };
layout(std430, set = 0, binding = 2) writeonly buffer Y { float y[]; };
#ifdef MATMUL_GROUPED
layout(std430, set = 0, binding = 3) readonly buffer Offsets { uint expert_offsets[]; };
layout(std430, set = 0, binding = 4) readonly buffer RowIds { uint row_ids[]; };
#endif
layout(push_constant) uniform P {
  uint rows; uint cols; uint batch; uint row_bytes; uint y_stride; uint n_expert; uint expert_bytes; uint x_rows;
} pc;

layout(buffer_reference, std430, buffer_reference_align = 4) buffer RefF32 { float v; };
layout(buffer_reference, std430, buffer_reference_align = 2) buffer RefBF16 { uint16_t v; };
layout(buffer_reference, std430, buffer_reference_align = 2) buffer RefQ8_0 { BlockQ8_0 b; };
layout(buffer_reference, std430, buffer_reference_align = 16) buffer RefQ4_K { BlockQ4_K b; };
layout(buffer_reference, std430, buffer_reference_align = 16) buffer RefQ5_K { BlockQ5_K b; };
layout(buffer_reference, std430, buffer_reference_align = 2) buffer RefQ6_K { BlockQ6_K b; };
// Q6_K as 16-bit words (variant 1): ql[128] bytes = 64 words, qh[64] = 32, scales[16] = 8, d.
struct BlockQ6_K16 { uint16_t ql[64]; uint16_t qh[32]; uint16_t scales[8]; float16_t d; };
layout(buffer_reference, std430, buffer_reference_align = 2) buffer RefQ6_K16 { BlockQ6_K16 b; };
layout(buffer_reference, std430, buffer_reference_align = 2) buffer RefF16 { float16_t v; };

// Per-row scales of the current 256-value block: [sub-block of 32][row in tile]. Q4_K/Q5_K:
// (d·scale, dmin·min); Q6_K: (d·scale of values 0..15, d·scale of values 16..31). 8 KiB at BM = 128.
const uint kScaleStride = kVariant == 2u ? BM + 2u : BM;
shared vec2 sh_scale[8u * (BM + 2u)];

float16_t decode_f32(const in RefF32 p, const in uint bc[2], const in uint ib[2]) { return float16_t(p.v); }
float16_t decode_bf16(const in RefBF16 p, const in uint bc[2], const in uint ib[2]) {
  return float16_t(uintBitsToFloat(uint(p.v) << 16));
}
float16_t decode_q8_0(const in RefQ8_0 p, const in uint bc[2], const in uint ib[2]) {
  return float16_t(float(p.b.d) * float(p.b.qs[ib[1]]));
}
float16_t decode_q4_k(const in RefQ4_K p, const in uint bc[2], const in uint ib[2]) {
  uint i = ib[1], sb = i >> 5;
  vec2 s = sh_scale[sb * kScaleStride + bc[0] % BM];
  uint q = (uint(p.b.qs[32u * (sb >> 1) + (i & 31u)]) >> (4u * (sb & 1u))) & 15u;
  return float16_t(s.x * float(q) - s.y);
}
float16_t decode_q5_k(const in RefQ5_K p, const in uint bc[2], const in uint ib[2]) {
  uint i = ib[1], sb = i >> 5, l = i & 31u;
  vec2 s = sh_scale[sb * kScaleStride + bc[0] % BM];
  uint q = ((uint(p.b.qs[32u * (sb >> 1) + l]) >> (4u * (sb & 1u))) & 15u) | (((uint(p.b.qh[l]) >> sb) & 1u) << 4);
  return float16_t(s.x * float(q) - s.y);
}
float16_t decode_q6_k(const in RefQ6_K p, const in uint bc[2], const in uint ib[2]) {
  uint i = ib[1], n = i >> 7, g = (i >> 5) & 3u, l = i & 31u;
  vec2 s2 = sh_scale[(i >> 5) * kScaleStride + bc[0] % BM];
  float s = (i & 16u) != 0u ? s2.y : s2.x;
  uint lo = (uint(p.b.ql[64u * n + 32u * (g & 1u) + l]) >> (g < 2u ? 0u : 4u)) & 15u;
  uint hi = (uint(p.b.qh[32u * n + l]) >> (2u * g)) & 3u;
  return float16_t(s * (float(lo | (hi << 4)) - 32.0));
}
// Variant 2: Q4_K quants as 16-bit words (the two values of a pair share a load); scales as variant 1.
struct BlockQ4_K16 { f16vec2 dm; uint16_t scales[6]; uint16_t qs[64]; };
layout(buffer_reference, std430, buffer_reference_align = 16) buffer RefQ4_K16 { BlockQ4_K16 b; };
float16_t decode_q4_k16(const in RefQ4_K p, const in uint bc[2], const in uint ib[2]) {
  RefQ4_K16 w = RefQ4_K16(p);
  uint i = ib[1], sb = i >> 5, l = i & 31u;
  vec2 s = sh_scale[sb * kScaleStride + bc[0] % BM];
  uint q = (uint(w.b.qs[16u * (sb >> 1) + (l >> 1)]) >> (4u * (sb & 1u) + 8u * (l & 1u))) & 15u;
  return float16_t(s.x * float(q) - s.y);
}
// Variant 1: value i of the block from 16-bit words; scale d × scales[i / 16] from the block itself.
float16_t decode_q6_k16(const in RefQ6_K p, const in uint bc[2], const in uint ib[2]) {
  RefQ6_K16 w = RefQ6_K16(p);
  uint i = ib[1], n = i >> 7, g = (i >> 5) & 3u, l = i & 31u, odd = 8u * (l & 1u);
  uint sw = uint(w.b.scales[i >> 5]);  // scales 2(i/32) and 2(i/32)+1
  float s = float(w.b.d) * float(bitfieldExtract(int(sw), (i & 16u) != 0u ? 8 : 0, 8));
  uint lo = (uint(w.b.ql[32u * n + 16u * (g & 1u) + (l >> 1)]) >> (odd + (g < 2u ? 0u : 4u))) & 15u;
  uint hi = (uint(w.b.qh[16u * n + (l >> 1)]) >> (odd + 2u * g)) & 3u;
  return float16_t(s * (float(lo | (hi << 4)) - 32.0));
}
// Sub-block sb's (d·scale, dmin·min) of a Q4_K/Q5_K block from its 16-byte header hd.
vec2 k4_scale_min(const uvec4 hd, const uint sb) {
  const uint j4 = 8u * (sb & 3u);
  uint sc, mn;
  if (sb < 4u) {
    sc = bitfieldExtract(hd.y, int(j4), 6);
    mn = bitfieldExtract(hd.z, int(j4), 6);
  } else {
    const uint a = bitfieldExtract(hd.w, int(j4), 8);
    sc = (a & 15u) | (bitfieldExtract(hd.y, int(j4 + 6u), 2) << 4);
    mn = (a >> 4) | (bitfieldExtract(hd.z, int(j4 + 6u), 2) << 4);
  }
  const vec2 dm = unpackHalf2x16(hd.x);
  return vec2(dm.x * float(sc), dm.y * float(mn));
}
float16_t decode_x32(const in RefF32 p, const in uint bc[2], const in uint ib[2]) { return float16_t(p.v); }

#ifdef MATMUL_GROUPED
// Grouped: B rows are gathered. Batch column n of the tile is x row sh_rows[n] (row 0 for columns
// past the expert's last slot: their products are dropped at the store).
shared uint sh_rows[BN];
float16_t decode_xg16(const in RefF16 p, const in uint bc[2], const in uint ib[2]) {
  return xf16[sh_rows[bc[0]] * pc.cols + bc[1]];
}
float16_t decode_xg32(const in RefF32 p, const in uint bc[2], const in uint ib[2]) {
  return float16_t(xf32[sh_rows[bc[0]] * pc.cols + bc[1]]);
}
// Each accumulator element (row r, column c of the tile) goes to y row slot0 + c when that slot is
// the expert's and the weight row exists.
float store_slot(const in uint r, const in uint c, const in float v, const in uint r0, const in uint slot0,
                 const in uint slot_end) {
  if (slot0 + c < slot_end && r0 + r < pc.rows) y[(slot0 + c) * pc.y_stride + r0 + r] = v;
  return v;
}
shared uint s_expert, s_tile;
uint tiles_of(uint e) { return (expert_offsets[e + 1u] - expert_offsets[e] + BN - 1u) / BN; }
#endif

// Scales of block kb (256 values) for rows r0 .. r0+BM of this tile, into sh_scale. Rows past the
// end are skipped (their A values are clamped to zero without decoding).
void fetch_scales(uint r0, uint kb, uint wblk) {
  barrier();  // the previous block's decodes are done
  const uint per_row = WG / BM;  // invocations per row (WG >= BM)
  const uint row = gl_LocalInvocationID.x / per_row, part = gl_LocalInvocationID.x % per_row;
  const uint r = r0 + row;
  if (row < BM && r < pc.rows) {
    const uint blk = wblk + r * (pc.cols / 256u) + kb;
    if (kType == kQ6_K) {
      float d = float(wq6_k[blk].d);
      for (uint s = part; s < 8u; s += per_row) {
        sh_scale[s * kScaleStride + row] = d * vec2(float(wq6_k[blk].scales[2u * s]), float(wq6_k[blk].scales[2u * s + 1u]));
      }
    } else {
      vec2 dm = kType == kQ4_K ? vec2(wq4_k[blk].dm) : vec2(wq5_k[blk].dm);
      for (uint s = part; s < 8u; s += per_row) {
        uint sc, mn;
        if (kType == kQ4_K) {
          if (s < 4u) {
            sc = uint(wq4_k[blk].scales[s]) & 63u;
            mn = uint(wq4_k[blk].scales[s + 4u]) & 63u;
          } else {
            uint a = uint(wq4_k[blk].scales[s + 4u]);
            sc = (a & 15u) | ((uint(wq4_k[blk].scales[s - 4u]) >> 6) << 4);
            mn = (a >> 4) | ((uint(wq4_k[blk].scales[s]) >> 6) << 4);
          }
        } else {
          if (s < 4u) {
            sc = uint(wq5_k[blk].scales[s]) & 63u;
            mn = uint(wq5_k[blk].scales[s + 4u]) & 63u;
          } else {
            uint a = uint(wq5_k[blk].scales[s + 4u]);
            sc = (a & 15u) | ((uint(wq5_k[blk].scales[s - 4u]) >> 6) << 4);
            mn = (a >> 4) | ((uint(wq5_k[blk].scales[s]) >> 6) << 4);
          }
        }
        sh_scale[s * kScaleStride + row] = vec2(dm.x * float(sc), dm.y * float(mn));
      }
    }
  }
  barrier();
}

// Variant 1 (Q4_K/Q5_K): this invocation's row's 16-byte block header for the next 256-value block,
// loaded by prefetch_scales one block ahead and decoded by store_scales at the block boundary.
uvec4 scale_raw;
void prefetch_scales(uint r0, uint kb, uint wblk) {
  const uint row = gl_LocalInvocationID.x / (WG / BM), r = r0 + row;
  if (row < BM && r < pc.rows) scale_raw = wu4[(wblk + r * (pc.cols / 256u) + kb) * (kType == kQ4_K ? 9u : 11u)];
}
void store_scales(uint r0) {
  barrier();  // the previous block's decodes are done
  const uint per_row = WG / BM, row = gl_LocalInvocationID.x / per_row, part = gl_LocalInvocationID.x % per_row;
  if (row < BM && r0 + row < pc.rows) {
    for (uint s = part; s < 8u; s += per_row) sh_scale[s * kScaleStride + row] = k4_scale_min(scale_raw, s);
  }
  barrier();
}

const bool kKQuant = kType == kQ4_K || kType == kQ5_K || kType == kQ6_K;
// Which scale scheme runs (kVariant above): shared scales fetched at each block, prefetched, or none
// (variant 1's Q6_K).
const bool kScalesFetch = kKQuant && (kVariant == 0u);
const bool kScalesPrefetch = (kType == kQ4_K || kType == kQ5_K) && kVariant != 0u;
const uint kBlockK = kKQuant ? 256u : (kType == kQ8_0 ? 32u : 1u);  // values per block along K

// A and B loads for one K step, for a layout type La (clamped or not) and Lb.
// Bytes of one element of the weight binding's array for this type (its block for the quants).
const uint kElemBytes = kType == kF32 ? 4u : (kType == kF16 || kType == kBF16) ? 2u : kType == kQ8_0 ? 34u
                      : kType == kQ4_K ? 144u : kType == kQ5_K ? 176u : 210u;

// A and B loads for one K step, for a layout type La (clamped or not) and Lb; `ao` is the element
// offset of this workgroup's matrix in the weight array (an expert's, when grouped).
#define LOAD_A(mat, ao, la)                                                                                  \
  if (kType == kF32) coopMatLoadTensorNV(mat, wf32, ao, la, decode_f32);                                  \
  else if (kType == kF16) coopMatLoadTensorNV(mat, wf16, ao, la);                                           \
  else if (kType == kBF16) coopMatLoadTensorNV(mat, wbf16, ao, la, decode_bf16);                            \
  else if (kType == kQ8_0) coopMatLoadTensorNV(mat, wq8_0, ao, la, decode_q8_0);                            \
  else if (kType == kQ4_K && kVariant == 2u) coopMatLoadTensorNV(mat, wq4_k, ao, la, decode_q4_k16);      \
  else if (kType == kQ4_K) coopMatLoadTensorNV(mat, wq4_k, ao, la, decode_q4_k);                            \
  else if (kType == kQ5_K) coopMatLoadTensorNV(mat, wq5_k, ao, la, decode_q5_k);                            \
  else if (kVariant != 0u) coopMatLoadTensorNV(mat, wq6_k, ao, la, decode_q6_k16);                         \
  else coopMatLoadTensorNV(mat, wq6_k, ao, la, decode_q6_k);
#define LOAD_B(mat, lb)                                                                                      \
  if (kXF16 != 0u) coopMatLoadTensorNV(mat, xf16, 0u, lb, transposed);                                      \
  else coopMatLoadTensorNV(mat, xf32, 0u, lb, transposed, decode_x32);
#define LOAD_B_GATHER(mat, lb)                                                                               \
  if (kXF16 != 0u) coopMatLoadTensorNV(mat, xf16, 0u, lb, transposed, decode_xg16);                         \
  else coopMatLoadTensorNV(mat, xf32, 0u, lb, transposed, decode_xg32);

void main() {
  const uint r0 = gl_WorkGroupID.x * BM;
  uint b0 = gl_WorkGroupID.y * BN;
  const uint K = pc.cols, nb = K / kBlockK;  // blocks per row
  uint w_elem = 0u;                           // element offset of the matrix in the weight array
#ifdef MATMUL_GROUPED
  // Which (expert, slot tile) is workgroup j: as in matmul_coopmat_tile.glsl, subgroup 0 counts the
  // slot tiles per expert, each lane over a run of experts, and the lane whose run holds j walks it.
  const uint j = gl_WorkGroupID.y, none = 0xffffffffu, t = gl_LocalInvocationID.x;
  if (gl_SubgroupID == 0u) {
    const uint lane = gl_SubgroupInvocationID, lanes = gl_SubgroupSize;
    if (lane == 0u) s_expert = none;
    subgroupMemoryBarrierShared();
    subgroupBarrier();
    uint per = (pc.n_expert + lanes - 1u) / lanes, e0 = lane * per, mine = 0u;
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
  if (expert == none) return;  // past the last tile: the whole workgroup leaves
  const uint slot0 = expert_offsets[expert] + s_tile * BN, slot_end = expert_offsets[expert + 1u];
  if (t < BN) sh_rows[t] = slot0 + t < slot_end ? row_ids[slot0 + t] : 0u;
  barrier();
  w_elem = expert * (pc.expert_bytes / kElemBytes);
  const uint wblk = kBlockK > 1u ? w_elem : 0u;
  b0 = 0u;
#else
  const uint wblk = 0u;
#endif

  // Weights: rows × K values as rows × nb blocks; activations: batch rows of K values.
  tensorLayoutNV<2> la = createTensorLayoutNV(2);
  tensorLayoutNV<2, gl_CooperativeMatrixClampModeConstantNV> lac = createTensorLayoutNV(2, gl_CooperativeMatrixClampModeConstantNV);
  if (kBlockK > 1u) {
    la = setTensorLayoutBlockSizeNV(la, 1, kBlockK);
    lac = setTensorLayoutBlockSizeNV(lac, 1, kBlockK);
  }
  la = setTensorLayoutDimensionNV(la, pc.rows, K);
  lac = setTensorLayoutDimensionNV(lac, pc.rows, K);
  // Variant 1, unquantized weights (F16, BF16, F32): the row stride as a multiple of 8 elements, so the
  // driver may take its aligned load path (the host asks cols % 32 == 0); K-quant and Q8_0 rows are
  // block arrays.
  const uint a_stride = kVariant != 0u && kBlockK == 1u ? (nb & ~7u) : nb;
  la = setTensorLayoutStrideNV(la, a_stride, 1);
  lac = setTensorLayoutStrideNV(lac, a_stride, 1);
  tensorLayoutNV<2> lb = createTensorLayoutNV(2);
  tensorLayoutNV<2, gl_CooperativeMatrixClampModeConstantNV> lbc = createTensorLayoutNV(2, gl_CooperativeMatrixClampModeConstantNV);
#ifdef MATMUL_GROUPED
  lb = setTensorLayoutDimensionNV(lb, BN, K);  // the tile's gathered rows
#else
  lb = setTensorLayoutDimensionNV(lb, pc.batch, K);
#endif
#ifdef MATMUL_GROUPED
  lbc = setTensorLayoutDimensionNV(lbc, pc.x_rows, K);  // kXBySlot: the slot-ordered rows
#else
  lbc = setTensorLayoutDimensionNV(lbc, pc.batch, K);
#endif
#ifdef MATMUL_GROUPED
  tensorLayoutNV<2> lbs = createTensorLayoutNV(2);  // kXBySlot, interior tiles: unclamped
  lbs = setTensorLayoutDimensionNV(lbs, pc.x_rows, K);
#endif
  if (kVariant != 0u) {  // the row stride as a multiple of 8 values: 16-byte aligned f16 rows (as llama.cpp hints)
    lb = setTensorLayoutStrideNV(lb, K & ~7u, 1);
    lbc = setTensorLayoutStrideNV(lbc, K & ~7u, 1);
#ifdef MATMUL_GROUPED
    lbs = setTensorLayoutStrideNV(lbs, K & ~7u, 1);
#endif
  }
  tensorLayoutNV<2, gl_CooperativeMatrixClampModeConstantNV> ld = createTensorLayoutNV(2, gl_CooperativeMatrixClampModeConstantNV);
  ld = setTensorLayoutDimensionNV(ld, pc.batch, pc.rows);
  ld = setTensorLayoutStrideNV(ld, pc.y_stride, 1);
  tensorViewNV<2, false, 1, 0> transposed = createTensorViewNV(2, false, 1, 0);

#ifdef MATMUL_GROUPED
  const bool inside = r0 + BM <= pc.rows;  // gathered columns are always loadable
#define LOAD_B_TILE(mat, k0, NB)                                                                             \
  if (kXBySlot != 0u && slot0 + NB <= pc.x_rows) {                                                          \
    LOAD_B(mat, sliceTensorLayoutNV(lbs, slot0, NB, k0, BK))                                                 \
  } else if (kXBySlot != 0u) {                                                                               \
    LOAD_B(mat, sliceTensorLayoutNV(lbc, slot0, NB, k0, BK))                                                 \
  } else {                                                                                                   \
    LOAD_B_GATHER(mat, sliceTensorLayoutNV(lb, 0, NB, k0, BK))                                               \
  }
#define STORE_TILE(acc) coopMatPerElementNV(acc, acc, store_slot, r0, slot0, slot_end);
#else
  const bool inside = r0 + BM <= pc.rows && b0 + BN <= pc.batch;  // uniform per workgroup
#define LOAD_B_TILE(mat, k0, NB)                                                                             \
  if (b0 + NB <= pc.batch) {                                                                                 \
    LOAD_B(mat, sliceTensorLayoutNV(lb, b0, NB, k0, BK))                                                     \
  } else {                                                                                                   \
    LOAD_B(mat, sliceTensorLayoutNV(lbc, b0, NB, k0, BK))                                                    \
  }
#define STORE_TILE(acc) coopMatStoreTensorNV(acc, y, 0u, sliceTensorLayoutNV(ld, b0, BN, r0, BM), transposed);
#endif
  // The accumulator to y: f16 accumulators (CM2_ACC_F16) clamped to the f16 range, as llama.cpp does,
  // and converted to f32 first.
#ifdef CM2_ACC_F16
#define STORE_ACC(acc, NB)                                                                                   \
  {                                                                                                          \
    [[unroll]] for (uint i = 0u; i < acc.length(); ++i) acc[i] = clamp(acc[i], float16_t(-65504.0), float16_t(65504.0)); \
    coopmat<float, gl_ScopeWorkgroup, BM, NB, gl_MatrixUseAccumulator> accf =                                \
        coopmat<float, gl_ScopeWorkgroup, BM, NB, gl_MatrixUseAccumulator>(acc);                             \
    STORE_TILE(accf)                                                                                         \
  }
#else
#define STORE_ACC(acc, NB) STORE_TILE(acc)
#endif
  // Outer steps of KB values: variant 1 on K-quants walks whole 256-value blocks with the BK steps
  // inside unrolled (scales once per outer step); otherwise one BK step per outer step.
  const uint KB = (kVariant != 0u && kKQuant) ? 256u : BK;
  // The K loop and the store for an accumulator NB columns wide.
#define K_LOOP_AND_STORE(NB)                                                                                 \
  {                                                                                                          \
    coopmat<ACC_T, gl_ScopeWorkgroup, BM, NB, gl_MatrixUseAccumulator> acc =                                 \
        coopmat<ACC_T, gl_ScopeWorkgroup, BM, NB, gl_MatrixUseAccumulator>(0.0);                             \
    if (kScalesPrefetch) prefetch_scales(r0, 0u, wblk);                                                      \
    for (uint kb0 = 0u; kb0 < K; kb0 += KB) {                                                                \
      if (kScalesFetch && kb0 % 256u == 0u) fetch_scales(r0, kb0 / 256u, wblk);                              \
      if (kScalesPrefetch) {                                                                                 \
        store_scales(r0);                                                                                    \
        if (kb0 + 256u < K) prefetch_scales(r0, kb0 / 256u + 1u, wblk);                                      \
      }                                                                                                      \
      [[unroll]] for (uint kj = 0u; kj < KB / BK; ++kj) {                                                    \
        const uint k0 = kb0 + kj * BK;                                                                       \
        coopmat<float16_t, gl_ScopeWorkgroup, BM, BK, gl_MatrixUseA> a;                                      \
        coopmat<float16_t, gl_ScopeWorkgroup, BK, NB, gl_MatrixUseB> b;                                      \
        if (inside) {                                                                                        \
          LOAD_A(a, w_elem, sliceTensorLayoutNV(la, r0, BM, k0, BK))                                         \
        } else {                                                                                             \
          LOAD_A(a, w_elem, sliceTensorLayoutNV(lac, r0, BM, k0, BK))                                        \
        }                                                                                                    \
        LOAD_B_TILE(b, k0, NB)                                                                               \
        acc = coopMatMulAdd(a, b, acc);                                                                      \
      }                                                                                                      \
    }                                                                                                        \
    STORE_ACC(acc, NB)                                                                                       \
  }
#ifdef MATMUL_GROUPED
  // Variant 1: a slot tile with at most BN/2 slots (an expert's last or only tile: ~32 slots at 512
  // tokens × 8 of 128 experts) multiplies a BM × BN/2 accumulator, half the products (as llama.cpp's
  // grouped kernel does). BN/2 only from BN = 64 (granularity).
  if (kVariant != 0u && BN >= 64u && slot_end - slot0 <= BNH) {
    K_LOOP_AND_STORE(BNH)
  } else {
    K_LOOP_AND_STORE(BN)
  }
#else
  if (kVariant == 2u) {
    // Variant 2: interior or edge decided once; the loop of each has no branches. Outer steps of KB2
    // values: a 256-value block for K-quants (cols is a multiple of it), else 8 K steps and a remainder.
    const uint KB2 = kKQuant ? 256u : 8u * BK;
    coopmat<ACC_T, gl_ScopeWorkgroup, BM, BN, gl_MatrixUseAccumulator> acc =
        coopmat<ACC_T, gl_ScopeWorkgroup, BM, BN, gl_MatrixUseAccumulator>(0.0);
    if (kScalesPrefetch) prefetch_scales(r0, 0u, wblk);
#define K_STEP2(k0, LA, LB)                                                                                  \
    {                                                                                                        \
      coopmat<float16_t, gl_ScopeWorkgroup, BM, BK, gl_MatrixUseA> a;                                        \
      coopmat<float16_t, gl_ScopeWorkgroup, BK, BN, gl_MatrixUseB> b;                                        \
      LOAD_A(a, w_elem, sliceTensorLayoutNV(LA, r0, BM, k0, BK))                                             \
      LOAD_B(b, sliceTensorLayoutNV(LB, b0, BN, k0, BK))                                                     \
      acc = coopMatMulAdd(a, b, acc);                                                                        \
    }
#define K_LOOP2(LA, LB)                                                                                      \
    {                                                                                                        \
      uint kb0 = 0u;                                                                                         \
      for (; kb0 + KB2 <= K; kb0 += KB2) {                                                                   \
        if (kScalesPrefetch) {                                                                               \
          store_scales(r0);                                                                                  \
          if (kb0 + 256u < K) prefetch_scales(r0, kb0 / 256u + 1u, wblk);                                    \
        }                                                                                                    \
        [[unroll]] for (uint kj = 0u; kj < KB2 / BK; ++kj) K_STEP2(kb0 + kj * BK, LA, LB)                   \
      }                                                                                                      \
      for (; !kKQuant && kb0 < K; kb0 += BK) K_STEP2(kb0, LA, LB)                                           \
    }
    if (inside) {
      K_LOOP2(la, lb)
    } else {
      K_LOOP2(lac, lbc)
    }
    STORE_ACC(acc, BN)
  } else {
    K_LOOP_AND_STORE(BN)
  }
#endif
}
