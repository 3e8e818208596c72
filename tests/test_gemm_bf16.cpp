// The AVX-512 BF16 GEMM against its scalar specification (ref::gemm_bf16) on
// odd sizes, f32 and bf16 operands, transposed strides and accumulation.
#include <gtest/gtest.h>

#include <cmath>
#include <random>
#include <vector>

#include <omp.h>

#include "core/error.h"
#include "core/fp16.h"
#include "kernels/gemm_bf16.h"

using namespace tessera;

namespace {

struct Case {
  int64_t M, N, K;
  bool a_trans, b_trans, b_bf16, accumulate;
  bool a_bf16 = false;
};

// f32: gemm_f32 against ref::gemm_f32 (the case's bf16 flags are ignored).
// amx: the bf16 product on AMX tiles (where usable) instead of AVX-512 BF16.
void run(const Case& c, std::mt19937& rng, bool f32 = false, bool amx = false) {
  std::normal_distribution<float> nd;
  std::vector<float> a(size_t(c.M * c.K)), b(size_t(c.N * c.K));
  for (auto& x : a) x = nd(rng);
  for (auto& x : b) x = nd(rng);
  std::vector<uint16_t> ab(a.size()), bb(b.size());
  for (size_t i = 0; i < a.size(); ++i) ab[i] = f32_to_bf16(a[i]);
  for (size_t i = 0; i < b.size(); ++i) bb[i] = f32_to_bf16(b[i]);
  const bool a16 = c.a_bf16 && !f32, b16 = c.b_bf16 && !f32;
  GemmOperand A{a16 ? static_cast<const void*>(ab.data()) : a.data(), a16, c.a_trans ? 1 : c.K, c.a_trans ? c.M : 1};
  GemmOperand B{b16 ? static_cast<const void*>(bb.data()) : b.data(), b16, c.b_trans ? 1 : c.K, c.b_trans ? c.N : 1};
  const int64_t ldc = c.N + 3;
  std::vector<float> c0(size_t(c.M * ldc));
  for (auto& x : c0) x = nd(rng);
  std::vector<float> want = c0, got = c0;
  KernelContext ctx(2);
  ctx.amx = amx;
  if (f32) {
    ref::gemm_f32(A, B, c.M, c.N, c.K, want.data(), ldc, c.accumulate);
    gemm_f32(ctx, A, B, c.M, c.N, c.K, got.data(), ldc, c.accumulate);
  } else {
    ref::gemm_bf16(A, B, c.M, c.N, c.K, want.data(), ldc, c.accumulate);
    gemm_bf16(ctx, A, B, c.M, c.N, c.K, got.data(), ldc, c.accumulate);
  }
  for (int64_t m = 0; m < c.M; ++m)
    for (int64_t n = 0; n < ldc; ++n) {
      const float w = want[size_t(m * ldc + n)], g = got[size_t(m * ldc + n)];
      if (n >= c.N) {
        ASSERT_EQ(g, c0[size_t(m * ldc + n)]) << "wrote past column N";
        continue;
      }
      ASSERT_NEAR(g, w, (f32 ? 1e-5f : 1e-4f) * (std::sqrt(float(c.K)) + std::abs(w)))
          << (f32 ? "f32 " : amx ? "bf16 amx " : "bf16 ") << "M " << c.M << " N " << c.N << " K " << c.K << " at " << m << "," << n;
    }
}

}  // namespace

TEST(KernelsGemmBf16, MatchesReferenceOnOddShapesStridesAndAccumulation) {
  KernelContext probe(1);
  if (!gemm_bf16_available(probe)) GTEST_SKIP() << "no AVX-512 BF16 on this CPU (the reference path is used)";
  std::mt19937 rng(42);
  const Case cases[] = {{1, 1, 1, false, false, false, false},     {7, 33, 5, false, false, false, true},
                        {9, 31, 300, false, false, true, false},   {17, 70, 257, true, false, false, true},
                        {16, 64, 512, false, true, false, false},  {13, 100, 3, true, true, false, true},
                        {40, 300, 600, false, false, true, true},  {8, 32, 0, false, false, false, false},
                        {65, 257, 130, false, false, false, false},
                        // whole 8-row groups with k tails (the vectorised packing paths), several k blocks
                        {64, 96, 37, false, false, false, false, true},  {48, 64, 800, true, true, true, true, true},
                        {72, 40, 290, false, true, false, false, true},  {24, 100, 1031, true, false, true, false},
                        {300, 33, 288, false, false, true, false},       {33, 300, 777, true, true, false, true},
                        // K much longer than M and N: the threads split K and sum partial products
                        {24, 40, 2001, false, true, true, true},         {288, 288, 70, true, true, false, true},         {16, 64, 4096, true, false, false, false, true}};
  for (const auto& c : cases) run(c, rng);
  // The AMX kernel (32 x 32 blocks of C, k tiles of 32) on the same cases, where this CPU has it.
  if (probe.amx)
    for (const auto& c : cases) run(c, rng, false, true);
  // The f32 GEMM shares the blocking, packing paths and threading (f32 panels).
  for (const auto& c : cases) run(c, rng, true);
}

// A pre-packed B (gemm_pack_b) gives exactly the products of packing it in
// the GEMM: both precisions, both loop orders (m <= n and m > n), both
// thread splits, row-major and k-major B, odd N and K.
TEST(KernelsGemmBf16, PrePackedBMatchesPackingInTheGemm) {
  KernelContext ctx(2);
  if (!gemm_bf16_available(ctx)) GTEST_SKIP() << "no AVX-512 BF16 on this CPU";
  std::mt19937 rng(12);
  std::normal_distribution<float> nd;
  struct S {
    int64_t M, N, K;
    bool b_kmajor;
  };
  const bool has_amx = ctx.amx;
  for (int kind = 0; kind < 3; ++kind)  // f32, bf16 AVX-512, bf16 AMX
    for (const S& c : {S{256, 1000, 288, false}, S{300, 70, 37, false}, S{64, 513, 383, true}, S{9, 40, 1, false},
                       S{40, 300, 1000, false}, S{128, 64, 777, true}}) {  // several k blocks
      const bool f32 = kind == 0;
      if (kind == 2 && !has_amx) break;
      ctx.amx = kind == 2;
      std::vector<float> a(size_t(c.M * c.K)), b(size_t(c.N * c.K));
      for (auto& x : a) x = nd(rng);
      for (auto& x : b) x = nd(rng);
      const GemmOperand A{a.data(), false, c.K, 1};
      GemmOperand B{b.data(), false, c.b_kmajor ? 1 : c.K, c.b_kmajor ? c.N : 1};
      std::vector<uint32_t> packed(size_t(gemm_packed_words(c.N, c.K, f32)));
      gemm_pack_b(ctx, B, c.N, c.K, f32, packed.data());
      std::vector<float> want(size_t(c.M * c.N)), got(want.size());
      auto run = [&](const GemmOperand& b_op, float* out) {
        if (f32) return gemm_f32(ctx, A, b_op, c.M, c.N, c.K, out, c.N, false);
        gemm_bf16(ctx, A, b_op, c.M, c.N, c.K, out, c.N, false);
      };
      run(B, want.data());
      B.packed = packed.data(), B.packed_n = c.N;
      run(B, got.data());
      ASSERT_EQ(got, want) << (f32 ? "f32" : kind == 2 ? "bf16 amx" : "bf16") << " M " << c.M << " N " << c.N << " K " << c.K;
    }
  // Used with another N: an error, not a silent misread.
  std::vector<float> b(64 * 100), a(8 * 100), out(8 * 64);
  std::vector<uint32_t> packed(size_t(gemm_packed_words(64, 100, true)));
  GemmOperand B{b.data(), false, 100, 1};
  gemm_pack_b(ctx, B, 64, 100, true, packed.data());
  B.packed = packed.data(), B.packed_n = 64;
  EXPECT_THROW(gemm_f32(ctx, GemmOperand{a.data(), false, 100, 1}, B, 8, 32, 100, out.data(), 64, false), Error);
}

// gemm_f32 reads a row-major A in place (no packing): rows further apart
// than K (a view into a wider matrix), row counts that end mid-panel, both
// loop orders and several k blocks, against the scalar reference; the
// padding columns of A must not be read into the result.
TEST(KernelsGemmBf16, F32ReadsRowMajorAInPlaceWithAnyRowStride) {
  KernelContext ctx(2);
  if (!gemm_bf16_available(ctx)) GTEST_SKIP() << "no AVX-512 BF16 on this CPU";
  std::mt19937 rng(5);
  std::normal_distribution<float> nd;
  struct S {
    int64_t M, N, K, lda;
  };
  for (const S& c : {S{13, 50, 300, 307}, S{3, 200, 700, 768}, S{70, 20, 33, 64}, S{9, 9, 1, 2}}) {
    std::vector<float> a(size_t(c.M * c.lda)), b(size_t(c.N * c.K));
    for (int64_t m = 0; m < c.M; ++m)
      for (int64_t k = 0; k < c.lda; ++k) a[size_t(m * c.lda + k)] = k < c.K ? nd(rng) : std::nanf("");
    for (auto& x : b) x = nd(rng);
    const GemmOperand A{a.data(), false, c.lda, 1}, B{b.data(), false, c.K, 1};
    std::vector<float> want(size_t(c.M * c.N)), got(want.size());
    ref::gemm_f32(A, B, c.M, c.N, c.K, want.data(), c.N, false);
    gemm_f32(ctx, A, B, c.M, c.N, c.K, got.data(), c.N, false);
    for (size_t i = 0; i < want.size(); ++i)
      ASSERT_NEAR(got[i], want[i], 1e-5f * (std::sqrt(float(c.K)) + std::abs(want[i])))
          << "M " << c.M << " N " << c.N << " K " << c.K << " lda " << c.lda << " at " << i;
  }
}

TEST(KernelsGemmBf16, ConvertRoundsToNearestEvenLikeTheScalarConversion) {
  std::mt19937 rng(7);
  std::normal_distribution<float> nd(0.f, 100.f);
  std::vector<float> x(100003);
  for (auto& v : x) v = nd(rng);
  x[0] = 1.00390625f;  // halfway between two bf16 values: ties to even
  x[1] = -0.f, x[2] = 1e-40f, x[3] = 3.4e38f;
  std::vector<uint16_t> got(x.size());
  KernelContext ctx(2);
  convert_to_bf16(ctx, x.data(), got.data(), int64_t(x.size()));
  for (size_t i = 0; i < x.size(); ++i) {
    // f32 subnormals: vcvtneps2bf16 flushes them to (signed) zero; the scalar conversion keeps them.
    const bool subnormal = x[i] != 0.f && std::fpclassify(x[i]) == FP_SUBNORMAL;
    const uint16_t want = subnormal && gemm_bf16_available(ctx) ? uint16_t(std::signbit(x[i]) ? 0x8000 : 0) : f32_to_bf16(x[i]);
    ASSERT_EQ(got[i], want) << "at " << i << " x " << x[i];
  }
}

#include "kernels/xent.h"

// The vectorised cross-entropy row against its std::exp specification.
TEST(KernelsXent, Avx512RowMatchesReference) {
  if (detect_isa() != Isa::AVX512) GTEST_SKIP() << "no AVX-512 on this CPU";
  std::mt19937 rng(3);
  std::normal_distribution<float> nd(0.f, 4.f);
  for (int64_t V : {1, 15, 16, 17, 1000, 32000}) {
    std::vector<float> z(static_cast<size_t>(V));
    for (auto& x : z) x = nd(rng);
    z[0] = -200.f;  // far below the max: exp underflows to 0 in both
    std::vector<float> a = z, b = z;
    const int32_t t = int32_t(V / 2);
    const float la = ref::xent_row(a.data(), V, t, 1e-3f, 0.5f);
    const float lb = cpu::avx512::xent_row(b.data(), V, t, 1e-3f, 0.5f);
    EXPECT_NEAR(la, lb, 1e-5f * std::abs(la) + 1e-6f) << "V " << V;
    // f32 sums of V terms in different orders differ by ~sqrt(V) ulp: 1e-4 relative.
    for (int64_t v = 0; v < V; ++v) ASSERT_NEAR(a[size_t(v)], b[size_t(v)], 1e-4f * std::abs(a[size_t(v)]) + 1e-9f) << V << " " << v;
  }
}

#include "kernels/act.h"
#include "kernels/ops.h"
#include "train/blocks.h"

// AVX-512 GELU / SwiGLU against the scalar loops of the training blocks.
TEST(KernelsAct, Avx512GeluSwigluMatchScalar) {
  if (detect_isa() != Isa::AVX512) GTEST_SKIP() << "no AVX-512 on this CPU";
  namespace blk = tessera::train::blk;
  std::mt19937 rng(4);
  std::normal_distribution<float> nd(0.f, 3.f);
  for (int64_t n : {1, 15, 16, 33, 1000}) {
    std::vector<float> x(static_cast<size_t>(n)), u(static_cast<size_t>(n)), d(static_cast<size_t>(n));
    for (size_t i = 0; i < x.size(); ++i) x[i] = nd(rng), u[i] = nd(rng), d[i] = nd(rng);
    x[0] = n > 1 ? 95.f : x[0];  // saturated tails
    if (n > 2) x[1] = -95.f;
    auto close = [&](const std::vector<float>& a, const std::vector<float>& b, const char* what) {
      for (size_t i = 0; i < a.size(); ++i)
        ASSERT_NEAR(a[i], b[i], 2e-6f * (1.f + std::abs(b[i]))) << what << " n " << n << " i " << i << " x " << x[i];
    };
    const size_t sz = static_cast<size_t>(n);
    std::vector<float> r1(sz), r2(sz), a1(sz), a2(sz);
    blk::gelu_fwd(r1.data(), x.data(), n);
    blk::gelu_fwd(r2.data(), x.data(), n, Isa::AVX512);
    close(r2, r1, "gelu_fwd");
    blk::gelu_bwd(r1.data(), d.data(), x.data(), n);
    blk::gelu_bwd(r2.data(), d.data(), x.data(), n, Isa::AVX512);
    close(r2, r1, "gelu_bwd");
    blk::swiglu_fwd(r1.data(), x.data(), u.data(), n);
    blk::swiglu_fwd(r2.data(), x.data(), u.data(), n, Isa::AVX512);
    close(r2, r1, "swiglu_fwd");
    blk::swiglu_bwd(r1.data(), a1.data(), d.data(), x.data(), u.data(), n);
    blk::swiglu_bwd(r2.data(), a2.data(), d.data(), x.data(), u.data(), n, Isa::AVX512);
    close(r2, r1, "swiglu_bwd dg");
    close(a2, a1, "swiglu_bwd du");
  }
}

// The inference model's ISA-dispatched ops::swiglu / ops::gelu (in place; AVX-512 and AVX2 kernels)
// against their scalar loops.
TEST(KernelsAct, OpsIsaFormsMatchScalar) {
  std::mt19937 rng(6);
  std::normal_distribution<float> nd(0.f, 3.f);
  for (Isa isa : {Isa::Scalar, Isa::AVX2, Isa::AVX512}) {
    if (detect_isa() < isa) continue;
    for (int64_t n : {1, 17, 5632}) {
      std::vector<float> x(static_cast<size_t>(n)), u(x.size());
      for (size_t i = 0; i < x.size(); ++i) x[i] = nd(rng), u[i] = nd(rng);
      if (n > 2) x[0] = 95.f, x[1] = -95.f;  // saturated tails
      auto a = x, b = x;
      ops::swiglu(a.data(), u.data(), n);
      ops::swiglu(isa, b.data(), u.data(), n);
      for (size_t i = 0; i < a.size(); ++i) ASSERT_NEAR(b[i], a[i], 2e-6f * (1.f + std::abs(a[i]))) << "swiglu " << i;
      a = x, b = x;
      ops::gelu(a.data(), n);
      ops::gelu(isa, b.data(), n);
      for (size_t i = 0; i < a.size(); ++i) ASSERT_NEAR(b[i], a[i], 2e-6f * (1.f + std::abs(a[i]))) << "gelu " << i;
    }
  }
}

// The AVX-512 causal softmax rows inside float attention (forward, its
// log-sum-exp, and the recomputing backward) against the scalar rows: T = 150
// spans three row blocks, with row lengths that are not multiples of 16; with
// and without a soft-cap and a sliding window.
TEST(KernelsAct, Avx512AttentionSoftmaxMatchesScalar) {
  if (detect_isa() != Isa::AVX512) GTEST_SKIP() << "no AVX-512 on this CPU";
  namespace blk = tessera::train::blk;
  std::mt19937 rng(5);
  std::normal_distribution<float> nd(0.f, 1.f);
  blk::AttnShape s;
  s.B = 2, s.T = 150, s.n_heads = 4, s.n_kv_heads = 2, s.hd = 8, s.q_stride = 40, s.kv_stride = 24;
  const int64_t N = s.B * s.T, od = s.n_heads * s.hd;
  auto randv = [&](int64_t n, float sd) {
    std::vector<float> v(static_cast<size_t>(n));
    for (auto& x : v) x = sd * nd(rng);
    return v;
  };
  const auto q = randv(N * s.q_stride, 2.f), k = randv(N * s.kv_stride, 2.f), v = randv(N * s.kv_stride, 1.f);
  const auto dout = randv(N * od, 1.f);
  struct Out {
    std::vector<float> o, lse, dq, dk, dv;
  };
  for (float cap : {0.f, 3.f})
    for (int64_t window : {0, 37}) {
      auto run = [&](Isa isa) {
        blk::AttnShape t = s;
        t.isa = isa, t.softcap = cap, t.window = window;
        Out r{std::vector<float>(size_t(N * od)), std::vector<float>(size_t(s.B * s.n_heads * s.T)),
              std::vector<float>(q.size()), std::vector<float>(k.size()), std::vector<float>(v.size())};
        std::vector<float> scratch(size_t(omp_get_max_threads() * blk::attention_scratch(s.T)));
        blk::attention_fwd(r.o.data(), r.lse.data(), q.data(), k.data(), v.data(), t, scratch.data());
        blk::attention_bwd(r.dq.data(), r.dk.data(), r.dv.data(), dout.data(), r.lse.data(), q.data(), k.data(),
                           v.data(), t, scratch.data());
        return r;
      };
      const Out a = run(Isa::Scalar), b = run(Isa::AVX512);
      auto close = [&](const std::vector<float>& x, const std::vector<float>& y, const char* what) {
        double num = 0, den = 0;
        for (size_t i = 0; i < x.size(); ++i) num += double(x[i] - y[i]) * (x[i] - y[i]), den += double(x[i]) * x[i];
        EXPECT_LT(std::sqrt(num / den), 1e-5) << what << " cap " << cap << " window " << window;
      };
      close(a.o, b.o, "out"), close(a.lse, b.lse, "lse"), close(a.dq, b.dq, "dq"), close(a.dk, b.dk, "dk");
      close(a.dv, b.dv, "dv");
    }
}

#include "train/optim.h"

// The AVX-512 AdamW update against the scalar loop (odd length: a masked tail;
// a mixed decay mask; steps 1 and 50 of the bias corrections; a clipping scale).
TEST(KernelsAdamW, Avx512MatchesScalar) {
  if (detect_isa() != Isa::AVX512) GTEST_SKIP() << "no AVX-512 on this CPU";
  const size_t n = 50001;
  std::mt19937 rng(10);
  std::normal_distribution<float> nd(0.f, 1.f);
  std::vector<float> p(n), g(n), m(n), v(n);
  std::vector<uint8_t> mask(n);
  for (size_t i = 0; i < n; ++i)
    p[i] = nd(rng), g[i] = 0.1f * nd(rng), m[i] = 0.01f * nd(rng), v[i] = 1e-3f * std::abs(nd(rng)), mask[i] = i % 3 != 0;
  tessera::train::AdamWConfig cfg;
  for (int64_t t : {1, 50, 51}) {
    const float gs = t == 51 ? 0.37f : 1.f;  // t 51: clipping scales g by 0.37 as it is read
    std::vector<float> p1 = p, m1 = m, v1 = v, p2 = p, m2 = m, v2 = v;
    tessera::train::adamw_step(p1.data(), g.data(), m1.data(), v1.data(), mask.data(), n, t, 3e-3f, cfg, Isa::Scalar,
                               gs);
    tessera::train::adamw_step(p2.data(), g.data(), m2.data(), v2.data(), mask.data(), n, t, 3e-3f, cfg, Isa::AVX512,
                               gs);
    if (gs != 1.f) {  // the scalar loop with the scale equals it on a pre-scaled g
      std::vector<float> gsc(n), p3 = p, m3 = m, v3 = v;
      for (size_t i = 0; i < n; ++i) gsc[i] = g[i] * gs;
      tessera::train::adamw_step(p3.data(), gsc.data(), m3.data(), v3.data(), mask.data(), n, t, 3e-3f, cfg,
                                 Isa::Scalar);
      ASSERT_EQ(p3, p1);
      ASSERT_EQ(m3, m1);
      ASSERT_EQ(v3, v1);
    }
    for (size_t i = 0; i < n; ++i) {
      // Relative to the terms summed (their rounding, or a fused multiply-add, differs).
      ASSERT_NEAR(m2[i], m1[i], 1e-6f * (std::abs(m[i]) + std::abs(g[i]))) << "m at " << i;
      ASSERT_NEAR(v2[i], v1[i], 1e-6f * (std::abs(v[i]) + g[i] * g[i])) << "v at " << i;
      ASSERT_NEAR(p2[i], p1[i], 1e-6f * std::abs(p[i]) + 1e-5f * 3e-3f) << "p at " << i << " t " << t;
    }
  }
}

// AVX-512 RMSNorm and LayerNorm rows and parameter gradients against the
// scalar loops (odd widths, accumulate, and for RMSNorm dx aliasing dy as the
// QK-norm backward uses it).
TEST(KernelsNorm, Avx512RmsNormMatchesScalar) {
  if (detect_isa() != Isa::AVX512) GTEST_SKIP() << "no AVX-512 on this CPU";
  namespace blk = tessera::train::blk;
  std::mt19937 rng(11);
  std::normal_distribution<float> nd(0.f, 1.f);
  for (int64_t C : {5, 16, 37, 288}) {
    const int64_t N = 67;
    auto randv = [&](int64_t n) {
      std::vector<float> v(static_cast<size_t>(n));
      for (auto& x : v) x = nd(rng);
      return v;
    };
    const auto x = randv(N * C), w = randv(C), dy = randv(N * C), dx0 = randv(N * C), dw0 = randv(C);
    auto close = [&](const std::vector<float>& a, const std::vector<float>& b, const char* what) {
      for (size_t i = 0; i < a.size(); ++i)
        ASSERT_NEAR(a[i], b[i], 1e-5f * (1.f + std::abs(a[i]))) << what << " C " << C << " at " << i;
    };
    std::vector<float> y1(static_cast<size_t>(N * C)), y2 = y1, r1(static_cast<size_t>(N)), r2 = r1;
    blk::rmsnorm_fwd(y1.data(), r1.data(), x.data(), w.data(), N, C, 1e-5f);
    blk::rmsnorm_fwd(y2.data(), r2.data(), x.data(), w.data(), N, C, 1e-5f, Isa::AVX512);
    close(y1, y2, "y"), close(r1, r2, "rstd");
    for (bool acc : {false, true}) {
      auto dx1 = dx0, dx2 = dx0, dw1 = dw0, dw2 = dw0;
      blk::rmsnorm_bwd(dx1.data(), dw1.data(), dy.data(), x.data(), w.data(), r1.data(), N, C, acc);
      blk::rmsnorm_bwd(dx2.data(), dw2.data(), dy.data(), x.data(), w.data(), r1.data(), N, C, acc, Isa::AVX512);
      close(dx1, dx2, "dx"), close(dw1, dw2, "dw");
    }
    auto a1 = dy, a2 = dy, dw1 = dw0, dw2 = dw0;  // in place: dx = dy
    blk::rmsnorm_bwd(a1.data(), dw1.data(), a1.data(), x.data(), w.data(), r1.data(), N, C, false);
    blk::rmsnorm_bwd(a2.data(), dw2.data(), a2.data(), x.data(), w.data(), r1.data(), N, C, false, Isa::AVX512);
    close(a1, a2, "dx in place"), close(dw1, dw2, "dw in place");
    // LayerNorm (x offset from zero, so the mean matters).
    auto xo = x;
    for (auto& v : xo) v += 3.f;
    const auto b = randv(C), db0 = randv(C);
    std::vector<float> m1(static_cast<size_t>(N)), m2 = m1;
    blk::layernorm_fwd(y1.data(), m1.data(), r1.data(), xo.data(), w.data(), b.data(), N, C, 1e-5f);
    blk::layernorm_fwd(y2.data(), m2.data(), r2.data(), xo.data(), w.data(), b.data(), N, C, 1e-5f, Isa::AVX512);
    close(y1, y2, "ln y"), close(m1, m2, "ln mean"), close(r1, r2, "ln rstd");
    for (bool acc : {false, true}) {
      auto dx1 = dx0, dx2 = dx0, dw1b = dw0, dw2b = dw0, db1 = db0, db2 = db0;
      blk::layernorm_bwd(dx1.data(), dw1b.data(), db1.data(), dy.data(), xo.data(), w.data(), m1.data(), r1.data(), N,
                         C, acc);
      blk::layernorm_bwd(dx2.data(), dw2b.data(), db2.data(), dy.data(), xo.data(), w.data(), m1.data(), r1.data(), N,
                         C, acc, Isa::AVX512);
      close(dx1, dx2, "ln dx"), close(dw1b, dw2b, "ln dw"), close(db1, db2, "ln db");
    }
  }
}
