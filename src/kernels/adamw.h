// The AdamW update over a chunk of the flat parameter buffer, AVX-512 (the
// scalar specification is the float instantiation of train::adamw_step; the
// KernelsAdamW test compares them). The scalar loop is compute-bound (a
// square root and a division per element); 16 lanes make it memory-bound.
#pragma once
#include <cstdint>

namespace tessera::cpu::avx512 {
// For i < n, with g = g[i] * gs (gs: the clipping scale, 1 without):
// p *= decay where mask[i]; m = b1 m + (1 - b1) g; v = b2 v + (1 - b2) g^2;
// p -= lr (m c1) / (sqrt(v c2) + eps).
void adamw(float* p, const float* g, float* m, float* v, const uint8_t* mask, int64_t n, float b1, float b2,
           float eps, float lr, float c1, float c2, float decay, float gs);
}  // namespace tessera::cpu::avx512
