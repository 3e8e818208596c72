// AVX2 row dequantization (dequant_impl.h at 8 floats), the streaming read
// used by the bandwidth measurement, and this ISA's kernel table.
#include "kernels/cpu/simd.h"

#include <cstring>

#include "core/dtype.h"
#include "kernels/cpu/cpu_kernels.h"
#include "kernels/cpu/vec_avx2.h"
#include "kernels/kernels.h"

namespace tessera::cpu::avx2 {
namespace {

#include "kernels/cpu/dequant_impl.h"

}  // namespace

void dequant_row(const TensorView& W, int64_t r, float* out) { dequant_row_impl<V256>(W, r, out); }

double stream_read_sum(const float* p, int64_t n) {
  __m256 a0 = _mm256_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;
  int64_t i = 0;
  for (; i + 32 <= n; i += 32) {
    a0 = _mm256_add_ps(a0, _mm256_load_ps(p + i));
    a1 = _mm256_add_ps(a1, _mm256_load_ps(p + i + 8));
    a2 = _mm256_add_ps(a2, _mm256_load_ps(p + i + 16));
    a3 = _mm256_add_ps(a3, _mm256_load_ps(p + i + 24));
  }
  alignas(32) float t[8];
  _mm256_store_ps(t, _mm256_add_ps(_mm256_add_ps(a0, a1), _mm256_add_ps(a2, a3)));
  double s = 0;
  for (float v : t) s += v;
  for (; i < n; ++i) s += p[i];
  return s;
}

// Software prefetch distance, as in dequant_avx512.cpp.
constexpr int64_t kReadAhead = 4096;

uint64_t stream_read_xor(const uint8_t* p, int64_t n) {
  __m256i a0 = _mm256_setzero_si256(), a1 = a0, a2 = a0, a3 = a0;
  int64_t i = 0;
  for (; i + 128 <= n; i += 128) {
    _mm_prefetch(reinterpret_cast<const char*>(p + i + kReadAhead), _MM_HINT_T0);
    _mm_prefetch(reinterpret_cast<const char*>(p + i + kReadAhead + 64), _MM_HINT_T0);
    a0 = _mm256_xor_si256(a0, _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p + i)));
    a1 = _mm256_xor_si256(a1, _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p + i + 32)));
    a2 = _mm256_xor_si256(a2, _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p + i + 64)));
    a3 = _mm256_xor_si256(a3, _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p + i + 96)));
  }
  alignas(32) uint64_t t[4];
  _mm256_store_si256(reinterpret_cast<__m256i*>(t), _mm256_xor_si256(_mm256_xor_si256(a0, a1), _mm256_xor_si256(a2, a3)));
  uint64_t x = t[0] ^ t[1] ^ t[2] ^ t[3];
  for (; i < n; ++i) x ^= p[i];
  return x;
}

const IsaKernels& kernels() {
  static constexpr IsaKernels k{matvec_f32,  matvec_f16, matvec_bf16, matvec_q8_0,
                                matvec_q4_0, matvec_q8_g, quantize_x,  dequant_row,
                                nullptr,     nullptr,    attend_decode, attend_softmax_row, matvec_kquant, matvec_legacy,
                                nullptr,     attend_online_row};
  return k;
}

}  // namespace tessera::cpu::avx2
