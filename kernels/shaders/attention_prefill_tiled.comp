#version 460
// Prefill attention, head_dim 128, flash-attention style without matrix units (the fallback of
// attention_prefill_coopmat.comp: lavapipe/CI, TROVE_NO_COOPMAT=1, devices without f16 subgroup
// matrices). A workgroup of 64 owns a tile of 32 query ROWS of one KV head, row R = token * G + g over
// the G = n_heads / n_kv_heads query heads sharing that KV head (GQA: each K/V tile is read once for
// all of them). Q stays in shared memory in f32 for the whole walk; per tile of 32 keys:
//   K tile → shared (f16 pairs); S = Q·K^T, each invocation a 4 rows × 4 keys register block;
//   online softmax in f32 (two invocations per row: running max m, denominator l, per-row rescale);
//   V tile → shared; O += P·V, each invocation owning 4 rows × 16 dims of O in registers.
// Everything but the f16 K/V is f32, so the result matches the scalar kernel's precision.
// Long walks are split over n_splits workgroups (grid z) that write partials for
// attention_combine.comp. Causal mask: row R sees keys 0 .. start_pos + R / G; keys past the sequence are zeroed when staged
// (the pool's unwritten slots may hold anything). Shared memory 29 KiB (lavapipe allows 32).
// q/out are f32 [n_tokens][n_heads][128]; pool layout kernels/kv_layout.h.
layout(local_size_x = 64) in;
layout(std430, set = 0, binding = 0) readonly buffer KV4 { uvec4 kv4[]; };
layout(std430, set = 0, binding = 1) readonly buffer T { int table[]; };
layout(std430, set = 0, binding = 2) readonly buffer Q { vec4 q4[]; };
layout(std430, set = 0, binding = 3) writeonly buffer O { vec2 o2[]; };
layout(std430, set = 0, binding = 4) writeonly buffer Part { float part[]; };  // split partials
layout(push_constant) uniform P {
  uint block_size; uint n_kv_heads; uint n_heads; uint start_pos; uint n_tokens; float scale; uint group;
  uint n_splits; uint split_len;
} pc;

const uint D = 128u, BQ = 32u, BK = 32u;
const uint QS = D + 1u;        // f32 stride of Q rows (odd: rows of one invocation's block hit different banks)
const uint KW = D / 2u + 1u;   // uint (two halves) stride of the K/V tile
const uint SS = BK + 1u;
shared float qs[BQ * QS];
shared uint kvs[BK * KW];
shared float ss[BQ * SS];      // S, then P
shared float corr_s[BQ];
shared float m_s[BQ], l_s[BQ];  // each row's final max and denominator

uint k_offset(uint p, uint kvh) {
  uint blk = uint(table[p / pc.block_size]);
  return blk * 2u * pc.block_size * pc.n_kv_heads * D + (kvh * pc.block_size + p % pc.block_size) * D;
}

// Keys base .. base + BK - 1 of K (v = 0) or V (v = 1) into kvs; keys at or past kend are zero.
void stage(uint base, uint kend, uint kvh, uint v, uint t) {
  uint half_block = pc.block_size * pc.n_kv_heads * D;
  for (uint e = t; e < BK * (D / 8u); e += 64u) {
    uint j = e / (D / 8u), c = e % (D / 8u), p = base + j;
    uvec4 w = uvec4(0u);
    if (p < kend) w = kv4[(k_offset(p, kvh) + v * half_block) / 8u + c];
    for (uint i = 0u; i < 4u; ++i) kvs[j * KW + 4u * c + i] = w[i];
  }
}

void main() {
  uint t = gl_LocalInvocationID.x;
  uint kvh = gl_WorkGroupID.y, R0 = gl_WorkGroupID.x * BQ, G = pc.group;
  uint rows = pc.n_tokens * G;
  uint kend = pc.start_pos + (min(R0 + BQ, rows) - 1u) / G + 1u;

  for (uint e = t; e < BQ * (D / 4u); e += 64u) {
    uint r = e / (D / 4u), c = e % (D / 4u), R = R0 + r;
    vec4 v = vec4(0.0);
    if (R < rows) v = q4[((R / G) * pc.n_heads + kvh * G + R % G) * (D / 4u) + c];
    for (uint i = 0u; i < 4u; ++i) qs[r * QS + 4u * c + i] = v[i];
  }

  // Register blocks: rows 4 * rg + i; S keys kg + 8 * j; O dims (dg + 8 * w) * 2 + {0, 1}.
  uint rg = t / 8u, kg = t % 8u, dg = t % 8u;
  // Softmax lanes: row sr, half sh of the tile's keys.
  uint sr = t >> 1, sh = t & 1u;
  float m = -1.0 / 0.0, l = 0.0;
  float o[4][16];
  for (uint i = 0u; i < 4u; ++i)
    for (uint d = 0u; d < 16u; ++d) o[i][d] = 0.0;

  // Split-K (n_splits > 1): this workgroup walks keys k0 .. k1 - 1 only (split_len is a multiple of
  // the key tile, so a tile never crosses a split) and writes its unnormalised output, m and l.
  uint split = gl_WorkGroupID.z, k0 = split * pc.split_len, k1 = min(kend, k0 + pc.split_len);
  for (uint base = k0; base < k1; base += BK) {
    barrier();  // the previous tile's P·V reads are done (and Q is staged, on the first tile)
    stage(base, kend, kvh, 0u, t);
    barrier();
    float acc[4][4];
    for (uint i = 0u; i < 4u; ++i)
      for (uint j = 0u; j < 4u; ++j) acc[i][j] = 0.0;
    for (uint w = 0u; w < D / 2u; ++w) {
      vec2 kk[4];
      for (uint j = 0u; j < 4u; ++j) kk[j] = unpackHalf2x16(kvs[(kg + 8u * j) * KW + w]);
      for (uint i = 0u; i < 4u; ++i) {
        vec2 qq = vec2(qs[(4u * rg + i) * QS + 2u * w], qs[(4u * rg + i) * QS + 2u * w + 1u]);
        for (uint j = 0u; j < 4u; ++j) acc[i][j] += qq.x * kk[j].x + qq.y * kk[j].y;
      }
    }
    for (uint i = 0u; i < 4u; ++i) {
      uint R = R0 + 4u * rg + i;
      for (uint j = 0u; j < 4u; ++j) {
        uint p = base + kg + 8u * j;
        ss[(4u * rg + i) * SS + kg + 8u * j] =
            (R < rows && p <= pc.start_pos + R / G) ? acc[i][j] * pc.scale : -1.0 / 0.0;
      }
    }
    barrier();
    // Online softmax: both invocations of a row read all 32 scores; each writes 16 probabilities.
    float mx = -1.0 / 0.0;
    for (uint k = 0u; k < BK; ++k) mx = max(mx, ss[sr * SS + k]);
    float m_new = max(m, mx);
    float corr = m_new == -1.0 / 0.0 ? 1.0 : exp(m - m_new);
    float sum = 0.0, pv[16];
    for (uint k = 0u; k < BK; ++k) {
      float x = ss[sr * SS + k];
      sum += x == -1.0 / 0.0 ? 0.0 : exp(x - m_new);
    }
    for (uint k = 0u; k < 16u; ++k) {
      float x = ss[sr * SS + sh * 16u + k];
      pv[k] = x == -1.0 / 0.0 ? 0.0 : exp(x - m_new);
    }
    l = l * corr + sum;
    m = m_new;
    barrier();  // every score and the K tile have been read
    for (uint k = 0u; k < 16u; ++k) ss[sr * SS + sh * 16u + k] = pv[k];
    if (sh == 0u) corr_s[sr] = corr;
    stage(base, kend, kvh, 1u, t);
    barrier();
    for (uint i = 0u; i < 4u; ++i) {
      float c = corr_s[4u * rg + i];
      for (uint d = 0u; d < 16u; ++d) o[i][d] *= c;
    }
    uint n = min(BK, kend - base);
    for (uint k = 0u; k < n; ++k) {
      float p[4];
      for (uint i = 0u; i < 4u; ++i) p[i] = ss[(4u * rg + i) * SS + k];
      for (uint w = 0u; w < 8u; ++w) {
        vec2 vv = unpackHalf2x16(kvs[k * KW + dg + 8u * w]);
        for (uint i = 0u; i < 4u; ++i) {
          o[i][2u * w] += p[i] * vv.x;
          o[i][2u * w + 1u] += p[i] * vv.y;
        }
      }
    }
  }
  if (sh == 0u) {
    m_s[sr] = m;
    l_s[sr] = l;
  }
  barrier();
  for (uint i = 0u; i < 4u; ++i) {
    uint R = R0 + 4u * rg + i;
    if (R >= rows) continue;
    uint qh = (R / G) * pc.n_heads + kvh * G + R % G;  // (token, query head)
    if (pc.n_splits > 1u) {  // layout of attention_combine.comp: [token][head][split][128 + 2]
      uint pb = (qh * pc.n_splits + split) * (D + 2u);
      for (uint w = 0u; w < 8u; ++w) {
        part[pb + 2u * (dg + 8u * w)] = o[i][2u * w];
        part[pb + 2u * (dg + 8u * w) + 1u] = o[i][2u * w + 1u];
      }
      if (dg == 0u) {
        part[pb + D] = m_s[4u * rg + i];  // -inf with l = 0 for a split past this row's keys
        part[pb + D + 1u] = l_s[4u * rg + i];
      }
      continue;
    }
    float inv = 1.0 / l_s[4u * rg + i];
    for (uint w = 0u; w < 8u; ++w) o2[qh * (D / 2u) + dg + 8u * w] = vec2(o[i][2u * w], o[i][2u * w + 1u]) * inv;
  }
}
