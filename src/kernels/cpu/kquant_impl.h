// K-quant blocks in one common form, for the integer dot products against
// Q8_K activations (matvec_kquant_avx2.cpp / _avx512.cpp include this inside
// their ISA namespace's anonymous namespace, so it compiles with their flags).
//
// kq_rows (at the end) is the matrix-vector kernel over these blocks, written
// once over the including file's vector traits (V256 / V512).
//
// Every K-quant value is   x[e] = d * S[g] * (q[e] - o) - dmin * Mn[g],  g = e / 16,
// with q unsigned (< 64), integer sub-block scales S (signed) and mins Mn,
// and a per-type offset o (Q6_K 32, Q3_K 4, else 0). Against Q8_K activations
// a[e] = da * qa[e] with group sums bs[g]:
//   sum_e x[e] a[e] = da * ( d * sum_g S[g] * (sum_{e in g} q[e] qa[e])
//                            - sum_g (d * o * S[g] + dmin * Mn[g]) * bs[g] )
// The unpackers are plain loops over the layouts of core/quant_blocks.h
// (ref/dequant_ref.cpp states the same mapping element by element).
#pragma once

struct KBlock {
  alignas(64) uint8_t q[256];
  alignas(32) int16_t S[16];
  float c[16];  // d * o * S[g] + dmin * Mn[g]: the coefficient of the group sums
  float d;
};

// 32 bytes: (v >> s) & m per byte (16-bit shifts; the mask drops what crosses bytes).
inline __m256i kq_bits(__m256i v, int s, int m) {
  return _mm256_and_si256(_mm256_srli_epi16(v, s), _mm256_set1_epi8(char(m)));
}
inline void kq_store(uint8_t* q, __m256i v) { _mm256_store_si256(reinterpret_cast<__m256i*>(q), v); }
inline __m256i kq_load(const uint8_t* p) { return _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)); }

inline void kb_coeffs(KBlock& kb, const int16_t* Mn, int o, float d, float dmin) {
  kb.d = d;
  for (int g = 0; g < 16; ++g) kb.c[g] = d * float(o * kb.S[g]) + dmin * float(Mn[g]);
}

// The quants: 32 bytes at a time (element 128 hh + 32 j + l is bits 2 j of byte 32 hh + l).
inline void unpack_q2_k(const tessera::BlockQ2_K& b, KBlock& kb) {
  for (int hh = 0; hh < 2; ++hh) {
    const __m256i v = kq_load(b.qs + 32 * hh);
    for (int j = 0; j < 4; ++j) kq_store(kb.q + 128 * hh + 32 * j, kq_bits(v, 2 * j, 3));
  }
  int16_t Mn[16];
  for (int g = 0; g < 16; ++g) {
    kb.S[g] = int16_t(b.scales[g] & 0xf);
    Mn[g] = int16_t(b.scales[g] >> 4);
  }
  kb_coeffs(kb, Mn, 0, _cvtsh_ss(b.d), _cvtsh_ss(b.dmin));
}

inline void unpack_q3_k(const tessera::BlockQ3_K& b, KBlock& kb) {
  const __m256i h = kq_load(b.hmask);  // bit 4 hh + j of hmask[l]: bit 2 of element 128 hh + 32 j + l
  for (int hh = 0; hh < 2; ++hh) {
    const __m256i v = kq_load(b.qs + 32 * hh);
    for (int j = 0; j < 4; ++j)
      kq_store(kb.q + 128 * hh + 32 * j,
               _mm256_or_si256(kq_bits(v, 2 * j, 3), _mm256_slli_epi16(kq_bits(h, 4 * hh + j, 1), 2)));
  }
  int8_t sc[16];
  tessera::k3_scales(b.scales, sc);
  const int16_t Mn[16] = {};
  for (int g = 0; g < 16; ++g) kb.S[g] = int16_t(sc[g] - 32);
  kb_coeffs(kb, Mn, 4, _cvtsh_ss(b.d), 0.f);
}

// Q4_K / Q5_K (qh null for Q4_K): sub-block 2 p + u is nibble u of qs[32 p ..],
// its fifth bit bit 2 p + u of qh.
inline void unpack_q45_k(uint16_t d, uint16_t dmin, const uint8_t* scales, const uint8_t* qs, const uint8_t* qh,
                         KBlock& kb) {
  const __m256i h = qh ? kq_load(qh) : _mm256_setzero_si256();
  for (int p = 0; p < 4; ++p) {
    const __m256i v = kq_load(qs + 32 * p);
    __m256i lo = kq_bits(v, 0, 0xf), hi = kq_bits(v, 4, 0xf);
    if (qh) {
      lo = _mm256_or_si256(lo, _mm256_slli_epi16(kq_bits(h, 2 * p, 1), 4));
      hi = _mm256_or_si256(hi, _mm256_slli_epi16(kq_bits(h, 2 * p + 1, 1), 4));
    }
    kq_store(kb.q + 64 * p, lo);
    kq_store(kb.q + 64 * p + 32, hi);
  }
  int16_t Mn[16];
  for (int j = 0; j < 8; ++j) {
    uint8_t sc, m;
    tessera::k4_scale_min(j, scales, sc, m);
    kb.S[2 * j] = kb.S[2 * j + 1] = sc;
    Mn[2 * j] = Mn[2 * j + 1] = m;
  }
  kb_coeffs(kb, Mn, 0, _cvtsh_ss(d), _cvtsh_ss(dmin));
}

inline void unpack_q4_k(const tessera::BlockQ4_K& b, KBlock& kb) {
  unpack_q45_k(b.d, b.dmin, b.scales, b.qs, nullptr, kb);
}
inline void unpack_q5_k(const tessera::BlockQ5_K& b, KBlock& kb) { unpack_q45_k(b.d, b.dmin, b.scales, b.qs, b.qh, kb); }

inline void unpack_q6_k(const tessera::BlockQ6_K& b, KBlock& kb) {
  for (int hh = 0; hh < 2; ++hh) {  // ref/dequant_ref.cpp's mapping, 32 elements at a time
    const __m256i a = kq_load(b.ql + 64 * hh), c = kq_load(b.ql + 64 * hh + 32), h = kq_load(b.qh + 32 * hh);
    uint8_t* q = kb.q + 128 * hh;
    kq_store(q, _mm256_or_si256(kq_bits(a, 0, 0xf), _mm256_slli_epi16(kq_bits(h, 0, 3), 4)));
    kq_store(q + 32, _mm256_or_si256(kq_bits(c, 0, 0xf), _mm256_slli_epi16(kq_bits(h, 2, 3), 4)));
    kq_store(q + 64, _mm256_or_si256(kq_bits(a, 4, 0xf), _mm256_slli_epi16(kq_bits(h, 4, 3), 4)));
    kq_store(q + 96, _mm256_or_si256(kq_bits(c, 4, 0xf), _mm256_slli_epi16(kq_bits(h, 6, 3), 4)));
  }
  const int16_t Mn[16] = {};
  for (int g = 0; g < 16; ++g) kb.S[g] = b.scales[g];
  kb_coeffs(kb, Mn, 32, _cvtsh_ss(b.d), 0.f);
}

// The K-quant types as unpacker types: U::Block and U::unpack(block, kb).
template <class B, void (*F)(const B&, KBlock&)>
struct KUnpack {
  using Block = B;
  static void unpack(const B& b, KBlock& kb) { F(b, kb); }
};

// Calls f(U{}) with the unpacker of t (Q2_K .. Q6_K): each ISA's kernel
// entry is one call of this with its row loop templated on U.
template <class F>
void with_kquant_unpacker(tessera::DType t, F&& f) {
  using namespace tessera;
  switch (t) {
    case DType::Q2_K: return f(KUnpack<BlockQ2_K, unpack_q2_k>{});
    case DType::Q3_K: return f(KUnpack<BlockQ3_K, unpack_q3_k>{});
    case DType::Q4_K: return f(KUnpack<BlockQ4_K, unpack_q4_k>{});
    case DType::Q5_K: return f(KUnpack<BlockQ5_K, unpack_q5_k>{});
    default: return f(KUnpack<BlockQ6_K, unpack_q6_k>{});
  }
}

// The kernel: per weight block, unpack to 256 unsigned quants and 16 scales
// once, then for each of up to kRowsPerPass activation rows: vpmaddubsw
// (u8 x s8 -> pairs of i16), vpmaddwd with the group scales (-> i32), one f32
// fma with d * da; the group-sum term is one fma per D::W groups with the
// activation sums, scaled by da once per call. D (vec_avx2.h / vec_avx512.h)
// gives the float ops and the integer ones: ireg (D::IB bytes), iload, izero,
// iadd, maddubs, madd16, cvt and group_scales (the vpmaddwd factor of each
// register of quants: word j of register c is S[c * IB / 16 + j / 8]).
constexpr int64_t kRowsPerPass = 4;

// bsf[(m * nb + i) * 16 + g] = da(m, i) * bs(m, i, g), the scaled group sums.
template <class D>
const float* expand_sums(const tessera::cpu::QuantX& xq, int64_t M, float* work, bool ready) {
  auto* bsf = reinterpret_cast<float*>((reinterpret_cast<uintptr_t>(work) + 63) & ~uintptr_t(63));
  const int64_t nb = xq.K / tessera::kQKK;
  for (int64_t b = 0; b < M * nb && !ready; ++b)
    for (int j = 0; j < 16; j += D::W)
      D::store(bsf + 16 * b + j, D::mul(D::cvt(D::iload(xq.s + 16 * b + j)), D::set1(xq.d[b])));
  return bsf;
}

template <class D, class U>
void kq_rows(const tessera::cpu::MatvecArgs& a, int64_t n0, int64_t n1) {
  using reg = typename D::reg;
  using ireg = typename D::ireg;
  constexpr int NQ = 256 / D::IB, NC = 16 / D::W;  // registers of quants, of group coefficients
  const int64_t K = a.W->cols(), nb = K / tessera::kQKK, M = a.M, N = a.W->rows();
  const tessera::cpu::QuantX& xq = a.xq;
  const float* bsf = expand_sums<D>(xq, M, a.work, a.x_ready);
  KBlock kb;
  for (int64_t n = n0; n < n1; ++n) {
    const auto* w = reinterpret_cast<const typename U::Block*>(a.W->row(n));
    for (int64_t m0 = 0; m0 < M; m0 += kRowsPerPass) {
      const int64_t mc = std::min(kRowsPerPass, M - m0);
      reg acc[kRowsPerPass], accc[kRowsPerPass];
      for (int r = 0; r < kRowsPerPass; ++r) acc[r] = accc[r] = D::zero();
      for (int64_t i = 0; i < nb; ++i) {
        U::unpack(w[i], kb);
        ireg sv[NQ];
        D::group_scales(kb.S, sv);
        reg cv[NC];
        for (int j = 0; j < NC; ++j) cv[j] = D::load(kb.c + D::W * j);
        for (int64_t r = 0; r < mc; ++r) {
          const int64_t m = m0 + r;
          const int8_t* ax = xq.qs + m * K + i * tessera::kQKK;
          ireg isum = D::izero();
#pragma GCC unroll 8
          for (int c = 0; c < NQ; ++c)
            isum = D::iadd(isum, D::madd16(D::maddubs(D::iload(kb.q + D::IB * c), D::iload(ax + D::IB * c)), sv[c]));
          acc[r] = D::fmadd(D::cvt(isum), D::set1(kb.d * xq.d[m * nb + i]), acc[r]);
          const float* bs = bsf + 16 * (m * nb + i);
          for (int j = 0; j < NC; ++j) accc[r] = D::fmadd(D::load(bs + D::W * j), cv[j], accc[r]);
        }
      }
      for (int64_t r = 0; r < mc; ++r) a.Y[(m0 + r) * N + n] = D::reduce_add(acc[r]) - D::reduce_add(accc[r]);
    }
  }
}
