// matvec_io.glsl — the weight and output bindings, the push block and the weight reads and epilogues of
// the decode matvec kernels, which take 1..3 matrices sharing x (matvec_body.glsl: the f32 forms;
// matvec_q8.glsl: the q8 and q8p forms; matvec_q8_coopmat.glsl: the q8 coopmat kernels). The includer
// declares kMats (weight bindings in use) and kSwiGlu first, and bindings 0 and 1 itself.
layout(std430, set = 0, binding = 2) readonly buffer W0q { uvec4 w0q[]; };
layout(std430, set = 0, binding = 2) readonly buffer W0w { uint w0w[]; };
layout(std430, set = 0, binding = 3) readonly buffer W1q { uvec4 w1q[]; };
layout(std430, set = 0, binding = 3) readonly buffer W1w { uint w1w[]; };
layout(std430, set = 0, binding = 4) readonly buffer W2q { uvec4 w2q[]; };
layout(std430, set = 0, binding = 4) readonly buffer W2w { uint w2w[]; };
layout(std430, set = 0, binding = 5) buffer Y0 { float y0[]; };
layout(std430, set = 0, binding = 6) buffer Y1 { float y1[]; };
layout(std430, set = 0, binding = 7) buffer Y2 { float y2[]; };

// kernels/ops/matvec.cpp's Push. flags: bit 0 RMSNorm prologue, bit 1 add into y (kAdd), higher bits a
// form's measurements. wg_end[m]: row blocks of matrices 0..m. grid: workgroups walking the blocks (the
// stride). type: informational (the code is specialized).
layout(push_constant) uniform P {
  uint cols; uint flags; float eps; uint n_mats;
  uint ntiles; uint tile_vals; uint groups_x; uint grid;
  uvec4 type; uvec4 rows; uvec4 y_stride; uvec4 row_bytes; uvec4 wg_end;
} pc;

// 16-byte word i of matrix m's weights; mv_ww: its 4-byte word i.
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

// The epilogue for output element i of matrix m: SwiGLU of the gate sum v and up sum u into y0, or v
// stored into / added to (kAdd) the matrix's output.
void mv_write(uint m, uint i, float v, float u, bool add) {
  if (kSwiGlu != 0u) {
    y0[i] = v / (1.0 + exp(-v)) * u;
  } else if (kMats == 1u || m == 0u) {
    y0[i] = add ? y0[i] + v : v;
  } else if (kMats == 2u || m == 1u) {
    y1[i] = add ? y1[i] + v : v;
  } else {
    y2[i] = add ? y2[i] + v : v;
  }
}
