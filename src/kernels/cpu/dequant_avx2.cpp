// AVX2 row dequantization (embeddings, prefill panels), the streaming read
// used by the bandwidth measurement, and this ISA's kernel table.
#include "kernels/cpu/simd.h"

#include <cstring>

#include "core/dtype.h"
#include "kernels/cpu/cpu_kernels.h"
#include "kernels/kernels.h"

namespace tessera::cpu::avx2 {
namespace {

inline float bf16_scalar(uint16_t h) {
  const uint32_t u = uint32_t(h) << 16;
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}

void dequant_f16(const uint16_t* s, int64_t K, float* out) {
  int64_t k = 0;
  for (; k + 8 <= K; k += 8)
    _mm256_storeu_ps(out + k, _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(s + k))));
  for (; k < K; ++k) out[k] = _cvtsh_ss(s[k]);
}

void dequant_bf16(const uint16_t* s, int64_t K, float* out) {
  int64_t k = 0;
  for (; k + 8 <= K; k += 8) {
    const __m256i v = _mm256_cvtepu16_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(s + k)));
    _mm256_storeu_ps(out + k, _mm256_castsi256_ps(_mm256_slli_epi32(v, 16)));
  }
  for (; k < K; ++k) out[k] = bf16_scalar(s[k]);
}

// 8 signed bytes (low half of q) times d.
inline void store_i8x8(float* out, __m128i q, __m256 d) {
  _mm256_storeu_ps(out, _mm256_mul_ps(_mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(q)), d));
}
inline void store_i8x16(float* out, __m128i q, __m256 d) {
  store_i8x8(out, q, d);
  store_i8x8(out + 8, _mm_srli_si128(q, 8), d);
}

void dequant_q8_0(const BlockQ8_0* b, int64_t nb, float* out) {
  for (int64_t i = 0; i < nb; ++i) {
    const __m256 d = _mm256_set1_ps(_cvtsh_ss(b[i].d));
    store_i8x16(out + i * 32, _mm_loadu_si128(reinterpret_cast<const __m128i*>(b[i].qs)), d);
    store_i8x16(out + i * 32 + 16, _mm_loadu_si128(reinterpret_cast<const __m128i*>(b[i].qs + 16)), d);
  }
}

void dequant_q4_0(const BlockQ4_0* b, int64_t nb, float* out) {
  const __m128i lo4 = _mm_set1_epi8(0x0f), eight = _mm_set1_epi8(8);
  for (int64_t i = 0; i < nb; ++i) {
    const __m256 d = _mm256_set1_ps(_cvtsh_ss(b[i].d));
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
      store_i8x16(out + k, _mm_loadu_si128(reinterpret_cast<const __m128i*>(q + k)), _mm256_set1_ps(sc[k / G]));
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
    case DType::Q8_0_R4: ref::dequantize_row(W, r, out); break;  // never made for AVX2; kept correct
  }
}

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
                                nullptr,     nullptr,    attend_decode, attend_softmax_row};
  return k;
}

}  // namespace tessera::cpu::avx2
