// AVX-512 row dequantization (embeddings, prefill panels), the streaming read
// used by the bandwidth measurement, and this ISA's kernel table.
#include "kernels/cpu/simd.h"

#include <cstring>

#include "core/dtype.h"
#include "kernels/cpu/cpu_kernels.h"
#include "kernels/kernels.h"

namespace tessera::cpu::avx512 {
namespace {

inline __mmask16 tail_mask(int64_t n) { return __mmask16((1u << n) - 1); }

void dequant_f16(const uint16_t* s, int64_t K, float* out) {
  int64_t k = 0;
  for (; k + 16 <= K; k += 16)
    _mm512_storeu_ps(out + k, _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(s + k))));
  if (k < K) {
    const __mmask16 m = tail_mask(K - k);
    _mm512_mask_storeu_ps(out + k, m, _mm512_cvtph_ps(_mm256_maskz_loadu_epi16(m, s + k)));
  }
}

void dequant_bf16(const uint16_t* s, int64_t K, float* out) {
  int64_t k = 0;
  for (; k + 16 <= K; k += 16) {
    const __m512i v = _mm512_cvtepu16_epi32(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(s + k)));
    _mm512_storeu_ps(out + k, _mm512_castsi512_ps(_mm512_slli_epi32(v, 16)));
  }
  if (k < K) {
    const __mmask16 m = tail_mask(K - k);
    const __m512i v = _mm512_cvtepu16_epi32(_mm256_maskz_loadu_epi16(m, s + k));
    _mm512_mask_storeu_ps(out + k, m, _mm512_castsi512_ps(_mm512_slli_epi32(v, 16)));
  }
}

// 16 signed bytes at p times d.
inline void store_i8x16(float* out, __m128i q, __m512 d) {
  _mm512_storeu_ps(out, _mm512_mul_ps(_mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(q)), d));
}

void dequant_q8_0(const BlockQ8_0* b, int64_t nb, float* out) {
  for (int64_t i = 0; i < nb; ++i) {
    const __m512 d = _mm512_set1_ps(_cvtsh_ss(b[i].d));
    store_i8x16(out + i * 32, _mm_loadu_si128(reinterpret_cast<const __m128i*>(b[i].qs)), d);
    store_i8x16(out + i * 32 + 16, _mm_loadu_si128(reinterpret_cast<const __m128i*>(b[i].qs + 16)), d);
  }
}

void dequant_q4_0(const BlockQ4_0* b, int64_t nb, float* out) {
  const __m128i lo4 = _mm_set1_epi8(0x0f), eight = _mm_set1_epi8(8);
  for (int64_t i = 0; i < nb; ++i) {
    const __m512 d = _mm512_set1_ps(_cvtsh_ss(b[i].d));
    const __m128i q = _mm_loadu_si128(reinterpret_cast<const __m128i*>(b[i].qs));
    store_i8x16(out + i * 32, _mm_sub_epi8(_mm_and_si128(q, lo4), eight), d);
    store_i8x16(out + i * 32 + 16, _mm_sub_epi8(_mm_and_si128(_mm_srli_epi16(q, 4), lo4), eight), d);
  }
}

void dequant_q8_g(const TensorView& W, int64_t r, float* out) {
  const int64_t K = W.cols(), G = W.group;
  const int8_t* q = static_cast<const int8_t*>(W.data) + r * K;
  if (G % 16 == 0 && K % G == 0) {
    const float* sc = W.scales + r * (K / G);
    for (int64_t k = 0; k < K; k += 16)
      store_i8x16(out + k, _mm_loadu_si128(reinterpret_cast<const __m128i*>(q + k)), _mm512_set1_ps(sc[k / G]));
    return;
  }
  const int64_t base = r * K;
  for (int64_t k = 0; k < K; ++k) out[k] = float(q[k]) * W.scales[(base + k) / G];
}

}  // namespace

void dequant_row(const TensorView& W, int64_t r, float* out) {
  const int64_t K = W.cols();
  switch (W.dtype) {
    case DType::F32: std::memcpy(out, W.row(r), size_t(K) * 4); break;
    case DType::F16: dequant_f16(reinterpret_cast<const uint16_t*>(W.row(r)), K, out); break;
    case DType::BF16: dequant_bf16(reinterpret_cast<const uint16_t*>(W.row(r)), K, out); break;
    case DType::Q8_0: dequant_q8_0(reinterpret_cast<const BlockQ8_0*>(W.row(r)), K / kQK, out); break;
    case DType::Q4_0: dequant_q4_0(reinterpret_cast<const BlockQ4_0*>(W.row(r)), K / kQK, out); break;
    case DType::Q8_G: dequant_q8_g(W, r, out); break;
    case DType::Q4_0_R4:
    case DType::Q8_0_R4: ref::dequantize_row(W, r, out); break;  // a load-time layout: the scalar form suffices
  }
}

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
                                attend_decode, attend_softmax_row};
  return k;
}

}  // namespace tessera::cpu::avx512
