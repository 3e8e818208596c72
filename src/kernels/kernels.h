// Matrix kernels for every weight type. The scalar versions in ref/ are the
// specification; cpu/ holds the AVX2 / AVX-512 versions chosen at run time.
#pragma once
#include <cstddef>
#include <cstdint>
#include <initializer_list>
#include <vector>

#include "core/tensor.h"

namespace tessera {

enum class Isa { Scalar, AVX2, AVX512 };
Isa detect_isa();  // the best this CPU supports
const char* isa_name(Isa isa);

// Explicit compute context: thread count, ISA and a scratch buffer that grows
// only when a larger request arrives (so steady-state loops never allocate).
// True when the CPU has AMX-BF16 tiles and the OS lets this process use them
// (Linux: arch_prctl ARCH_REQ_XCOMP_PERM, asked once per process), unless the
// environment sets TESSERA_NO_AMX=1.
bool amx_bf16_usable();

class KernelContext {
 public:
  explicit KernelContext(int n_threads = 1, Isa isa = detect_isa())
      : n_threads(n_threads), isa(isa), amx(isa == Isa::AVX512 && amx_bf16_usable()) {}
  int n_threads;
  Isa isa;
  bool amx;  // bf16 GEMMs on AMX tiles (gemm_bf16.h); false: on AVX-512 BF16
  // Returns at least n bytes, 64-byte aligned. Valid until the next call.
  void* scratch(size_t n);
  // A second buffer, for the LLM.int8() decomposition (kernels/int8.h), whose
  // products use scratch(): at least n floats, valid until its next call.
  float* int8_buffer(size_t n) {
    if (int8_buf_.size() < n) int8_buf_.resize(n);
    return int8_buf_.data();
  }
  // LLM.int8(): decomposed products, outlier columns taken out (in total, most in one product).
  struct Int8Stats {
    int64_t products = 0, outlier_cols = 0, max_cols = 0;
  } int8_stats;

 private:
  std::vector<uint8_t> scratch_;
  std::vector<float> int8_buf_;
};

// Y(M, N) = X(M, K) . W(N, K)^T, with W of any DType, X and Y row-major f32.
// M == 1 is the decode matrix-vector case. Multi-threaded over N (and M).
// Q8_G (llama2.c int8) follows llama2.c's runq: X is quantized to int8 in the
// same groups as W and the products are integer (see ref::matmul).
void matmul(KernelContext& ctx, const TensorView& W, const float* X, int64_t M, float* Y);

// A linear layer as the model holds it: a weight and an optional bias, added
// to every row of the product. linear() is the one entry point of the
// inference model's matrix products (adapters such as LoRA attach here).
struct Linear {
  const TensorView* W = nullptr;  // (N, K), any DType
  const TensorView* b = nullptr;  // (N) f32; null or empty: no bias
};
// Y(M, N) = X(M, K) . W(N, K)^T + b: matmul(), then the bias, which the
// matrix-vector kernels add to each range of rows as they finish it.
void linear(KernelContext& ctx, const Linear& lin, const float* X, int64_t M, float* Y);

// Several matrices against one X: outs[i].Y = X . outs[i].W^T (+ outs[i].b),
// exactly as linear() for each. When all of them take the matrix-vector path
// (decode) with the same K, they share one parallel region and one
// quantization of X (e.g. the q/k/v projections, gate and up). At most 4.
struct MatmulOut {
  const TensorView* W;
  float* Y;
  const TensorView* b = nullptr;  // optional bias (N)
};
void matmul_multi(KernelContext& ctx, const float* X, int64_t M, std::initializer_list<MatmulOut> outs);
void matmul_multi(KernelContext& ctx, const float* X, int64_t M, const MatmulOut* outs, size_t n_outs);

// C(M, N) = alpha op(A) op(B) + beta C, f32 row-major (OpenBLAS sgemm). Called
// inside an OpenMP parallel region it runs on the calling thread only; outside,
// on OpenBLAS's current thread count. For the attention score/value products.
void sgemm(bool trans_a, bool trans_b, int64_t M, int64_t N, int64_t K, float alpha, const float* A, int64_t lda,
           const float* B, int64_t ldb, float beta, float* C, int64_t ldc);

// Dequantize row r of W (cols() elements) into out.
void dequantize_row(const TensorView& W, int64_t r, float* out);

namespace ref {
// Scalar reference: the specification every fast path is tested against.
void matmul(const TensorView& W, const float* X, int64_t M, float* Y);
void dequantize_row(const TensorView& W, int64_t r, float* out);
// K elements of a row of block type t (Q4_1, Q5_0, Q5_1, IQ4_NL, Q2_K .. Q8_K) at p.
void dequantize_blocks(DType t, const void* p, int64_t K, float* out);
// llama2.c runq: quantize n floats in groups (scale = max|x|/127 per group).
void quantize_groups_q8(const float* x, int64_t n, int group, int8_t* q, float* s);
// Quantize n floats (multiple of 32) into Q8_0 / Q4_0 blocks, llama.cpp's rounding.
void quantize_row_q8_0(const float* x, BlockQ8_0* y, int64_t n);
void quantize_row_q4_0(const float* x, BlockQ4_0* y, int64_t n);
// n elements (a multiple of the block size) of x into blocks of t: the K-quants
// Q2_K .. Q6_K (ref/quantize_k_ref.cpp) and, through quantize_legacy, Q4_1,
// Q5_0, Q5_1, IQ4_NL (ref/quantize_legacy_ref.cpp).
void quantize_blocks(DType t, const float* x, void* out, int64_t n);
void quantize_legacy(DType t, const float* x, void* out, int64_t n);
}  // namespace ref

// Convert n f32 values into dtype t (dtype_can_quantize(t)), writing dtype_row_bytes(t, n) bytes.
void quantize_row(DType t, const float* x, void* out, int64_t n);

}  // namespace tessera
