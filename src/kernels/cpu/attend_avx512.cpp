// AVX-512 decode attention (kernels/attention.h): 16-wide instantiation of attend_impl.h.
#include "kernels/cpu/simd.h"

#include <algorithm>
#include <cmath>

#include "kernels/cpu/cpu_kernels.h"
#include "kernels/cpu/vec_avx512.h"

namespace tessera::cpu::avx512 {
namespace {

#include "kernels/cpu/attend_impl.h"

}  // namespace

bool attend_decode(const DecodeAttnArgs& a) { return attend_dispatch<V512>(a); }
void attend_softmax_row(float* s, int64_t n, float softcap) { attend_softmax<V512>(s, n, softcap); }
float attend_online_row(float* s, int64_t n, float softcap, float& m) { return attend_online<V512>(s, n, softcap, m); }

}  // namespace tessera::cpu::avx512
