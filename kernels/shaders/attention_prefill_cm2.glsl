// attention_prefill_cm2.glsl — the body of attention_prefill_cm2.comp (64-row tiles) and
// attention_prefill_cm2_r128.comp (128-row tiles): define ATT_CM2_ROWS and ATT_CM2_WG, then include.
// Prefill attention on the tensor cores through VK_NV_cooperative_matrix2 (NVIDIA), head_dim 128,
// flash-attention style, the whole online softmax in workgroup-scope matrices. Built for Vulkan 1.3
// (names *cm2*), used only where the runtime enabled workgroup scope, flexible dimensions, tensor
// addressing, reductions, conversions and per-element operations (kernels/ops/attention.cpp).
//
// A workgroup (ATT_CM2_WG invocations) owns a tile of BQ = ATT_CM2_ROWS query ROWS of one KV head (64
// rows with 128 invocations: attention_prefill_cm2.comp; 128 with 256: attention_prefill_cm2_r128.comp),
// row R = token * G + g over the G = n_heads / n_kv_heads query heads sharing it (GQA: every K/V tile
// is read once for all).
//  - Q (BQ × 128) is loaded once through a decode function (f32 → f16, times the softmax scale) into
//    an A matrix; rows past n_tokens * G are zeros (clamped layout).
//  - Per tile of BK = 64 keys (the pool's block size is a multiple of 64, so a tile is 64 contiguous
//    rows of one block of one KV head): S = Q·K^T (K loaded transposed as a B matrix, f32 accumulate);
//    on tiles that reach past a row's last visible key (the causal diagonal, the sequence's end) a
//    per-element select sets masked scores to -inf (unwritten pool slots may hold NaN: select, never a
//    multiply); M_new = max(M, rowmax S) (coopMatReduceNV), P = exp(S - M_new), eM = exp(M - M_new),
//    L = eM · L + rowsum(P) (P in f16 times a matrix of ones, so the sum is of what multiplies V),
//    O = eM · O + P·V with V loaded through a clamped layout on the last tile (keys past the
//    sequence are zeros, so 0 · NaN never happens).
//  - M starts at -FLT_MAX / 2 (finite): a row with no visible key yet keeps M finite, so exp(S - M)
//    is 0 for its masked scores and eM never computes -inf - -inf.
// Long walks are split over n_splits workgroups (grid z) writing partials (unnormalised O, m, l) in
// the layout of attention_combine.comp. q/out are f32 [n_tokens][n_heads][128]; pool layout
// kernels/kv_layout.h.
layout(local_size_x = ATT_CM2_WG) in;
layout(std430, set = 0, binding = 0) readonly buffer KV { float16_t kvf[]; };
layout(std430, set = 0, binding = 1) readonly buffer T { int table[]; };
layout(std430, set = 0, binding = 2) readonly buffer Q { float qf[]; };
layout(std430, set = 0, binding = 3) writeonly buffer O { float of[]; };
layout(std430, set = 0, binding = 4) writeonly buffer Part { float part[]; };  // split partials
layout(push_constant) uniform P {
  uint block_size; uint n_kv_heads; uint n_heads; uint start_pos; uint n_tokens; float scale; uint group;
  uint n_splits; uint split_len;
} pc;

layout(buffer_reference, std430, buffer_reference_align = 4) buffer RefF32 { float v; };

const uint D = 128u, BQ = ATT_CM2_ROWS, BK = 64u;
const float kNegBig = -1.7014117e38;  // -FLT_MAX / 2: the initial row max (finite)

#define ACC_S coopmat<float, gl_ScopeWorkgroup, BQ, BK, gl_MatrixUseAccumulator>
#define ACC_O coopmat<float, gl_ScopeWorkgroup, BQ, D, gl_MatrixUseAccumulator>

// Query row R of this workgroup's KV head: (token R / G, head kvh · G + R % G).
uint q_row(uint R) { return (R / pc.group) * pc.n_heads + gl_WorkGroupID.y * pc.group + R % pc.group; }

float16_t decode_q(const in RefF32 p, const in uint bc[2], const in uint ib[2]) {
  return float16_t(qf[q_row(bc[0]) * D + bc[1]] * pc.scale);
}

// Scores of keys a row may not see become -inf: past its causal position or past the last key
// (the select also drops NaN read from unwritten slots).
float mask_s(const in uint r, const in uint c, const in float s, const in uint R0, const in uint base, const in uint kend) {
  uint key = base + c;
  return (key > pc.start_pos + (R0 + r) / pc.group || key >= kend) ? -1.0 / 0.0 : s;
}
float max_f(const in float a, const in float b) { return max(a, b); }
float smear(const in float a, const in float b) { return a; }
float exp_f(const in uint r, const in uint c, const in float x) { return exp(x); }
float max_pe(const in uint r, const in uint c, const in float a, const in float b) { return max(a, b); }

float store_o(const in uint r, const in uint c, const in float v, const in uint R0, const in uint rows) {
  if (R0 + r < rows) of[q_row(R0 + r) * D + c] = v;
  return v;
}
// Split partials: [token][head][split][128 + 2] (unnormalised O, then m and l).
float store_part(const in uint r, const in uint c, const in float v, const in uint R0, const in uint rows) {
  if (R0 + r < rows) part[(q_row(R0 + r) * pc.n_splits + gl_WorkGroupID.z) * (D + 2u) + c] = v;
  return v;
}
float store_ml(const in uint r, const in uint c, const in float v, const in uint R0, const in uint rows, const in uint which) {
  if (c == 0u && R0 + r < rows) part[(q_row(R0 + r) * pc.n_splits + gl_WorkGroupID.z) * (D + 2u) + D + which] = v;
  return v;
}

void main() {
  const uint kvh = gl_WorkGroupID.y, R0 = gl_WorkGroupID.x * BQ, G = pc.group;
  const uint rows = pc.n_tokens * G;
  // Keys this tile needs: up to the last valid row's position; the first row sees up to kfull.
  const uint kend = pc.start_pos + (min(R0 + BQ, rows) - 1u) / G + 1u;
  const uint kfull = pc.start_pos + R0 / G + 1u;  // keys < kfull are visible to every row of the tile
  const uint split = gl_WorkGroupID.z, k0 = split * pc.split_len, k1 = min(kend, k0 + pc.split_len);

  tensorLayoutNV<2, gl_CooperativeMatrixClampModeConstantNV> lq = createTensorLayoutNV(2, gl_CooperativeMatrixClampModeConstantNV);
  lq = setTensorLayoutDimensionNV(lq, rows, D);
  coopmat<float16_t, gl_ScopeWorkgroup, BQ, D, gl_MatrixUseA> qa;
  coopMatLoadTensorNV(qa, qf, 0u, sliceTensorLayoutNV(lq, R0, BQ, 0, D), decode_q);

  // One tile of one KV head: BK rows of D halves, contiguous (the offset picks block and head).
  tensorLayoutNV<2> lk = createTensorLayoutNV(2);
  lk = setTensorLayoutDimensionNV(lk, BK, D);
  tensorLayoutNV<2, gl_CooperativeMatrixClampModeConstantNV> lvc = createTensorLayoutNV(2, gl_CooperativeMatrixClampModeConstantNV);
  tensorViewNV<2, false, 1, 0> transposed = createTensorViewNV(2, false, 1, 0);
  const uint head_off = kvh * pc.block_size * D, half_block = pc.block_size * pc.n_kv_heads * D;

  ACC_O o = ACC_O(0.0);
  ACC_S m = ACC_S(kNegBig), l = ACC_S(0.0);
  const coopmat<float16_t, gl_ScopeWorkgroup, BK, BK, gl_MatrixUseB> ones =
      coopmat<float16_t, gl_ScopeWorkgroup, BK, BK, gl_MatrixUseB>(1.0);

  [[dont_unroll]] for (uint base = k0; base < k1; base += BK) {
    const uint koff = uint(table[base / pc.block_size]) * 2u * half_block + head_off + (base % pc.block_size) * D;
    coopmat<float16_t, gl_ScopeWorkgroup, D, BK, gl_MatrixUseB> kt;
    coopMatLoadTensorNV(kt, kvf, koff, sliceTensorLayoutNV(lk, 0, BK, 0, D), transposed);
    ACC_S s = ACC_S(0.0);
    s = coopMatMulAdd(qa, kt, s);
    const bool edge = base + BK > kfull || base + BK > kend;  // uniform: some score of the tile is masked
    if (edge) coopMatPerElementNV(s, s, mask_s, R0, base, kend);

    ACC_S rmax, m_new, p, em;
    coopMatReduceNV(rmax, s, gl_CooperativeMatrixReduceRowNV, max_f);
    coopMatPerElementNV(m_new, rmax, max_pe, m);
    coopMatPerElementNV(p, s - m_new, exp_f);
    coopMatPerElementNV(em, m - m_new, exp_f);
    m = m_new;
    coopmat<float16_t, gl_ScopeWorkgroup, BQ, BK, gl_MatrixUseA> pa = coopmat<float16_t, gl_ScopeWorkgroup, BQ, BK, gl_MatrixUseA>(p);
    ACC_S rsum = ACC_S(0.0);
    rsum = coopMatMulAdd(pa, ones, rsum);
    l = em * l + rsum;

    coopmat<float16_t, gl_ScopeWorkgroup, BK, D, gl_MatrixUseB> v;
    if (base + BK <= kend) {
      coopMatLoadTensorNV(v, kvf, koff + half_block, sliceTensorLayoutNV(lk, 0, BK, 0, D));
    } else {  // keys past the sequence read as zeros
      lvc = setTensorLayoutDimensionNV(lvc, kend - base, D);
      coopMatLoadTensorNV(v, kvf, koff + half_block, sliceTensorLayoutNV(lvc, 0, BK, 0, D));
    }
    ACC_O emd;
    coopMatReduceNV(emd, em, gl_CooperativeMatrixReduceRowNV, smear);
    o = o * emd;
    o = coopMatMulAdd(pa, v, o);
  }

  if (pc.n_splits > 1u) {
    coopMatPerElementNV(o, o, store_part, R0, rows);
    coopMatPerElementNV(m, m, store_ml, R0, rows, 0u);
    coopMatPerElementNV(l, l, store_ml, R0, rows, 1u);
    return;
  }
  ACC_O ld;
  coopMatReduceNV(ld, l, gl_CooperativeMatrixReduceRowNV, smear);
  o = o / ld;
  coopMatPerElementNV(o, o, store_o, R0, rows);
}
