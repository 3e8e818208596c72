#include "train/trainer.h"

#include <fcntl.h>
#include <omp.h>
#include <sys/file.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <sstream>
#include <thread>

#include "core/error.h"
#include "core/mmap.h"
#include "formats/load.h"
#include "train/checkpoint.h"
#include "train/data.h"
#include "train/plot.h"

extern "C" void openblas_set_num_threads(int);

namespace fs = std::filesystem;

namespace tessera::train {

void TrainOptions::validate() const {
  auto pos = [](const char* flag, int64_t v) {
    if (v <= 0) fail(flag, " must be positive, got ", v);
  };
  pos("--batch", batch);
  pos("--seq", seq);
  pos("--grad-accum", grad_accum);
  pos("--steps", steps);
  pos("--eval-interval", eval_interval);
  pos("--eval-batches", eval_batches);
  pos("--ckpt-interval", ckpt_interval);
  pos("--keep", keep);
  pos("--log-interval", log_interval);
  if (data_dir.empty()) fail("--data is required (a directory from 'tessera data prepare')");
  if (out_dir.empty()) fail("-o/--out is required (the run directory)");
  if (clip < 0) fail("--clip must be >= 0, got ", clip);
  if (mo.z_loss < 0) fail("--z-loss must be >= 0, got ", mo.z_loss);
  if (!(mo.dropout >= 0 && mo.dropout < 1)) fail("--dropout must be in [0, 1), got ", mo.dropout);
  if (!(adam.beta1 >= 0 && adam.beta1 < 1)) fail("--beta1 must be in [0, 1), got ", adam.beta1);
  if (!(adam.beta2 >= 0 && adam.beta2 < 1)) fail("--beta2 must be in [0, 1), got ", adam.beta2);
  if (adam.weight_decay < 0) fail("--weight-decay must be >= 0, got ", adam.weight_decay);
  if (precision != "fp32" && precision != "bf16") fail("--precision must be fp32 or bf16, got '", precision, "'");
  sched.validate();
  if (init_model.empty()) model.validate("model config (--dim/--layers/--heads/...)");
}

nlohmann::json options_to_json(const TrainOptions& o) {
  return {{"data_dir", o.data_dir},
          {"init_model", o.init_model},
          {"init_tokenizer", o.init_tokenizer},
          {"model", config_to_json(o.model)},
          {"batch", o.batch},
          {"seq", o.seq},
          {"grad_accum", o.grad_accum},
          {"steps", o.steps},
          {"schedule", {{"kind", int(o.sched.kind)}, {"lr", o.sched.lr}, {"min_lr", o.sched.min_lr},
                        {"warmup", o.sched.warmup}, {"total", o.sched.total}, {"period", o.sched.period},
                        {"period_mult", o.sched.period_mult}}},
          {"adam", {{"beta1", o.adam.beta1}, {"beta2", o.adam.beta2}, {"eps", o.adam.eps},
                    {"weight_decay", o.adam.weight_decay}, {"decay_embeddings", o.adam.decay_embeddings},
                    {"decay_norms", o.adam.decay_norms}}},
          {"clip", o.clip},
          {"z_loss", o.mo.z_loss},
          {"recompute", o.mo.recompute},
          {"dropout", o.mo.dropout},
          {"seed", o.seed},
          {"threads", o.threads},
          {"eval_interval", o.eval_interval},
          {"eval_batches", o.eval_batches},
          {"ckpt_interval", o.ckpt_interval},
          {"keep", o.keep},
          {"log_interval", o.log_interval},
          {"skip_nonfinite", o.skip_nonfinite},
          {"precision", o.precision}};
}

TrainOptions options_from_json(const nlohmann::json& j, const std::string& where) {
  TrainOptions o;
  try {
    o.data_dir = j.at("data_dir");
    o.init_model = j.at("init_model");
    o.init_tokenizer = j.value("init_tokenizer", std::string());
    if (o.init_model.empty()) o.model = config_from_json(j.at("model"), where);
    o.batch = j.at("batch"), o.seq = j.at("seq"), o.grad_accum = j.at("grad_accum"), o.steps = j.at("steps");
    const auto& s = j.at("schedule");
    o.sched.kind = Schedule::Kind(s.at("kind").get<int>());
    o.sched.lr = s.at("lr"), o.sched.min_lr = s.at("min_lr"), o.sched.warmup = s.at("warmup");
    o.sched.total = s.at("total"), o.sched.period = s.at("period"), o.sched.period_mult = s.at("period_mult");
    const auto& a = j.at("adam");
    o.adam.beta1 = a.at("beta1"), o.adam.beta2 = a.at("beta2"), o.adam.eps = a.at("eps");
    o.adam.weight_decay = a.at("weight_decay");
    o.adam.decay_embeddings = a.at("decay_embeddings"), o.adam.decay_norms = a.at("decay_norms");
    o.clip = j.at("clip"), o.mo.z_loss = j.at("z_loss");
    o.mo.recompute = j.at("recompute");
    o.mo.dropout = j.value("dropout", 0.f);
    o.seed = j.at("seed"), o.threads = j.at("threads");
    o.eval_interval = j.at("eval_interval"), o.eval_batches = j.at("eval_batches");
    o.ckpt_interval = j.at("ckpt_interval"), o.keep = j.at("keep"), o.log_interval = j.at("log_interval");
    o.skip_nonfinite = j.at("skip_nonfinite"), o.precision = j.at("precision");
  } catch (const nlohmann::json::exception& e) {
    fail(where, ": bad run options: ", e.what());
  }
  return o;
}

double evaluate(Transformer<float>& m, const float* p, const TokenShard& val, int64_t n_windows) {
  const int64_t B = m.batch(), T = m.seq();
  std::vector<int32_t> x(size_t(B * T)), y(size_t(B * T));
  double sum = 0;
  int64_t count = 0;
  for (int64_t w0 = 0; w0 < n_windows; w0 += B) {
    for (int64_t b = 0; b < B; ++b) {
      if (w0 + b < n_windows) {
        eval_window(val, w0 + b, T, x.data() + b * T, y.data() + b * T);
      } else {  // a partial last batch: pad with window 0, no targets
        eval_window(val, 0, T, x.data() + b * T, y.data() + b * T);
        std::fill(y.begin() + b * T, y.begin() + (b + 1) * T, -1);
      }
    }
    const auto r = m.forward(p, x.data(), y.data());
    sum += r.loss_sum, count += r.count;
  }
  return count ? sum / double(count) : NAN;
}

namespace {


void write_text(const std::string& path, const std::string& s) {
  AtomicFileWriter w(path);
  w.write(s.data(), s.size());
  w.commit();
}

std::string fmt_time(double s) {
  char b[32];
  if (s < 60) std::snprintf(b, sizeof b, "%.0fs", s);
  else if (s < 3600) std::snprintf(b, sizeof b, "%dm%02ds", int(s) / 60, int(s) % 60);
  else std::snprintf(b, sizeof b, "%dh%02dm", int(s) / 3600, int(s) % 3600 / 60);
  return b;
}

struct History {
  std::vector<double> step, loss, vstep, vloss;
};

void plot(const std::string& dir, const History& h) {
  std::vector<Series> s(2);
  s[0].name = "train loss", s[0].x = h.step, s[0].y = h.loss;
  s[1].name = "val loss", s[1].x = h.vstep, s[1].y = h.vloss;
  write_loss_svg(dir + "/loss.svg", s, "Tessera training: " + dir);
}

}  // namespace

namespace {
// An exclusive flock on DIR/.lock for the run's lifetime: a second `tessera
// train` on the same directory (a new run or a --resume) fails instead of
// interleaving checkpoints and metrics with this one. The kernel drops the
// lock when the process dies, SIGKILL included.
class RunLock {
 public:
  explicit RunLock(const std::string& dir) {
    const std::string path = dir + "/.lock";
    fd_ = ::open(path.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0644);
    if (fd_ < 0) fail(path, ": cannot open the run lock: ", std::strerror(errno));
    if (::flock(fd_, LOCK_EX | LOCK_NB) != 0) {
      ::close(fd_);
      fail(dir, ": another 'tessera train' is using this run directory");
    }
  }
  ~RunLock() { ::close(fd_); }
  RunLock(const RunLock&) = delete;
  RunLock& operator=(const RunLock&) = delete;

 private:
  int fd_ = -1;
};
}  // namespace

TrainSummary run_training(TrainOptions o, bool resume, std::FILE* log, const volatile std::sig_atomic_t* stop) {
  const std::string dir = o.out_dir;
  Checkpoint ck;
  bool extended = false;  // resumed with a new --steps: run.json records it, so a later --resume keeps it
  std::string resumed_from;  // the checkpoint a resume loaded
  if (resume) {
    const std::string run = dir + "/run.json";
    if (!fs::exists(run)) fail(dir, ": no run.json: not a training run directory");
    nlohmann::json j;
    try {
      j = nlohmann::json::parse(read_file(run));
    } catch (const nlohmann::json::exception& e) {
      fail(run, ": invalid JSON: ", e.what());
    }
    const int64_t steps = o.steps;  // the caller may extend the run
    o = options_from_json(j, run);
    o.out_dir = dir;
    extended = steps > 0 && steps != o.steps;
    if (steps > 0) o.steps = o.sched.total = steps;  // a longer run stretches the cosine to its new end
    const std::string last = latest_checkpoint(dir);
    if (last.empty()) fail(dir, ": no checkpoint to resume from");
    ck = load_checkpoint(last);
    resumed_from = last;
    if (steps > 0 && steps <= ck.step)
      fail("--steps ", steps, ": the run in ", dir, " is already at step ", ck.step,
           "; give more steps to extend it");
    if (ck.step >= o.steps)
      fail(dir, ": the run is complete (step ", ck.step, "); give --steps N (N > ", ck.step, ") to extend it");
    std::fprintf(log, "resuming %s from %s (step %lld)\n", dir.c_str(), last.c_str(), (long long)ck.step);
  } else {
    o.validate();
    if (!latest_checkpoint(dir).empty())
      fail(dir, ": already holds checkpoints of a run (continue it with --resume ", dir, ", or choose another -o)");
  }
  const int threads = o.threads > 0 ? o.threads : int(std::max(1u, std::thread::hardware_concurrency()));
  omp_set_num_threads(threads);
  openblas_set_num_threads(threads);

  Dataset data = open_dataset(o.data_dir);
  ModelConfig cfg = o.model;
  std::optional<LoadedModel> init;
  if (resume) {
    cfg = ck.cfg;
  } else if (!o.init_model.empty()) {
    init = load_model(o.init_model, o.init_tokenizer);
    cfg = init->weights.cfg;
    o.model = cfg;
  }
  if (data.vocab_size > cfg.vocab_size)
    fail(o.data_dir, ": tokens use a vocabulary of ", data.vocab_size, ", the model has only ", cfg.vocab_size);
  if (o.seq > cfg.max_seq_len) fail("--seq ", o.seq, " exceeds the model's context ", cfg.max_seq_len);
  if (data.train->size() < o.seq + 1)
    fail(data.train->path(), ": has ", data.train->size(), " tokens, fewer than one sequence of ", o.seq + 1,
         " (use more text or a smaller --seq)");

  const Layout L(cfg);
  ParamVec p(L.total), g(L.total), m(L.total, 0.f), v(L.total, 0.f);
  int64_t start = 0;
  if (resume) {
    p = std::move(ck.params), m = std::move(ck.m), v = std::move(ck.v);
    start = ck.step;
  } else if (init) {
    params_from_weights(L, init->weights, p.data());
  } else {
    init_params(L, p.data(), o.seed);
  }
  init.reset();
  const auto mask = decay_mask(L, o.adam);
  o.mo.bf16 = o.precision == "bf16";
  Transformer<float> model(L, o.batch, o.seq, o.mo);
  const int64_t eval_windows = o.eval_batches * o.batch;

  fs::create_directories(dir);
  const RunLock lock(dir);
  // Checked again under the lock: another run may have written here since the checks above.
  if (resume ? latest_checkpoint(dir) != resumed_from : !latest_checkpoint(dir).empty())
    fail(dir, ": another run wrote checkpoints here while this one was starting (newest now ", latest_checkpoint(dir),
         ")");
  const nlohmann::json opts = options_to_json(o);
  if (!resume || extended) write_text(dir + "/run.json", opts.dump(2) + "\n");

  // Metrics: on resume keep the lines up to the checkpoint, so the log reads as one run.
  History hist;
  const std::string metrics = dir + "/metrics.jsonl";
  {
    std::string kept;
    if (resume && fs::exists(metrics)) {
      std::istringstream in(read_file(metrics));
      for (std::string line; std::getline(in, line);) {
        nlohmann::json j = nlohmann::json::parse(line, nullptr, false);
        if (j.is_discarded() || !j.contains("step") || j["step"].get<int64_t>() > start) continue;
        kept += line + "\n";
        hist.step.push_back(j["step"].get<double>()), hist.loss.push_back(j.value("loss", NAN));
        if (j.contains("val_loss")) hist.vstep.push_back(j["step"].get<double>()), hist.vloss.push_back(j["val_loss"].get<double>());
      }
    }
    write_text(metrics, kept);
  }
  std::FILE* mf = std::fopen(metrics.c_str(), "a");
  if (!mf) fail(metrics, ": cannot open for writing");
  std::unique_ptr<std::FILE, int (*)(std::FILE*)> mf_guard(mf, std::fclose);

  std::fprintf(log, "model: %s, %lld layers, dim %lld, %lld heads (%lld kv), hidden %lld, vocab %lld: %.2fM params\n",
               arch_name(cfg.arch), (long long)cfg.n_layers, (long long)cfg.dim, (long long)cfg.n_heads,
               (long long)cfg.n_kv_heads, (long long)cfg.hidden_dim, (long long)cfg.vocab_size,
               double(L.n_params) / 1e6);
  std::fprintf(log, "data: %lld train / %lld val tokens; batch %lld x %lld x %lld accum = %lld tokens/step; %d threads\n",
               (long long)data.train->size(), (long long)data.val->size(), (long long)o.batch, (long long)o.seq,
               (long long)o.grad_accum, (long long)(o.batch * o.seq * o.grad_accum), threads);

  std::vector<int32_t> x(size_t(o.batch * o.seq)), y(size_t(o.batch * o.seq));
  const int64_t tokens_per_step = o.batch * o.seq * o.grad_accum;
  TrainSummary sum;
  auto t0 = std::chrono::steady_clock::now();
  int64_t timed_steps = 0;
  double val = NAN;
  auto save = [&](int64_t step) {
    Checkpoint c;
    c.cfg = cfg, c.step = step, c.extra = opts;
    c.params = p, c.m = m, c.v = v;
    const std::string path = checkpoint_path(dir, step);
    try {
      save_checkpoint(path, c);
    } catch (const Error& e) {
      const std::string prev = latest_checkpoint(dir);
      fail("checkpoint at step ", step, " failed (", e.what(), "); ",
           prev.empty() ? std::string("no earlier checkpoint") : "the previous checkpoint " + prev + " is intact");
    }
    auto all = list_checkpoints(dir);
    for (size_t i = 0; i + size_t(o.keep) < all.size(); ++i) fs::remove(all[i]);
    sum.checkpoint = path;
  };

  for (int64_t s = start; s < o.steps; ++s) {
    double loss_sum = 0;
    int64_t count = 0;
    for (int64_t micro = 0; micro < o.grad_accum; ++micro) {
      train_batch(*data.train, o.seed, s, micro, o.batch, o.seq, x.data(), y.data());
      // Dropout masks: a pure function of (seed, step, micro-batch), like the data.
      const uint64_t key = (o.seed * 0x9e3779b97f4a7c15ull ^ uint64_t(s) * 0xbf58476d1ce4e5b9ull ^ uint64_t(micro + 1)) | 1;
      // The first micro-batch writes g (no zeroing pass); the others add to it.
      const auto r = model.forward_backward(p.data(), g.data(), x.data(), y.data(), 1.f / float(tokens_per_step), key,
                                            micro == 0);
      loss_sum += r.loss_sum, count += r.count;
    }
    const double loss = loss_sum / double(count);
    double gnorm = grad_norm(g.data(), g.size());
    const float lr = o.sched.at(s);
    if (!std::isfinite(loss) || !std::isfinite(gnorm)) {
      if (!o.skip_nonfinite) {
        fail("loss became non-finite at step ", s + 1, " (loss ", loss, ", gradient norm ", gnorm,
             "); the last checkpoint is kept; lower --lr or pass --skip-nonfinite to skip such batches");
      }
      std::fprintf(log, "step %lld: non-finite loss or gradient, batch skipped\n", (long long)(s + 1));
    } else {
      // Clipping scales g inside the update (no separate pass over g).
      const float gs = o.clip > 0 && gnorm > o.clip ? float(o.clip / gnorm) : 1.f;
      adamw_step(p.data(), g.data(), m.data(), v.data(), mask.data(), L.total, s + 1, lr, o.adam, detect_isa(), gs);
    }
    const int64_t done = s + 1;
    ++timed_steps;
    const double el = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    const double tok_s = double(timed_steps * tokens_per_step) / el;
    const bool eval_now = done % o.eval_interval == 0 || done == o.steps;
    if (eval_now) val = evaluate(model, p.data(), *data.val, eval_windows);
    nlohmann::json rec = {{"step", done}, {"loss", loss}, {"lr", lr}, {"grad_norm", gnorm},
                          {"tokens", done * tokens_per_step}, {"tok_s", tok_s}, {"elapsed_s", el}};
    if (eval_now) rec["val_loss"] = val;
    std::fprintf(mf, "%s\n", rec.dump().c_str());
    std::fflush(mf);
    hist.step.push_back(double(done)), hist.loss.push_back(loss);
    if (eval_now) hist.vstep.push_back(double(done)), hist.vloss.push_back(val);
    if (done % o.log_interval == 0 || eval_now || done == start + 1) {
      const double eta = double(o.steps - done) * el / double(timed_steps);
      char vbuf[32] = "-";
      if (std::isfinite(val)) std::snprintf(vbuf, sizeof vbuf, "%.4f", val);
      std::fprintf(log, "step %6lld/%lld | loss %.4f | val %s | lr %.2e | gnorm %.3f | %.0f tok/s | ETA %s\n",
                   (long long)done, (long long)o.steps, loss,
                   vbuf,
                   double(lr), gnorm, tok_s, fmt_time(eta).c_str());
      std::fflush(log);
    }
    if (eval_now) plot(dir, hist);
    const bool out_of_time = o.max_seconds > 0 && el >= o.max_seconds;
    const bool interrupted = stop && *stop && done < o.steps;
    if (done % o.ckpt_interval == 0 || done == o.steps || out_of_time || interrupted) save(done);
    sum.steps = done, sum.last_loss = loss, sum.val_loss = val, sum.tok_per_s = tok_s;
    if (interrupted) {
      plot(dir, hist);
      sum.interrupted = true;
      std::fprintf(log, "interrupted at step %lld; checkpoint %s written (continue with --resume %s)\n",
                   (long long)done, sum.checkpoint.c_str(), dir.c_str());
      break;
    }
    if (out_of_time) {
      if (!eval_now) {
        sum.val_loss = evaluate(model, p.data(), *data.val, eval_windows);
        plot(dir, hist);
      }
      std::fprintf(log, "time limit reached at step %lld; checkpoint written\n", (long long)done);
      break;
    }
  }
  return sum;
}

}  // namespace tessera::train
