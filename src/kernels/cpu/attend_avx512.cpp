// AVX-512 decode attention (kernels/attention.h): 16-wide instantiation of attend_impl.h.
#include "kernels/cpu/simd.h"

#include <algorithm>
#include <cmath>

#include "kernels/cpu/cpu_kernels.h"
#include "kernels/cpu/exp_avx512.h"

namespace tessera::cpu::avx512 {
namespace {

struct V512 {
  using reg = __m512;
  static constexpr int W = 16;
  static reg load(const float* p) { return _mm512_loadu_ps(p); }
  static reg load_h(const uint16_t* p) { return _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p))); }
  static void store(float* p, reg x) { _mm512_storeu_ps(p, x); }
  static reg set1(float x) { return _mm512_set1_ps(x); }
  static reg zero() { return _mm512_setzero_ps(); }
  static reg add(reg a, reg b) { return _mm512_add_ps(a, b); }
  static reg sub(reg a, reg b) { return _mm512_sub_ps(a, b); }
  static reg mul(reg a, reg b) { return _mm512_mul_ps(a, b); }
  static reg fmadd(reg a, reg b, reg c) { return _mm512_fmadd_ps(a, b, c); }
  static reg max(reg a, reg b) { return _mm512_max_ps(a, b); }
  static float reduce_add(reg a) { return _mm512_reduce_add_ps(a); }
  static float reduce_max(reg a) { return _mm512_reduce_max_ps(a); }
  static reg exp(reg x) { return exp_ps(x); }
};

#include "kernels/cpu/attend_impl.h"

}  // namespace

bool attend_decode(const DecodeAttnArgs& a) { return attend_dispatch<V512>(a); }
void attend_softmax_row(float* s, int64_t n, float softcap) { attend_softmax<V512>(s, n, softcap); }

}  // namespace tessera::cpu::avx512
