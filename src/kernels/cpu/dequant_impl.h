// Row dequantization (embeddings, prefill panels), written once over a vector
// traits type and instantiated by dequant_avx2.cpp and dequant_avx512.cpp, each
// compiled with its own flags. Include only from those files, inside their ISA
// namespace's anonymous namespace; the traits type (V512 / V256 from
// vec_avx512.h / vec_avx2.h) is passed as D and provides:
//   D::W                          floats per register
//   D::store(float*, reg)         unaligned store
//   D::load_h(const uint16_t*)    W IEEE halves -> floats
//   D::load_bf16(const uint16_t*) W bfloat16 -> floats
//   D::set1(float)
//   D::store_i8x16(float*, __m128i q, reg d)  16 signed bytes of q times d
// The including file provides <cstring>, core/dtype.h and kernels/kernels.h.
// Tails shorter than a register take the scalar conversions (exact, as the
// vector ones are): every result equals ref::dequantize_row bit for bit.
#pragma once

inline float bf16_to_float(uint16_t h) {
  const uint32_t u = uint32_t(h) << 16;
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}

template <class D>
void dequant_f16(const uint16_t* s, int64_t K, float* out) {
  int64_t k = 0;
  for (; k + D::W <= K; k += D::W) D::store(out + k, D::load_h(s + k));
  for (; k < K; ++k) out[k] = _cvtsh_ss(s[k]);
}

template <class D>
void dequant_bf16(const uint16_t* s, int64_t K, float* out) {
  int64_t k = 0;
  for (; k + D::W <= K; k += D::W) D::store(out + k, D::load_bf16(s + k));
  for (; k < K; ++k) out[k] = bf16_to_float(s[k]);
}

template <class D>
void dequant_q8_0(const tessera::BlockQ8_0* b, int64_t nb, float* out) {
  for (int64_t i = 0; i < nb; ++i) {
    const auto d = D::set1(_cvtsh_ss(b[i].d));
    D::store_i8x16(out + i * 32, _mm_loadu_si128(reinterpret_cast<const __m128i*>(b[i].qs)), d);
    D::store_i8x16(out + i * 32 + 16, _mm_loadu_si128(reinterpret_cast<const __m128i*>(b[i].qs + 16)), d);
  }
}

// Q4_0: low nibbles are elements 0..15, high nibbles 16..31, each minus 8.
template <class D>
void dequant_q4_0(const tessera::BlockQ4_0* b, int64_t nb, float* out) {
  const __m128i lo4 = _mm_set1_epi8(0x0f), eight = _mm_set1_epi8(8);
  for (int64_t i = 0; i < nb; ++i) {
    const auto d = D::set1(_cvtsh_ss(b[i].d));
    const __m128i q = _mm_loadu_si128(reinterpret_cast<const __m128i*>(b[i].qs));
    D::store_i8x16(out + i * 32, _mm_sub_epi8(_mm_and_si128(q, lo4), eight), d);
    D::store_i8x16(out + i * 32 + 16, _mm_sub_epi8(_mm_and_si128(_mm_srli_epi16(q, 4), lo4), eight), d);
  }
}

// llama2.c int8: groups of G values share a scale; groups of 16s take the vector path.
template <class D>
void dequant_q8_g(const tessera::TensorView& W, int64_t r, float* out) {
  const int64_t K = W.cols(), G = W.group;
  const int8_t* q = static_cast<const int8_t*>(W.data) + r * K;
  if (G % 16 == 0 && K % G == 0) {
    const float* sc = W.scales + r * (K / G);
    for (int64_t k = 0; k < K; k += 16)
      D::store_i8x16(out + k, _mm_loadu_si128(reinterpret_cast<const __m128i*>(q + k)), D::set1(sc[k / G]));
    return;
  }
  const int64_t base = r * K;
  for (int64_t k = 0; k < K; ++k) out[k] = float(q[k]) * W.scales[(base + k) / G];
}

// R4 layouts are load-time layouts of the AVX-512 kernels: the scalar form suffices.
template <class D>
void dequant_row_impl(const tessera::TensorView& W, int64_t r, float* out) {
  using namespace tessera;
  const int64_t K = W.cols();
  switch (W.dtype) {
    case DType::F32: std::memcpy(out, W.row(r), size_t(K) * 4); break;
    case DType::F16: dequant_f16<D>(reinterpret_cast<const uint16_t*>(W.row(r)), K, out); break;
    case DType::BF16: dequant_bf16<D>(reinterpret_cast<const uint16_t*>(W.row(r)), K, out); break;
    case DType::Q8_0: dequant_q8_0<D>(reinterpret_cast<const BlockQ8_0*>(W.row(r)), K / kQK, out); break;
    case DType::Q4_0: dequant_q4_0<D>(reinterpret_cast<const BlockQ4_0*>(W.row(r)), K / kQK, out); break;
    case DType::Q8_G: dequant_q8_g<D>(W, r, out); break;
    default: ref::dequantize_row(W, r, out); break;  // R4 layouts, Q4_1 .. Q8_K
  }
}
