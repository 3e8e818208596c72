// One row of the fused softmax cross-entropy used by training: in place over
// the logits z(V), returns log-sum-exp and replaces z by
//   (softmax(z) * (1 + 2 alpha lse) - onehot(target)) * scale
// (the gradient of nll + alpha lse^2). The AVX-512 path uses a polynomial exp
// (relative error < 2e-7); xent_row_ref with std::exp is the specification.
#pragma once
#include <cstdint>

#include "kernels/kernels.h"

namespace tessera {

float xent_row(Isa isa, float* z, int64_t V, int32_t target, float alpha, float scale);

namespace ref {
float xent_row(float* z, int64_t V, int32_t target, float alpha, float scale);
}  // namespace ref

namespace cpu::avx512 {
float xent_row(float* z, int64_t V, int32_t target, float alpha, float scale);
}  // namespace cpu::avx512

}  // namespace tessera
