#version 460
#extension GL_KHR_cooperative_matrix : require
#extension GL_KHR_memory_scope_semantics : require
#extension GL_EXT_shader_explicit_arithmetic_types_float16 : require
#extension GL_EXT_shader_16bit_storage : require
#extension GL_KHR_shader_subgroup_basic : require
#extension GL_KHR_shader_subgroup_shuffle : require
// Prefill attention on the matrix units (VK_KHR_cooperative_matrix, tensor cores on NVIDIA), head_dim
// 128, flash-attention style. A workgroup of 4 subgroups (32 lanes each) owns a tile of 64 query ROWS
// of one KV head, where row R = token * G + g over the G = n_heads / n_kv_heads query heads that
// share the KV head (GQA): every K/V tile is read once for all of them. Each subgroup owns 16 rows.
// Per tile of 64 keys:
//   S = Q·K^T: Q (16 rows × 128, f16) sits in registers as 8 A matrices for the whole walk; K is read
//     straight from the pool as column-major B matrices (16 consecutive keys are contiguous rows of
//     one block, since block_size is a multiple of 16); S is stored to shared memory in f32.
//   Online softmax in f32: two lanes per row (32 keys each, joined by a shuffle) keep the running
//     max m and denominator l, write P = exp(S - m) as f16, and rescale their part of the output.
//   O += P·V: V is staged through shared memory as f16 with keys past the sequence set to zero (the
//     pool's unwritten slots may hold anything, and 0 × NaN would poison the row); the product goes
//     into fresh accumulators, 64 dims at a time, through shared memory into each lane's f32 output
//     registers — a per-row rescale cannot be applied to an accumulator matrix in place.
// Long walks are split over n_splits workgroups (grid z) that write partials for
// attention_combine.comp. Causal mask: row R may see keys 0 .. start_pos + R / G. Rows past n_tokens * G are computed as
// fully masked and not written. q/out are f32 [n_tokens][n_heads][128]; pool layout kernels/kv_layout.h.
// Shared memory 44 KiB (kernels/ops/attention.cpp checks the device's limit). Used only where the
// device offers 16×16×16 f16×f16→f32 subgroup matrices and subgroups of 32.
layout(local_size_x = 128) in;
layout(std430, set = 0, binding = 0) readonly buffer KV4 { uvec4 kv4[]; };
layout(std430, set = 0, binding = 0) readonly buffer KV16 { float16_t kvf[]; };  // the same pool
layout(std430, set = 0, binding = 1) readonly buffer T { int table[]; };
layout(std430, set = 0, binding = 2) readonly buffer Q { vec4 q4[]; };
layout(std430, set = 0, binding = 3) writeonly buffer O { vec4 o4[]; };
layout(std430, set = 0, binding = 4) writeonly buffer Part { float part[]; };  // split partials
layout(push_constant) uniform P {
  uint block_size; uint n_kv_heads; uint n_heads; uint start_pos; uint n_tokens; float scale; uint group;
  uint n_splits; uint split_len;
} pc;

const uint D = 128u, BQ = 64u, BK = 64u;
const uint VS = D + 8u;    // f16 stride of the V (and Q staging) tile, padded against bank conflicts
const uint SS = BK + 4u;   // f32 stride of S / the P·V halves
const uint PS = BK + 8u;   // f16 stride of P
shared float16_t vs[BK * VS];   // V tile [key][dim] (first Q staging [row][dim])
shared float sc[BQ * SS];       // S [row][key], then P·V [row][dim - half * 64]
shared float16_t ps[BQ * PS];   // P [row][key]

#define ACC coopmat<float, gl_ScopeSubgroup, 16, 16, gl_MatrixUseAccumulator>
#define MA coopmat<float16_t, gl_ScopeSubgroup, 16, 16, gl_MatrixUseA>
#define MB coopmat<float16_t, gl_ScopeSubgroup, 16, 16, gl_MatrixUseB>

// Offset (in halves) of K[p] for KV head kvh; V[p] is half a block further.
uint k_offset(uint p, uint kvh) {
  uint blk = uint(table[p / pc.block_size]);
  return blk * 2u * pc.block_size * pc.n_kv_heads * D + (kvh * pc.block_size + p % pc.block_size) * D;
}

void main() {
  uint t = gl_LocalInvocationID.x, sg = gl_SubgroupID;
  uint kvh = gl_WorkGroupID.y, R0 = gl_WorkGroupID.x * BQ, G = pc.group;
  uint rows = pc.n_tokens * G;
  uint half_block = pc.block_size * pc.n_kv_heads * D;
  // Keys this tile needs: up to the last valid row's position.
  uint kend = pc.start_pos + (min(R0 + BQ, rows) - 1u) / G + 1u;

  // Q rows → f16 in the staging tile → 8 A matrices per subgroup.
  for (uint e = t; e < BQ * (D / 4u); e += 128u) {
    uint r = e / (D / 4u), c = e % (D / 4u), R = R0 + r;
    vec4 v = vec4(0.0);
    if (R < rows) v = q4[((R / G) * pc.n_heads + kvh * G + R % G) * (D / 4u) + c];
    for (uint i = 0u; i < 4u; ++i) vs[r * VS + 4u * c + i] = float16_t(v[i]);
  }
  barrier();
  MA qa[8];
  for (uint kk = 0u; kk < 8u; ++kk)
    coopMatLoad(qa[kk], vs, (16u * sg) * VS + 16u * kk, VS, gl_CooperativeMatrixLayoutRowMajor);

  // This lane's row (r), half of the keys / output dims (hf), and the row's last visible key.
  uint r = t >> 1, hf = t & 1u, R = R0 + r;
  bool row_ok = R < rows;
  uint klast = pc.start_pos + R / G;  // inclusive
  float m = -1.0 / 0.0, l = 0.0;
  float o[2][32];  // dims half * 64 + hf * 32 + i
  for (uint h = 0u; h < 2u; ++h)
    for (uint i = 0u; i < 32u; ++i) o[h][i] = 0.0;

  // Split-K (n_splits > 1): this workgroup walks keys k0 .. k1 - 1 only (split_len is a multiple of
  // the key tile, so a tile never crosses a split) and writes its unnormalised output, m and l.
  uint split = gl_WorkGroupID.z, k0 = split * pc.split_len, k1 = min(kend, k0 + pc.split_len);
  for (uint base = k0; base < k1; base += BK) {
    barrier();  // the previous tile's V and P·V reads are done
    // V tile → shared f16; keys at or past kend are zero.
    for (uint e = t; e < BK * (D / 8u); e += 128u) {
      uint j = e / (D / 8u), c = e % (D / 8u), p = base + j;
      uvec4 w = uvec4(0u);
      if (p < kend) w = kv4[(k_offset(p, kvh) + half_block) / 8u + c];
      for (uint i = 0u; i < 4u; ++i) {
        f16vec2 h2 = unpackFloat2x16(w[i]);
        vs[j * VS + 8u * c + 2u * i] = h2.x;
        vs[j * VS + 8u * c + 2u * i + 1u] = h2.y;
      }
    }
    // S = Q·K^T for this subgroup's 16 rows, 16 keys at a time (skipped past kend: masked below).
    for (uint j = 0u; j < BK / 16u; ++j) {
      uint p0 = base + 16u * j;
      ACC s = ACC(0.0);
      if (p0 < kend) {
        uint koff = k_offset(p0, kvh);
        for (uint kk = 0u; kk < 8u; ++kk) {
          MB kb;
          coopMatLoad(kb, kvf, koff + 16u * kk, D, gl_CooperativeMatrixLayoutColumnMajor);
          s = coopMatMulAdd(qa[kk], kb, s);
        }
      }
      coopMatStore(s, sc, (16u * sg) * SS + 16u * j, SS, gl_CooperativeMatrixLayoutRowMajor);
    }
    barrier();
    // Online softmax: this lane's 32 keys of row r.
    float sv[32];
    float mx = -1.0 / 0.0;
    for (uint i = 0u; i < 32u; ++i) {
      uint p = base + hf * 32u + i;
      float x = (row_ok && p <= klast) ? sc[r * SS + hf * 32u + i] * pc.scale : -1.0 / 0.0;
      sv[i] = x;
      mx = max(mx, x);
    }
    mx = max(mx, subgroupShuffleXor(mx, 1u));
    float m_new = max(m, mx);
    float corr = m_new == -1.0 / 0.0 ? 1.0 : exp(m - m_new);
    float sum = 0.0;
    for (uint i = 0u; i < 32u; ++i) {
      float pv = sv[i] == -1.0 / 0.0 ? 0.0 : exp(sv[i] - m_new);
      sum += pv;
      ps[r * PS + hf * 32u + i] = float16_t(pv);
    }
    sum += subgroupShuffleXor(sum, 1u);
    l = l * corr + sum;
    m = m_new;
    for (uint h = 0u; h < 2u; ++h)
      for (uint i = 0u; i < 32u; ++i) o[h][i] *= corr;
    barrier();  // P visible; S reads done (sc is reused for P·V)
    MA pa[4];
    for (uint kk = 0u; kk < 4u; ++kk)
      coopMatLoad(pa[kk], ps, (16u * sg) * PS + 16u * kk, PS, gl_CooperativeMatrixLayoutRowMajor);
    for (uint h = 0u; h < 2u; ++h) {
      for (uint j = 0u; j < 4u; ++j) {
        ACC acc = ACC(0.0);
        for (uint kk = 0u; kk < 4u; ++kk) {
          MB vb;
          coopMatLoad(vb, vs, (16u * kk) * VS + h * 64u + 16u * j, VS, gl_CooperativeMatrixLayoutRowMajor);
          acc = coopMatMulAdd(pa[kk], vb, acc);
        }
        coopMatStore(acc, sc, (16u * sg) * SS + 16u * j, SS, gl_CooperativeMatrixLayoutRowMajor);
      }
      barrier();
      for (uint i = 0u; i < 32u; ++i) o[h][i] += sc[r * SS + hf * 32u + i];
      if (h == 0u) barrier();  // before the second half overwrites sc
    }
  }
  if (!row_ok) return;
  uint qh = (R / G) * pc.n_heads + kvh * G + R % G;  // (token, query head)
  if (pc.n_splits > 1u) {  // layout of attention_combine.comp: [token][head][split][128 + 2]
    uint pb = (qh * pc.n_splits + split) * (D + 2u);
    for (uint h = 0u; h < 2u; ++h)
      for (uint i = 0u; i < 32u; ++i) part[pb + h * 64u + hf * 32u + i] = o[h][i];
    if (hf == 0u) {
      part[pb + D] = m;  // -inf with l = 0 for a split past this row's keys
      part[pb + D + 1u] = l;
    }
    return;
  }
  float inv = 1.0 / l;
  for (uint h = 0u; h < 2u; ++h)
    for (uint i = 0u; i < 8u; ++i)
      o4[qh * (D / 4u) + (h * 64u + hf * 32u) / 4u + i] =
          vec4(o[h][4u * i], o[h][4u * i + 1u], o[h][4u * i + 2u], o[h][4u * i + 3u]) * inv;
}
