// bench_gemm_bf16: our AVX-512 BF16 GEMM against OpenBLAS sgemm on the shapes
// of prefill (1B model, 512 tokens) and training (15M model, 2048 tokens):
// C(M, N) = A(M, K) B(N, K)^T. Prints one JSON object with GFLOP/s per shape.
//
//   bench_gemm_bf16 [--threads N]
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "core/fp16.h"
#include "kernels/blas_env.h"
#include "kernels/gemm_bf16.h"
#include "kernels/kernels.h"

using namespace tessera;

int main(int argc, char** argv) {
  ensure_openblas_coretype(argc, argv);
  int threads = 2;
  for (int i = 1; i < argc; ++i)
    if (std::string(argv[i]) == "--threads" && i + 1 < argc) threads = std::atoi(argv[++i]);
  KernelContext ctx(threads);
  if (!gemm_bf16_available(ctx)) {
    std::printf("{\"error\": \"no AVX-512 BF16 on this CPU\"}\n");
    return 0;
  }
  struct Shape {
    const char* name;
    int64_t M, N, K;
  };
  const Shape shapes[] = {{"1b_ffn_up_pp512", 512, 5632, 2048}, {"1b_attn_q_pp512", 512, 2048, 2048},
                          {"1b_ffn_down_pp512", 512, 2048, 5632}, {"15m_classifier_2048", 2048, 32000, 288},
                          {"15m_ffn_2048", 2048, 768, 288},       {"15m_down_2048", 2048, 288, 768}};
  nlohmann::json out;
  out["threads"] = threads;
  for (const auto& s : shapes) {
    std::vector<float> a(size_t(s.M * s.K)), b(size_t(s.N * s.K)), c(size_t(s.M * s.N));
    for (size_t i = 0; i < a.size(); ++i) a[i] = float(int(i * 7 % 13) - 6) * 0.01f;
    for (size_t i = 0; i < b.size(); ++i) b[i] = float(int(i * 5 % 11) - 5) * 0.01f;
    std::vector<uint16_t> bb(b.size());
    for (size_t i = 0; i < b.size(); ++i) bb[i] = f32_to_bf16(b[i]);
    const double flops = 2.0 * double(s.M) * double(s.N) * double(s.K);
    auto best_of = [&](auto&& f) {
      double best = 1e30;
      for (int r = 0; r < 5; ++r) {
        const auto t0 = std::chrono::steady_clock::now();
        f();
        best = std::min(best, std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
      }
      return flops / best / 1e9;
    };
    set_blas_threads(threads);
    const double sg = best_of([&] { sgemm(false, true, s.M, s.N, s.K, 1.f, a.data(), s.K, b.data(), s.K, 0.f, c.data(), s.N); });
    const GemmOperand A{a.data(), false, s.K, 1}, Bf{b.data(), false, s.K, 1}, Bb{bb.data(), true, s.K, 1};
    const double bf_f32 = best_of([&] { gemm_bf16(ctx, A, Bf, s.M, s.N, s.K, c.data(), s.N, false); });
    const double bf_bf16 = best_of([&] { gemm_bf16(ctx, A, Bb, s.M, s.N, s.K, c.data(), s.N, false); });
    out[s.name] = {{"M", s.M}, {"N", s.N}, {"K", s.K}, {"sgemm_gflops", sg}, {"bf16_gflops_f32_operands", bf_f32},
                   {"bf16_gflops_bf16_weights", bf_bf16}, {"speedup_vs_sgemm", bf_bf16 / sg}};
  }
  std::printf("%s\n", out.dump(2).c_str());
}
