#version 460
// MoE routing per token: softmax over n_experts router logits, pick the top k (ties → smaller expert
// index), renormalise the k weights to sum to 1. Selecting on logits equals selecting on softmax
// probabilities (monotone), and the renormalised weights are softmax over the selected logits.
// One invocation per token (n_experts = 128, k = 8 for Qwen3-30B-A3B: a tiny op).
layout(local_size_x = 64) in;
layout(std430, binding = 0) readonly buffer L { float l[]; };
layout(std430, binding = 1) writeonly buffer I { uint ids[]; };
layout(std430, binding = 2) writeonly buffer W { float w[]; };
layout(push_constant) uniform P { uint n_experts; uint k; uint tokens; } pc;
void main() {
  uint t = gl_GlobalInvocationID.x;
  if (t >= pc.tokens) return;
  uint base = t * pc.n_experts;
  uint chosen[32];
  float best_val = -1.0 / 0.0;
  for (uint j = 0u; j < pc.k; ++j) {
    uint bi = 0xffffffffu;
    float bv = -1.0 / 0.0;
    for (uint e = 0u; e < pc.n_experts; ++e) {
      bool taken = false;
      for (uint q = 0u; q < j; ++q) taken = taken || chosen[q] == e;
      float v = l[base + e];
      if (!taken && (bi == 0xffffffffu || v > bv)) { bv = v; bi = e; }
    }
    chosen[j] = bi;
    if (j == 0u) best_val = bv;
  }
  float sum = 0.0;
  for (uint j = 0u; j < pc.k; ++j) sum += exp(l[base + chosen[j]] - best_val);
  for (uint j = 0u; j < pc.k; ++j) {
    ids[t * pc.k + j] = chosen[j];
    w[t * pc.k + j] = exp(l[base + chosen[j]] - best_val) / sum;
  }
}
