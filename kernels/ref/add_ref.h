// kernels/ref/add_ref.h — plain C++ reference for the residual add (the definition the GPU op is
// tested against): out[i] = a[i] + b[i] in float32 (same rounding as the shader, so exact).
#pragma once
#include <cstddef>

namespace trove::ref {
void add_f32(const float* a, const float* b, float* out, size_t n);
}  // namespace trove::ref
