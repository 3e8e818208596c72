// tessera bench: prefill and decode speed, as ratios to this machine's limits
// measured in the same run: decode vs the memory-bandwidth bound (bytes of
// weights read per token / measured read bandwidth: the best of a 1 GiB probe,
// and a plain read of the weights themselves interleaved with decode), prefill
// vs measured sgemm peak.
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <thread>

#include "commands.h"
#include "common.h"
#include "core/error.h"
#include "core/quant_mix.h"
#include "kernels/gemm_bf16.h"
#include "measure/measure.h"
#include "bench_train.h"

namespace tessera::cli {

namespace {

double seconds_since(std::chrono::steady_clock::time_point t0) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

// Whether t is a (E, N, K) routed-experts tensor of w: a decode step reads k of its E matrices.
bool is_experts(const Weights& w, const TensorView& t) { return w.cfg.is_moe() && t.ndim == 3; }

// Bytes of weights one decode step streams: every matrix once (of the routed
// experts, the k selected); the embedding table only as one row unless it
// doubles as the classifier.
double decode_bytes(const Weights& w) {
  double b = double(w.weight_bytes());
  if (w.output.data != w.tok_embd.data) b -= double(w.tok_embd.nbytes()) - double(w.tok_embd.row_bytes());
  for (const TensorView& t : w.tensors())
    if (is_experts(w, t)) b -= double(t.nbytes()) * double(w.cfg.moe_experts - w.cfg.moe_used) / double(w.cfg.moe_experts);
  return b;
}

// The bytes decode_bytes() counts, for reading them in place (of each experts
// tensor, its first k experts).
std::vector<ByteSpan> decode_spans(const Weights& w) {
  std::vector<ByteSpan> spans;
  for (const TensorView& t : w.tensors()) {
    if (t.data == w.tok_embd.data && w.output.data != w.tok_embd.data) continue;
    if (is_experts(w, t)) {
      spans.push_back({t.data, t.nbytes() / size_t(w.cfg.moe_experts) * size_t(w.cfg.moe_used)});
      continue;
    }
    spans.push_back({t.data, t.nbytes()});
    if (t.dtype == DType::Q8_G) spans.push_back({t.scales, size_t(t.numel() / t.group) * sizeof(float)});
  }
  return spans;
}

// Multiply-accumulates per token in the matrices (2 FLOPs each); of a
// mixture-of-experts layer the router, the k selected experts and the shared one.
double matmul_flops_per_token(const Weights& w) {
  const auto& c = w.cfg;
  double macs = double(c.dim) * double(c.vocab_size);
  for (int64_t l = 0; l < c.n_layers; ++l) {
    if (c.arch != Arch::Llama) {
      macs += double(c.dim) * 4 * c.dim + 2.0 * c.dim * c.hidden_dim;
      continue;
    }
    if (c.mla()) {  // q (through its LoRA), kv_a, the absorbed per-head products (model/mla.cpp), attn_output
      const double nope = double(c.head_dim - c.mla_rope), ckv = double(c.mla_kv_lora);
      macs += c.mla_q_lora > 0 ? double(c.mla_q_lora) * (double(c.dim) + double(c.q_dim())) : double(c.dim) * c.q_dim();
      macs += double(c.dim) * (ckv + c.mla_rope) + double(c.n_heads) * ckv * (nope + c.mla_v_dim) +
              double(c.attn_out_dim()) * c.dim;
    } else {
      macs += double(c.dim) * (c.q_dim() + 2 * c.kv_dim()) + double(c.q_dim()) * c.dim;
    }
    macs += c.moe_layer(l) ? double(c.dim) * (c.moe_experts + 3.0 * (c.moe_used * c.moe_hidden + c.moe_shared_hidden))
                           : 3.0 * c.dim * c.hidden_dim;
  }
  return 2.0 * macs;
}

}  // namespace

int cmd_bench(int argc, char** argv) {
  CLI::App app{"Benchmark prefill and decode against the machine's measured limits.", "tessera bench"};
  std::string model, synthetic, type_name = "f32";
  int64_t pp = 512, tg = 128;
  int threads = 0, reps = 2;
  bool json = false;
  app.add_option("-m,--model", model, "model file or directory (or synthetic:NAME[:TYPE])");
  app.add_option("--synthetic", synthetic, "random-weight model instead of a file: 1b, 15m, 260k, gpt2-tiny, gpt2-124m, moe-1b (8 experts, top-2: "
                 "1b's active parameters), moe-tiny, moe-tiny-shared, mla-tiny, mla-1b (1b with DeepSeek-V2-Lite's latent attention)");
  app.add_option("--type", type_name, "weight type for --synthetic: a type (every matrix: f32, f16, bf16, q8_0, q4_0, q4_1, q5_0, q5_1, "
                 "iq4_nl, q2_k .. q6_k) or a llama.cpp mix (q4_k_m, q3_k_s, ...: its per-tensor types)")
      ->check(CLI::Validator(
          [](std::string& v) -> std::string {
            const auto t = dtype_from_name(v);
            return (t && dtype_can_quantize(*t)) || quant_mix_from_name(v) ? "" : "unknown weight type '" + v + "'";
          },
          "TYPE"));
  app.add_option("-p,--n-prompt", pp, "prompt tokens for the prefill test (0: skip)");
  app.add_option("-n,--n-gen", tg, "tokens for the decode test (0: skip)");
  int64_t depth = 0;
  app.add_option("-d,--depth", depth,
                 "decode at positions [D, D + n) after filling the cache with D tokens (untimed): decode speed "
                 "at a long context (the bound counts the weights only, not the cached keys and values read)");
  std::string kv_type = "f32";
  app.add_option("--kv-type", kv_type,
                 "KV cache type, as generate's: f32, f16 or q8_0 (with -d: what each decoded token reads besides the weights)")
      ->check(CLI::IsMember({"f32", "f16", "q8_0"}));
  app.add_option("-t,--threads", threads, "threads (default: all cores)");
  app.add_option("-r,--repetitions", reps, "repetitions; the best is reported")->check(positive());
  app.add_flag("--json", json, "print one JSON object");
  int64_t n_seq = 0;
  app.add_option("--sequences", n_seq,
                 "also decode this many sequences at once, one batch per step (aggregate tok/s against -n's single sequence)")
      ->check(CLI::Range(int64_t(1), int64_t(1024)));
  bool no_repack = false, f16_as_bf16 = false;
  app.add_flag("--f16-as-bf16", f16_as_bf16, "round F16 matrices to BF16 at load (as generate / perplexity --f16-as-bf16)");
  app.add_flag("--no-repack", no_repack, "keep weights in the file's layout (no load-time Q4_0 / Q8_0 / Q4_1 / Q5_0 / Q5_1 / IQ4_NL / K-quant repacking)");
  TrainBenchArgs tb;
  app.add_flag("--train", tb.enabled, "benchmark training steps (forward + backward + AdamW) instead of inference");
  app.add_option("--batch", tb.batch, "--train: sequences per step");
  app.add_option("--seq", tb.seq, "--train: tokens per sequence");
  app.add_option("--steps", tb.steps, "--train: timed steps (after one warm-up step)");
  app.add_flag("--recompute", tb.recompute, "--train: per-block activation recomputation");
  app.add_option("--logit-rows", tb.logit_rows, "--train: rows of the fused output + loss chunk");
  app.add_option("--lora-rank", tb.lora_rank, "--train: a LoRA fine-tuning step (rank r on every linear layer, base frozen)")
      ->check(CLI::Range(int64_t(0), int64_t(4096)));
  app.add_option("--precision", tb.precision, "--train: fp32 or bf16")->check(CLI::IsMember({"fp32", "bf16"}));
  app.set_config("--config", "", "read these options from a TOML file (keys are the long option names)");
  app.allow_config_extras(CLI::config_extras_mode::error);  // a misspelt key is an error, not ignored
  if (int rc = parse(app, argc, argv); rc >= 0) return rc;
  if (tb.enabled) {
    if (model.empty() == synthetic.empty()) fail("bench --train: give exactly one of -m MODEL or --synthetic SHAPE");
    return bench_train(model.empty() ? "synthetic:" + synthetic : model, tb, threads, json);
  }
  if (model.empty() == synthetic.empty()) fail("bench: give exactly one of -m MODEL or --synthetic SHAPE");
  if (pp < 0 || tg < 0 || depth < 0) fail("bench: -p, -n and -d must be >= 0");
  if (threads <= 0) threads = int(std::max(1u, std::thread::hardware_concurrency()));

  KernelContext ctx(threads);
  if (!synthetic.empty()) {
    std::fprintf(stderr, "bench: generating synthetic %s model (%s)...\n", synthetic.c_str(), type_name.c_str());
    model = "synthetic:" + synthetic + ":" + type_name;
  }
  LoadedModel lm = load_model(model);
  if (f16_as_bf16) f16_to_bf16(lm.weights, threads);
  const int repacked = no_repack ? 0 : repack_weights(lm.weights, ctx.isa, threads);
  const Weights& w = lm.weights;
  const auto& c = w.cfg;
  RunOptions ro;
  ro.n_ctx = std::min<int64_t>(std::max<int64_t>(pp, tg) + 1, c.max_seq_len > 0 ? std::max(c.max_seq_len, pp + 1) : pp + 1);
  if (depth > 0) ro.n_ctx = std::max(ro.n_ctx, depth + tg + 1);
  if (c.arch == Arch::GPT2 && ro.n_ctx > c.max_seq_len) fail("bench: -p/-n/-d exceed the model's ", c.max_seq_len, " positions");
  ro.max_batch = std::max<int64_t>({pp, std::min<int64_t>(depth, 512), 1});
  ro.max_threads = threads;
  ro.kv_type = *dtype_from_name(kv_type);
  Model m(w, ro);

  std::fprintf(stderr, "bench: measuring memory bandwidth and GEMM peak (%d threads, %s)...\n", threads,
               isa_name(ctx.isa));
  const double bw = measure_read_bandwidth_gbs(ctx);
  // BF16 weights run prefill on the bf16 GEMM: its own peak is the limit.
  const DType wt = c.arch == Arch::GPT2 ? w.layers.at(0).wqkv.dtype : w.layers.at(0).wq.dtype;
  const bool bf16_peak = wt == DType::BF16 && gemm_bf16_available(ctx);
  const auto measure_peak = [&] { return bf16_peak ? measure_gemm_bf16_peak_gflops(ctx) : measure_gemm_peak_gflops(ctx); };
  // Prefill is judged like decode, against the limit of the same moment: the
  // GEMM peak is probed right before and right after every prefill repetition
  // (the host's GEMM rate drifts by 2x within seconds; an AMX tile unit has
  // slow and fast spells), and that repetition's fraction is its GFLOP/s over
  // the higher of its two probes. `peak` is the highest probe of the run.
  double peak = pp > 0 ? 0 : measure_peak();
  std::vector<double> pk_fracs;  // per prefill repetition
  const double flops = matmul_flops_per_token(w);

  std::vector<int32_t> toks(size_t(std::max<int64_t>(pp, depth + tg)));
  for (size_t i = 0; i < toks.size(); ++i) toks[i] = int32_t((i * 7919 + 13) % size_t(c.vocab_size));
  double prefill_tok_s = 0, decode_tok_s = 0;
  // Decode runs in segments of kSegment tokens, each right after a plain read
  // of the same weights (what one token must stream): its bound is taken from
  // the same memory in the same moment. The host's bandwidth drifts by 2x
  // within seconds and differs between buffers, so a probe taken once, on
  // another buffer, misjudges it either way. Per segment, the fraction is the
  // read's time / the time per decoded token; the median is reported.
  constexpr int64_t kSegment = 8;
  const std::vector<ByteSpan> spans = decode_spans(w);
  double span_bytes = 0;
  for (const ByteSpan& sp : spans) span_bytes += double(sp.bytes);
  const double bytes = decode_bytes(w);
  const double bytes_per_read = span_bytes > 0 ? bytes / span_bytes : 1.0;  // the read skips the one embedding row
  std::vector<double> read_s, seg_frac;  // per segment
  const auto fill_depth = [&] {  // the cache holds positions [0, depth) before each decode test
    for (int64_t i0 = 0; i0 < depth; i0 += ro.max_batch)
      m.forward(ctx, toks.data() + i0, std::min(ro.max_batch, depth - i0), i0);
  };
  if (pp == 0) fill_depth();
  for (int r = 0; r < reps; ++r) {
    if (pp > 0) {
      const double before = measure_peak();
      auto t0 = std::chrono::steady_clock::now();
      m.forward(ctx, toks.data(), pp, 0);
      const double tok_s = double(pp) / seconds_since(t0);
      const double rep_peak = std::max(before, measure_peak());
      prefill_tok_s = std::max(prefill_tok_s, tok_s);
      peak = std::max(peak, rep_peak);
      pk_fracs.push_back(tok_s * flops / 1e9 / rep_peak);
    }
    if (tg > 0) {
      // The prefill test overwrote positions [0, pp); a sliding window's ring may have moved past depth.
      if ((pp > 0 && depth > 0) || !m.can_resume(depth)) fill_depth();
      double rep_s = 0;
      for (int64_t i0 = 0; i0 < tg; i0 += kSegment) {
        const int64_t i1 = std::min(tg, i0 + kSegment);
        const double rs = stream_read_seconds(ctx, spans);
        auto t0 = std::chrono::steady_clock::now();
        for (int64_t i = i0; i < i1; ++i) m.forward(ctx, &toks[size_t(depth + i)], 1, depth + i);
        const double ds = seconds_since(t0);
        rep_s += ds;
        read_s.push_back(rs);
        seg_frac.push_back(rs * bytes_per_read / (ds / double(i1 - i0)));
      }
      decode_tok_s = std::max(decode_tok_s, double(tg) / rep_s);
    }
  }
  // Batched decode: n_seq sequences each decode tg tokens, one forward of n_seq
  // rows per step (each weight read once for all of them), from an empty cache.
  double batched_tok_s = 0;
  if (n_seq > 0 && tg > 0) {
    RunOptions bo = ro;
    bo.own_cache = false, bo.max_batch = std::max<int64_t>(n_seq, 1), bo.n_ctx = tg;
    Model mb(w, bo);
    const int64_t blocks_per_seq = (tg + bo.kv_block_size - 1) / bo.kv_block_size;
    KVCache cache = mb.make_cache(n_seq * blocks_per_seq);
    std::vector<int32_t> ids(static_cast<size_t>(n_seq));
    for (auto& id : ids) id = cache.add_seq();
    std::vector<float> out(size_t(n_seq * c.vocab_size));
    Batch b;
    for (int r = 0; r < reps; ++r) {
      for (int32_t id : ids) cache.truncate(id, 0);
      auto t0 = std::chrono::steady_clock::now();
      for (int64_t i = 0; i < tg; ++i) {
        b.clear();
        for (int64_t s = 0; s < n_seq; ++s)
          b.add(toks[size_t((i + s * 131) % int64_t(toks.size()))], i, ids[size_t(s)], true);
        mb.forward(ctx, b, cache, out.data());
      }
      batched_tok_s = std::max(batched_tok_s, double(n_seq * tg) / seconds_since(t0));
    }
  }
  const auto median = [](std::vector<double> v) {
    if (v.empty()) return 0.0;
    std::nth_element(v.begin(), v.begin() + std::ptrdiff_t(v.size() / 2), v.end());
    return v[v.size() / 2];
  };
  const double bound = bw * 1e9 / bytes;
  const double prefill_gflops = prefill_tok_s * flops / 1e9;
  const double read_med = median(read_s);
  const double window_gbs = read_med > 0 ? span_bytes / read_med / 1e9 : 0;
  const double bw_frac = median(seg_frac);
  const double bw_frac_best = tg > 0 ? decode_tok_s / bound : 0;
  // Same-moment fraction (median over repetitions; the upper one of two) and the
  // conservative one: the best prefill over the highest probe of the run.
  const double pk_frac = median(pk_fracs), pk_frac_best = pp > 0 ? prefill_gflops / peak : 0;
  // "team": one persistent thread team per step (model/decode_team.cpp); "regions": a parallel region per matrix.
  const char* decode_path = m.decodes_as_team(ctx) ? "team" : "regions";
  if (json) {
    std::printf(
        "{\"model\": \"%s\", \"params\": %lld, \"weight_bytes\": %.0f, \"threads\": %d, \"isa\": \"%s\", "
        "\"n_prompt\": %lld, \"n_gen\": %lld, \"depth\": %lld, \"kv_type\": \"%s\", \"prefill_tok_s\": %.2f, \"decode_tok_s\": %.2f, "
        "\"bandwidth_gbs\": %.2f, \"decode_bound_tok_s\": %.2f, \"decode_bw_fraction\": %.4f, "
        "\"decode_window_bandwidth_gbs\": %.2f, \"decode_bw_fraction_best_probe\": %.4f, "
        "\"gemm_peak_kind\": \"%s\", \"gemm_peak_gflops\": %.1f, \"prefill_gflops\": %.1f, \"prefill_peak_fraction\": %.4f, "
        "\"prefill_peak_fraction_best_probe\": %.4f, \"repacked_matrices\": %d, \"decode_path\": \"%s\", "
        "\"sequences\": %lld, \"batched_decode_tok_s\": %.2f, \"batched_speedup\": %.3f}\n",
        lm.path.c_str(), (long long)w.n_params(), bytes, threads, isa_name(ctx.isa), (long long)pp, (long long)tg, (long long)depth,
        dtype_name(ro.kv_type), prefill_tok_s, decode_tok_s, bw, bound, bw_frac, window_gbs, bw_frac_best, bf16_peak ? "bf16" : "sgemm", peak, prefill_gflops, pk_frac,
        pk_frac_best, repacked, decode_path, (long long)n_seq, batched_tok_s,
        decode_tok_s > 0 ? batched_tok_s / decode_tok_s : 0.0);
  } else {
    std::printf("model            %s (%.1fM params, %s read per decoded token)\n", lm.path.c_str(),
                double(w.n_params()) / 1e6, human_bytes(bytes).c_str());
    if (repacked) std::printf("layout           %d quantized matrices repacked at load (--no-repack: file layout)\n", repacked);
    std::printf("machine          %.1f GB/s read bandwidth, %.0f GFLOP/s %s peak (%d threads, %s)\n", bw, peak,
                bf16_peak ? "bf16 GEMM" : "sgemm", threads, isa_name(ctx.isa));
    if (pp > 0)
      std::printf("prefill pp%-5lld %9.1f tok/s  %7.1f GFLOP/s  = %5.1f%% of the GEMM peak probed around it "
                  "(median), %5.1f%% of the run's highest probe\n",
                  (long long)pp, prefill_tok_s, prefill_gflops, 100 * pk_frac, 100 * pk_frac_best);
    if (tg > 0) {
      std::printf("decode  tg%-5lld %9.1f tok/s  bound %7.1f tok/s  = %5.1f%% of the best-probe bandwidth (%s)\n",
                  (long long)tg, decode_tok_s, bound, 100 * bw_frac_best, decode_path);
      std::printf("                 %.1f GB/s: a plain read of the same weights before every %lld tokens; "
                  "decode = %5.1f%% of its speed (median)\n",
                  window_gbs, (long long)kSegment, 100 * bw_frac);
      if (depth > 0)
        std::printf("                 at depth %lld: positions %lld..%lld (the bound counts the weights, not the %s of "
                    "%s keys and values read per token)\n",
                    (long long)depth, (long long)depth, (long long)(depth + tg - 1),
                    human_bytes(double(depth) * c.kv_bytes_per_token(ro.kv_type)).c_str(), dtype_name(ro.kv_type));
    }
    if (batched_tok_s > 0)
      std::printf("decode  x%-6lld %9.1f tok/s  aggregate, %lld sequences one batch per step = %.2fx one sequence's "
                  "(%.2f of %lld x)\n",
                  (long long)n_seq, batched_tok_s, (long long)n_seq, batched_tok_s / decode_tok_s,
                  batched_tok_s / decode_tok_s / double(n_seq), (long long)n_seq);
  }
  return 0;
}

}  // namespace tessera::cli
