// Fast kernels against the scalar reference (kernels/ref): every dtype x every
// ISA this CPU runs x thread counts, on odd shapes, random data, fixed seeds.
#include <gtest/gtest.h>

#include <omp.h>

#include <cmath>
#include <cstdlib>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "core/aligned.h"
#include "core/fp16.h"
#include "kernels/blas_env.h"
#include "kernels/cpu/cpu_kernels.h"
#include "kernels/gemm.h"
#include "kernels/kernels.h"
#include "kernels/repack.h"
#include "kernels/team.h"

using namespace tessera;

namespace {

std::vector<Isa> supported_isas() {
  std::vector<Isa> v{Isa::Scalar};
  if (detect_isa() >= Isa::AVX2) v.push_back(Isa::AVX2);
  if (detect_isa() >= Isa::AVX512) v.push_back(Isa::AVX512);
  return v;
}

std::vector<float> random_floats(size_t n, uint32_t seed, float lo = -1.f, float hi = 1.f) {
  std::mt19937 rng(seed);
  std::uniform_real_distribution<float> u(lo, hi);
  std::vector<float> v(n);
  for (auto& x : v) x = u(rng);
  return v;
}

// n elements of block type t as random bytes, with every f16 scale field set
// to a small random value (so no block holds an inf or NaN scale).
std::vector<uint8_t> random_blocks(DType t, int64_t n, uint32_t seed) {
  std::mt19937 rng(seed);
  std::vector<uint8_t> b(dtype_row_bytes(t, n));
  for (auto& v : b) v = uint8_t(rng());
  std::vector<size_t> halves;  // byte offsets of the f16 fields in a block
  switch (t) {
    case DType::Q4_1:
    case DType::Q5_1:
    case DType::Q4_K:
    case DType::Q5_K: halves = {0, 2}; break;
    case DType::Q2_K: halves = {80, 82}; break;
    case DType::Q3_K: halves = {108}; break;
    case DType::Q6_K: halves = {208}; break;
    default: halves = {0}; break;  // Q5_0, IQ4_NL
  }
  std::uniform_real_distribution<float> u(0.001f, 0.01f);
  const size_t bb = dtype_block_bytes(t);
  for (size_t i = 0; i < b.size(); i += bb)
    for (size_t off : halves) {
      const uint16_t h = f32_to_f16(u(rng));
      std::memcpy(&b[i + off], &h, 2);
    }
  return b;
}

// A weight matrix (N, K) of dtype t with random contents, owning its bytes.
struct Weights {
  std::vector<uint8_t> bytes;
  std::vector<float> scales;  // Q8_G only
  TensorView view;
};

Weights make_weights(DType t, int64_t N, int64_t K, int group, uint32_t seed) {
  Weights w;
  if (t == DType::Q8_G) {
    std::mt19937 rng(seed);
    std::uniform_int_distribution<int> q(-127, 127);
    w.bytes.resize(static_cast<size_t>(N * K));
    for (auto& b : w.bytes) b = uint8_t(int8_t(q(rng)));
    w.scales = random_floats(size_t(N * K / group), seed + 1, 0.001f, 0.02f);
  } else if (const DType f = r4_file_type(t); f != t) {  // a random matrix of its file type, repacked as at load time
    const Weights q = make_weights(f, N, K, group, seed);
    w.bytes.resize(r4_bytes(q.view.dtype, N, K));
    repack_r4(q.view, w.bytes.data(), 2);
  } else if (!dtype_can_quantize(t)) {  // random bytes with sane scales (random_blocks)
    w.bytes = random_blocks(t, N * K, seed);
  } else {
    const auto f = random_floats(size_t(N * K), seed);
    w.bytes.resize(dtype_row_bytes(t, N * K));
    const size_t rb = dtype_row_bytes(t, K);
    for (int64_t n = 0; n < N; ++n) quantize_row(t, f.data() + n * K, w.bytes.data() + n * rb, K);
  }
  w.view = make_view(t, {N, K}, w.bytes.data());
  if (t == DType::Q8_G) {
    w.view.scales = w.scales.data();
    w.view.group = group;
  }
  return w;
}

// sum_k |w[n,k]| |x[m,k]|: the scale of the rounding error of Y[m, n].
std::vector<float> magnitudes(const TensorView& W, const float* X, int64_t M) {
  const int64_t N = W.rows(), K = W.cols();
  std::vector<float> row(static_cast<size_t>(K)), mag(static_cast<size_t>(M * N));
  for (int64_t n = 0; n < N; ++n) {
    ref::dequantize_row(W, n, row.data());
    for (int64_t m = 0; m < M; ++m) {
      double s = 0;
      for (int64_t k = 0; k < K; ++k) s += std::fabs(row[k] * X[m * K + k]);
      mag[size_t(m * N + n)] = float(s);
    }
  }
  return mag;
}

// int_path_block() of the GGUF types: llama.cpp's Q8_K and Q8_0 (f16 scales) activations.
constexpr int64_t kQ8KBlock = -1, kQ8_0Block = -2;

// X with each row replaced by its int8 block quantization, dequantized: what the integer paths compute with.
std::vector<float> quantized_activations(const std::vector<float>& X, int64_t M, int64_t K, int64_t block) {
  const bool q8k = block == kQ8KBlock, f16 = block == kQ8_0Block;
  if (q8k) block = kQKK;
  if (f16) block = kQK;
  std::vector<float> out(X.size()), d(static_cast<size_t>(K / block));
  std::vector<int8_t> qs(static_cast<size_t>(K));
  std::vector<int32_t> s(static_cast<size_t>(K / 16));
  for (int64_t m = 0; m < M; ++m) {
    if (q8k) cpu::quantize_x_q8k(X.data() + m * K, K, qs.data(), d.data(), s.data());
    else cpu::quantize_x_scalar(X.data() + m * K, K, block, f16, qs.data(), d.data(), s.data());
    for (int64_t k = 0; k < K; ++k) out[size_t(m * K + k)] = d[size_t(k / block)] * float(qs[size_t(k)]);
  }
  return out;
}

// Activation quantization block of the integer path matmul takes for W at (isa, M), or 0 if X
// stays f32. Q8_G returns 0: its reference already quantizes activations per group (llama2.c runq).
// BF16 weights at M >= bf16_gemm_min_rows go through the bf16 GEMM, which rounds the activations to bf16.
bool bf16_act_path(const TensorView& W, Isa isa, int64_t M) {
  return W.dtype == DType::BF16 && M >= detail::bf16_gemm_min_rows(isa);
}

int64_t int_path_block(const TensorView& W, Isa isa, int64_t M) {
  if (isa == Isa::Scalar || M >= detail::blas_min_rows(W, isa)) return 0;
  if (W.dtype == DType::Q8_0 || W.dtype == DType::Q4_0 || W.dtype == DType::Q4_1 || W.dtype == DType::Q5_0 ||
      W.dtype == DType::Q5_1 || W.dtype == DType::IQ4_NL)
    return kQ8_0Block;
  if (r4_is_k(W.dtype)) return isa == Isa::AVX512 ? kQ8KBlock : 0;  // other ISAs run the reference on R4
  if (dtype_is_k_quant(W.dtype) && W.dtype != DType::Q8_K) return kQ8KBlock;
  if ((W.dtype == DType::Q4_0_R4 || W.dtype == DType::Q8_0_R4 || r4_is_legacy(W.dtype)) && isa == Isa::AVX512)
    return kQ8_0Block;  // other ISAs run the reference on the R4 layouts
  return 0;
}

int count_bad(const std::vector<float>& y, const std::vector<float>& want, const std::vector<float>& mag, float rtol,
              std::string* first) {
  int bad = 0;
  for (size_t i = 0; i < y.size(); ++i) {
    const float tol = rtol * mag[i] + 1e-6f;
    if (!(std::fabs(y[i] - want[i]) <= tol)) {
      if (bad++ == 0)
        *first = "i=" + std::to_string(i) + " got " + std::to_string(y[i]) + " want " + std::to_string(want[i]) +
                 " tol " + std::to_string(tol);
    }
  }
  return bad;
}

// Q4_1 / Q5_1 take llama.cpp's Q8_1 activations: each block's min term uses the half
// f16(amax / 127 * sum) instead of d * sum (cpu::q8_1_sums). Adds that difference to want.
void add_q8_1_rounding(const TensorView& W, const std::vector<float>& X, int64_t M, std::vector<float>& want) {
  const int64_t N = W.rows(), K = W.cols(), nb = K / kQK;
  std::vector<int8_t> qs(static_cast<size_t>(K));
  std::vector<float> d(static_cast<size_t>(nb));
  std::vector<int32_t> s(static_cast<size_t>(nb)), sf(static_cast<size_t>(nb));
  for (int64_t m = 0; m < M; ++m) {
    cpu::quantize_x_scalar(X.data() + m * K, K, kQK, true, qs.data(), d.data(), s.data());
    sf = s;
    cpu::q8_1_sums(X.data() + m * K, K, sf.data());
    for (int64_t n = 0; n < N; ++n)
      for (int64_t b = 0; b < nb; ++b) {
        uint16_t mh;  // the block's m: bytes 2..3 of Q4_1 and Q5_1 blocks; in an R4 tile, after the d
        if (r4_is_legacy(W.dtype))
          std::memcpy(&mh,
                      static_cast<const uint8_t*>(W.data) + size_t(n / kR4Rows) * r4_tile_bytes(W.dtype, K) +
                          r4l_scales_offset(W.dtype, K, n % kR4Rows, b / kR4Blocks) + 32 + 2 * (b % kR4Blocks),
                      2);
        else
          std::memcpy(&mh, W.row(n) + b * dtype_block_bytes(W.dtype) + 2, 2);
        float S;
        std::memcpy(&S, &sf[size_t(b)], 4);
        want[size_t(m * N + n)] += f16_to_f32(mh) * (S - d[size_t(b)] * float(s[size_t(b)]));
      }
  }
}

void check_dtype(DType t, const std::vector<int64_t>& Ks, const std::vector<int>& groups) {
  const float rtol = 1e-4f;  // f32 accumulation in another order (and BLAS)
  uint32_t seed = 1;
  for (int group : groups) {
    for (int64_t K : Ks) {
      if (t == DType::Q8_G && K % group != 0) continue;
      for (int64_t N : {1, 7, 33, 257}) {
        const Weights w = make_weights(t, N, K, group, seed++);
        for (int64_t M : {1, 2, 7, 64, 300}) {
          const auto X = random_floats(size_t(M * K), seed++);
          std::vector<float> want(static_cast<size_t>(M * N));
          ref::matmul(w.view, X.data(), M, want.data());
          const auto mag = magnitudes(w.view, X.data(), M);
          for (Isa isa : supported_isas()) {
            // The integer paths compute with quantized activations: compare against the
            // reference on those, tightly, and against the f32 reference loosely.
            int64_t qb = int_path_block(w.view, isa, M);
            std::vector<float> want_q;
            if (qb) {
              const auto Xq = quantized_activations(X, M, K, qb);
              want_q.resize(want.size());
              ref::matmul(w.view, Xq.data(), M, want_q.data());
              if (t == DType::Q4_1 || t == DType::Q5_1 || t == DType::Q4_1_R4 || t == DType::Q5_1_R4)
                add_q8_1_rounding(w.view, X, M, want_q);
            } else if (bf16_act_path(w.view, isa, M)) {
              qb = 1;  // compare like the integer paths: tightly on rounded activations, loosely on f32
              std::vector<float> Xb(X.size());
              for (size_t i = 0; i < X.size(); ++i) Xb[i] = bf16_to_f32(f32_to_bf16(X[i]));
              want_q.resize(want.size());
              ref::matmul(w.view, Xb.data(), M, want_q.data());
            }
            for (int threads : {1, 2}) {
              KernelContext ctx(threads, isa);
              std::vector<float> y(size_t(M * N), NAN);
              matmul(ctx, w.view, X.data(), M, y.data());
              std::string first;
              const int bad = count_bad(y, qb ? want_q : want, mag, rtol, &first);
              EXPECT_EQ(bad, 0) << dtype_name(t) << " isa=" << isa_name(isa) << " threads=" << threads << " N=" << N
                                << " K=" << K << " M=" << M << " group=" << group << ": " << first;
              if (qb) {
                const int bad_f = count_bad(y, want, mag, 0.02f, &first);
                EXPECT_EQ(bad_f, 0) << dtype_name(t) << " vs f32 reference, isa=" << isa_name(isa) << " N=" << N
                                    << " K=" << K << " M=" << M << ": " << first;
              }
            }
          }
        }
      }
    }
  }
}

const std::vector<int64_t> kFloatKs{3, 17, 32, 96, 1001, 4128};
const std::vector<int64_t> kBlockKs{32, 96, 4128};

}  // namespace

// First in this file so that, run as one process, it precedes every BLAS call.
TEST(KernelsBlasEnv, AvxCoreSelectedInProcess) {
  if (std::getenv("TESSERA_NO_REEXEC")) GTEST_SKIP() << "TESSERA_NO_REEXEC is set";
  ensure_openblas_coretype(0, nullptr);  // no argv: never re-executes
  const std::string core = openblas_core_name();
  EXPECT_FALSE(core.empty());
  if (detect_isa() == Isa::AVX512) {
    EXPECT_TRUE(core == "SkylakeX" || core == "Cooperlake" || core == "SapphireRapids") << core;
  }
}

TEST(KernelsMatmul, F32) { check_dtype(DType::F32, kFloatKs, {0}); }
TEST(KernelsMatmul, F16) { check_dtype(DType::F16, kFloatKs, {0}); }
TEST(KernelsMatmul, BF16) { check_dtype(DType::BF16, kFloatKs, {0}); }
TEST(KernelsMatmul, Q8_0) { check_dtype(DType::Q8_0, kBlockKs, {0}); }
TEST(KernelsMatmul, Q4_0) { check_dtype(DType::Q4_0, kBlockKs, {0}); }
// The repacked layouts need K % 512 == 0; N = 1, 7, 33, 257 leave partial tiles of padding rows.
// K-quants against Q8_K activations (K a multiple of 256); the other block types on the reference path.
const std::vector<int64_t> kSuperKs{256, 768, 4352};
TEST(KernelsMatmul, Q2_K) { check_dtype(DType::Q2_K, kSuperKs, {0}); }
TEST(KernelsMatmul, Q3_K) { check_dtype(DType::Q3_K, kSuperKs, {0}); }
TEST(KernelsMatmul, Q4_K) { check_dtype(DType::Q4_K, kSuperKs, {0}); }
TEST(KernelsMatmul, Q5_K) { check_dtype(DType::Q5_K, kSuperKs, {0}); }
TEST(KernelsMatmul, Q6_K) { check_dtype(DType::Q6_K, kSuperKs, {0}); }
TEST(KernelsMatmul, LegacyBlockTypes) {
  for (DType t : {DType::Q4_1, DType::Q5_0, DType::Q5_1, DType::IQ4_NL}) check_dtype(t, kBlockKs, {0});
}
// K = 2304 / 4352 end in a half group, 1568 in a group of 1 block (zero padding blocks).
TEST(KernelsMatmul, Q4_0_R4) { check_dtype(DType::Q4_0_R4, {512, 1024, 1568, 2304, 4608}, {0}); }
TEST(KernelsMatmul, Q8_0_R4) { check_dtype(DType::Q8_0_R4, {512, 1024, 2304, 4352}, {0}); }
// K-quant R4 rows of 256 + 512 g elements end in a half group (a zero padding super-block).
TEST(KernelsMatmul, Q4_K_R4) { check_dtype(DType::Q4_K_R4, {256, 512, 768, 4608}, {0}); }
TEST(KernelsMatmul, Q5_K_R4) { check_dtype(DType::Q5_K_R4, {256, 1024, 1280}, {0}); }
TEST(KernelsMatmul, Q6_K_R4) { check_dtype(DType::Q6_K_R4, {512, 768, 4608}, {0}); }
TEST(KernelsMatmul, LegacyR4) {
  for (DType t : {DType::IQ4_NL_R4, DType::Q4_1_R4, DType::Q5_0_R4, DType::Q5_1_R4}) check_dtype(t, {512, 1568, 2304}, {0});
}

TEST(KernelsRepack, R4LayoutsHoldTheSameWeights) {
  for (DType t : {DType::Q4_0, DType::Q8_0, DType::Q4_K, DType::Q5_K, DType::Q6_K, DType::IQ4_NL, DType::Q4_1,
                  DType::Q5_0, DType::Q5_1})
    for (int64_t N : {1, 5, 12}) {
      // also a partial last group: K-quants half a group, the block types 9 blocks of 16
      const int64_t K = N != 5 ? 1024 : dtype_is_k_quant(t) ? 1280 : 1312;
      const Weights q = make_weights(t, N, K, 0, 11);
      std::vector<uint8_t> r(r4_bytes(t, N, K), 0xff);
      repack_r4(q.view, r.data(), 2);
      const TensorView rv = make_view(r4_type_of(t), {N, K}, r.data());
      std::vector<float> a(static_cast<size_t>(K)), b(static_cast<size_t>(K));
      for (int64_t n = 0; n < N; ++n) {
        ref::dequantize_row(q.view, n, a.data());
        ref::dequantize_row(rv, n, b.data());
        EXPECT_EQ(a, b) << dtype_name(t) << " row " << n << " of " << N;
        dequantize_row(rv, n, b.data());  // the ISA dispatch
        EXPECT_EQ(a, b) << dtype_name(t) << " row " << n << " of " << N;
      }
      // Padding rows of the last tile are zero (scales 0: they dequantize to 0).
      for (int64_t n = N; n % kR4Rows; ++n) {
        ref::dequantize_row(rv, n, b.data());
        for (float v : b) ASSERT_EQ(v, 0.f) << dtype_name(t) << " padding row " << n;
      }
    }
  EXPECT_EQ(r4_bytes(DType::Q4_0, 5, 512), 8 * dtype_row_bytes(DType::Q4_0, 512));
  EXPECT_EQ(r4_bytes(DType::Q4_K, 5, 512), 8 * (2 * dtype_row_bytes(DType::Q4_K, 256) + 8));  // + unpacked scales
  EXPECT_EQ(r4_bytes(DType::Q6_K, 5, 512), 8 * 2 * dtype_row_bytes(DType::Q6_K, 256));
  EXPECT_EQ(r4_type_of(DType::Q8_0), DType::Q8_0_R4);
  EXPECT_EQ(r4_type_of(DType::F16), DType::F16);
}

TEST(KernelsRepack, AppliesOnAvx512ToBlockTypesWithLittlePaddingAndK4K5K6) {
  for (DType t : {DType::Q4_K, DType::Q5_K, DType::Q6_K}) {
    EXPECT_TRUE(r4_applies(make_weights(t, 4, 1024, 0, 3).view, Isa::AVX512)) << dtype_name(t);
    EXPECT_TRUE(r4_applies(make_weights(t, 4, 768, 0, 3).view, Isa::AVX512)) << dtype_name(t);  // a half group
    EXPECT_FALSE(r4_applies(make_weights(t, 4, 1024, 0, 3).view, Isa::AVX2)) << dtype_name(t);
  }
  EXPECT_FALSE(r4_applies(make_weights(DType::Q3_K, 4, 1024, 0, 3).view, Isa::AVX512));
  const Weights q = make_weights(DType::Q4_0, 4, 512, 0, 3);
  EXPECT_TRUE(r4_applies(q.view, Isa::AVX512));
  EXPECT_TRUE(r4_applies(make_weights(DType::Q8_0, 4, 512, 0, 3).view, Isa::AVX512));
  EXPECT_FALSE(r4_applies(q.view, Isa::AVX2));
  EXPECT_FALSE(r4_applies(q.view, Isa::Scalar));
  // A last partial group of at most K / 8 padding: Llama 2 7B's 11008, Gemma 2 2B's 2304.
  for (DType t : {DType::Q4_0, DType::Q8_0, DType::IQ4_NL, DType::Q4_1, DType::Q5_0, DType::Q5_1}) {
    EXPECT_TRUE(r4_applies(make_weights(t, 4, 11008, 0, 3).view, Isa::AVX512)) << dtype_name(t);
    EXPECT_TRUE(r4_applies(make_weights(t, 4, 2304, 0, 3).view, Isa::AVX512)) << dtype_name(t);
    EXPECT_TRUE(r4_applies(make_weights(t, 4, 480, 0, 3).view, Isa::AVX512)) << dtype_name(t);  // 15 blocks of 16
    EXPECT_FALSE(r4_applies(make_weights(t, 4, 288, 0, 3).view, Isa::AVX512)) << dtype_name(t);  // 9 of 16
    EXPECT_FALSE(r4_applies(make_weights(t, 4, 896, 0, 3).view, Isa::AVX512)) << dtype_name(t);  // 128 padding
  }
  EXPECT_FALSE(r4_applies(make_weights(DType::F16, 4, 512, 0, 3).view, Isa::AVX512));
}

TEST(KernelsMatmul, Q8_G) {
  check_dtype(DType::Q8_G, kBlockKs, {4, 32, 96});
  check_dtype(DType::Q8_G, {64, 4096}, {64});
}

TEST(KernelsMatmul, NoScratchGrowthAfterWarmup) {
  const Weights w = make_weights(DType::Q8_0, 64, 256, 0, 7);
  const auto X = random_floats(2 * 256, 8);
  std::vector<float> y(2 * 64);
  KernelContext ctx(2);
  matmul(ctx, w.view, X.data(), 2, y.data());
  const void* p = ctx.scratch(0);
  for (int i = 0; i < 3; ++i) matmul(ctx, w.view, X.data(), 2, y.data());
  EXPECT_EQ(ctx.scratch(0), p);
}

// Rows are handed to threads in timing-dependent ranges, and matmul_multi runs
// several matrices in one region: on the matrix-vector path neither may change
// a single bit of Y. (The GEMM paths split work by thread count; there
// matmul_multi must equal matmul at the same thread count.)
TEST(KernelsMatmul, ThreadCountsAndMultiAreBitIdentical) {
  const int64_t K = 1024;
  const std::vector<std::vector<DType>> sets{{DType::F32, DType::F32, DType::F32},
                                             {DType::F16, DType::BF16},
                                             {DType::Q8_0, DType::Q4_0, DType::Q4_0},
                                             {DType::Q4_0_R4, DType::Q8_0_R4, DType::Q4_0},  // mixed, one quantization
                                             {DType::Q4_0_R4, DType::F32},                   // no shared path: one by one
                                             {DType::Q8_G, DType::Q8_G}};
  uint32_t seed = 100;
  for (const auto& types : sets) {
    std::vector<Weights> ws;
    const int64_t Ns[] = {1000, 64, 257};
    for (size_t i = 0; i < types.size(); ++i) ws.push_back(make_weights(types[i], Ns[i], K, 64, seed++));
    for (int64_t M : {1, 3, 64}) {
      const auto X = random_floats(size_t(M * K), seed++);
      for (Isa isa : supported_isas()) {
        const auto run = [&](int threads, bool multi) {
          KernelContext ctx(threads, isa);
          std::vector<std::vector<float>> y(ws.size());
          std::vector<MatmulOut> outs;
          for (size_t i = 0; i < ws.size(); ++i) {
            y[i].assign(size_t(M * ws[i].view.rows()), NAN);
            outs.push_back({&ws[i].view, y[i].data()});
            if (!multi) matmul(ctx, ws[i].view, X.data(), M, y[i].data());
          }
          if (multi && outs.size() == 2) matmul_multi(ctx, X.data(), M, {outs[0], outs[1]});
          if (multi && outs.size() == 3) matmul_multi(ctx, X.data(), M, {outs[0], outs[1], outs[2]});
          return y;
        };
        const auto one = run(1, false);
        for (int threads : {2, 3}) {
          const auto sep = run(threads, false), multi = run(threads, true);
          for (size_t i = 0; i < ws.size(); ++i) {
            const std::string what = std::string(dtype_name(types[i])) + " (matrix " + std::to_string(i) +
                                     ") isa=" + isa_name(isa) + " threads=" + std::to_string(threads) +
                                     " M=" + std::to_string(M);
            const size_t bytes = one[i].size() * 4;
            EXPECT_EQ(0, std::memcmp(multi[i].data(), sep[i].data(), bytes)) << "matmul_multi vs matmul: " << what;
            const bool gemm = M >= detail::blas_min_rows(ws[i].view, isa) || bf16_act_path(ws[i].view, isa, M);
            if (isa != Isa::Scalar && !gemm) {
              EXPECT_EQ(0, std::memcmp(sep[i].data(), one[i].data(), bytes)) << "vs 1 thread: " << what;
            }
          }
        }
      }
    }
  }
}

TEST(KernelsQuantize, Q8_0RoundTrip) {
  const int64_t n = 4096;
  auto x = random_floats(size_t(n), 11, -3.f, 3.f);
  for (int j = 0; j < 32; ++j) x[size_t(j)] = 0.f;  // an all-zero block
  std::vector<BlockQ8_0> q(static_cast<size_t>(n / kQK));
  quantize_row(DType::Q8_0, x.data(), q.data(), n);
  std::vector<float> y(static_cast<size_t>(n));
  const TensorView v = make_view(DType::Q8_0, {1, n}, q.data());
  ref::dequantize_row(v, 0, y.data());
  for (int64_t b = 0; b < n / kQK; ++b) {
    float amax = 0.f;
    for (int j = 0; j < kQK; ++j) amax = std::fmax(amax, std::fabs(x[size_t(b * kQK + j)]));
    // Half a step, plus the f16 rounding of the scale times the largest code.
    const float bound = amax / 127.f * (0.5f + 127.f / 2048.f) + 1e-7f;
    for (int j = 0; j < kQK; ++j) EXPECT_LE(std::fabs(y[size_t(b * kQK + j)] - x[size_t(b * kQK + j)]), bound);
  }
}

TEST(KernelsQuantize, Q4_0RoundTrip) {
  const int64_t n = 4096;
  const auto x = random_floats(size_t(n), 12, -3.f, 3.f);
  std::vector<BlockQ4_0> q(static_cast<size_t>(n / kQK));
  quantize_row(DType::Q4_0, x.data(), q.data(), n);
  std::vector<float> y(static_cast<size_t>(n));
  const TensorView v = make_view(DType::Q4_0, {1, n}, q.data());
  ref::dequantize_row(v, 0, y.data());
  for (int64_t b = 0; b < n / kQK; ++b) {
    float amax = 0.f;
    for (int j = 0; j < kQK; ++j) amax = std::fmax(amax, std::fabs(x[size_t(b * kQK + j)]));
    // Step amax / 8; the code 16 (for -max) is clamped to 15, one full step.
    const float bound = amax / 8.f * (1.f + 8.f / 1024.f) + 1e-7f;
    for (int j = 0; j < kQK; ++j) EXPECT_LE(std::fabs(y[size_t(b * kQK + j)] - x[size_t(b * kQK + j)]), bound);
  }
}

TEST(KernelsQuantize, FastDequantizeRowMatchesReference) {
  for (DType t : {DType::F32, DType::F16, DType::BF16, DType::Q8_0, DType::Q4_0, DType::Q8_G}) {
    for (int group : {4, 32}) {
      const int64_t K = t == DType::F32 || t == DType::F16 || t == DType::BF16 ? 1001 : 4128;
      const Weights w = make_weights(t, 3, K, group, 21);
      std::vector<float> got(static_cast<size_t>(K)), want(static_cast<size_t>(K));
      for (int64_t r = 0; r < 3; ++r) {
        dequantize_row(w.view, r, got.data());
        ref::dequantize_row(w.view, r, want.data());
        EXPECT_EQ(0, std::memcmp(got.data(), want.data(), got.size() * 4)) << dtype_name(t) << " row " << r;
        // Each ISA's instantiation of dequant_impl.h, whichever dequantize_row() picks here.
        if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) {
          cpu::avx2::kernels().dequant_row(w.view, r, got.data());
          EXPECT_EQ(0, std::memcmp(got.data(), want.data(), got.size() * 4)) << dtype_name(t) << " avx2 row " << r;
        }
        if (detect_isa() == Isa::AVX512) {
          cpu::avx512::kernels().dequant_row(w.view, r, got.data());
          EXPECT_EQ(0, std::memcmp(got.data(), want.data(), got.size() * 4)) << dtype_name(t) << " avx512 row " << r;
        }
      }
    }
  }
}

TEST(KernelsQuantize, SimdActivationQuantizationMatchesScalar) {
  const int64_t K = 4128;
  auto x = random_floats(size_t(K), 31, -5.f, 5.f);
  for (int j = 0; j < 96; ++j) x[size_t(j)] = 0.f;                     // zero blocks: d = 0
  for (int j = 96; j < 128; ++j) x[size_t(j)] = float(j - 112) * 0.5f;  // exact ties at .5 steps
  for (const auto& [block, f16] : std::vector<std::pair<int64_t, bool>>{{32, false}, {96, false}, {32, true}}) {
    std::vector<int8_t> qs0(static_cast<size_t>(K)), qs1(static_cast<size_t>(K));
    std::vector<float> d0(static_cast<size_t>(K / block)), d1(static_cast<size_t>(K / block));
    std::vector<int32_t> s0(static_cast<size_t>(K / block)), s1(static_cast<size_t>(K / block));
    cpu::quantize_x_scalar(x.data(), K, block, f16, qs0.data(), d0.data(), s0.data());
    if (f16) {  // llama.cpp's Q8_0 activations: scales are halves
      for (float d : d0) ASSERT_EQ(d, f16_to_f32(f32_to_f16(d)));
    }
    std::vector<cpu::QuantizeXFn> fns;
    if (detect_isa() >= Isa::AVX2) fns.push_back(cpu::avx2::quantize_x);
    if (detect_isa() >= Isa::AVX512) fns.push_back(cpu::avx512::quantize_x);
    for (auto fn : fns) {
      fn(x.data(), K, block, f16, qs1.data(), d1.data(), s1.data());
      EXPECT_EQ(qs0, qs1) << "block " << block << " f16 " << f16;
      EXPECT_EQ(d0, d1) << "block " << block << " f16 " << f16;
      EXPECT_EQ(s0, s1) << "block " << block << " f16 " << f16;
    }
  }
}

// llama.cpp's Q8_K activations (the K-quant dot products): the AVX-512 quantizer
// gives the scalar specification's bits, signed scales, ties and zero blocks included.
TEST(KernelsQuantize, SimdQ8KMatchesScalar) {
  if (detect_isa() < Isa::AVX512) GTEST_SKIP() << "no AVX-512 on this CPU";
  const int64_t K = 256 * 7;
  auto x = random_floats(size_t(K), 37, -5.f, 5.f);
  for (int j = 0; j < 256; ++j) x[size_t(j)] = 0.f;                           // a zero block: d = 0
  for (int j = 256; j < 512; ++j) x[size_t(j)] = float(j % 64 - 32) * 0.25f;  // ties at .5 steps
  x[600] = 9.f, x[700] = -9.f;                                                 // equal magnitudes: the first wins
  x[900] = -9.5f, x[1000] = 9.5f;
  x[1300] = 1e-30f;  // tiny against the block's scale
  std::vector<int8_t> qs0(static_cast<size_t>(K)), qs1(static_cast<size_t>(K));
  std::vector<float> d0(static_cast<size_t>(K / 256)), d1(d0.size());
  std::vector<int32_t> s0(static_cast<size_t>(K / 16)), s1(s0.size());
  cpu::quantize_x_q8k(x.data(), K, qs0.data(), d0.data(), s0.data());
  cpu::avx512::quantize_x_q8k(x.data(), K, qs1.data(), d1.data(), s1.data());
  EXPECT_EQ(qs0, qs1);
  EXPECT_EQ(d0, d1);
  EXPECT_EQ(s0, s1);
  EXPECT_EQ(d0[0], 0.f);
  EXPECT_LT(d0[2], 0.f);  // block 2's first largest magnitude is +9, which maps to -127: d = -9 / 127
  EXPECT_GT(d0[3], 0.f);  // block 3's is -9.5
}

// team_matmul (kernels/team.h): the threads of one region share the rows of
// consecutive calls through generation-tagged counters; every call must give
// matmul_multi's bits, whatever the thread count and however many calls ran before.
TEST(KernelsTeam, TeamMatmulEqualsMatmulCallAfterCall) {
  if (detect_isa() == Isa::Scalar) GTEST_SKIP() << "no SIMD matrix-vector kernels on this CPU";
  const int64_t K = 1024;
  const std::vector<std::vector<DType>> sets{{DType::F32, DType::F32, DType::F32},
                                             {DType::F16, DType::BF16},
                                             {DType::Q8_0, DType::Q4_0},
                                             {DType::Q4_0_R4, DType::Q8_0_R4, DType::Q4_0}};
  uint32_t seed = 300;
  for (const auto& types : sets) {
    std::vector<Weights> ws;
    const int64_t Ns[] = {1000, 48, 272};
    for (size_t i = 0; i < types.size(); ++i) ws.push_back(make_weights(types[i], Ns[i], K, 64, seed++));
    const auto X = random_floats(size_t(K), seed++);
    for (Isa isa : supported_isas()) {
      if (isa == Isa::Scalar) continue;
      KernelContext ctx(2, isa);
      std::vector<std::vector<float>> want(ws.size());
      bool can = true;
      for (size_t i = 0; i < ws.size(); ++i) {
        want[i].resize(size_t(ws[i].view.rows()));
        matmul(ctx, ws[i].view, X.data(), 1, want[i].data());
        can = can && team_can_matmul(isa, ws[i].view);
      }
      if (isa == Isa::AVX512) {
        ASSERT_TRUE(can) << "AVX-512 has a matrix-vector kernel for every type";
      }
      if (!can) continue;  // the R4 layouts exist only for the AVX-512 kernels
      for (int threads : {1, 2, 3}) {
        Team team;
        std::vector<aligned_vector<uint8_t>> scratch(size_t(threads), aligned_vector<uint8_t>(team_scratch_bytes(K)));
        constexpr int kCalls = 5;  // every call's outputs, kept to compare after the region
        std::vector<std::vector<std::vector<float>>> got(kCalls, std::vector<std::vector<float>>(ws.size()));
        for (auto& call : got)
          for (size_t i = 0; i < ws.size(); ++i) call[i].assign(size_t(ws[i].view.rows()), NAN);
#pragma omp parallel num_threads(threads)
        {
          TeamThread tt;
          tt.team = &team;
          tt.rank = omp_get_thread_num();
          tt.size = omp_get_num_threads();
          tt.isa = isa;
          tt.scratch = scratch[size_t(tt.rank)].data();
          tt.gen = team.gen_base;
          for (auto& y : got) {
            if (ws.size() == 2) team_matmul(tt, X.data(), {{&ws[0].view, y[0].data()}, {&ws[1].view, y[1].data()}});
            if (ws.size() == 3)
              team_matmul(tt, X.data(),
                          {{&ws[0].view, y[0].data()}, {&ws[1].view, y[1].data()}, {&ws[2].view, y[2].data()}});
          }
        }
        for (int c = 0; c < kCalls; ++c)
          for (size_t i = 0; i < ws.size(); ++i)
            EXPECT_EQ(0, std::memcmp(got[size_t(c)][i].data(), want[i].data(), want[i].size() * 4))
                << dtype_name(types[i]) << " (matrix " << i << ") isa=" << isa_name(isa) << " threads=" << threads
                << " call " << c;
      }
    }
  }
}

// The spinning barrier: in each of many rounds every thread writes its slot,
// meets the others, then must see every slot of that round.
TEST(KernelsTeam, BarrierOrdersMemory) {
  for (int threads : {2, 3, 4}) {
    Team team;
    std::vector<int> slot(size_t(threads), -1);
    int bad = 0;
#pragma omp parallel num_threads(threads) reduction(+ : bad)
    {
      const int t = omp_get_thread_num(), n = omp_get_num_threads();
      for (int round = 0; round < (n > 2 ? 300 : 3000); ++round) {  // > 2 threads: oversubscribed, yields
        slot[size_t(t)] = round;
        team.barrier(n);
        for (int u = 0; u < n; ++u) bad += slot[size_t(u)] != round;
        team.barrier(n);
      }
    }
    EXPECT_EQ(bad, 0) << threads << " threads";
  }
}

// The ceiling probes' loops compute what their scalar recurrence says, so the
// FLOPs that measure_fma_peak_gflops counts are really executed.
TEST(KernelsPeak, MultiplyAddLoopsMatchScalarRecurrence) {
  const int64_t iters = 1000;
  double want = 0;  // 12 accumulators a_i = 1e-3 i, each iteration a = a * 0.999 + 1e-4 (fma, fp32)
  for (int i = 0; i < 12; ++i) {
    float a = 1e-3f * float(i);
    for (int64_t it = 0; it < iters; ++it) a = std::fma(a, 0.999f, 1e-4f);
    want += a;
  }
  if (detect_isa() >= Isa::AVX2) {
    EXPECT_NEAR(cpu::avx2::fma_loop_f32(iters), 8 * want, 1e-4 * 8 * want);
  }
  if (detect_isa() < Isa::AVX512) GTEST_SKIP() << "no AVX-512 on this CPU";
  EXPECT_NEAR(cpu::avx512::fma_loop_f32(iters), 16 * want, 1e-4 * 16 * want);
  // Each dot-product step adds two bf16 products 0.5 * 2^-10: 2^-10 per step, exact here.
  double want_bf16 = 0;
  for (int i = 0; i < 12; ++i) want_bf16 += double(1e-3f * float(i)) + double(iters) / 1024.0;
  EXPECT_NEAR(cpu::avx512::dpbf16_loop(iters), 16 * want_bf16, 1e-5 * 16 * want_bf16);
}
