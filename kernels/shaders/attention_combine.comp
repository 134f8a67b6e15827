#version 460
// Merges split-K attention partials (attention_paged.comp with n_splits > 1): for each (head, token),
// M = max_s m_s, L = sum_s l_s e^(m_s - M), o = sum_s acc_s e^(m_s - M) / L. Splits past the last key
// have l = 0 and m = -inf and weigh nothing. One workgroup of 64 per (head, token).
layout(local_size_x = 64) in;
layout(std430, set = 0, binding = 0) readonly buffer Part { float part[]; };
layout(std430, set = 0, binding = 1) writeonly buffer O { float o[]; };
layout(push_constant) uniform P { uint head_dim; uint n_heads; uint n_splits; } pc;

void main() {
  uint h = gl_WorkGroupID.x, tok = gl_WorkGroupID.y, t = gl_LocalInvocationID.x;
  uint stride = pc.head_dim + 2u;
  uint base = (tok * pc.n_heads + h) * pc.n_splits * stride;
  float M = -1.0 / 0.0;
  for (uint s = 0u; s < pc.n_splits; ++s) {
    if (part[base + s * stride + pc.head_dim + 1u] > 0.0) M = max(M, part[base + s * stride + pc.head_dim]);
  }
  float L = 0.0;
  for (uint s = 0u; s < pc.n_splits; ++s) {
    float l = part[base + s * stride + pc.head_dim + 1u];
    if (l > 0.0) L += l * exp(part[base + s * stride + pc.head_dim] - M);
  }
  for (uint d = t; d < pc.head_dim; d += 64u) {
    float a = 0.0;
    for (uint s = 0u; s < pc.n_splits; ++s) {
      float l = part[base + s * stride + pc.head_dim + 1u];
      if (l > 0.0) a += part[base + s * stride + d] * exp(part[base + s * stride + pc.head_dim] - M);
    }
    o[(tok * pc.n_heads + h) * pc.head_dim + d] = a / L;
  }
}
