// AVX-512 row dequantization (dequant_impl.h at 16 floats), the streaming read
// used by the bandwidth measurement, and this ISA's kernel table.
#include "kernels/cpu/simd.h"

#include <cstring>

#include "core/dtype.h"
#include "kernels/cpu/cpu_kernels.h"
#include "kernels/cpu/vec_avx512.h"
#include "kernels/kernels.h"

namespace tessera::cpu::avx512 {
namespace {

#include "kernels/cpu/dequant_impl.h"

}  // namespace

void dequant_row(const TensorView& W, int64_t r, float* out) { dequant_row_impl<V512>(W, r, out); }

double stream_read_sum(const float* p, int64_t n) {
  __m512 a0 = _mm512_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;
  int64_t i = 0;
  for (; i + 64 <= n; i += 64) {
    a0 = _mm512_add_ps(a0, _mm512_load_ps(p + i));
    a1 = _mm512_add_ps(a1, _mm512_load_ps(p + i + 16));
    a2 = _mm512_add_ps(a2, _mm512_load_ps(p + i + 32));
    a3 = _mm512_add_ps(a3, _mm512_load_ps(p + i + 48));
  }
  double s = _mm512_reduce_add_ps(_mm512_add_ps(_mm512_add_ps(a0, a1), _mm512_add_ps(a2, a3)));
  for (; i < n; ++i) s += p[i];
  return s;
}

// Software prefetch distance of stream_read_xor: this host's hardware prefetchers
// alone leave a plain read of 4 KiB pages at about half the bandwidth.
constexpr int64_t kReadAhead = 4096;

uint64_t stream_read_xor(const uint8_t* p, int64_t n) {
  __m512i a0 = _mm512_setzero_si512(), a1 = a0, a2 = a0, a3 = a0;
  int64_t i = 0;
  for (; i + 256 <= n; i += 256) {
    for (int j = 0; j < 256; j += 64) _mm_prefetch(reinterpret_cast<const char*>(p + i + kReadAhead + j), _MM_HINT_T0);
    a0 = _mm512_xor_si512(a0, _mm512_loadu_si512(p + i));
    a1 = _mm512_xor_si512(a1, _mm512_loadu_si512(p + i + 64));
    a2 = _mm512_xor_si512(a2, _mm512_loadu_si512(p + i + 128));
    a3 = _mm512_xor_si512(a3, _mm512_loadu_si512(p + i + 192));
  }
  uint64_t x = uint64_t(_mm512_reduce_or_epi64(_mm512_xor_si512(_mm512_xor_si512(a0, a1), _mm512_xor_si512(a2, a3))));
  for (; i < n; ++i) x ^= p[i];
  return x;
}

const IsaKernels& kernels() {
  static constexpr IsaKernels k{matvec_f32,  matvec_f16, matvec_bf16, matvec_q8_0,
                                matvec_q4_0, matvec_q8_g, quantize_x,  dequant_row, matvec_q4_0_r4, matvec_q8_0_r4,
                                attend_decode, attend_softmax_row, matvec_kquant, matvec_legacy, matvec_kquant_r4,
                                attend_online_row, matvec_legacy_r4, quantize_x_q8k};
  return k;
}

}  // namespace tessera::cpu::avx512
