// bench_gemm_bf16: our AVX-512 BF16 GEMM against OpenBLAS sgemm on the shapes
// of prefill (1B model, 512 tokens) and training (15M model, 2048 tokens;
// GPT-2 124M, 1024 tokens), in the three layouts of a linear layer: xwt,
// C = X W^T (forward); dyw, C = dY W (input gradient: B read k-major); dytx,
// C += dY^T X (weight gradient: both operands k-major, accumulated). Prints
// one JSON object with GFLOP/s per shape.
//
//   bench_gemm_bf16 [--threads N] [--only PREFIX]   (PREFIX: shapes whose name starts with it)
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "core/aligned.h"
#include "core/fp16.h"
#include "kernels/blas_env.h"
#include "kernels/gemm_bf16.h"
#include "kernels/kernels.h"

using namespace tessera;

int main(int argc, char** argv) {
  ensure_openblas_coretype(argc, argv);
  int threads = 2;
  std::string only;
  for (int i = 1; i < argc; ++i) {
    if (std::string(argv[i]) == "--threads" && i + 1 < argc) threads = std::atoi(argv[++i]);
    if (std::string(argv[i]) == "--only" && i + 1 < argc) only = argv[++i];
  }
  KernelContext ctx(threads);
  if (!gemm_bf16_available(ctx)) {
    std::printf("{\"error\": \"no AVX-512 BF16 on this CPU\"}\n");
    return 0;
  }
  enum Layout { XWT, DYW, DYTX };
  struct Shape {
    const char* name;
    int64_t M, N, K;
    Layout layout;
  };
  const Shape shapes[] = {{"1b_ffn_up_pp512", 512, 5632, 2048, XWT},
                          {"1b_attn_q_pp512", 512, 2048, 2048, XWT},
                          {"1b_ffn_down_pp512", 512, 2048, 5632, XWT},
                          {"15m_classifier_2048", 2048, 32000, 288, XWT},
                          {"15m_classifier_chunk256", 256, 32000, 288, XWT},
                          {"15m_ffn_2048", 2048, 768, 288, XWT},
                          {"15m_down_2048", 2048, 288, 768, XWT},
                          {"15m_ffn_dx_2048", 2048, 288, 768, DYW},
                          {"15m_ffn_dw_2048", 768, 288, 2048, DYTX},
                          {"15m_attn_dw_2048", 288, 288, 2048, DYTX},
                          {"15m_classifier_dx_chunk256", 256, 288, 32000, DYW},
                          {"15m_classifier_dw_chunk256", 32000, 288, 256, DYTX},
                          {"gpt2_qkv_1024", 1024, 2304, 768, XWT},
                          {"gpt2_qkv_dx_1024", 1024, 768, 2304, DYW},
                          {"gpt2_qkv_dw_1024", 2304, 768, 1024, DYTX},
                          {"gpt2_proj_1024", 1024, 768, 768, XWT},
                          {"gpt2_proj_dx_1024", 1024, 768, 768, DYW},
                          {"gpt2_proj_dw_1024", 768, 768, 1024, DYTX},
                          {"gpt2_fc_1024", 1024, 3072, 768, XWT},
                          {"gpt2_fc_dx_1024", 1024, 768, 3072, DYW},
                          {"gpt2_fc_dw_1024", 3072, 768, 1024, DYTX},
                          {"gpt2_fcproj_1024", 1024, 768, 3072, XWT},
                          {"gpt2_fcproj_dx_1024", 1024, 3072, 768, DYW},
                          {"gpt2_fcproj_dw_1024", 768, 3072, 1024, DYTX},
                          {"gpt2_classifier_chunk256", 256, 50257, 768, XWT},
                          {"gpt2_classifier_dx_chunk256", 256, 768, 50257, DYW},
                          {"gpt2_classifier_dw_chunk256", 50257, 768, 256, DYTX}};
  nlohmann::json out;
  out["threads"] = threads;
  for (const auto& s : shapes) {
    if (std::string(s.name).rfind(only, 0) != 0) continue;
    // Cache-line aligned, as training and inference buffers are (a misaligned C costs up to 30%).
    aligned_vector<float> a(size_t(s.M * s.K)), b(size_t(s.N * s.K)), c(size_t(s.M * s.N));
    for (size_t i = 0; i < a.size(); ++i) a[i] = float(int(i * 7 % 13) - 6) * 0.01f;
    for (size_t i = 0; i < b.size(); ++i) b[i] = float(int(i * 5 % 11) - 5) * 0.01f;
    aligned_vector<uint16_t> bb(b.size());
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
    // Row-major storage: xwt a (M, K), b (N, K); dyw a (M, K), b (K, N); dytx a (K, M), b (K, N).
    const bool acc = s.layout == DYTX;
    const double sg = best_of([&] {
      if (s.layout == XWT) sgemm(false, true, s.M, s.N, s.K, 1.f, a.data(), s.K, b.data(), s.K, 0.f, c.data(), s.N);
      if (s.layout == DYW) sgemm(false, false, s.M, s.N, s.K, 1.f, a.data(), s.K, b.data(), s.N, 0.f, c.data(), s.N);
      if (s.layout == DYTX) sgemm(true, false, s.M, s.N, s.K, 1.f, a.data(), s.M, b.data(), s.N, 1.f, c.data(), s.N);
    });
    const GemmOperand A = s.layout == DYTX ? GemmOperand{a.data(), false, 1, s.M} : GemmOperand{a.data(), false, s.K, 1};
    const int64_t bs_row = s.layout == XWT ? s.K : 1, bs_k = s.layout == XWT ? 1 : s.N;
    const GemmOperand Bf{b.data(), false, bs_row, bs_k}, Bb{bb.data(), true, bs_row, bs_k};
    const double bf_f32 = best_of([&] { gemm_bf16(ctx, A, Bf, s.M, s.N, s.K, c.data(), s.N, acc); });
    const GemmOperand B32{b.data(), false, bs_row, bs_k};
    const double f32 = best_of([&] { gemm_f32(ctx, A, B32, s.M, s.N, s.K, c.data(), s.N, acc); });
    static const char* const names[] = {"xwt", "dyw", "dytx"};
    auto& o = out[s.name];
    o = {{"M", s.M}, {"N", s.N}, {"K", s.K}, {"layout", names[s.layout]}, {"sgemm_gflops", sg},
         {"bf16_gflops_f32_operands", bf_f32}, {"f32_gflops", f32}, {"f32_vs_sgemm", f32 / sg},
         {"speedup_vs_sgemm", bf_f32 / sg}};
    if (s.layout != DYTX) {  // B is the weight: also with the bf16 copy that bf16 training and BF16 models use
      const double bf_bf16 = best_of([&] { gemm_bf16(ctx, A, Bb, s.M, s.N, s.K, c.data(), s.N, false); });
      o["bf16_gflops_bf16_weights"] = bf_bf16;
      o["speedup_vs_sgemm"] = bf_bf16 / sg;
    }
  }
  std::printf("%s\n", out.dump(2).c_str());
}
