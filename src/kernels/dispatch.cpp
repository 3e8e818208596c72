// Run-time ISA detection and dispatch of the matrix kernels.
#include <cstdlib>
#include <cstring>

#include <omp.h>

#include "core/fp16.h"
#include "kernels/kernels.h"

namespace tessera {

Isa detect_isa() {
  __builtin_cpu_init();
  if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
      __builtin_cpu_supports("avx512vl"))
    return Isa::AVX512;
  if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && __builtin_cpu_supports("f16c"))
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

void dequantize_row(const TensorView& W, int64_t r, float* out) { ref::dequantize_row(W, r, out); }

void matmul(KernelContext& ctx, const TensorView& W, const float* X, int64_t M, float* Y) {
  if (W.dtype == DType::Q8_G) return ref::matmul(W, X, M, Y);  // llama2.c int8: small models only
  const int64_t N = W.rows(), K = W.cols();
  // Baseline: rows split across threads, each dequantizing one row into its scratch slice.
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
        for (int64_t k = 0; k < K; ++k) acc += w[k] * x[k];
        Y[m * N + n] = acc;
      }
    }
  }
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
      std::abort();  // internal: Q8_G is a load-only format
  }
}

}  // namespace tessera
