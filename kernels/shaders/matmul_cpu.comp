#version 460
#extension GL_EXT_shader_explicit_arithmetic_types_int64 : require
// Matmul for CPU devices (lavapipe): y[b][r] = sum_c W[r][c] * x[b][c], weights F32/F16/BF16/Q8_0/
// Q4_K/Q5_K/Q6_K stored as GGUF rows (input dim contiguous), f32 or f16 activations. The same math
// as matmul_tiled.comp (f32 products and sums); only the work split and the loads differ.
//
// Why a separate form: lavapipe (Mesa 22.3's llvmpipe) runs a workgroup's invocations as the lanes of
// SIMD vectors (8 with AVX2), but every storage-buffer load — even one whose address is the same in
// all lanes — becomes a loop over the lanes with, per component, a bounds check, a scalar load and an
// insert. Arithmetic is vector code. Barriers switch coroutines, shared memory goes through the same
// per-lane loops, and so do subgroup broadcasts. So what costs is loaded COMPONENTS per lane, and:
//  - an invocation owns kR whole rows and kC batch columns (the same columns for the whole
//    workgroup) and walks K alone: no shared memory, no barriers, no reduction; every loaded weight
//    feeds kC multiply-adds and every loaded activation kR (register blocking; what does not fit in
//    registers spills to the stack, which is plain vector code and cheap next to a load);
//  - loads are 64-bit components (uint64_t: two words per bounds check), in vectors of 2 or 4;
//  - K-quant scales are decoded once per sub-block pair, Q4_K/Q5_K nibbles of two sub-blocks from
//    one load.
// Rows past the end are clamped (read, computed, not stored), so no control flow depends on the lane.
// Split K (pc.k_splits > 1, forced only: TROVE_MATMUL_SPLIT_K, kernels/ops/matmul.h): workgroup z sums
// the 256-value blocks z·nb/S .. (z+1)·nb/S − 1 and writes at y + z·pc.split_stride, as the KHR
// kernel does (the host asks cols % 256 == 0); CI tests the split and its sum here.
//
// Loads per invocation and 256 values: activations 128 kC 64-bit components (64 kC with f16);
// weights kR x (F32 128, F16/BF16 64, Q4_K 18, Q5_K 22 components; Q6_K 80 and Q8_0 72 32-bit words:
// 2-byte-aligned blocks are read as words); multiply-adds 256 kR kC. Tiles measured in
// docs/kernels.md; the host picks them (kernels/ops/matmul.cpp).
layout(local_size_x = 64) in;
layout(std430, set = 0, binding = 0) readonly buffer W { uint w[]; };
layout(std430, set = 0, binding = 0) readonly buffer W16 { u64vec2 w16[]; };  // 16-byte units
layout(std430, set = 0, binding = 0) readonly buffer W32 { u64vec4 w32[]; };  // 32-byte units
layout(std430, set = 0, binding = 1) readonly buffer X { u64vec4 x32[]; };    // 8 f32 activations
layout(std430, set = 0, binding = 1) readonly buffer X16 { u64vec2 xh16[]; }; // 8 f16 activations
layout(std430, set = 0, binding = 2) writeonly buffer Y { float y[]; };
// Matmul::record's TilePush (n_expert, expert_bytes and x_rows are the grouped form's, unused here).
layout(push_constant) uniform P {
  uint rows; uint cols; uint batch; uint row_bytes; uint y_stride; uint n_expert; uint expert_bytes; uint x_rows;
  uint k_splits; uint split_stride;  // split K: 0 or 1 = none
} pc;

layout(constant_id = 0) const uint kType = 12u;  // GGML type id
layout(constant_id = 1) const uint kXF16 = 0u;   // 1: f16 activations
layout(constant_id = 2) const uint kR = 4u;      // rows per invocation (<= 8)
layout(constant_id = 3) const uint kC = 8u;      // batch columns per workgroup (<= 16)

const uint kF32 = 0u, kF16 = 1u, kQ8_0 = 8u, kQ4_K = 12u, kQ5_K = 13u, kQ6_K = 14u, kBF16 = 30u;
const uint kMaxR = 8u, kMaxC = 16u;

float acc[kMaxR][kMaxC];
uint xcol[kMaxC];  // index (in 8-value units) of each batch column's first activation

vec4 f4(uint64_t a, uint64_t b) { return uintBitsToFloat(uvec4(unpackUint2x32(a), unpackUint2x32(b))); }
vec4 bf4(uint64_t a) {
  const uvec2 u = unpackUint2x32(a);
  return uintBitsToFloat(uvec4(u.x << 16u, u.x & 0xffff0000u, u.y << 16u, u.y & 0xffff0000u));
}
vec4 h4(uint64_t a) {
  const uvec2 u = unpackUint2x32(a);
  return vec4(unpackHalf2x16(u.x), unpackHalf2x16(u.y));
}

// acc[r][c] += wv[r] . x[c][8i .. 8i+3] + wu[r] . x[c][8i+4 .. 8i+7], every row and column.
void mac8(uint i, vec4 wv[kMaxR], vec4 wu[kMaxR]) {
  for (uint c = 0u; c < kC; ++c) {
    vec4 xa, xb;
    if (kXF16 != 0u) {
      const u64vec2 v = xh16[xcol[c] + i];
      xa = h4(v.x);
      xb = h4(v.y);
    } else {
      const u64vec4 v = x32[xcol[c] + i];
      xa = f4(v.x, v.y);
      xb = f4(v.z, v.w);
    }
    for (uint r = 0u; r < kR; ++r) {
      float a = acc[r][c];
      a = fma(wv[r].x, xa.x, a);
      a = fma(wv[r].y, xa.y, a);
      a = fma(wv[r].z, xa.z, a);
      a = fma(wv[r].w, xa.w, a);
      a = fma(wu[r].x, xb.x, a);
      a = fma(wu[r].y, xb.y, a);
      a = fma(wu[r].z, xb.z, a);
      a = fma(wu[r].w, xb.w, a);
      acc[r][c] = a;
    }
  }
}

vec4 bytes4(uint v) { return vec4(uvec4(v, v >> 8u, v >> 16u, v >> 24u) & 0xffu); }
vec4 sbytes4(uint v) {
  int s = int(v);
  return vec4(bitfieldExtract(s, 0, 8), bitfieldExtract(s, 8, 8), bitfieldExtract(s, 16, 8), bitfieldExtract(s, 24, 8));
}
uint byte_of(uvec4 v, uint b) { return (v[b >> 2] >> (8u * (b & 3u))) & 0xffu; }
// The 4 bytes at byte 2 of the word pair (a, b) when odd16, else a: word reads of a 2-byte-aligned run.
uint funnel(uint a, uint b, bool odd16) { return odd16 ? (a >> 16) | (b << 16) : a; }

void main() {
  const uint row0 = (gl_WorkGroupID.x * 64u + gl_LocalInvocationID.x) * kR;
  // K range: 256-value blocks kb0 .. kb1 − 1 (32-value chunks 8·kb0 .. c1 − 1) and where the sums go.
  uint kb0 = 0u, kb1 = pc.cols >> 8, c1 = pc.cols >> 5, y_base = 0u;
  if (pc.k_splits > 1u) {
    const uint z = gl_WorkGroupID.z, nb = pc.cols >> 8;
    kb0 = z * nb / pc.k_splits;
    kb1 = (z + 1u) * nb / pc.k_splits;
    c1 = 8u * kb1;
    y_base = z * pc.split_stride;
  }
  const uint b0 = gl_WorkGroupID.y * kC;
  uint roff[kMaxR];  // byte offset of each row (clamped to the last row)
  for (uint r = 0u; r < kR; ++r) roff[r] = min(row0 + r, pc.rows - 1u) * pc.row_bytes;
  for (uint c = 0u; c < kC; ++c) {
    xcol[c] = (min(b0 + c, pc.batch - 1u) * pc.cols) >> 3;
    for (uint r = 0u; r < kR; ++r) acc[r][c] = 0.0;
  }

  if (kType == kQ4_K || kType == kQ5_K) {
    // Super-blocks of 256 (144 / 176 bytes = 9 / 11 units of 16): d, dmin, 12 bytes of 6-bit
    // scales/mins, [qh[32] (Q5_K)], qs[128]. Sub-blocks 2p and 2p+1 are the low and high nibbles of
    // qs[32p .. 32p+31]; Q5_K's fifth bit of value l of sub-block s is bit s of qh[l].
    const uint bsz = kType == kQ4_K ? 9u : 11u, qs0 = kType == kQ4_K ? 1u : 3u;
    for (uint k = kb0; k < kb1; ++k) {
      uint blk[kMaxR];
      uvec4 hd[kMaxR];
      u64vec2 qh0[kMaxR], qh1[kMaxR];
      for (uint r = 0u; r < kR; ++r) {
        blk[r] = (roff[r] >> 4) + k * bsz;
        const u64vec2 h = w16[blk[r]];
        hd[r] = uvec4(unpackUint2x32(h.x), unpackUint2x32(h.y));
        if (kType == kQ5_K) {
          qh0[r] = w16[blk[r] + 1u];
          qh1[r] = w16[blk[r] + 2u];
        }
      }
      for (uint p = 0u; p < 4u; ++p) {
        float sa[kMaxR], ma[kMaxR], sb[kMaxR], mb[kMaxR];
        for (uint r = 0u; r < kR; ++r) {
          const vec2 dm = unpackHalf2x16(hd[r].x);
          uint sc[2], mn[2];
          for (uint h = 0u; h < 2u; ++h) {
            const uint s = 2u * p + h;  // scale bytes start at byte 4 of the block
            if (s < 4u) {
              sc[h] = byte_of(hd[r], 4u + s) & 63u;
              mn[h] = byte_of(hd[r], 8u + s) & 63u;
            } else {
              const uint a = byte_of(hd[r], 8u + s);
              sc[h] = (a & 15u) | ((byte_of(hd[r], s) >> 6) << 4);
              mn[h] = (a >> 4) | ((byte_of(hd[r], 4u + s) >> 6) << 4);
            }
          }
          sa[r] = dm.x * float(sc[0]);
          ma[r] = dm.y * float(mn[0]);
          sb[r] = dm.x * float(sc[1]);
          mb[r] = dm.y * float(mn[1]);
        }
        for (uint h = 0u; h < 2u; ++h) {  // 16 bytes of the pair's 32: values l = 16h .. 16h+15
          u64vec2 q[kMaxR];
          for (uint r = 0u; r < kR; ++r) q[r] = w16[blk[r] + qs0 + 2u * p + h];
          for (uint e = 0u; e < 2u; ++e) {  // 8 bytes: values l = 16h + 8e .. + 7
            vec4 lo0[kMaxR], lo1[kMaxR], hi0[kMaxR], hi1[kMaxR];
            for (uint r = 0u; r < kR; ++r) {
              const uvec2 qq = unpackUint2x32(q[r][e]);
              uvec2 lo = qq & 0x0f0f0f0fu, hi = (qq >> 4) & 0x0f0f0f0fu;
              if (kType == kQ5_K) {
                const uvec2 qh = unpackUint2x32(h == 0u ? qh0[r][e] : qh1[r][e]);
                lo |= ((qh >> (2u * p)) & 0x01010101u) << 4;
                hi |= ((qh >> (2u * p + 1u)) & 0x01010101u) << 4;
              }
              lo0[r] = sa[r] * bytes4(lo.x) - ma[r];
              lo1[r] = sa[r] * bytes4(lo.y) - ma[r];
              hi0[r] = sb[r] * bytes4(hi.x) - mb[r];
              hi1[r] = sb[r] * bytes4(hi.y) - mb[r];
            }
            const uint i = k * 32u + 8u * p + 2u * h + e;  // 8-value unit of value 64p + l
            mac8(i, lo0, lo1);
            mac8(i + 4u, hi0, hi1);
          }
        }
      }
    }
  } else if (kType == kQ6_K) {
    // 210-byte super-blocks (2-byte aligned, read as words with a funnel shift): ql[128], qh[64],
    // int8 scales[16], f16 d. Half n (128 values), word j of ql (values l = 4j..4j+3):
    // q1 = ql[l] low | qh[l] bits 0-1 -> value l, q2 = ql[l+32] low | bits 2-3 -> l+32,
    // q3 = ql[l] high | bits 4-5 -> l+64, q4 = ql[l+32] high | bits 6-7 -> l+96; each minus 32,
    // times d * scales[8n + l/16 + 2m] for the m-th of them.
    const uint wlast = uint(w.length()) - 1u;
    for (uint k = kb0; k < kb1; ++k) {
      uint base[kMaxR];
      bool odd[kMaxR];
      float d[kMaxR];
      for (uint r = 0u; r < kR; ++r) {
        const uint o = roff[r] + k * 210u;
        base[r] = o >> 2;
        odd[r] = (o & 2u) != 0u;
        // byte 208; the word after the block is used only when odd (clamped: it may lie past the buffer)
        d[r] = unpackHalf2x16(funnel(w[base[r] + 52u], w[min(base[r] + 53u, wlast)], odd[r])).x;
      }
      for (uint n = 0u; n < 2u; ++n) {
        vec4 s0[kMaxR], s1[kMaxR];
        for (uint r = 0u; r < kR; ++r) {
          const uint sw = base[r] + 48u + 2u * n;  // scales[8n ..] at byte 192 + 8n
          const uint t0 = w[sw], t1 = w[sw + 1u], t2 = w[sw + 2u];
          s0[r] = d[r] * sbytes4(funnel(t0, t1, odd[r]));
          s1[r] = d[r] * sbytes4(funnel(t1, t2, odd[r]));
        }
        for (uint g = 0u; g < 4u; ++g) {  // values l = 8g .. 8g+7 (ql words 2g, 2g+1)
          uint la[kMaxR][2], lb[kMaxR][2], hq[kMaxR][2];
          for (uint r = 0u; r < kR; ++r) {
            const uint a0 = w[base[r] + 16u * n + 2u * g], a1 = w[base[r] + 16u * n + 2u * g + 1u],
                       a2 = w[base[r] + 16u * n + 2u * g + 2u];
            const uint b0 = w[base[r] + 16u * n + 8u + 2u * g], b1 = w[base[r] + 16u * n + 8u + 2u * g + 1u],
                       b2 = w[base[r] + 16u * n + 8u + 2u * g + 2u];
            const uint h0 = w[base[r] + 32u + 8u * n + 2u * g], h1 = w[base[r] + 32u + 8u * n + 2u * g + 1u],
                       h2 = w[base[r] + 32u + 8u * n + 2u * g + 2u];
            la[r][0] = funnel(a0, a1, odd[r]);
            la[r][1] = funnel(a1, a2, odd[r]);
            lb[r][0] = funnel(b0, b1, odd[r]);
            lb[r][1] = funnel(b1, b2, odd[r]);
            hq[r][0] = funnel(h0, h1, odd[r]);
            hq[r][1] = funnel(h1, h2, odd[r]);
          }
          for (uint m = 0u; m < 4u; ++m) {
            vec4 v0[kMaxR], v1[kMaxR];
            for (uint r = 0u; r < kR; ++r) {
              const uint si = 2u * m + (g >> 1);  // scale index within the half: 2m + l / 16
              const float ds = si < 4u ? s0[r][si] : s1[r][si - 4u];
              for (uint e = 0u; e < 2u; ++e) {
                const uint lo = ((m & 1u) == 0u ? la[r][e] : lb[r][e]) >> (m < 2u ? 0u : 4u);
                const uint q = (lo & 0x0f0f0f0fu) | (((hq[r][e] >> (2u * m)) & 0x03030303u) << 4);
                const vec4 v = ds * (bytes4(q) - 32.0);
                if (e == 0u) v0[r] = v; else v1[r] = v;
              }
            }
            mac8(k * 32u + 16u * n + 4u * m + g, v0, v1);  // value 128n + 32m + 8g
          }
        }
      }
    }
  } else if (kType == kQ8_0) {
    // 34-byte blocks (2-byte aligned): f16 d, 32 int8 values. Words a0..a8 from the block's floor
    // word cover both alignments.
    for (uint k = 8u * kb0; k < c1; ++k) {
      uint a[kMaxR][9];
      float d[kMaxR];
      bool odd[kMaxR];
      for (uint r = 0u; r < kR; ++r) {
        const uint o = roff[r] + k * 34u;
        odd[r] = (o & 2u) != 0u;
        for (uint i = 0u; i < 9u; ++i) a[r][i] = w[(o >> 2) + i];
        d[r] = unpackHalf2x16(odd[r] ? a[r][0] >> 16 : a[r][0]).x;
      }
      for (uint i = 0u; i < 4u; ++i) {
        vec4 v0[kMaxR], v1[kMaxR];
        for (uint r = 0u; r < kR; ++r) {
          v0[r] = d[r] * sbytes4(odd[r] ? a[r][2u * i + 1u] : (a[r][2u * i] >> 16) | (a[r][2u * i + 1u] << 16));
          v1[r] = d[r] * sbytes4(odd[r] ? a[r][2u * i + 2u] : (a[r][2u * i + 1u] >> 16) | (a[r][2u * i + 2u] << 16));
        }
        mac8(k * 4u + i, v0, v1);
      }
    }
  } else {
    // F32 / F16 / BF16: rows are multiples of 64 bytes; 32-byte loads (8 f32 or 16 f16 / bf16).
    for (uint k = 8u * kb0; k < c1; ++k) {
      if (kType == kF32) {
        for (uint i = 0u; i < 4u; ++i) {
          vec4 v0[kMaxR], v1[kMaxR];
          for (uint r = 0u; r < kR; ++r) {
            const u64vec4 v = w32[(roff[r] >> 5) + 4u * k + i];
            v0[r] = f4(v.x, v.y);
            v1[r] = f4(v.z, v.w);
          }
          mac8(k * 4u + i, v0, v1);
        }
      } else {
        for (uint i = 0u; i < 2u; ++i) {
          vec4 v0[kMaxR], v1[kMaxR], v2[kMaxR], v3[kMaxR];
          for (uint r = 0u; r < kR; ++r) {
            const u64vec4 v = w32[(roff[r] >> 5) + 2u * k + i];
            if (kType == kF16) {
              v0[r] = h4(v.x);
              v1[r] = h4(v.y);
              v2[r] = h4(v.z);
              v3[r] = h4(v.w);
            } else {
              v0[r] = bf4(v.x);
              v1[r] = bf4(v.y);
              v2[r] = bf4(v.z);
              v3[r] = bf4(v.w);
            }
          }
          mac8(k * 4u + 2u * i, v0, v1);
          mac8(k * 4u + 2u * i + 1u, v2, v3);
        }
      }
    }
  }

  for (uint r = 0u; r < kR; ++r) {
    const uint row = row0 + r;
    if (row >= pc.rows) break;
    for (uint c = 0u; c < kC; ++c) {
      if (b0 + c >= pc.batch) break;
      y[y_base + (b0 + c) * pc.y_stride + row] = acc[r][c];
    }
  }
}
