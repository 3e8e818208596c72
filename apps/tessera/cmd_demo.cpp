// tessera demo: the whole pipeline on a fresh machine with no download. Trains a
// byte-level BPE tokenizer and a small Llama on a text corpus (by default the
// fortunes that the set-up installs from Debian), shows progress, writes the
// loss plot, then samples from the model with the inference engine and reports
// validation perplexity.
#include <chrono>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <thread>

#include "commands.h"
#include "common.h"
#include "core/error.h"
#include "core/mmap.h"
#include "infer/generate.h"
#include "tokenizer/bpe_train.h"
#include "train/checkpoint.h"
#include "train/data.h"
#include "train/params.h"
#include "train/trainer.h"

namespace fs = std::filesystem;

namespace tessera::cli {

namespace {

// The fortune text files: plain files without the .dat index / .u8 suffix.
std::vector<std::string> fortune_files(const std::string& dir) {
  std::vector<std::string> r;
  if (!fs::is_directory(dir)) return r;
  for (const auto& e : fs::directory_iterator(dir)) {
    if (!e.is_regular_file() || e.is_symlink()) continue;
    const std::string ext = e.path().extension().string();
    if (ext == ".dat" || ext == ".u8") continue;
    r.push_back(e.path().string());
  }
  std::sort(r.begin(), r.end());
  return r;
}

}  // namespace

int cmd_demo(int argc, char** argv) {
  CLI::App app{"Train a BPE tokenizer and a small Llama on a corpus for a few minutes, then sample from it.",
               "tessera demo"};
  std::string out = "tessera-demo", corpus_dir = "/usr/share/games/fortunes";
  train::DocumentOptions dopt;
  dopt.doc_sep = "^%$";           // fortune files: a line holding a single % ends a fortune
  dopt.min_text_fraction = 0.6;   // a fortune that is mostly symbols (ASCII art) teaches runs of '#'
  double min_file_text = 0.7;     // files that are mostly non-text are left out whole
  int64_t fixed_steps = 0;
  int n_samples = 3;
  std::vector<std::string> files;
  double minutes = 3;
  int32_t vocab = 1024;
  int threads = 0;
  train::TrainOptions o;
  o.model.dim = 192, o.model.n_layers = 4, o.model.n_heads = 6, o.model.n_kv_heads = 3, o.model.hidden_dim = 512;
  o.batch = 16, o.seq = 128, o.sched.lr = 2e-3f, o.sched.min_lr = 2e-4f, o.sched.warmup = 30;
  o.adam.weight_decay = 0.1f, o.clip = 1.f, o.eval_batches = 4;
  app.add_option("-o,--out", out, "demo directory (tokenizer, data, run, model.gguf)");
  app.add_option("--minutes", minutes, "training time budget")->check(positive());
  app.add_option("--steps", fixed_steps, "train this many steps instead of fitting the steps to --minutes")
      ->check(CLI::Range(int64_t(1), int64_t(1) << 40));
  app.add_option("--samples", n_samples, "samples to print after training")->check(CLI::Range(1, 100));
  app.add_option("--doc-sep", dopt.doc_sep, "regex: a line matching it ends a document (\"\": a file is one document)");
  app.add_option("--vocab", vocab, "tokenizer vocabulary size")->check(CLI::Range(300, 65536));
  app.add_option("--dim", o.model.dim, "model width");
  app.add_option("--layers", o.model.n_layers, "blocks");
  app.add_option("--seed", o.seed, "seed");
  app.add_option("-t,--threads", threads, "threads (default: all cores)");
  app.add_option("files", files, "text files to train on (default: the fortunes in /usr/share/games/fortunes)");
  if (int rc = parse(app, argc, argv); rc >= 0) return rc;
  if (files.empty()) files = fortune_files(corpus_dir);
  if (files.empty())
    fail("no corpus: ", corpus_dir, " has no fortune files (install the 'fortunes' package, or name text files)");
  if (fs::exists(out + "/run") && !train::latest_checkpoint(out + "/run").empty())
    fail(out, "/run already holds a training run; remove it or pass -o with another directory");
  fs::create_directories(out);
  const auto t0 = std::chrono::steady_clock::now();
  auto secs = [&] { return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count(); };

  // 1. Documents and tokenizer.
  std::vector<std::string> kept, left_out;
  std::vector<std::string> docs;
  size_t bytes = 0;
  int64_t dropped = 0;
  for (const auto& f : files) {
    train::Documents d = train::read_documents(f, dopt);
    std::string all;
    for (const auto& doc : d.docs) all += doc;
    if (d.docs.empty() || train::text_fraction(all) < min_file_text) {
      left_out.push_back(fs::path(f).filename().string());
      continue;
    }
    kept.push_back(f);
    bytes += all.size(), dropped += d.dropped;
    for (auto& doc : d.docs) docs.push_back(std::move(doc));
  }
  if (kept.empty()) fail("no corpus: none of the ", files.size(), " files is mostly text");
  std::string left_names;
  for (const auto& n : left_out) left_names += (left_names.empty() ? "" : ", ") + n;
  std::fprintf(stderr, "[1/4] %zu documents from %zu files, %.2f MB", docs.size(), kept.size(), double(bytes) / 1e6);
  if (dropped > 0) std::fprintf(stderr, "; %lld mostly-symbol documents left out", (long long)dropped);
  if (!left_out.empty()) std::fprintf(stderr, "; files left out as mostly non-text: %s", left_names.c_str());
  std::fprintf(stderr, "\n      training a byte-level BPE tokenizer (vocab %d)\n", vocab);
  std::vector<std::string_view> texts(docs.begin(), docs.end());
  BpeTrainOptions bo;
  bo.vocab_size = vocab;
  bo.special_tokens = {"<|endoftext|>"};
  const BpeTrainResult bpe = train_bpe(texts, bo);
  const std::string tok_path = out + "/tokenizer.json";
  save_hf_tokenizer_json(bpe.to_vocab_data(), tok_path);
  const Tokenizer tok(bpe.to_vocab_data());
  std::fprintf(stderr, "      %s written (%.1f s)\n", tok_path.c_str(), secs());

  // 2. Data: every document ends with <|endoftext|>, so the model learns how a document starts.
  train::PrepareOptions po;
  po.val_fraction = 0.05;
  po.docs = dopt;
  const auto st = train::prepare_data(tok, tok_path, kept, out + "/data", po);
  std::fprintf(stderr, "[2/4] %lld documents: %lld train / %lld val tokens (%.2f bytes per token) in %s/data\n",
               (long long)st.documents, (long long)st.train_tokens, (long long)st.val_tokens,
               double(st.bytes) / double(st.train_tokens + st.val_tokens), out.c_str());

  // 3. Model: time two steps to fit the cosine schedule to the budget.
  auto& m = o.model;
  m.arch = Arch::Llama, m.vocab_size = tok.n_vocab(), m.max_seq_len = o.seq, m.head_dim = m.dim / m.n_heads;
  m.tied_embeddings = true, m.name = "tessera-demo";
  o.data_dir = out + "/data", o.out_dir = out + "/run", o.threads = threads;
  o.model.validate("demo model");
  const int nt = threads > 0 ? threads : int(std::max(1u, std::thread::hardware_concurrency()));
  double step_s;
  {
    const train::Layout L(m);
    train::ParamVec p(L.total), g(L.total, 0.f);
    train::init_params(L, p.data(), 1);
    train::Transformer<float> tm(L, o.batch, o.seq, o.mo);
    std::vector<int32_t> x(size_t(o.batch * o.seq), 1), y(size_t(o.batch * o.seq), 2);
    tm.forward_backward(p.data(), g.data(), x.data(), y.data(), 1.f);  // warm-up
    const auto a = std::chrono::steady_clock::now();
    tm.forward_backward(p.data(), g.data(), x.data(), y.data(), 1.f);
    step_s = std::chrono::duration<double>(std::chrono::steady_clock::now() - a).count() * 1.15;  // + optimizer, eval
    const std::string how = fixed_steps > 0 ? std::to_string(fixed_steps) + " steps"
                                            : std::to_string(minutes).substr(0, 4) + " min";
    std::fprintf(stderr, "[3/4] training a %.2fM-parameter Llama (dim %lld, %lld layers, %lld/%lld heads) for %s on %d threads\n",
                 double(L.n_params) / 1e6, (long long)m.dim, (long long)m.n_layers, (long long)m.n_heads,
                 (long long)m.n_kv_heads, how.c_str(), nt);
  }
  const double budget = minutes * 60 - secs();
  o.steps = fixed_steps > 0 ? fixed_steps : std::max<int64_t>(20, int64_t(budget / step_s));
  o.sched.total = o.steps;
  o.eval_interval = std::max<int64_t>(10, o.steps / 10), o.ckpt_interval = o.eval_interval, o.log_interval = 10;
  // The schedule aims at the budget; this only guards against a slow machine. --steps runs them all.
  if (fixed_steps == 0) o.max_seconds = budget * 1.25;
  install_stop_handlers();  // Ctrl-C ends the training early; the demo goes on to sample from that step
  const auto sum = train::run_training(o, false, stderr, stop_requested());

  // 4. Samples and perplexity through the inference engine, from the exported model.
  const train::Checkpoint ck = train::load_checkpoint(sum.checkpoint);
  const train::Layout L(ck.cfg);
  const Weights w = train::weights_view(L, ck.params.data());
  write_model(w, &tok, out + "/model.gguf", "f32", "demo");
  GenerateParams gp;
  gp.n_predict = 100;
  gp.sampling.temp = 0.8f, gp.sampling.top_p = 0.95f;
  std::fprintf(stderr, "[4/4] samples (from <|endoftext|>, temperature %.1f, top-p %.2f) from %s/model.gguf:\n",
               double(gp.sampling.temp), double(gp.sampling.top_p), out.c_str());
  RunOptions ro;
  ro.n_ctx = m.max_seq_len, ro.max_threads = nt;
  Model model(w, ro);
  KernelContext ctx(nt);
  for (int i = 0; i < n_samples; ++i) {
    gp.sampling.seed = o.seed + uint64_t(i);
    std::printf("--- sample %d ---\n", i + 1);
    generate(model, ctx, tok, prompt_tokens(tok, "", {}), gp, [](std::string_view s) {
      std::fwrite(s.data(), 1, s.size(), stdout);
      std::fflush(stdout);
    });
    std::printf("\n");
  }
  std::printf("---\nvalidation loss %.4f nats/token, perplexity %.2f (%d-token BPE); loss plot %s/run/loss.svg; "
              "model %s/model.gguf; %.1f s in all\n",
              sum.val_loss, std::exp(sum.val_loss), tok.n_vocab(), out.c_str(), out.c_str(), secs());
  return 0;
}

}  // namespace tessera::cli
