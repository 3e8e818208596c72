// AVX-512 matrix-vector kernels for F32 / F16 / BF16 weights: matvec_float_impl.h
// at 16 floats.
#include "kernels/cpu/simd.h"

#include "kernels/cpu/cpu_kernels.h"
#include "kernels/cpu/tiling.h"
#include "kernels/cpu/vec_avx512.h"

namespace tessera::cpu::avx512 {
namespace {

#include "kernels/cpu/matvec_float_impl.h"

}  // namespace

void matvec_f32(const MatvecArgs& a, int64_t n0, int64_t n1) { matvec_float<V512, LoadF32<V512>>(a, n0, n1); }
void matvec_f16(const MatvecArgs& a, int64_t n0, int64_t n1) { matvec_float<V512, LoadF16<V512>>(a, n0, n1); }
void matvec_bf16(const MatvecArgs& a, int64_t n0, int64_t n1) { matvec_float<V512, LoadBF16<V512>>(a, n0, n1); }

}  // namespace tessera::cpu::avx512
