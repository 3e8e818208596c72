// AVX-512 K-quant (Q2_K .. Q6_K) and legacy (Q4_1, Q5_0, Q5_1, IQ4_NL) matrix-vector
// kernels against quantized activations: kquant_impl.h and legacy_impl.h with
// this ISA's vector traits.
#include "kernels/cpu/simd.h"

#include <algorithm>
#include <bit>
#include <cstring>

#include "core/dtype.h"
#include "kernels/cpu/cpu_kernels.h"
#include "kernels/cpu/vec_avx512.h"

namespace tessera::cpu::avx512 {
namespace {

#include "kernels/cpu/kquant_impl.h"
#include "kernels/cpu/legacy_impl.h"

}  // namespace

void matvec_kquant(const MatvecArgs& a, int64_t n0, int64_t n1) {
  with_kquant_unpacker(a.W->dtype, [&](auto u) { kq_rows<V512, decltype(u)>(a, n0, n1); });
}

void matvec_legacy(const MatvecArgs& a, int64_t n0, int64_t n1) { matvec_legacy_impl(a, n0, n1); }

}  // namespace tessera::cpu::avx512
