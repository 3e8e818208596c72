#include "bench_train.h"

#include <omp.h>

#include <chrono>
#include <cstdio>
#include <thread>

#include "core/error.h"
#include "formats/load.h"
#include "kernels/gemm_bf16.h"
#include "measure/measure.h"
#include "model/synthetic.h"
#include "train/lora.h"
#include "train/optim.h"
#include "train/params.h"
#include "train/transformer.h"

extern "C" void openblas_set_num_threads(int);

namespace tessera::cli {

int bench_train(const std::string& model, const TrainBenchArgs& a, int threads, bool json) {
  if (a.batch <= 0 || a.seq <= 0 || a.steps <= 0) fail("bench --train: --batch, --seq and --steps must be positive");
  if (a.logit_rows <= 0) fail("bench --train: --logit-rows must be positive, got ", a.logit_rows);
  if (threads <= 0) threads = int(std::max(1u, std::thread::hardware_concurrency()));
  omp_set_num_threads(threads);
  openblas_set_num_threads(threads);
  // Only the config is needed: synthetic shapes are not generated, files are read for their config.
  ModelConfig cfg;
  if (model.rfind("synthetic:", 0) == 0) {
    std::string name = model.substr(10);
    name = name.substr(0, name.find(':'));
    cfg = synthetic_config(name);
    // A synthetic RoPE shape has no trained context: its max_seq_len is only a default.
    if (cfg.arch == Arch::Llama) cfg.max_seq_len = std::max(cfg.max_seq_len, a.seq);
  } else {
    cfg = load_model(model).weights.cfg;
  }
  if (a.seq > cfg.max_seq_len) fail("bench --train: --seq ", a.seq, " exceeds the model's context ", cfg.max_seq_len);
  const train::Layout L(cfg);
  // Parameters that take part in matrix products: 2-D weights, the classifier once, no embedding gather.
  double n_mm = 0;
  for (const auto& t : L.tensors)
    if (t.matrix)  // of a routed-experts tensor (E, N, K), the k experts a token uses
      n_mm += t.shape.size() == 3 ? double(t.numel) / double(cfg.moe_experts) * double(cfg.moe_used) : double(t.numel);
  if (cfg.tied_embeddings) n_mm += double(cfg.vocab_size * cfg.dim);  // the classifier is the embedding table

  KernelContext ctx(threads);
  std::fprintf(stderr, "bench --train: %s, %.2fM params, batch %lld x %lld, %d threads; measuring sgemm peak...\n",
               model.c_str(), double(L.n_params) / 1e6, (long long)a.batch, (long long)a.seq, threads);
  // The denominator: for fp32 the higher of the sgemm peak and our f32 GEMM's (fp32
  // training runs on gemm_f32 where AVX-512 is available); our bf16 GEMM's peak for bf16.
  const bool bf16 = a.precision == "bf16";
  std::string peak_kind = bf16 ? "bf16" : "sgemm";
  double peak = 0, fma_peak = 0;  // fma_peak: the register-only multiply-add ceiling (0: not measured)
  auto measure_peak = [&] {  // keeps the highest peak seen, and its kind
    fma_peak = std::max(fma_peak, measure_fma_peak_gflops(ctx, bf16));
    if (bf16 && gemm_bf16_available(ctx)) {
      peak = std::max(peak, measure_gemm_bf16_peak_gflops(ctx));
      return;
    }
    const double sg = measure_gemm_peak_gflops(ctx), f32 = measure_gemm_f32_peak_gflops(ctx);
    if (std::max(sg, f32) > peak) peak = std::max(sg, f32), peak_kind = f32 > sg ? "gemm_f32" : "sgemm";
  };
  measure_peak();

  train::ParamVec p(L.total), g(L.total), m(L.total, 0.f), v(L.total, 0.f);
  train::init_params(L, p.data(), 1);
  train::ModelOptions mo;
  mo.recompute = a.recompute;
  mo.logit_rows = a.logit_rows;
  mo.bf16 = a.precision == "bf16";
  train::Transformer<float> tm(L, a.batch, a.seq, mo);
  train::AdamWConfig ac;
  auto mask = train::decay_mask(L, ac);
  // LoRA: the adapter is what the step trains (p, g, m, v become the adapter's); the base stays in base.
  std::unique_ptr<train::LoraLayout> LL;
  train::ParamVec base;
  size_t n_train = L.total;
  if (a.lora_rank > 0) {
    train::LoraConfig lc;
    lc.rank = a.lora_rank, lc.alpha = float(2 * a.lora_rank), lc.targets = train::parse_lora_targets("all");
    LL = std::make_unique<train::LoraLayout>(L, lc);
    base = std::move(p);
    n_train = LL->total;
    p.assign(n_train, 0.f), g.assign(n_train, 0.f), m.assign(n_train, 0.f), v.assign(n_train, 0.f);
    train::init_lora(*LL, p.data(), 2);
    mask.assign(n_train, 1);
    tm.attach_lora(*LL);
    tm.set_lora_params(p.data(), g.data());
    if (cfg.is_moe()) fail("bench --train --lora-rank: dense models only");
  }
  std::vector<int32_t> x(size_t(a.batch * a.seq)), y(x.size());
  for (size_t i = 0; i < x.size(); ++i) x[i] = int32_t((i * 7919 + 13) % size_t(cfg.vocab_size)), y[i] = x[(i + 1) % x.size()];
  auto step = [&](int64_t s) {
    if (LL) {
      std::fill(g.begin(), g.end(), 0.f);
      tm.forward_backward(base.data(), nullptr, x.data(), y.data(), 1.f / float(x.size()), 0, true);
    } else {
      tm.forward_backward(p.data(), g.data(), x.data(), y.data(), 1.f / float(x.size()), 0, true);  // writes g
    }
    train::adamw_step(p.data(), g.data(), m.data(), v.data(), mask.data(), n_train, s + 1, 1e-4f, ac);
  };
  step(0);  // warm-up
  double best = 1e30;
  for (int64_t s = 1; s <= a.steps; ++s) {
    const auto t0 = std::chrono::steady_clock::now();
    step(s);
    best = std::min(best, std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
  }
  // The machine may be shared: the peak is measured again after the steps and the
  // higher value is the denominator (the conservative choice).
  measure_peak();
  const double tok_s = double(a.batch * a.seq) / best;
  const double gflops = (LL ? 4.0 : 6.0) * n_mm * tok_s / 1e9;
  const double frac = gflops / peak;
  char fma_json[96] = "\"fma_peak_gflops\": null, \"fma_peak_fraction\": null";
  if (fma_peak > 0)
    std::snprintf(fma_json, sizeof fma_json, "\"fma_peak_gflops\": %.1f, \"fma_peak_fraction\": %.4f", fma_peak,
                  gflops / fma_peak);
  if (json) {
    std::printf("{\"model\": \"%s\", \"params\": %zu, \"matmul_params\": %.0f, \"batch\": %lld, \"seq\": %lld, "
                "\"threads\": %d, \"precision\": \"%s\", \"recompute\": %s, \"step_s\": %.4f, \"train_tok_s\": %.1f, "
                "\"train_gflops\": %.1f, \"gemm_peak_kind\": \"%s\", \"gemm_peak_gflops\": %.1f, \"peak_fraction\": %.4f, "
                "%s, \"activation_bytes\": %zu, \"lora_rank\": %lld}\n",
                model.c_str(), L.n_params, n_mm, (long long)a.batch, (long long)a.seq, threads, a.precision.c_str(),
                a.recompute ? "true" : "false", best, tok_s, gflops, peak_kind.c_str(), peak, frac, fma_json, tm.activation_bytes(),
                (long long)a.lora_rank);
  } else {
    std::printf("train%s %s: batch %lld x %lld, %.3f s/step, %.0f tok/s, %.1f GFLOP/s (%s) = %.1f%% of %.0f GFLOP/s "
                "%s peak (%.1f%% of the %.0f GFLOP/s multiply-add ceiling); activations %.1f MB\n",
                LL ? (" (LoRA rank " + std::to_string(a.lora_rank) + ")").c_str() : "", model.c_str(), (long long)a.batch,
                (long long)a.seq, best, tok_s, gflops, LL ? "4*N*T, base frozen" : "6*N*T", 100 * frac, peak,
                bf16 ? "bf16 GEMM" : peak_kind.c_str(), fma_peak > 0 ? 100 * gflops / fma_peak : 0.0, fma_peak,
                double(tm.activation_bytes()) / 1e6);
  }
  return 0;
}

}  // namespace tessera::cli
