#include "kernels/ref/sample_ref.h"

#include <algorithm>
#include <cmath>
#include <numeric>

namespace trove::ref {
uint32_t pcg_hash(uint32_t v) {
  uint32_t s = v * 747796405u + 2891336453u;
  uint32_t w = ((s >> ((s >> 28u) + 4u)) ^ s) * 277803737u;
  return (w >> 22u) ^ w;
}
double sample_uniform(uint32_t seed, uint32_t row) { return double(pcg_hash(seed ^ pcg_hash(row)) >> 8) / 16777216.0; }

std::vector<double> sampling_probs(const float* l, size_t n, double temperature, uint32_t top_k, double top_p,
                                   double min_p) {
  std::vector<uint32_t> order(n);
  std::iota(order.begin(), order.end(), 0u);
  std::stable_sort(order.begin(), order.end(), [&](uint32_t a, uint32_t b) { return l[a] > l[b]; });
  size_t k = std::min<size_t>(top_k, n);
  std::vector<double> p(k);
  double sum = 0;
  for (size_t j = 0; j < k; ++j) sum += p[j] = std::exp((double(l[order[j]]) - l[order[0]]) / temperature);
  size_t keep = 0;
  double cum = 0;
  for (size_t j = 0; j < k; ++j) {
    double pj = p[j] / sum;
    if (j > 0 && pj < min_p * (p[0] / sum)) break;
    keep = j + 1;
    cum += pj;
    if (cum >= top_p) break;
  }
  double tot = 0;
  for (size_t j = 0; j < keep; ++j) tot += p[j];
  std::vector<double> out(n, 0.0);
  for (size_t j = 0; j < keep; ++j) out[order[j]] = p[j] / tot;
  return out;
}
}  // namespace trove::ref
