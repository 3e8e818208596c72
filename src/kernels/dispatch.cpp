// Run-time ISA detection and dispatch of the matrix kernels.
//
// matmul() picks, once per call, from ctx.isa and the weight dtype:
//   M >= blas_min_rows  -> gemm.cpp: OpenBLAS sgemm (other dtypes dequantized panel by panel)
//   otherwise           -> the ISA's matrix-vector kernels (cpu/*_avx2.cpp, cpu/*_avx512.cpp),
//                          rows of W split statically across ctx.n_threads OpenMP threads;
//                          for Q8_0 / Q4_0 / Q8_G the activations are first quantized to int8
//                          blocks in ctx.scratch().
//   Isa::Scalar         -> the reference row loop (threaded), the specification.
#include <omp.h>

#include <algorithm>
#include <cstdlib>
#include <cpuid.h>

#include <cstring>

#include "core/fp16.h"
#include "kernels/cpu/cpu_kernels.h"
#include "kernels/gemm.h"
#include "kernels/gemm_bf16.h"
#include "kernels/kernels.h"

namespace tessera {

// CPUID.1:ECX bit 29 (clang's __builtin_cpu_supports does not know "f16c").
static bool cpu_has_f16c() {
  unsigned a = 0, b = 0, c = 0, d = 0;
  return __get_cpuid(1, &a, &b, &c, &d) && (c & (1u << 29)) != 0;
}

Isa detect_isa() {
  __builtin_cpu_init();
  if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
      __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq") &&
      __builtin_cpu_supports("avx512vnni") && __builtin_cpu_supports("avx512bf16"))
    return Isa::AVX512;
  if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && cpu_has_f16c())
    return Isa::AVX2;
  return Isa::Scalar;
}

const char* isa_name(Isa isa) {
  switch (isa) {
    case Isa::Scalar: return "scalar";
    case Isa::AVX2: return "avx2";
    case Isa::AVX512: return "avx512";
  }
  return "?";
}

void* KernelContext::scratch(size_t n) {
  n += 64;
  if (scratch_.size() < n) scratch_.resize(n);
  uintptr_t p = reinterpret_cast<uintptr_t>(scratch_.data());
  return reinterpret_cast<void*>((p + 63) & ~uintptr_t(63));
}

namespace {

const cpu::IsaKernels* kernels_for(Isa isa) {
  switch (isa) {
    case Isa::AVX512: return &cpu::avx512::kernels();
    case Isa::AVX2: return &cpu::avx2::kernels();
    case Isa::Scalar: return nullptr;
  }
  return nullptr;
}

cpu::MatvecFn matvec_for(const cpu::IsaKernels& k, DType t) {
  switch (t) {
    case DType::F32: return k.f32;
    case DType::F16: return k.f16;
    case DType::BF16: return k.bf16;
    case DType::Q8_0: return k.q8_0;
    case DType::Q4_0: return k.q4_0;
    case DType::Q8_G: return k.q8_g;
    case DType::Q4_0_R4: return k.q4_0_r4;
    case DType::Q8_0_R4: return k.q8_0_r4;
  }
  return nullptr;
}

// Block size of the activation quantization, 0 when X stays f32.
int64_t quant_block(const TensorView& W) {
  switch (W.dtype) {
    case DType::Q8_0:
    case DType::Q4_0:
    case DType::Q4_0_R4:
    case DType::Q8_0_R4: return kQK;
    case DType::Q8_G: return cpu::q8g_integer_path(W) ? W.group : 0;
    default: return 0;
  }
}

size_t align64(size_t n) { return (n + 63) & ~size_t(63); }

// Threads worth using: below ~32K multiply-adds a second thread costs more than it saves.
int threads_for(const KernelContext& ctx, int64_t N, int64_t K, int64_t M) {
  return N * K * M < (int64_t(1) << 15) ? 1 : std::max(1, ctx.n_threads);
}

// Rows [n0, n1) of thread t of T, in multiples of 16 so tiles stay whole.
void split_rows(int64_t N, int t, int T, int64_t& n0, int64_t& n1) {
  n0 = (N * t / T) & ~int64_t(15);
  n1 = t + 1 == T ? N : (N * (t + 1) / T) & ~int64_t(15);
}

void matvec(KernelContext& ctx, const cpu::IsaKernels& k, const TensorView& W, const float* X, int64_t M, float* Y) {
  const int64_t N = W.rows(), K = W.cols();
  const int64_t qb = quant_block(W);
  const int T = threads_for(ctx, N, K, M);
  // Scratch: [quantized X: qs (M*K) | d (M*K/qb) | s (M*K/qb)] [per-thread work rows (K floats)]
  const size_t nblk = qb ? size_t(M * (K / qb)) : 0;
  const size_t qs_bytes = qb ? align64(size_t(M * K)) : 0;
  const size_t d_bytes = align64(nblk * sizeof(float)), s_bytes = align64(nblk * sizeof(int32_t));
  const bool need_work = W.dtype == DType::Q8_G || qb;
  const size_t work_bytes = need_work ? align64(size_t(cpu::work_floats(K, M)) * sizeof(float)) : 0;
  auto* base = static_cast<uint8_t*>(ctx.scratch(qs_bytes + d_bytes + s_bytes + size_t(T) * work_bytes));
  auto* qs = reinterpret_cast<int8_t*>(base);
  auto* d = reinterpret_cast<float*>(base + qs_bytes);
  auto* s = reinterpret_cast<int32_t*>(base + qs_bytes + d_bytes);
  uint8_t* work = base + qs_bytes + d_bytes + s_bytes;

  cpu::MatvecArgs a;
  a.W = &W;
  a.X = X;
  a.M = M;
  a.Y = Y;
  a.xq = cpu::QuantX{qs, d, s, K, qb ? qb : kQK};
  const cpu::MatvecFn fn = matvec_for(k, W.dtype);
  if (T == 1) {
    for (int64_t m = 0; qb && m < M; ++m) k.quantize_x(X + m * K, K, qb, qs + m * K, d + m * (K / qb), s + m * (K / qb));
    a.work = reinterpret_cast<float*>(work);
    fn(a, 0, N);
    return;
  }
#pragma omp parallel num_threads(T)
  {
    if (qb) {
#pragma omp for schedule(static)
      for (int64_t m = 0; m < M; ++m) k.quantize_x(X + m * K, K, qb, qs + m * K, d + m * (K / qb), s + m * (K / qb));
    }
    const int t = omp_get_thread_num(), nt = omp_get_num_threads();
    cpu::MatvecArgs ta = a;
    ta.work = reinterpret_cast<float*>(work + size_t(t) * work_bytes);
    int64_t n0, n1;
    split_rows(N, t, nt, n0, n1);
    if (n1 > n0) fn(ta, n0, n1);
  }
}

// Isa::Scalar: the reference row loop, rows split across threads.
void matvec_scalar(KernelContext& ctx, const TensorView& W, const float* X, int64_t M, float* Y) {
  const int64_t N = W.rows(), K = W.cols();
  float* wbuf = static_cast<float*>(ctx.scratch(size_t(ctx.n_threads) * size_t(K) * sizeof(float)));
#pragma omp parallel num_threads(ctx.n_threads)
  {
    float* w = wbuf + size_t(omp_get_thread_num()) * size_t(K);
#pragma omp for schedule(static)
    for (int64_t n = 0; n < N; ++n) {
      ref::dequantize_row(W, n, w);
      for (int64_t m = 0; m < M; ++m) {
        const float* x = X + m * K;
        float acc = 0.f;
        for (int64_t j = 0; j < K; ++j) acc += w[j] * x[j];
        Y[m * N + n] = acc;
      }
    }
  }
}

}  // namespace

void attend_decode(Isa isa, const DecodeAttnArgs& a) {
  if (const cpu::IsaKernels* k = kernels_for(isa); k && k->attend && k->attend(a)) return;
  ref::attend_decode(a);
}

void dequantize_row(const TensorView& W, int64_t r, float* out) {
  if (const cpu::IsaKernels* k = kernels_for(detect_isa())) return k->dequant_row(W, r, out);
  ref::dequantize_row(W, r, out);
}

void detail::matmul_matvec(KernelContext& ctx, const TensorView& W, const float* X, int64_t M, float* Y) {
  if (M <= 0 || W.rows() == 0) return;
  const cpu::IsaKernels* k = kernels_for(ctx.isa);
  if (k && matvec_for(*k, W.dtype)) return matvec(ctx, *k, W, X, M, Y);
  matvec_scalar(ctx, W, X, M, Y);  // also the R4 layouts on an ISA without their kernels
}

void matmul(KernelContext& ctx, const TensorView& W, const float* X, int64_t M, float* Y) {
  if (M <= 0 || W.rows() == 0) return;
  // llama2.c int8 (Q8_G) follows runq: activations quantized per group of W. The
  // SIMD integer path covers groups that are multiples of 32; smaller groups (the
  // tiny models exported with group 4) and the forced-scalar ISA run the specification.
  if (W.dtype == DType::Q8_G) {
    if (!cpu::q8g_integer_path(W) || ctx.isa == Isa::Scalar) return ref::matmul(W, X, M, Y);
    return detail::matmul_matvec(ctx, W, X, M, Y);  // never the f32 BLAS path: activations stay quantized
  }
  const cpu::IsaKernels* k = kernels_for(ctx.isa);
  if (W.dtype == DType::BF16 && M >= detail::bf16_gemm_min_rows(ctx.isa)) {
    const int64_t K = W.cols();
    return gemm_bf16(ctx, GemmOperand{X, false, K, 1}, GemmOperand{W.data, true, K, 1}, M, W.rows(), K, Y, W.rows(),
                     false);
  }
  if (M >= detail::blas_min_rows(W, ctx.isa))
    return detail::matmul_blas(ctx, W, X, M, Y, k ? k->dequant_row : ref::dequantize_row);
  detail::matmul_matvec(ctx, W, X, M, Y);
}

void quantize_row(DType t, const float* x, void* out, int64_t n) {
  switch (t) {
    case DType::F32:
      std::memcpy(out, x, size_t(n) * 4);
      break;
    case DType::F16: {
      auto* o = static_cast<uint16_t*>(out);
      for (int64_t i = 0; i < n; ++i) o[i] = f32_to_f16(x[i]);
      break;
    }
    case DType::BF16: {
      auto* o = static_cast<uint16_t*>(out);
      for (int64_t i = 0; i < n; ++i) o[i] = f32_to_bf16(x[i]);
      break;
    }
    case DType::Q8_0:
      ref::quantize_row_q8_0(x, static_cast<BlockQ8_0*>(out), n);
      break;
    case DType::Q4_0:
      ref::quantize_row_q4_0(x, static_cast<BlockQ4_0*>(out), n);
      break;
    case DType::Q8_G:
    case DType::Q4_0_R4:
    case DType::Q8_0_R4:
      std::abort();  // internal: Q8_G is a load-only format, the R4 types load-time layouts
  }
}

}  // namespace tessera
