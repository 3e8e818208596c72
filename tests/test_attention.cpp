// Decode attention (kernels/attention.h): the scalar reference against an
// independent double-precision computation, and every SIMD kernel this CPU
// runs against the reference, over head sizes, group sizes, position counts,
// f32 / f16 caches and the soft cap.
#include <gtest/gtest.h>

#include <cmath>
#include <random>
#include <vector>

#include "core/fp16.h"
#include "kernels/attention.h"
#include "kernels/cpu/cpu_kernels.h"

using namespace tessera;

namespace {

// A cache of n positions x n_kv heads x hd, keys then values, in f32, f16 and
// (head sizes that are multiples of 32) Q8_0: the values are multiples of 1/128
// below 1 in magnitude, exact in all three (Q8_0 blocks with d = 1/128). G query heads.
// vd > 0: values of vd elements (MLA's absorbed form: with v_in_k, the first vd
// elements of the key rows, as DecodeAttnArgs::vd says).
struct Case {
  int64_t G, hd, n, n_kv = 3, kvh = 1, vd = 0;
  bool v_in_k = false;
  float scale, softcap;
  std::vector<float> q, k, v;
  std::vector<uint16_t> kh, vh;
  std::vector<BlockQ8_0> kq, vq;
  Case(int64_t G_, int64_t hd_, int64_t n_, float softcap_, uint32_t seed, float logit_scale = 1.f)
      : G(G_), hd(hd_), n(n_), scale(logit_scale / std::sqrt(float(hd_))), softcap(softcap_) {
    std::mt19937 rng(seed);
    std::uniform_real_distribution<float> u(-1.f, 1.f);
    q.resize(size_t(G * hd));
    for (auto& x : q) x = u(rng);
    k.resize(size_t(n * n_kv * hd));
    v.resize(k.size());
    for (auto& x : k) x = std::round(u(rng) * 127.f) / 128.f;  // exactly representable in every cache
    for (auto& x : v) x = std::round(u(rng) * 127.f) / 128.f;
    for (float x : k) kh.push_back(f32_to_f16(x));
    for (float x : v) vh.push_back(f32_to_f16(x));
    if (hd % kQK == 0)
      for (auto [src, dst] : {std::pair{&k, &kq}, std::pair{&v, &vq}})
        for (size_t b = 0; b < src->size() / kQK; ++b) {
          BlockQ8_0 blk;
          blk.d = f32_to_f16(1.f / 128.f);
          for (int i = 0; i < kQK; ++i) blk.qs[i] = int8_t(std::lround((*src)[b * kQK + size_t(i)] * 128.f));
          dst->push_back(blk);
        }
  }
  DecodeAttnArgs args(DType kv, float* scores, float* out) const {
    DecodeAttnArgs a;
    a.q = q.data();
    a.q_stride = hd;
    a.G = G;
    a.hd = hd;
    a.vd = vd;
    const size_t off = size_t(kvh * hd);
    a.k = kv == DType::F16 ? static_cast<const void*>(kh.data() + off)
          : kv == DType::Q8_0 ? static_cast<const void*>(kq.data() + off / kQK)
                              : static_cast<const void*>(k.data() + off);
    a.v = kv == DType::F16 ? static_cast<const void*>(vh.data() + off)
          : kv == DType::Q8_0 ? static_cast<const void*>(vq.data() + off / kQK)
                              : static_cast<const void*>(v.data() + off);
    if (v_in_k) a.v = a.k;
    a.kv = kv;
    a.kv_stride = n_kv * hd;
    a.n = n;
    a.scale = scale;
    a.softcap = softcap;
    a.scores = scores;
    a.out = out;
    a.out_stride = a.v_dim();
    return a;
  }
  // The same attention in double precision, written from the definition.
  std::vector<double> expected() const {
    const int64_t od = vd > 0 ? vd : hd;
    const std::vector<float>& vals = v_in_k ? k : v;
    std::vector<double> o(size_t(G * od), 0.0);
    std::vector<double> s(static_cast<size_t>(n));
    for (int64_t g = 0; g < G; ++g) {
      double mx = -1e300, sum = 0;
      for (int64_t j = 0; j < n; ++j) {
        double d = 0;
        for (int64_t i = 0; i < hd; ++i) d += double(q[size_t(g * hd + i)]) * k[size_t((j * n_kv + kvh) * hd + i)];
        d *= double(scale);
        if (softcap > 0) d = softcap * std::tanh(d / softcap);
        s[size_t(j)] = d;
        mx = std::max(mx, d);
      }
      for (auto& x : s) sum += (x = std::exp(x - mx));
      for (int64_t j = 0; j < n; ++j)
        for (int64_t i = 0; i < od; ++i)
          o[size_t(g * od + i)] += s[size_t(j)] / sum * vals[size_t((j * n_kv + kvh) * hd + i)];
    }
    return o;
  }
};

// The cache types a case has (Q8_0 only for head sizes that are whole blocks).
std::vector<DType> kv_types(const Case& c) {
  if (c.hd % kQK == 0) return {DType::F32, DType::F16, DType::Q8_0};
  return {DType::F32, DType::F16};
}

std::vector<float> run(const Case& c, DType kv, bool use_ref, Isa isa) {
  std::vector<float> scores(size_t(c.G * c.n)), out(size_t(c.G * (c.vd > 0 ? c.vd : c.hd)), NAN);
  const DecodeAttnArgs a = c.args(kv, scores.data(), out.data());
  if (use_ref) ref::attend_decode(a);
  else attend_decode(isa, a);
  return out;
}

}  // namespace

TEST(KernelsAttention, ReferenceMatchesDoublePrecision) {
  uint32_t seed = 1;
  for (int64_t hd : {8, 48, 64})
    for (int64_t n : {1, 5, 130})
      for (float cap : {0.f, 5.f})
      {
        const Case c(4, hd, n, cap, seed++, 4.f);
        const auto want = c.expected();
        for (DType kv : kv_types(c)) {
          const auto got = run(c, kv, true, Isa::Scalar);
          for (size_t i = 0; i < want.size(); ++i)
            ASSERT_NEAR(got[i], want[i], 2e-6) << "hd " << hd << " n " << n << " cap " << cap << " " << dtype_name(kv);
        }
      }
}

TEST(KernelsAttention, SimdMatchesReference) {
  std::vector<Isa> isas;
  if (detect_isa() >= Isa::AVX2) isas.push_back(Isa::AVX2);
  if (detect_isa() >= Isa::AVX512) isas.push_back(Isa::AVX512);
  if (isas.empty()) GTEST_SKIP() << "no SIMD ISA on this CPU";
  uint32_t seed = 100;
  for (Isa isa : isas)
    for (int64_t hd : {8, 16, 24, 48, 64, 80, 100, 128, 256})
      for (int64_t n : {1, 2, 3, 4, 5, 17, 64, 257})
        for (int64_t G : {1, 2, 3, 4, 5, 8})
          for (float cap : {0.f, 20.f})
          {
            const Case c(G, hd, n, cap, seed++, n == 17 ? 40.f : 1.f);  // n 17: peaked softmax
            // The peaked case multiplies its scores by 40, and so the effect on the
            // softmax weights of a last-bit difference in the SIMD dot product's
            // summation order: hence the wider bound there.
            const float tol = n == 17 ? 4e-5f : 1e-5f;
            for (DType kv : kv_types(c)) {
              const auto want = run(c, kv, true, isa);
              const auto got = run(c, kv, false, isa);
              for (size_t i = 0; i < want.size(); ++i)
                ASSERT_NEAR(got[i], want[i], tol) << isa_name(isa) << " hd " << hd << " n " << n << " G " << G
                                                   << " cap " << cap << " " << dtype_name(kv) << " at " << i;
            }
          }
}

// Heads wider than 16 vectors, and values narrower than the keys read from the
// key rows (MLA's absorbed latent: keys [c | k_pe] of 512 + 64, values c), in
// slices of 4 vectors: the reference against double precision, every ISA against
// the reference, with soft caps and a peaked softmax.
TEST(KernelsAttention, WideAndLatentHeadsMatchDoublePrecision) {
  std::vector<Isa> isas{Isa::Scalar};
  if (detect_isa() >= Isa::AVX2) isas.push_back(Isa::AVX2);
  if (detect_isa() >= Isa::AVX512) isas.push_back(Isa::AVX512);
  struct Shape { int64_t hd, vd; bool v_in_k; };
  uint32_t seed = 300;
  for (const Shape sh : {Shape{576, 512, true}, Shape{160, 128, true}, Shape{32, 24, true}, Shape{320, 320, false},
                         Shape{384, 128, false}})
    for (int64_t n : {1, 5, 70})
      for (float cap : {0.f, 20.f}) {
        Case c(3, sh.hd, n, cap, seed++, n == 5 ? 40.f : 1.f);
        c.n_kv = 1, c.kvh = 0, c.vd = sh.vd, c.v_in_k = sh.v_in_k;
        const auto want = c.expected();
        for (DType kv : kv_types(c)) {
          const auto ref = run(c, kv, true, Isa::Scalar);
          for (size_t i = 0; i < want.size(); ++i)
            ASSERT_NEAR(ref[i], want[i], 1e-5) << "ref hd " << sh.hd << " vd " << sh.vd << " n " << n << " "
                                               << dtype_name(kv) << " at " << i;
          for (Isa isa : isas) {
            const auto got = run(c, kv, false, isa);
            for (size_t i = 0; i < want.size(); ++i)
              ASSERT_NEAR(got[i], ref[i], 1e-5f) << isa_name(isa) << " hd " << sh.hd << " vd " << sh.vd << " n " << n
                                                 << " cap " << cap << " " << dtype_name(kv) << " at " << i;
          }
        }
      }
  // The latent shape takes the SIMD path (slices), not the reference.
  Case c(2, 576, 9, 0.f, 11);
  c.n_kv = 1, c.kvh = 0, c.vd = 512, c.v_in_k = true;
  std::vector<float> s(2 * 9), o(2 * 512);
  if (detect_isa() >= Isa::AVX512) {
    EXPECT_TRUE(cpu::avx512::attend_decode(c.args(DType::Q8_0, s.data(), o.data())));
  }
  if (detect_isa() >= Isa::AVX2) {
    EXPECT_TRUE(cpu::avx2::attend_decode(c.args(DType::F16, s.data(), o.data())));
  }
}

// The kernels take a group's heads in passes of 4, 2 or 1 sharing each key and
// value load (attend_impl.h's fused kernels); a head's output must not depend on
// how many heads shared its pass, since the decode team splits a group between
// threads where the one-thread path does not (bit-identical, tests/test_team.cpp).
// Every head of a 7-head group against the same head run alone, from a
// position that is not a multiple of 4 (the 4-position steps and the tail).
TEST(KernelsAttention, HeadsSharingLoadsMatchOneHeadAtATime) {
  std::vector<Isa> isas;
  if (detect_isa() >= Isa::AVX2) isas.push_back(Isa::AVX2);
  if (detect_isa() >= Isa::AVX512) isas.push_back(Isa::AVX512);
  if (isas.empty()) GTEST_SKIP() << "no SIMD ISA on this CPU";
  uint32_t seed = 900;
  for (Isa isa : isas)
    for (int64_t hd : {16, 32, 64, 128})
      for (int64_t start : {0, 3}) {
        const Case c(7, hd, 203, 0.f, seed++);
        for (DType kv : kv_types(c)) {
          std::vector<float> scores(size_t(7 * c.n)), all(size_t(7 * hd)), one(static_cast<size_t>(hd));
          DecodeAttnArgs a = c.args(kv, scores.data(), all.data());
          a.start = start;
          attend_decode(isa, a);
          for (int64_t g = 0; g < 7; ++g) {
            DecodeAttnArgs b = c.args(kv, scores.data(), one.data());
            b.start = start;
            b.G = 1;
            b.q = c.q.data() + g * hd;
            attend_decode(isa, b);
            for (int64_t i = 0; i < hd; ++i)
              ASSERT_EQ(one[size_t(i)], all[size_t(g * hd + i)])
                  << isa_name(isa) << " hd " << hd << " start " << start << " " << dtype_name(kv) << " head " << g;
          }
        }
      }
}

// The SIMD kernels take every head size that is 1..16 vectors and decline the rest
// (the dispatcher then runs the reference), so the test above covers both paths.
TEST(KernelsAttention, SimdHeadSizes) {
  const Case c64(2, 64, 9, 0.f, 7), c100(2, 100, 9, 0.f, 8), c8(1, 8, 9, 0.f, 9);
  std::vector<float> s(2 * 9), o(256);
  if (detect_isa() >= Isa::AVX512) {
    EXPECT_TRUE(cpu::avx512::attend_decode(c64.args(DType::F32, s.data(), o.data())));
    EXPECT_FALSE(cpu::avx512::attend_decode(c100.args(DType::F32, s.data(), o.data())));
    EXPECT_FALSE(cpu::avx512::attend_decode(c8.args(DType::F32, s.data(), o.data())));
  }
  if (detect_isa() >= Isa::AVX2) {
    EXPECT_TRUE(cpu::avx2::attend_decode(c64.args(DType::F16, s.data(), o.data())));
    EXPECT_FALSE(cpu::avx2::attend_decode(c100.args(DType::F16, s.data(), o.data())));
    EXPECT_TRUE(cpu::avx2::attend_decode(c8.args(DType::F16, s.data(), o.data())));
  }
  if (detect_isa() < Isa::AVX2) GTEST_SKIP() << "no SIMD ISA on this CPU";
}

// The prefill softmax row: every ISA against the reference (odd lengths, the
// zero tail, the soft cap, a peaked row), and the reference against double precision.
TEST(KernelsAttention, SoftmaxRowMatchesReference) {
  std::vector<Isa> isas{Isa::Scalar};
  if (detect_isa() >= Isa::AVX2) isas.push_back(Isa::AVX2);
  if (detect_isa() >= Isa::AVX512) isas.push_back(Isa::AVX512);
  std::mt19937 rng(5);
  for (Isa isa : isas)
    for (int64_t n : {1, 2, 7, 8, 15, 16, 17, 31, 33, 100, 513})
      for (float cap : {0.f, 10.f})
        for (float spread : {1.f, 30.f}) {
          std::uniform_real_distribution<float> u(-spread, spread);
          const int64_t n_zero = n + 5;
          std::vector<float> x(static_cast<size_t>(n_zero)), want(x.size()), got(x.size(), 7.f);
          for (int64_t j = 0; j < n; ++j) x[size_t(j)] = u(rng);
          std::copy(x.begin(), x.begin() + n, got.begin());
          want = got;
          ref::attend_softmax_row(want.data(), n, n_zero, cap);
          attend_softmax_row(isa, got.data(), n, n_zero, cap);
          // double precision
          std::vector<double> e(static_cast<size_t>(n));
          double mx = -1e300, sum = 0;
          for (int64_t j = 0; j < n; ++j) {
            const double v = cap > 0 ? cap * std::tanh(double(x[size_t(j)]) / cap) : double(x[size_t(j)]);
            e[size_t(j)] = v, mx = std::max(mx, v);
          }
          for (auto& v : e) sum += (v = std::exp(v - mx));
          for (int64_t j = 0; j < n_zero; ++j) {
            const double d = j < n ? e[size_t(j)] / sum : 0.0;
            ASSERT_NEAR(want[size_t(j)], d, 1e-6) << "ref n " << n << " at " << j;
            ASSERT_NEAR(got[size_t(j)], want[size_t(j)], 1e-6f) << isa_name(isa) << " n " << n << " cap " << cap
                                                               << " at " << j;
          }
        }
}

// The merge rule of two attentions over disjoint key sets, against double
// precision: random splits of a key set into two parts, each part attended
// by the kernel of every ISA with its log-sum-exp (DecodeAttnArgs::lse), then
// merge_attention; the result equals attention over the whole set. Also the
// attend_decode log-sum-exp itself, and an empty side (s = -inf) leaving the other.
TEST(KernelsAttention, MergeOfSplitKeySetsMatchesWholeSet) {
  std::vector<Isa> isas{Isa::Scalar};
  if (detect_isa() >= Isa::AVX2) isas.push_back(Isa::AVX2);
  if (detect_isa() >= Isa::AVX512) isas.push_back(Isa::AVX512);
  std::mt19937 rng(21);
  uint32_t seed = 300;
  for (Isa isa : isas)
    for (int64_t n : {2, 9, 130, 700})
      for (float cap : {0.f, 8.f}) {
        const Case c(3, 64, n, cap, seed++, 6.f);
        const auto want = c.expected();
        const int64_t cut = std::uniform_int_distribution<int64_t>(1, n - 1)(rng);
        std::vector<float> scores(size_t(c.G * n)), o1(size_t(c.G * c.hd)), o2(o1.size()), s1(3), s2(3);
        DecodeAttnArgs a = c.args(DType::F32, scores.data(), o1.data());
        a.n = cut, a.lse = s1.data();  // keys [0, cut)
        attend_decode(isa, a);
        a = c.args(DType::F32, scores.data(), o2.data());
        a.start = cut, a.lse = s2.data();  // keys [cut, n)
        attend_decode(isa, a);
        for (int64_t g = 0; g < c.G; ++g) {
          // The log-sum-exp of the first part, in double.
          double mx = -1e300, z = 0;
          std::vector<double> sc;
          for (int64_t j = 0; j < cut; ++j) {
            double d = 0;
            for (int64_t i = 0; i < c.hd; ++i) d += double(c.q[size_t(g * c.hd + i)]) * c.k[size_t((j * c.n_kv + c.kvh) * c.hd + i)];
            d *= double(c.scale);
            if (cap > 0) d = cap * std::tanh(d / cap);
            sc.push_back(d), mx = std::max(mx, d);
          }
          for (double d : sc) z += std::exp(d - mx);
          ASSERT_NEAR(s1[size_t(g)], mx + std::log(z), 1e-4) << isa_name(isa) << " n " << n;
          merge_attention(o1.data() + g * c.hd, s1[size_t(g)], o2.data() + g * c.hd, s2[size_t(g)], c.hd);
          for (int64_t i = 0; i < c.hd; ++i)
            ASSERT_NEAR(o1[size_t(g * c.hd + i)], want[size_t(g * c.hd + i)], 2e-6)
                << isa_name(isa) << " n " << n << " cut " << cut << " cap " << cap;
        }
      }
  std::vector<float> v1{1.f, 2.f}, v2{5.f, 6.f};
  float s1 = 0.5f;
  merge_attention(v1.data(), s1, v2.data(), -INFINITY, 2);
  EXPECT_EQ(v1, (std::vector<float>{1.f, 2.f}));
  EXPECT_FLOAT_EQ(s1, 0.5f);
  float e = -INFINITY;
  merge_attention(v2.data(), e, v1.data(), 0.5f, 2);
  EXPECT_EQ(v2, (std::vector<float>{1.f, 2.f}));
}

// One online-softmax tile on every ISA against the reference and double
// precision: the running max carried in, the rescaled sum returned.
TEST(KernelsAttention, OnlineRowMatchesReference) {
  std::vector<Isa> isas{Isa::Scalar};
  if (detect_isa() >= Isa::AVX2) isas.push_back(Isa::AVX2);
  if (detect_isa() >= Isa::AVX512) isas.push_back(Isa::AVX512);
  std::mt19937 rng(8);
  for (Isa isa : isas)
    for (int64_t n : {1, 7, 16, 33, 257})
      for (float cap : {0.f, 10.f})
        for (float m_in : {-INFINITY, 3.f, 50.f}) {
          std::uniform_real_distribution<float> u(-20.f, 20.f);
          std::vector<float> x(static_cast<size_t>(n + 4)), got(x.size(), 9.f);
          for (int64_t j = 0; j < n; ++j) got[size_t(j)] = x[size_t(j)] = u(rng);
          float m = m_in;
          const float sum = attend_online_row(isa, got.data(), n, n + 4, cap, m);
          double mx = m_in, z = 0;
          std::vector<double> e(static_cast<size_t>(n));
          for (int64_t j = 0; j < n; ++j) {
            e[size_t(j)] = cap > 0 ? cap * std::tanh(double(x[size_t(j)]) / cap) : double(x[size_t(j)]);
            mx = std::max(mx, e[size_t(j)]);
          }
          ASSERT_FLOAT_EQ(m, float(mx)) << isa_name(isa) << " n " << n;
          for (int64_t j = 0; j < n; ++j) {
            const double want = std::exp(e[size_t(j)] - mx);
            z += want;
            ASSERT_NEAR(got[size_t(j)], want, 2e-6 * std::max(1.0, want)) << isa_name(isa) << " n " << n << " at " << j;
          }
          for (int64_t j = n; j < n + 4; ++j) ASSERT_EQ(got[size_t(j)], 0.f);
          ASSERT_NEAR(sum, z, 1e-5 * std::max(1.0, z)) << isa_name(isa) << " n " << n;
        }
}
