// AVX2 + FMA + F16C decode attention (kernels/attention.h): 8-wide instantiation of attend_impl.h.
#include "kernels/cpu/simd.h"

#include <algorithm>
#include <cmath>

#include "kernels/cpu/cpu_kernels.h"
#include "kernels/cpu/vec_avx2.h"

namespace tessera::cpu::avx2 {
namespace {

#include "kernels/cpu/attend_impl.h"

}  // namespace

bool attend_decode(const DecodeAttnArgs& a) { return attend_dispatch<V256>(a); }
void attend_softmax_row(float* s, int64_t n, float softcap) { attend_softmax<V256>(s, n, softcap); }
float attend_online_row(float* s, int64_t n, float softcap, float& m) { return attend_online<V256>(s, n, softcap, m); }

}  // namespace tessera::cpu::avx2
