#include "common.h"
#include "formats/lora_adapter.h"

#include <signal.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <cstdio>
#include <filesystem>
#include <thread>

#include <nlohmann/json.hpp>

#include "core/error.h"
#include "formats/model_io.h"
#include "infer/generate.h"
#include "tokenizer/bpe_train.h"

namespace tessera::cli {

void add_model_options(CLI::App& app, ModelArgs& a, bool need_ctx) {
  app.add_option("-m,--model", a.model, "model: GGUF file, Hugging Face directory, llama2.c .bin, or synthetic:NAME[:TYPE] (random weights)")->required();
  app.add_option("--tokenizer", a.tokenizer, "tokenizer file for models that carry none (llama2.c tokenizer.bin)");
  if (need_ctx)
    app.add_option("-c,--ctx-size", a.ctx,
                   "context size in tokens (default: the model's trained context, at most 4096; 0: the model's)");
  app.add_option("-t,--threads", a.threads, "threads (default: all cores)");
  app.add_option("-b,--batch-size", a.batch, "prefill chunk size in tokens")->check(positive());
  app.add_option("--kv-type", a.kv_type, "KV cache type: f32, f16, or q8_0 (llama.cpp's 8-bit blocks; head size a multiple of 32)")
      ->check(CLI::IsMember({"f32", "f16", "q8_0"}));
  app.add_flag("--no-repack", a.no_repack,
               "keep weights in the file's layout (default: Q4_0 / Q8_0 / Q4_1 / Q5_0 / Q5_1 / IQ4_NL / Q4_K / Q5_K / Q6_K matrices are repacked at load for the AVX-512 kernels)");
  app.add_option("--type", a.load_type,
                 "convert the weights at load: int8 = LLM.int8() (f32/f16/bf16 models: int8 rows with absmax scales, "
                 "per-token int8 activations, outlier feature columns in f32)")
      ->check(CLI::IsMember({"int8"}));
  app.add_option("--int8-threshold", a.int8_threshold,
                 "--type int8: activation magnitude above which a feature column is multiplied in f32 (default 6; 0: "
                 "plain int8)");
  app.add_flag("--verbose", a.verbose, "report on stderr what the run did (LLM.int8() outlier columns)");
  app.add_flag("--f16-as-bf16", a.f16_as_bf16,
               "round F16 matrices to BF16 at load: prefill at the bf16 GEMM's rate (about 2x), each weight loses "
               "its 3 low mantissa bits");
  app.add_option("--lora", a.lora,
                 "LoRA adapter FILE[:SCALE] (GGUF LoRA or PEFT directory; repeatable), merged into the weights at load")
      ->multi_option_policy(CLI::MultiOptionPolicy::TakeAll);
  app.add_option("--prefix-adapter", a.prefix_adapter,
                 "prefix-tuning adapter DIR (PEFT PREFIX_TUNING, as 'tessera export' writes for a --prefix-len run): "
                 "its key/value rows precede every sequence (single-sequence generation and perplexity)");
  app.add_option("--bottleneck-adapter", a.bottleneck_adapter,
                 "bottleneck adapters FILE.gguf (as 'tessera export' writes for an --adapter-dim run), run after "
                 "each adapted sublayer");
}

void add_sampling_options(CLI::App& app, SamplerParams& sp, int64_t& seed) {
  app.add_option("--temp", sp.temp, "temperature (0: greedy)");
  app.add_option("--top-k", sp.top_k, "top-k (0: off)");
  app.add_option("--top-p", sp.top_p, "top-p / nucleus (1: off)");
  app.add_option("--min-p", sp.min_p, "min-p relative to the top token (0: off)");
  app.add_option("--repeat-penalty", sp.repeat_penalty, "repetition penalty (1: off)");
  app.add_option("--repeat-last-n", sp.repeat_last_n, "tokens the penalties look back over (-1: all)");
  app.add_option("--presence-penalty", sp.presence_penalty, "presence penalty (0: off)");
  app.add_option("--frequency-penalty", sp.frequency_penalty, "frequency penalty (0: off)");
  app.add_option("-s,--seed", seed, "RNG seed (-1: random; the same seed gives the same text)");
}

void report_verbose(const ModelArgs& a, const Loaded& L) {
  if (!a.verbose || a.load_type != "int8") return;
  const auto& s = L.ctx->int8_stats;
  std::fprintf(stderr, "tessera: LLM.int8(): %lld decomposed products, %lld outlier columns (%.2f per product, at most %lld)\n",
               (long long)s.products, (long long)s.outlier_cols,
               s.products ? double(s.outlier_cols) / double(s.products) : 0.0, (long long)s.max_cols);
}

void rank_failed(const train::Communicator& c, const std::exception& e) {
  std::fprintf(stderr, "error: rank %d of %d: %s\n", c.rank(), c.size(), e.what());
  std::fflush(stderr);
  train::mpi_abort(1);
  std::abort();
}

namespace {
// Tensor parallelism's sum over the ranks: every rank's part gathered, then added in rank
// order, so every rank gets the same bits (the ranks sample the same tokens).
class RankSum final : public TensorParallelSum {
 public:
  explicit RankSum(train::Communicator& c) : c_(c), off_(size_t(c.size()) + 1) {}
  void sum(float* x, int64_t n) override {
    const size_t T = size_t(c_.size()), r = size_t(c_.rank()), m = size_t(n);
    if (buf_.size() < T * m) buf_.resize(T * m);
    for (size_t k = 0; k <= T; ++k) off_[k] = k * m;
    std::copy(x, x + m, buf_.begin() + long(r * m));
    c_.all_gather(buf_.data(), off_);
    for (size_t i = 0; i < m; ++i) {
      float s = buf_[i];
      for (size_t k = 1; k < T; ++k) s += buf_[k * m + i];
      x[i] = s;
    }
  }

 private:
  train::Communicator& c_;
  std::vector<size_t> off_;
  std::vector<float> buf_;
};
}  // namespace

Loaded load(const ModelArgs& a) {
  Loaded L;
  L.lm = std::make_unique<LoadedModel>(load_model(a.model, a.tokenizer));
  for (const std::string& arg : a.lora) {
    const auto [path, scale] = parse_lora_arg(arg);
    const LoraAdapter ad = read_lora_adapter(path, L.lm->weights.cfg);
    apply_lora(L.lm->weights, ad, scale, path);
    std::fprintf(stderr, "tessera: LoRA %s: rank %lld, %zu matrices, scale %g x alpha/r %g\n", path.c_str(),
                 (long long)ad.rank, ad.pairs.size(), double(scale), double(ad.scale()));
  }
  if (a.ctx < -1) fail("-c/--ctx-size must be >= 0, got ", a.ctx);
  const auto& cfg = L.lm->weights.cfg;
  // As llama.cpp: a model's trained context can be 128K tokens (gigabytes of KV cache),
  // so the default is capped; -c 0 asks for all of it.
  constexpr int64_t kDefaultCtx = 4096;
  RunOptions ro;
  ro.n_ctx = a.ctx < 0 ? std::min(cfg.max_seq_len, kDefaultCtx) : a.ctx == 0 ? cfg.max_seq_len : a.ctx;
  if (a.cap_ctx) ro.n_ctx = std::min(ro.n_ctx, cfg.max_seq_len);
  if (ro.n_ctx > cfg.max_seq_len && cfg.arch == Arch::Llama)
    std::fprintf(stderr, "tessera: warning: context %lld exceeds the model's trained context %lld; quality may drop\n",
                 (long long)ro.n_ctx, (long long)cfg.max_seq_len);
  ro.max_batch = a.batch;
  ro.own_cache = a.own_cache;
  ro.mtp_draft = a.mtp_draft;
  ro.kv_type = *dtype_from_name(a.kv_type);
  if (!a.bottleneck_adapter.empty()) {
    ro.bottleneck = std::make_shared<BottleneckAdapter>(read_bottleneck_adapter(a.bottleneck_adapter, cfg));
    std::fprintf(stderr, "tessera: bottleneck adapters %s: width %lld, %s\n", a.bottleneck_adapter.c_str(),
                 (long long)ro.bottleneck->dim, ro.bottleneck->gelu ? "gelu" : "relu");
  }
  if (!a.prefix_adapter.empty()) {
    ro.prefix = std::make_shared<KvPrefix>(read_prefix_adapter(a.prefix_adapter, cfg));
    std::fprintf(stderr, "tessera: prefix adapter %s: %lld positions x %lld layers\n", a.prefix_adapter.c_str(),
                 (long long)ro.prefix->len, (long long)ro.prefix->n_layers);
  }
  const int threads = a.threads > 0 ? a.threads : int(std::max(1u, std::thread::hardware_concurrency()));
  ro.max_threads = threads;
  L.ctx = std::make_unique<KernelContext>(threads);
  if (a.load_type == "int8") {
    const int n = to_llm_int8(L.lm->weights, a.int8_threshold);
    std::fprintf(stderr, "tessera: LLM.int8(): %d matrices in int8 rows, outlier threshold %g%s\n", n,
                 double(a.int8_threshold), a.int8_threshold > 0.f ? "" : " (no decomposition)");
  }
  if (a.f16_as_bf16) {
    const int n = f16_to_bf16(L.lm->weights, threads);
    std::fprintf(stderr, "tessera: %d f16 matrices rounded to bf16 (--f16-as-bf16)\n", n);
  }
  if (a.tp > 1) {  // this rank's slice of the blocks; the row-parallel products summed over the job's ranks
    if (!train::launched_by_mpi()) fail("--tp ", a.tp, ": run under mpirun with -np ", a.tp, " (one rank per slice)");
    L.comm = train::make_mpi_communicator();
    if (L.comm->size() != a.tp)
      fail("--tp ", a.tp, ": the job has ", L.comm->size(), " ranks; inference runs one slice per rank (mpirun -np ",
           a.tp, ")");
    try {
      L.lm->weights = tp_slice_weights(L.lm->weights, L.comm->rank(), a.tp, L.tp_owned);
    } catch (const Error& e) {
      rank_failed(*L.comm, e);
    }
    L.tp = std::make_unique<RankSum>(*L.comm);
    ro.tp = L.tp.get();
  }
  const int repacked = a.no_repack ? 0 : repack_weights(L.lm->weights, L.ctx->isa, threads);
  L.model = std::make_unique<Model>(L.lm->weights, ro);
  const auto& c = L.lm->weights.cfg;
  std::fprintf(stderr, "tessera: %s (%s, %s) %lld layers, dim %lld, %s weights, ctx %lld, %d threads, %s%s\n",
               a.model.c_str(), L.lm->format.c_str(), arch_name(c.arch), (long long)c.n_layers, (long long)c.dim,
               human_bytes(double(L.lm->weights.weight_bytes())).c_str(), (long long)L.model->n_ctx(), threads,
               isa_name(L.ctx->isa), repacked ? (", " + std::to_string(repacked) + " matrices repacked").c_str() : "");
  return L;
}

ChatTemplate load_chat_template(const std::string& arg, const LoadedModel& lm, const Tokenizer& tok) {
  const std::string bos = tok.bos_id() >= 0 ? tok.piece(tok.bos_id()) : "";
  const std::string eos = tok.eos_id() >= 0 ? tok.piece(tok.eos_id()) : "";
  if (arg.empty()) return ChatTemplate::for_model(lm.chat_template, bos, eos);
  if (arg == "chatml") return ChatTemplate::builtin(arg);
  if (!std::filesystem::exists(arg)) fail("--chat-template: '", arg, "' is neither a built-in (chatml) nor a file");
  return ChatTemplate::from_source(read_file(arg), bos, eos, arg);
}

namespace {
// Every floating-point flag must be a finite number: "nan" or "inf" pass range
// checks written as comparisons (nan <= 0 is false) and would reach the
// sampler or the optimizer.
void check_finite(const CLI::App& app) {
  for (const CLI::Option* o : app.get_options())
    if (o->count() > 0 && o->get_type_name().rfind("FLOAT", 0) == 0)
      for (const std::string& r : o->results())
        if (!std::isfinite(std::strtod(r.c_str(), nullptr)))
          fail(o->get_name(), " must be a finite number, got '", r, "'");
  for (const CLI::App* sub : app.get_subcommands()) check_finite(*sub);
}
}  // namespace

namespace {
// The one piece of process-wide state: a signal handler can only reach a global.
volatile std::sig_atomic_t g_stop_requested = 0;
void request_stop(int) { g_stop_requested = 1; }
}  // namespace

void install_stop_handlers() {
  struct sigaction sa {};
  sa.sa_handler = request_stop;
  sigemptyset(&sa.sa_mask);
  sa.sa_flags = SA_RESETHAND;
  for (int sig : {SIGINT, SIGTERM}) {
    struct sigaction old {};
    if (sigaction(sig, nullptr, &old) == 0 && old.sa_handler != SIG_IGN) sigaction(sig, &sa, nullptr);
  }
}

const volatile std::sig_atomic_t* stop_requested() { return &g_stop_requested; }

void install_interrupt_handler() {
  struct sigaction sa {};
  sa.sa_handler = request_stop;
  sigemptyset(&sa.sa_mask);
  sa.sa_flags = 0;  // persistent; no SA_RESTART: a blocked read returns
  sigaction(SIGINT, &sa, nullptr);
}

void clear_stop_request() { g_stop_requested = 0; }

std::vector<int32_t> chat_tokens(const Tokenizer& tok, const std::string& text) {
  std::vector<int32_t> ids = prompt_tokens(tok, text, EncodeOptions{true, true});
  if (ids.size() >= 2 && tok.bos_id() >= 0 && ids[0] == tok.bos_id() && ids[1] == tok.bos_id()) ids.erase(ids.begin());
  return ids;
}

CLI::Validator weight_type_validator() {
  return CLI::Validator(
      [](std::string& v) -> std::string {
        return quant_mix_from_name(v) ? "" : "unknown weight type '" + v + "' (one of " + quant_mix_names() + ")";
      },
      "TYPE");
}

CLI::Validator positive() {
  return CLI::Validator(
      [](std::string& v) -> std::string {
        char* end = nullptr;
        const double x = std::strtod(v.c_str(), &end);
        if (end == v.c_str() || *end != '\0') return "must be a number, got '" + v + "'";
        return x > 0 ? std::string() : "must be positive, got " + v;
      },
      "POSITIVE");
}

int parse(CLI::App& app, int argc, char** argv) {
  try {
    app.parse(argc, argv);
  } catch (const CLI::CallForHelp& e) {
    return app.exit(e);
  } catch (const CLI::CallForAllHelp& e) {
    return app.exit(e);
  } catch (const CLI::CallForVersion& e) {
    return app.exit(e);
  } catch (const CLI::ConfigError& e) {  // e.g. "INI was not able to parse dimm": a misspelt key
    std::fprintf(stderr, "error: --config: %s (keys are the long option names; see --help)\n", e.what());
    return 1;
  } catch (const CLI::ParseError& e) {
    // A bad flag is bad input like any other: an "error:" line and exit code 1.
    std::fprintf(stderr, "error: %s (see %s --help)\n", e.what(), app.get_name().c_str());
    return 1;
  }
  check_finite(app);
  return -1;
}

MappedTexts map_texts(const std::vector<std::string>& files) {
  MappedTexts m;
  m.maps.reserve(files.size());
  for (const auto& f : files) {
    m.maps.emplace_back(f);
    m.texts.emplace_back(reinterpret_cast<const char*>(m.maps.back().data()), m.maps.back().size());
    m.bytes += m.maps.back().size();
  }
  return m;
}

std::string human_bytes(double b) {
  const char* units[] = {"B", "KiB", "MiB", "GiB", "TiB"};
  int u = 0;
  while (b >= 1024 && u < 4) {
    b /= 1024;
    ++u;
  }
  char buf[32];
  std::snprintf(buf, sizeof buf, u == 0 ? "%.0f %s" : "%.2f %s", b, units[u]);
  return buf;
}

void write_model(Weights w, const Tokenizer* tok, const std::string& out, const std::string& type_name,
                 const char* who, const std::string& chat_template) {
  auto ends = [&](std::string_view suf) {
    return out.size() > suf.size() && out.compare(out.size() - suf.size(), suf.size(), suf) == 0;
  };
  const bool gguf_out = ends(".gguf");
  // Any other OUT is a directory: a name that promises a single file of another kind is refused.
  if (ends(".bin"))
    fail(out, ": writing llama2.c .bin files is not supported; write FILE.gguf or a Hugging Face directory");
  if (ends(".safetensors"))
    fail(out, ": Hugging Face output is a directory (config.json + model.safetensors are written in it); "
              "give a directory name, or FILE.gguf");
  const DType src = w.cfg.arch == Arch::GPT2 ? w.layers.at(0).wqkv.dtype : w.layers.at(0).wq.dtype;
  std::optional<QuantMix> mix;
  if (!type_name.empty()) {
    mix = quant_mix_from_name(type_name);
    if (!mix) fail("--type ", type_name, ": unknown weight type (one of ", quant_mix_names(), ")");
  } else if (src == DType::Q8_G) {
    mix = quant_mix_from_name("f32");
  }
  const bool float_out = mix ? !quant_mix_quantizes(*mix) : src == DType::F32 || src == DType::F16 || src == DType::BF16;
  if (!gguf_out && !float_out)
    fail(out, ": safetensors output supports f32, f16 and bf16; pass --type f32|f16|bf16 (source is ",
         dtype_name(src), ")");
  if (mix) {
    int fallbacks = 0;
    w = convert_weights(w, *mix, &fallbacks);
    if (fallbacks > 0)
      std::fprintf(stderr,
                   "%s: %d matrices have rows that are not a multiple of their block size; stored in llama.cpp's "
                   "fallback types (tessera info lists them)\n",
                   who, fallbacks);
  }
  const char* type_label = mix ? mix->name : dtype_name(src);
  if (gguf_out) {
    if (!tok) std::fprintf(stderr, "%s: warning: no tokenizer known; %s will have none (use --tokenizer)\n", who, out.c_str());
    save_gguf(w, tok, out, chat_template);
  } else {
    save_hf(w, out);
    if (!chat_template.empty()) {
      const std::string cfg = nlohmann::json{{"chat_template", chat_template}}.dump(2) + "\n";
      AtomicFileWriter f(out + "/tokenizer_config.json");
      f.write(cfg.data(), cfg.size());
      f.commit();
    }
    if (tok && tok->kind() == TokenizerKind::ByteLevelBPE) {
      save_hf_tokenizer_json(tok->data(), out + "/tokenizer.json");
    } else if (tok) {
      std::fprintf(stderr,
                   "%s: note: SentencePiece tokenizers are not exported to tokenizer.json yet; "
                   "pass the original tokenizer with --tokenizer when loading %s\n",
                   who, out.c_str());
    }
  }
  std::fprintf(stderr, "%s: wrote %s (%s, %s)\n", who, out.c_str(), gguf_out ? "gguf" : "safetensors", type_label);
}

}  // namespace tessera::cli
