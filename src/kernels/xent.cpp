#include "kernels/xent.h"

#include <algorithm>
#include <cmath>

namespace tessera {

float ref::xent_row(float* z, int64_t V, int32_t target, float alpha, float scale) {
  float mx = z[0];
  for (int64_t v = 1; v < V; ++v) mx = std::max(mx, z[v]);
  float sum = 0;
  for (int64_t v = 0; v < V; ++v) sum += (z[v] = std::exp(z[v] - mx));
  const float lse = mx + std::log(sum);
  const float k = (1.f + 2.f * alpha * lse) / sum * scale;
  for (int64_t v = 0; v < V; ++v) z[v] *= k;
  z[target] -= scale;
  return lse;
}

float xent_row(Isa isa, float* z, int64_t V, int32_t target, float alpha, float scale) {
  if (isa == Isa::AVX512) return cpu::avx512::xent_row(z, V, target, alpha, scale);
  return ref::xent_row(z, V, target, alpha, scale);
}

}  // namespace tessera
