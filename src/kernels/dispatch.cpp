// Run-time ISA detection and dispatch of the matrix kernels.
//
// matmul() picks, once per call, from ctx.isa and the weight dtype:
//   M >= blas_min_rows  -> gemm.cpp: OpenBLAS sgemm (other dtypes dequantized panel by panel)
//   otherwise           -> the ISA's matrix-vector kernels (cpu/*_avx2.cpp, cpu/*_avx512.cpp),
//                          rows of W handed to ctx.n_threads OpenMP threads in shrinking
//                          ranges (RowQueue); for Q8_0 / Q4_0 / Q8_G the activations are
//                          first quantized to int8 blocks in ctx.scratch().
// matmul_multi() runs several matrices that share X in one parallel region.
//   Isa::Scalar         -> the reference row loop (threaded), the specification.
#include <omp.h>

#include <cmath>

#include <algorithm>
#include <atomic>
#include <cstdlib>
#include <cpuid.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <cstring>
#include <span>

#include "core/error.h"
#include "core/fp16.h"
#include "kernels/cpu/cpu_kernels.h"
#include "kernels/gemm.h"
#include "kernels/gemm_bf16.h"
#include "kernels/int8.h"
#include "kernels/kernels.h"
#include "kernels/repack.h"
#include "kernels/team.h"

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

bool amx_bf16_usable() {
  static const bool usable = [] {
    if (const char* e = std::getenv("TESSERA_NO_AMX"); e && std::strcmp(e, "0") != 0 && *e) return false;
    unsigned a = 0, b = 0, c = 0, d = 0;
    // CPUID.(7, 0):EDX bit 22 AMX-BF16, bit 24 AMX-TILE; then the OS's permission for the tile data state.
    if (!__get_cpuid_count(7, 0, &a, &b, &c, &d) || !(d & (1u << 22)) || !(d & (1u << 24))) return false;
#if defined(__linux__)
    constexpr long kArchReqXcompPerm = 0x1023, kXfeatureXtiledata = 18;
    return syscall(SYS_arch_prctl, kArchReqXcompPerm, kXfeatureXtiledata) == 0;
#else
    return false;
#endif
  }();
  return usable;
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
    case DType::Q4_K_R4:
    case DType::Q5_K_R4:
    case DType::Q6_K_R4: return k.kquant_r4;
    case DType::IQ4_NL_R4:
    case DType::Q4_1_R4:
    case DType::Q5_0_R4:
    case DType::Q5_1_R4: return k.legacy_r4;
    case DType::Q2_K:
    case DType::Q3_K:
    case DType::Q4_K:
    case DType::Q5_K:
    case DType::Q6_K: return k.kquant;
    case DType::Q4_1:
    case DType::Q5_0:
    case DType::Q5_1:
    case DType::IQ4_NL: return k.legacy;
    default: return nullptr;
  }
}

// quant_block() of the GGUF types: llama.cpp's activations, Q8_0 (blocks of 32,
// f16 scales), Q8_1 (Q8_0 whose block sums are llama.cpp's half d * sum, for
// the min term of Q4_1 / Q5_1) or Q8_K (blocks of 256, f32 scales, sums per 16).
constexpr int64_t kQ8_1 = -3, kQ8_0 = -2, kQ8K = -1;

// The activation quantization of W: kQ8_0, kQ8K, the group size of Q8_G
// (f32 scales, llama2.c's runq), or 0 when X stays f32.
int64_t quant_block(const TensorView& W) {
  if (W.dtype != DType::Q8_K && dtype_is_k_quant(W.dtype)) return kQ8K;  // file and R4 layouts
  switch (W.dtype) {
    case DType::Q8_0:
    case DType::Q4_0:
    case DType::Q4_0_R4:
    case DType::Q8_0_R4:
    case DType::Q5_0:
    case DType::IQ4_NL:
    case DType::Q5_0_R4:
    case DType::IQ4_NL_R4: return kQ8_0;
    case DType::Q4_1:
    case DType::Q5_1:
    case DType::Q4_1_R4:
    case DType::Q5_1_R4: return kQ8_1;
    case DType::Q8_G: return cpu::q8g_integer_path(W) ? W.group : 0;
    default: return 0;
  }
}

// Activation rows up to which every thread quantizes its own copy.
constexpr int64_t kPrivateQuantRows = 4;

size_t align64(size_t n) { return (n + 63) & ~size_t(63); }

// Threads worth using: below ~32K multiply-adds a second thread costs more than it saves.
constexpr int64_t kThreadedMacs = int64_t(1) << 15;
int threads_for(const KernelContext& ctx, int64_t N, int64_t K, int64_t M) {
  return N * K * M < kThreadedMacs ? 1 : std::max(1, ctx.n_threads);
}

// One matrix of a matvec call: Y(M, N) = X(M, K) . W(N, K)^T.
struct MatvecJob {
  const TensorView* W;
  float* Y;
  cpu::MatvecFn fn;
  const float* bias = nullptr;  // (N), added to rows as they are computed
};

const float* bias_of(const TensorView* b) { return b && !b->empty() ? b->f32() : nullptr; }

// Y[m, n] += b[n] for rows [n0, n1) of every m < M.
void add_bias_rows(float* Y, const float* b, int64_t M, int64_t N, int64_t n0, int64_t n1) {
  for (int64_t m = 0; m < M; ++m)
    for (int64_t n = n0; n < n1; ++n) Y[m * N + n] += b[n];
}

// Hands out the rows of a call's matrices to its threads in ranges that are
// multiples of 16 (tiles stay whole): a thread takes about 1 / (1.5 T) of the
// bytes still unclaimed (this matrix's and the later ones'), at least 16 rows,
// so ranges start large and shrink. Every range starts with demand misses: in
// decode, 1 / (3T) was 8% slower than 1 / (2T) on the 15M shape, and 1 / (1.5T)
// 1-3% faster (15M F32, 1B Q4_0; in-process alternation). A thread that
// streams slower (on this machine the second vCPU reads ~25% slower) thus
// takes fewer rows instead of making the other wait at the end. Which thread
// computes a row does not change its value, so results do not depend on the
// timing.
//
// The counters hold (generation << 32) | next row: a counter whose generation
// is not this call's reads as row 0, so a persistent team (kernels/team.h)
// reuses them call after call without a reset barrier. Each thread may build
// its own RowQueue over the same counters and generation.
class RowQueue {
 public:
  static constexpr int kMaxJobs = Team::kMaxJobs;
  RowQueue(const MatvecJob* jobs, int n, int threads, Team::Counter* next, uint32_t gen)
      : jobs_(jobs), threads_(threads), next_(next), gen_(gen) {
    for (int j = n - 1; j >= 0; --j) later_bytes_[j] = j + 1 < n ? later_bytes_[j + 1] + bytes(j + 1) : 0;
  }
  // Claims rows [n0, n1) of job j; false when job j has none left.
  bool claim(int j, int64_t& n0, int64_t& n1) {
    const int64_t N = jobs_[j].W->rows(), row_bytes = int64_t(jobs_[j].W->row_bytes());
    const uint64_t tag = uint64_t(gen_) << 32;
    std::atomic<uint64_t>& next = next_[j].v;
    uint64_t cur = next.load(std::memory_order_relaxed);
    for (;;) {
      const int64_t row = (cur & ~uint64_t(0xffffffff)) == tag ? int64_t(cur & 0xffffffff) : 0;
      if (row >= N) return false;
      const int64_t unclaimed = (N - row) * row_bytes + later_bytes_[j];
      const int64_t rows = std::max<int64_t>(16, unclaimed * 2 / (3 * threads_ * row_bytes) & ~int64_t(15));
      const int64_t end = std::min(N, row + rows);
      if (next.compare_exchange_weak(cur, tag | uint64_t(end), std::memory_order_relaxed)) {
        n0 = row;
        n1 = end;
        return true;
      }
    }
  }

 private:
  int64_t bytes(int j) const { return jobs_[j].W->rows() * int64_t(jobs_[j].W->row_bytes()); }
  const MatvecJob* jobs_;
  int threads_;
  Team::Counter* next_;
  uint32_t gen_;
  int64_t later_bytes_[kMaxJobs];
};

// Where one quantized copy of X(M, K) lives in scratch: qs (M*K) | d (M*K/qb) | s (M*K/qb;
// Q8_K: M*K/16, one sum per 16 quants). code is quant_block()'s.
struct XqLayout {
  XqLayout(int64_t K, int64_t M, int64_t code)
      : K(K),
        qb(code == kQ8K ? kQKK : code == kQ8_0 || code == kQ8_1 ? kQK : code),
        q8k(code == kQ8K),
        q8_1(code == kQ8_1),
        f16(code == kQ8_0 || code == kQ8_1) {
    const size_t nblk = qb ? size_t(M * (K / qb)) : 0;
    qs_bytes = qb ? align64(size_t(M * K)) : 0;
    d_bytes = align64(nblk * sizeof(float));
    bytes = qs_bytes + d_bytes + align64((q8k ? size_t(M * K / 16) : nblk) * sizeof(int32_t));
  }
  void quantize(const cpu::IsaKernels& k, uint8_t* b, const float* X, int64_t m) const {  // row m of X
    auto* qs = reinterpret_cast<int8_t*>(b) + m * K;
    auto* d = reinterpret_cast<float*>(b + qs_bytes) + m * (K / qb);
    auto* s = reinterpret_cast<int32_t*>(b + qs_bytes + d_bytes) + m * (q8k ? K / 16 : K / qb);
    if (q8k) return (k.quantize_q8k ? k.quantize_q8k : cpu::quantize_x_q8k)(X + m * K, K, qs, d, s);
    k.quantize_x(X + m * K, K, qb, f16, qs, d, s);
    if (q8_1) cpu::q8_1_sums(X + m * K, K, s);
  }
  cpu::QuantX view(const uint8_t* b) const {
    return cpu::QuantX{reinterpret_cast<const int8_t*>(b), reinterpret_cast<const float*>(b + qs_bytes),
                       reinterpret_cast<const int32_t*>(b + qs_bytes + d_bytes), K, qb ? qb : kQK};
  }
  int64_t K, qb;
  bool q8k, q8_1, f16;
  size_t qs_bytes, d_bytes, bytes;
};

bool needs_work(const MatvecJob* jobs, int n_jobs) {
  for (int j = 0; j < n_jobs; ++j)
    if (jobs[j].W->dtype == DType::Q8_G || quant_block(*jobs[j].W)) return true;
  return false;
}

// One thread's share of the jobs: claims row ranges from queue until none are
// left; without a queue (one thread), every row in one range per job.
void matvec_rows(const MatvecJob* jobs, int n_jobs, const float* X, int64_t M, const cpu::QuantX& xq, float* work,
                 RowQueue* queue) {
  for (int j = 0; j < n_jobs; ++j) {
    cpu::MatvecArgs a;
    a.W = jobs[j].W;
    a.X = X;
    a.M = M;
    a.Y = jobs[j].Y;
    a.xq = xq;
    a.work = work;
    const int64_t N = jobs[j].W->rows();
    if (!queue) {
      jobs[j].fn(a, 0, N);
      if (jobs[j].bias) add_bias_rows(jobs[j].Y, jobs[j].bias, M, N, 0, N);
      continue;
    }
    for (int64_t n0, n1; queue->claim(j, n0, n1); a.x_ready = true) {
      jobs[j].fn(a, n0, n1);
      if (jobs[j].bias) add_bias_rows(jobs[j].Y, jobs[j].bias, M, N, n0, n1);
    }
  }
}

// The matrices of jobs (all with K columns and the same activation quantization)
// against one X(M, K), in one parallel region.
void matvec(KernelContext& ctx, const cpu::IsaKernels& k, const MatvecJob* jobs, int n_jobs, const float* X,
            int64_t M) {
  const TensorView& W0 = *jobs[0].W;
  const int64_t K = W0.cols(), qb = quant_block(W0);
  int64_t rows = 0;
  for (int j = 0; j < n_jobs; ++j) rows += jobs[j].W->rows();
  const int T = threads_for(ctx, rows, K, M);
  // A few activation rows (decode) are quantized by every thread into its own
  // copy, which saves a barrier; more rows are split across the threads.
  const bool private_x = T > 1 && M <= kPrivateQuantRows;
  const int copies = private_x ? T : 1;
  // Scratch: copies x [quantized X], T x [work]
  const XqLayout xl(K, M, qb);
  const size_t work_bytes = needs_work(jobs, n_jobs) ? align64(size_t(cpu::work_floats(K, M)) * sizeof(float)) : 0;
  auto* base = static_cast<uint8_t*>(ctx.scratch(size_t(copies) * xl.bytes + size_t(T) * work_bytes));
  uint8_t* work = base + size_t(copies) * xl.bytes;
  if (T == 1) {
    for (int64_t m = 0; qb && m < M; ++m) xl.quantize(k, base, X, m);
    return matvec_rows(jobs, n_jobs, X, M, xl.view(base), reinterpret_cast<float*>(work), nullptr);
  }
  Team::Counter next[RowQueue::kMaxJobs];
  RowQueue queue(jobs, n_jobs, T, next, 1);
#pragma omp parallel num_threads(T)
  {
    const int t = omp_get_thread_num(), copy = private_x ? t : 0;
    uint8_t* xq = base + size_t(copy) * xl.bytes;
    if (qb && private_x) {
      for (int64_t m = 0; m < M; ++m) xl.quantize(k, xq, X, m);
    } else if (qb) {
#pragma omp for schedule(static)
      for (int64_t m = 0; m < M; ++m) xl.quantize(k, base, X, m);
    }
    matvec_rows(jobs, n_jobs, X, M, xl.view(xq), reinterpret_cast<float*>(work + size_t(t) * work_bytes), &queue);
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

void attend_softmax_row(Isa isa, float* s, int64_t n, int64_t n_zero, float softcap) {
  if (const cpu::IsaKernels* k = kernels_for(isa); k && k->softmax_row) {
    k->softmax_row(s, n, softcap);
    std::fill(s + n, s + std::max(n, n_zero), 0.f);
    return;
  }
  ref::attend_softmax_row(s, n, n_zero, softcap);
}

float attend_online_row(Isa isa, float* s, int64_t n, int64_t n_zero, float softcap, float& m) {
  float sum;
  if (const cpu::IsaKernels* k = kernels_for(isa); k && k->online_row) {
    sum = k->online_row(s, n, softcap, m);
    std::fill(s + n, s + std::max(n, n_zero), 0.f);
    return sum;
  }
  return ref::attend_online_row(s, n, n_zero, softcap, m);
}

void merge_attention(float* v1, float& s1, const float* v2, float s2, int64_t hd) {
  const float s = s1 > s2 ? s1 + std::log1p(std::exp(s2 - s1)) : s2 + std::log1p(std::exp(s1 - s2));
  if (!std::isfinite(s)) return;  // both empty (-inf): nothing to merge
  const float w1 = std::exp(s1 - s), w2 = std::exp(s2 - s);
  for (int64_t i = 0; i < hd; ++i) v1[i] = w1 * v1[i] + w2 * v2[i];
  s1 = s;
}

void dequantize_row(const TensorView& W, int64_t r, float* out) {
  if (const cpu::IsaKernels* k = kernels_for(detect_isa())) return k->dequant_row(W, r, out);
  ref::dequantize_row(W, r, out);
}

bool detail::integer_activations(const TensorView& W) { return quant_block(W) != 0; }

void detail::matmul_matvec(KernelContext& ctx, const TensorView& W, const float* X, int64_t M, float* Y) {
  if (M <= 0 || W.rows() == 0) return;
  const cpu::IsaKernels* k = kernels_for(ctx.isa);
  if (const cpu::MatvecFn fn = k ? matvec_for(*k, W.dtype) : nullptr) {
    const MatvecJob job{&W, Y, fn};
    return matvec(ctx, *k, &job, 1, X, M);
  }
  matvec_scalar(ctx, W, X, M, Y);  // also the R4 layouts on an ISA without their kernels
}

namespace {

// The SIMD matrix-vector kernel matmul() runs W against M rows of X on, or
// nullptr when it takes a GEMM path or the scalar reference.
cpu::MatvecFn simd_matvec(const cpu::IsaKernels& k, Isa isa, const TensorView& W, int64_t M) {
  if (W.dtype == DType::Q8_G) {
    if (!cpu::q8g_integer_path(W)) return nullptr;
  } else if ((W.dtype == DType::BF16 && M >= detail::bf16_gemm_min_rows(isa)) || M >= detail::blas_min_rows(W, isa)) {
    return nullptr;
  }
  return matvec_for(k, W.dtype);
}

}  // namespace

// The product Y = X W^T (+ b), one dispatch for matmul() and linear(): the
// matrix-vector kernels add the bias to each range of rows as they finish it;
// the other paths add it after the product.
void linear(KernelContext& ctx, const Linear& lin, const float* X, int64_t M, float* Y) {
  if (is_llm_int8(*lin.W)) return detail::linear_int8_decomposed(ctx, lin, X, M, Y);
  const TensorView& W = *lin.W;
  const float* b = bias_of(lin.b);
  if (M <= 0 || W.rows() == 0) return;
  const int64_t N = W.rows(), K = W.cols();
  auto add_bias = [&] {
    if (!b) return;
#pragma omp parallel for num_threads(ctx.n_threads) schedule(static) if (M >= 8)
    for (int64_t m = 0; m < M; ++m) add_bias_rows(Y + m * N, b, 1, N, 0, N);
  };
  // llama2.c int8 (Q8_G) follows runq: activations quantized per group of W. The
  // SIMD integer path covers groups that are multiples of 32; smaller groups (the
  // tiny models exported with group 4) and the forced-scalar ISA run the specification.
  // Q8_G never takes the f32 BLAS path: its activations stay quantized.
  if (W.dtype == DType::Q8_G && (!cpu::q8g_integer_path(W) || ctx.isa == Isa::Scalar)) {
    ref::matmul(W, X, M, Y);
    return add_bias();
  }
  const cpu::IsaKernels* k = kernels_for(ctx.isa);
  if (const cpu::MatvecFn fn = k ? simd_matvec(*k, ctx.isa, W, M) : nullptr) {
    const MatvecJob job{&W, Y, fn, b};
    return matvec(ctx, *k, &job, 1, X, M);
  }
  if (W.dtype == DType::BF16 && M >= detail::bf16_gemm_min_rows(ctx.isa))
    gemm_bf16(ctx, GemmOperand{X, false, K, 1}, GemmOperand{W.data, true, K, 1}, M, N, K, Y, N, false);
  else if (M >= detail::blas_min_rows(W, ctx.isa))
    detail::matmul_blas(ctx, W, X, M, Y, k ? k->dequant_row : ref::dequantize_row);
  else
    matvec_scalar(ctx, W, X, M, Y);  // also the R4 layouts on an ISA without their kernels
  add_bias();
}

void matmul(KernelContext& ctx, const TensorView& W, const float* X, int64_t M, float* Y) {
  linear(ctx, Linear{&W, nullptr}, X, M, Y);
}

void matmul_multi(KernelContext& ctx, const float* X, int64_t M, std::initializer_list<MatmulOut> outs) {
  matmul_multi(ctx, X, M, outs.begin(), outs.size());
}

void matmul_multi(KernelContext& ctx, const float* X, int64_t M, const MatmulOut* outs_p, size_t n_outs) {
  const std::span<const MatmulOut> outs(outs_p, n_outs);
  // Shared only where every matrix would take the SIMD matrix-vector kernels
  // (what matmul() picks below its GEMM thresholds) with the same K and the
  // same activation quantization; otherwise one matmul() each.
  const cpu::IsaKernels* k = kernels_for(ctx.isa);
  MatvecJob jobs[RowQueue::kMaxJobs];
  int n = 0;
  bool shared = k && M > 0 && outs.size() <= size_t(RowQueue::kMaxJobs);
  for (const MatmulOut& o : outs) {
    if (!shared) break;
    const TensorView& W = *o.W;
    const cpu::MatvecFn fn = simd_matvec(*k, ctx.isa, W, M);
    shared = fn && W.rows() > 0 && !is_llm_int8(W) &&
             (n == 0 || (W.cols() == jobs[0].W->cols() && quant_block(W) == quant_block(*jobs[0].W)));
    jobs[n++] = MatvecJob{&W, o.Y, fn, bias_of(o.b)};
  }
  if (shared && n > 0) return matvec(ctx, *k, jobs, n, X, M);
  for (const MatmulOut& o : outs) linear(ctx, Linear{o.W, o.b}, X, M, o.Y);
}

size_t team_scratch_bytes(int64_t K, int64_t M) {
  // Q8_0 / Q4_0 blocks of 32 are the finest activation quantization (Q8_G groups are multiples of
  // 32); Q8_K keeps more sums.
  return std::max(XqLayout(K, M, kQ8_0).bytes, XqLayout(K, M, kQ8K).bytes) +
         align64(size_t(cpu::work_floats(K, M)) * sizeof(float));
}

bool team_worthwhile(const TensorView& W) { return W.rows() * W.cols() >= kThreadedMacs; }

bool team_can_matmul(Isa isa, const TensorView& W, int64_t M) {
  const cpu::IsaKernels* k = kernels_for(isa);
  return k && W.rows() > 0 && !is_llm_int8(W) && simd_matvec(*k, isa, W, M) != nullptr;
}

void team_matmul(TeamThread& tt, const float* x, std::initializer_list<MatmulOut> outs, int64_t M) {
  team_matmul(tt, x, outs.begin(), outs.size(), M);
}

void team_matmul(TeamThread& tt, const float* x, const MatmulOut* outs_p, size_t n_outs, int64_t M) {
  const std::span<const MatmulOut> outs(outs_p, n_outs);
  const cpu::IsaKernels* k = kernels_for(tt.isa);
  if (!k || outs.size() == 0 || outs.size() > size_t(Team::kMaxJobs)) fail("team_matmul: internal: bad call");
  // Matrices that quantize the activations another way (a mix's Q8_0 k / v beside
  // Q4_K q, say) go in a call of their own: one barrier more each, in order.
  bool done[Team::kMaxJobs] = {};
  for (size_t first = 0; first < outs.size(); ++first) {
    if (done[first]) continue;
    MatvecJob jobs[Team::kMaxJobs];
    int n = 0;
    const TensorView& W0 = *outs[first].W;
    for (size_t i = first; i < outs.size(); ++i) {
      const MatmulOut& o = outs[i];
      if (done[i] || o.W->cols() != W0.cols() || quant_block(*o.W) != quant_block(W0)) continue;
      jobs[n] = MatvecJob{o.W, o.Y, simd_matvec(*k, tt.isa, *o.W, M), bias_of(o.b)};
      if (!jobs[n].fn) fail("team_matmul: internal: a matrix without a matrix-vector kernel");
      done[i] = true;
      ++n;
    }
    const XqLayout xl(W0.cols(), M, quant_block(W0));
    uint8_t* xq = tt.scratch;
    for (int64_t m = 0; xl.qb && m < M; ++m) xl.quantize(*k, xq, x, m);
    RowQueue queue(jobs, n, tt.size, tt.team->next, tt.gen++);
    matvec_rows(jobs, n, x, M, xl.view(xq), reinterpret_cast<float*>(xq + xl.bytes), &queue);
    tt.barrier();
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
    default:
      if (!dtype_can_quantize(t))  // Q8_G load-only, Q8_K activations only, R4 load-time layouts
        fail("quantize_row: no quantizer for ", dtype_name(t));
      ref::quantize_blocks(t, x, out, n);
  }
}

}  // namespace tessera
