// kernels/ref/sample_ref.h — reference for ops::Sampler: the exact probability of each token after
// temperature, top-k, min-p and top-p (float64), and the per-row uniform draw both sides use.
#pragma once
#include <cstddef>
#include <cstdint>
#include <vector>

namespace trove::ref {
uint32_t pcg_hash(uint32_t v);
// Uniform in [0,1) for (seed, row), 24-bit resolution.
double sample_uniform(uint32_t seed, uint32_t row);
std::vector<double> sampling_probs(const float* logits, size_t ncols, double temperature, uint32_t top_k, double top_p,
                                   double min_p);
}  // namespace trove::ref
