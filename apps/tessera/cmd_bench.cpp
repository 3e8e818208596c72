// tessera bench: prefill and decode speed, as ratios to this machine's limits
// measured in the same run: decode vs the memory-bandwidth bound (bytes of
// weights read per token / measured read bandwidth), prefill vs measured sgemm peak.
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <thread>

#include "commands.h"
#include "common.h"
#include "core/error.h"
#include "kernels/gemm_bf16.h"
#include "kernels/measure.h"
#include "bench_train.h"

namespace tessera::cli {

namespace {

double seconds_since(std::chrono::steady_clock::time_point t0) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

// Bytes of weights one decode step streams: every matrix once; the embedding
// table only as one row unless it doubles as the classifier.
double decode_bytes(const Weights& w) {
  double b = double(w.weight_bytes());
  if (w.output.data != w.tok_embd.data) b -= double(w.tok_embd.nbytes()) - double(w.tok_embd.row_bytes());
  return b;
}

// Multiply-accumulates per token in the matrices (2 FLOPs each).
double matmul_flops_per_token(const Weights& w) {
  const auto& c = w.cfg;
  double per_layer = c.arch == Arch::Llama
                         ? double(c.dim) * (c.q_dim() + 2 * c.kv_dim()) + double(c.q_dim()) * c.dim + 3.0 * c.dim * c.hidden_dim
                         : double(c.dim) * 4 * c.dim + 2.0 * c.dim * c.hidden_dim;
  return 2.0 * (per_layer * double(c.n_layers) + double(c.dim) * double(c.vocab_size));
}

}  // namespace

int cmd_bench(int argc, char** argv) {
  CLI::App app{"Benchmark prefill and decode against the machine's measured limits.", "tessera bench"};
  std::string model, synthetic, type_name = "f32";
  int64_t pp = 512, tg = 128;
  int threads = 0, reps = 2;
  bool json = false;
  app.add_option("-m,--model", model, "model file or directory (or synthetic:NAME[:TYPE])");
  app.add_option("--synthetic", synthetic, "random-weight model instead of a file: 1b, 15m, 260k, gpt2-tiny");
  app.add_option("--type", type_name, "weight type for --synthetic")
      ->check(CLI::IsMember({"f32", "f16", "bf16", "q8_0", "q4_0"}));
  app.add_option("-p,--n-prompt", pp, "prompt tokens for the prefill test (0: skip)");
  app.add_option("-n,--n-gen", tg, "tokens for the decode test (0: skip)");
  app.add_option("-t,--threads", threads, "threads (default: all cores)");
  app.add_option("-r,--repetitions", reps, "repetitions; the best is reported")->check(CLI::PositiveNumber);
  app.add_flag("--json", json, "print one JSON object");
  bool no_repack = false;
  app.add_flag("--no-repack", no_repack, "keep weights in the file's layout (no load-time Q4_0 / Q8_0 repacking)");
  TrainBenchArgs tb;
  app.add_flag("--train", tb.enabled, "benchmark training steps (forward + backward + AdamW) instead of inference");
  app.add_option("--batch", tb.batch, "--train: sequences per step");
  app.add_option("--seq", tb.seq, "--train: tokens per sequence");
  app.add_option("--steps", tb.steps, "--train: timed steps (after one warm-up step)");
  app.add_flag("--recompute", tb.recompute, "--train: per-block activation recomputation");
  app.add_option("--logit-rows", tb.logit_rows, "--train: rows of the fused output + loss chunk");
  app.add_option("--precision", tb.precision, "--train: fp32 or bf16")->check(CLI::IsMember({"fp32", "bf16"}));
  app.set_config("--config", "", "read these options from a TOML file (keys are the long option names)");
  if (int rc = parse(app, argc, argv); rc >= 0) return rc;
  if (tb.enabled) {
    if (model.empty() == synthetic.empty()) fail("bench --train: give exactly one of -m MODEL or --synthetic SHAPE");
    return bench_train(model.empty() ? "synthetic:" + synthetic : model, tb, threads, json);
  }
  if (model.empty() == synthetic.empty()) fail("bench: give exactly one of -m MODEL or --synthetic SHAPE");
  if (pp < 0 || tg < 0) fail("bench: -p and -n must be >= 0");
  if (threads <= 0) threads = int(std::max(1u, std::thread::hardware_concurrency()));

  KernelContext ctx(threads);
  if (!synthetic.empty()) {
    std::fprintf(stderr, "bench: generating synthetic %s model (%s)...\n", synthetic.c_str(), type_name.c_str());
    model = "synthetic:" + synthetic + ":" + type_name;
  }
  LoadedModel lm = load_model(model);
  const int repacked = no_repack ? 0 : repack_weights(lm.weights, ctx.isa, threads);
  const Weights& w = lm.weights;
  const auto& c = w.cfg;
  RunOptions ro;
  ro.n_ctx = std::min<int64_t>(std::max<int64_t>(pp, tg) + 1, c.max_seq_len > 0 ? std::max(c.max_seq_len, pp + 1) : pp + 1);
  if (c.arch == Arch::GPT2 && ro.n_ctx > c.max_seq_len) fail("bench: -p/-n exceed the model's ", c.max_seq_len, " positions");
  ro.max_batch = std::max<int64_t>(pp, 1);
  ro.max_threads = threads;
  Model m(w, ro);

  std::fprintf(stderr, "bench: measuring memory bandwidth and GEMM peak (%d threads, %s)...\n", threads,
               isa_name(ctx.isa));
  const double bw = measure_read_bandwidth_gbs(ctx);
  double peak = measure_gemm_peak_gflops(ctx);
  // BF16 weights run prefill on the bf16 GEMM: its own peak is the limit.
  const DType wt = c.arch == Arch::GPT2 ? w.layers.at(0).wqkv.dtype : w.layers.at(0).wq.dtype;
  const bool bf16_peak = wt == DType::BF16 && gemm_bf16_available(ctx);
  if (bf16_peak) peak = measure_gemm_bf16_peak_gflops(ctx);

  std::vector<int32_t> toks(size_t(std::max<int64_t>(pp, tg)));
  for (size_t i = 0; i < toks.size(); ++i) toks[i] = int32_t((i * 7919 + 13) % size_t(c.vocab_size));
  double prefill_tok_s = 0, decode_tok_s = 0;
  for (int r = 0; r < reps; ++r) {
    if (pp > 0) {
      auto t0 = std::chrono::steady_clock::now();
      m.forward(ctx, toks.data(), pp, 0);
      prefill_tok_s = std::max(prefill_tok_s, double(pp) / seconds_since(t0));
    }
    if (tg > 0) {
      auto t0 = std::chrono::steady_clock::now();
      for (int64_t i = 0; i < tg; ++i) m.forward(ctx, &toks[size_t(i)], 1, i);
      decode_tok_s = std::max(decode_tok_s, double(tg) / seconds_since(t0));
    }
  }
  const double bytes = decode_bytes(w);
  const double bound = bw * 1e9 / bytes;
  const double flops = matmul_flops_per_token(w);
  const double prefill_gflops = prefill_tok_s * flops / 1e9;
  const double bw_frac = tg > 0 ? decode_tok_s / bound : 0, pk_frac = pp > 0 ? prefill_gflops / peak : 0;
  if (json) {
    std::printf(
        "{\"model\": \"%s\", \"params\": %lld, \"weight_bytes\": %.0f, \"threads\": %d, \"isa\": \"%s\", "
        "\"n_prompt\": %lld, \"n_gen\": %lld, \"prefill_tok_s\": %.2f, \"decode_tok_s\": %.2f, "
        "\"bandwidth_gbs\": %.2f, \"decode_bound_tok_s\": %.2f, \"decode_bw_fraction\": %.4f, "
        "\"gemm_peak_kind\": \"%s\", \"gemm_peak_gflops\": %.1f, \"prefill_gflops\": %.1f, \"prefill_peak_fraction\": %.4f, "
        "\"repacked_matrices\": %d}\n",
        lm.path.c_str(), (long long)w.n_params(), bytes, threads, isa_name(ctx.isa), (long long)pp, (long long)tg,
        prefill_tok_s, decode_tok_s, bw, bound, bw_frac, bf16_peak ? "bf16" : "sgemm", peak, prefill_gflops, pk_frac,
        repacked);
  } else {
    std::printf("model            %s (%.1fM params, %s read per decoded token)\n", lm.path.c_str(),
                double(w.n_params()) / 1e6, human_bytes(bytes).c_str());
    if (repacked) std::printf("layout           %d Q4_0 / Q8_0 matrices repacked at load (--no-repack: file layout)\n", repacked);
    std::printf("machine          %.1f GB/s read bandwidth, %.0f GFLOP/s %s peak (%d threads, %s)\n", bw, peak,
                bf16_peak ? "bf16 GEMM" : "sgemm", threads, isa_name(ctx.isa));
    if (pp > 0)
      std::printf("prefill pp%-5lld %9.1f tok/s  %7.1f GFLOP/s  = %5.1f%% of GEMM peak\n", (long long)pp,
                  prefill_tok_s, prefill_gflops, 100 * pk_frac);
    if (tg > 0)
      std::printf("decode  tg%-5lld %9.1f tok/s  bound %7.1f tok/s  = %5.1f%% of memory bandwidth\n", (long long)tg,
                  decode_tok_s, bound, 100 * bw_frac);
  }
  return 0;
}

}  // namespace tessera::cli
