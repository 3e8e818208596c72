#include "train/trainer.h"

#include <fcntl.h>
#include <omp.h>
#include <sys/file.h>
#include <sys/mman.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <optional>
#include <sstream>
#include <thread>

#include "core/error.h"
#include "core/mmap.h"
#include "formats/load.h"
#include "model/moe_hash.h"
#include "train/checkpoint.h"
#include "train/data.h"
#include "train/plot.h"
#include "train/dpo.h"
#include "train/grad_buckets.h"
#include "train/prune.h"
#include "train/reward.h"
#include "train/sft.h"
#include "train/tensor_parallel.h"

extern "C" void openblas_set_num_threads(int);

namespace fs = std::filesystem;

namespace tessera::train {

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

double evaluate(Transformer<float>& m, const float* p, const SftSplit& val, int64_t n_examples) {
  const int64_t B = m.batch(), T = m.seq();
  n_examples = std::min(n_examples, val.examples());
  std::vector<int32_t> x(size_t(B * T)), y(size_t(B * T));
  double sum = 0;
  int64_t count = 0;
  for (int64_t e0 = 0; e0 < n_examples; e0 += B) {
    for (int64_t b = 0; b < B; ++b) {
      sft_eval_row(val, e0 + b, T, x.data() + b * T, y.data() + b * T);
      if (e0 + b >= n_examples) std::fill(y.begin() + b * T, y.begin() + (b + 1) * T, -1);
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

struct Trainer::State {
  std::string dir;
  Checkpoint ck;             // the resumed checkpoint's header (its arrays are read into place)
  std::string resumed_from;  // its path
  std::unique_ptr<RunLock> lock;
  nlohmann::json opts;       // run.json, also stored in every checkpoint
  History hist;
  std::unique_ptr<std::FILE, int (*)(std::FILE*)> metrics{nullptr, std::fclose};
  int threads = 1;
  int64_t start = 0;         // the step the run (or resume) started from
  double val = NAN;          // the last validation loss
  double val_accuracy = NAN; // DPO: the last validation pairwise accuracy
  std::string last_checkpoint;
};

Trainer::Trainer(TrainOptions o, bool resume, std::FILE* log, Communicator& comm)
    : o_(std::move(o)), log_(log), world_(comm), dp_(&comm), st_(std::make_unique<State>()) {
  State& st = *st_;
  st.dir = o_.out_dir;
  const std::string& dir = st.dir;
  bool extended = false;  // resumed with a new --steps: run.json records it, so a later --resume keeps it
  if (resume) {
    const std::string run = dir + "/run.json";
    if (!fs::exists(run)) fail(dir, ": no run.json: not a training run directory");
    nlohmann::json j;
    try {
      j = nlohmann::json::parse(read_file(run));
    } catch (const nlohmann::json::exception& e) {
      fail(run, ": invalid JSON: ", e.what());
    }
    const int64_t steps = o_.steps;  // the caller may extend the run
    const int tp_override = o_.tp_override;
    o_ = options_from_json(j, run);
    o_.out_dir = dir;
    if (tp_override > 0 && tp_override != o_.tp)  // checkpoints are whole: any slicing resumes them
      o_.tp = tp_override, extended = true;          // (run.json records it)
    make_groups();
    extended = steps > 0 && steps != o_.steps;
    if (steps > 0) o_.steps = o_.sched.total = steps;  // a longer run stretches the cosine to its new end
    const std::string last = latest_checkpoint(dir);
    if (last.empty()) fail(dir, ": no checkpoint to resume from");
    CheckpointRange header;
    header.header_only = true;
    st.ck = load_checkpoint(last, header);  // the arrays are read once the rank's part is known
    st.resumed_from = last;
    if (steps > 0 && steps <= st.ck.step)
      fail("--steps ", steps, ": the run in ", dir, " is already at step ", st.ck.step,
           "; give more steps to extend it");
    if (st.ck.step >= o_.steps)
      fail(dir, ": the run is complete (step ", st.ck.step, "); give --steps N (N > ", st.ck.step, ") to extend it");
    if (world_.is_root())
      std::fprintf(log_, "resuming %s from %s (step %lld)\n", dir.c_str(), last.c_str(), (long long)st.ck.step);
    if (o_.ranks != dp_->size()) {  // another rank count: the same global batch through gradient accumulation
      const int64_t micro = o_.ranks * o_.grad_accum;
      if (micro % dp_->size() != 0)
        fail(dir, ": the run's global batch is ", micro, " micro-batches (", o_.ranks, " ranks x grad-accum ",
             o_.grad_accum, "), which ", dp_->size(), " ranks cannot split evenly; resume on a divisor of ", micro);
      o_.grad_accum = micro / dp_->size(), o_.ranks = dp_->size();
      extended = true;  // run.json records the new layout
      if (world_.is_root())
        std::fprintf(log_, "resuming on %d rank(s) with --grad-accum %lld (the same global batch)\n", dp_->size(),
                     (long long)o_.grad_accum);
    }
  } else {
    o_.validate();
    make_groups();
    o_.ranks = dp_->size();
    if (!latest_checkpoint(dir).empty())
      fail(dir, ": already holds checkpoints of a run (continue it with --resume ", dir, ", or choose another -o)");
  }
  st.threads = o_.threads > 0 ? o_.threads : int(std::max(1u, std::thread::hardware_concurrency()));
  omp_set_num_threads(st.threads);
  openblas_set_num_threads(st.threads);

  data_ = open_dataset(o_.data_dir);
  ModelConfig cfg = o_.model;
  // Hash-balanced routing of a new MoE (model/moe_hash.h): its table from the training tokens' counts.
  const auto balanced_table = [&](ModelConfig c) {
    std::vector<int64_t> counts(size_t(c.vocab_size), 0);
    const TokenShard& tr = *data_.train;
    for (int64_t i = 0; i < tr.size(); ++i) {
      const int32_t t = tr[i];
      if (t >= 0 && t < c.vocab_size) ++counts[size_t(t)];
    }
    c.moe_hash_table = moe_balanced_table(c, counts);
    const std::vector<int64_t> load = moe_hash_loads(c, counts);
    const auto [lo, hi] = std::minmax_element(load.begin(), load.end());
    if (world_.is_root())
      std::fprintf(log_, "hash-balanced routing: %lld token ids over %lld experts from %lld training tokens; "
                         "loads %lld..%lld tokens per expert (max/min %.3f)\n",
                   (long long)c.vocab_size, (long long)c.moe_experts, (long long)tr.size(), (long long)*lo,
                   (long long)*hi, *lo > 0 ? double(*hi) / double(*lo) : 0.0);
    return c.moe_hash_table;
  };
  std::optional<LoadedModel> init;
  if (resume && !o_.lora.enabled() && !(o_.dpo_beta > 0)) {
    cfg = st.ck.cfg;
  } else if (!o_.init_model.empty()) {
    init = load_model(o_.init_model, o_.init_tokenizer);
    if (o_.upcycle_experts > 0) {
      std::vector<int32_t> table;
      if (o_.model.moe_routing == MoeRouting::HashBalanced) {
        ModelConfig c = init->weights.cfg;
        c.moe_experts = o_.upcycle_experts, c.moe_used = o_.model.moe_used, c.moe_routing = MoeRouting::HashBalanced;
        table = balanced_table(c);
      }
      init->weights = upcycle_weights(init->weights, o_.upcycle_experts, o_.model.moe_used, o_.upcycle_noise, o_.seed,
                                      o_.model.moe_routing, table);
      if (world_.is_root())
        std::fprintf(log_, "upcycled %s: every feed-forward into %lld experts, top-%lld, noise %g\n",
                     o_.init_model.c_str(), (long long)o_.upcycle_experts, (long long)o_.model.moe_used,
                     double(o_.upcycle_noise));
    }
    cfg = init->weights.cfg;
    if (o_.mtp > 0 && cfg.mtp_depth == 0 && !resume) cfg.mtp_depth = o_.mtp;  // fresh modules (init_params below)
    o_.model = cfg;
    if (resume && config_to_json(cfg) != config_to_json(st.ck.cfg))
      fail(o_.init_model, ": the base model differs from the one this LoRA run started from (", st.resumed_from, ")");
  }
  if (data_.vocab_size > cfg.vocab_size)
    fail(o_.data_dir, ": tokens use a vocabulary of ", data_.vocab_size, ", the model has only ", cfg.vocab_size);
  if (cfg.moe_hashed()) {
    if (o_.mo.moe_balance > 0 || o_.mo.moe_router_z > 0)
      fail("--moe-balance / --moe-router-z: this model routes its experts by ", moe_routing_name(cfg.moe_routing),
           ", without a router to balance");
    if (cfg.moe_routing == MoeRouting::HashBalanced && cfg.moe_hash_table.empty())
      o_.model.moe_hash_table = cfg.moe_hash_table = balanced_table(cfg);
  }
  if (o_.seq > cfg.max_seq_len) fail("--seq ", o_.seq, " exceeds the model's context ", cfg.max_seq_len);
  if (data_.sft) {
    const SftSplit tr = sft_split(data_, false);
    if (tr.examples() == 0) fail(o_.data_dir, ": no training examples");
    int64_t cut = 0;
    for (int64_t e = 0; e < tr.examples(); ++e) cut += (*tr.idx)[e + 1] - (*tr.idx)[e] > o_.seq;
    if (cut > 0 && world_.is_root())
      std::fprintf(log_, "warning: %lld of %lld training examples are longer than --seq %lld and are cut there "
                         "(their later tokens do not train)\n",
                   (long long)cut, (long long)tr.examples(), (long long)o_.seq);
  } else if (o_.pack) {
    fail("--pack: ", o_.data_dir, " is not an SFT dataset (make one with 'tessera data prepare-sft')");
  } else if (data_.train->size() < o_.seq + 1)
    fail(data_.train->path(), ": has ", data_.train->size(), " tokens, fewer than one sequence of ", o_.seq + 1,
         " (use more text or a smaller --seq)");

  L_ = std::make_unique<Layout>(cfg);
  const Layout& L = *L_;
  if (o_.lora.enabled()) {  // the base frozen in base_; the adapter is what p_ trains
    lora_ = std::make_unique<LoraLayout>(L, o_.lora);
    o_.lora = lora_->lora;  // targets as resolved for this architecture
    if (o_.lora.quantized_base) {
      const size_t bytes = L.total * sizeof(float);
      void* m = mmap(nullptr, bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
      if (m == MAP_FAILED) fail("--qlora: cannot map ", bytes, " bytes for the base's f32 tensors");
      qbase_ = std::shared_ptr<float>(static_cast<float*>(m), [bytes](float* q) { munmap(q, bytes); });
      frozen_model_ = std::make_unique<LoadedModel>(std::move(*init));
      params_from_weights(L, frozen_model_->weights, qbase_.get(), true);
      for (const auto& t : L.tensors)
        if (!frozen_matrix(L, t)) qbase_f32_ += t.numel;
      const Weights& w = frozen_model_->weights;
      auto bytes_of = [](const TensorView& v) { return v.empty() ? size_t(0) : size_t(v.rows()) * dtype_row_bytes(v.dtype, v.cols()); };
      qbase_matrix_bytes_ = bytes_of(w.tok_embd) + (w.output.data == w.tok_embd.data ? 0 : bytes_of(w.output));
      for (const auto& lw : w.layers)
        for (const TensorView* v : {&lw.wq, &lw.wk, &lw.wv, &lw.wqkv, &lw.wo, &lw.w_gate, &lw.w_up, &lw.w_down})
          qbase_matrix_bytes_ += bytes_of(*v);
    } else {
      base_.assign(L.total, 0.f);
      params_from_weights(L, init->weights, base_.data());
    }

  }
  n_train_ = lora_ ? lora_->total : o_.reward ? L.total + reward_head_padded(cfg) : L.total;
  // ZeRO: this rank's part [sb_, se_) of the flat buffer: the moments it keeps (at stage 3 the weights too).
  const auto shard_layout = [&] {
    const int N = dp_->size();
    shard_off_.assign(size_t(N) + 1, n_train_);
    for (int r = 0; r < N; ++r) shard_off_[size_t(r)] = shard_range(n_train_, r, N).begin;
    sb_ = sharded() ? shard_off_[size_t(dp_->rank())] : 0;
    se_ = sharded() ? shard_off_[size_t(dp_->rank()) + 1] : n_train_;
  };
  shard_layout();
  p_.assign(n_train_, 0.f), g_.assign(n_train_, 0.f), m_.assign(se_ - sb_, 0.f), v_.assign(se_ - sb_, 0.f);
  if (resume) {
    if (st.ck.lora.enabled() != bool(lora_)) fail(st.resumed_from, ": the checkpoint does not match run.json's LoRA setting");
    if (st.ck.reward_head != o_.reward) fail(st.resumed_from, ": the checkpoint does not match run.json's reward setting");
    // Only what this rank keeps is read, whatever the rank count of the run that wrote it.
    CheckpointRange range;
    range.moments_begin = sb_, range.moments_end = se_;
    if (sharded() && o_.zero >= 3) range.params_begin = sb_, range.params_end = se_;
    Checkpoint ck = load_checkpoint(st.resumed_from, range);
    p_ = std::move(ck.params), m_ = std::move(ck.m), v_ = std::move(ck.v);
    st.start = st.ck.step;
  } else if (lora_) {
    init_lora(*lora_, p_.data(), o_.seed);
  } else if (init) {
    if (init->weights.cfg.mtp_depth < cfg.mtp_depth) init_params(L, p_.data(), o_.seed);  // the new MTP modules
    params_from_weights(L, init->weights, p_.data());  // (a reward head after it starts at zero)
  } else {
    init_params(L, p_.data(), o_.seed);
  }
  if (o_.dpo_beta > 0 && !lora_ && init) {  // DPO's reference: the starting model, frozen
    ref_.assign(L.total, 0.f);
    params_from_weights(L, init->weights, ref_.data());
  }
  init.reset();
  if (o_.tp > 1) {  // tensor parallelism: this rank keeps its slice of the blocks (train/tensor_parallel.h)
    if (lora_ || dpo_ || o_.dpo_beta > 0 || o_.reward || o_.zero > 0)
      fail("--tp: tensor parallelism trains full models with --zero 0 (not LoRA, DPO, reward models or ZeRO "
           "sharding)");
    tp_full_ = std::make_unique<Layout>(L);
    *L_ = Layout(tp_local_config(cfg, o_.tp));  // L now names the slice's layout
    n_train_ = L.total;
    const int r = tp_group_->rank();
    for (ParamVec* a : {&p_, &m_, &v_}) {
      ParamVec part(n_train_, 0.f);
      tp_slice(*tp_full_, L, r, a->data(), part.data());
      *a = std::move(part);
    }
    g_.assign(n_train_, 0.f);
    tp_split_ = tp_split_ranges(*tp_full_, L);
  }
  if (!resume) dp_->broadcast(p_.data(), p_.size(), 0);  // every rank starts from the root's parameters
  // (a resume reads the same checkpoint everywhere; at stage 3 each rank holds only its part)
  step_ = st.start;
  // ZeRO shards: this rank keeps (and updates) only its part of the moments.
  shard_layout();  // again: tensor parallelism changed the layout
  mask_ = lora_ ? std::vector<uint8_t>(n_train_, 1) : decay_mask(L, o_.adam);
  mask_.resize(n_train_, 0);  // a reward head: not decayed
  if (o_.keep_sparsity) {
    if (lora_) fail("--keep-sparsity applies to full training, not to a LoRA adapter");
    keep_ = sparsity_mask(L, p_.data());
    if (world_.is_root()) {
      const int64_t zeros = std::count(keep_.begin(), keep_.end(), uint8_t(0));
      std::fprintf(log_, "keep-sparsity: %lld zero weights held at zero\n", (long long)zeros);
    }
  }
  o_.mo.bf16 = o_.precision == "bf16";
  model_ = std::make_unique<Transformer<float>>(L, o_.batch, o_.seq, o_.mo);
  if (tp_group_) model_->set_tensor_parallel(tp_group_.get());
  if (lora_) model_->attach_lora(*lora_), model_->set_lora_params(p_.data(), g_.data());
  if (frozen_model_) model_->set_frozen_weights(frozen_model_->weights);
  if (lora_ && lora_->lora.prefix() && !resume) init_prefix();
  if (o_.dpo_beta > 0) {
    if (!data_.preference)
      fail("--dpo-beta: ", o_.data_dir, " holds no preference pairs (make them with 'tessera data prepare-pref')");
    if (o_.batch % 2 != 0) fail("--dpo-beta: --batch ", o_.batch, " must be even (a chosen and a rejected row per pair)");
    if (!lora_ && ref_.empty()) fail("--dpo-beta needs --init (the model to tune, also the frozen reference)");
    dpo_ = std::make_unique<DpoStep>(o_.batch, o_.seq, o_.dpo_beta);
  }
  if (o_.reward) {
    if (!data_.preference)
      fail("train-reward: ", o_.data_dir, " holds no preference pairs (make them with 'tessera data prepare-pref')");
    if (o_.batch % 2 != 0) fail("train-reward: --batch ", o_.batch, " must be even (a chosen and a rejected row per pair)");
    reward_ = std::make_unique<RewardStep>(o_.batch, o_.seq);
  }
  if (o_.kd.enabled()) {
    if (cfg.final_softcap > 0) fail("--teacher: students with a logit soft-cap are not supported");
    teacher_ = std::make_unique<Teacher>(o_.kd, cfg.vocab_size, o_.batch, o_.seq, st.threads);
  }
  if (sharded() && o_.zero >= 3 && (lora_ || dpo_ || reward_ || o_.mo.bf16))
    fail("--zero 3 shards full training's fp32 weights: not with LoRA, --dpo-beta, train-reward or --precision bf16 "
         "(use --zero 2)");
  if (sharded() && o_.zero >= 2 && !lora_ && !dpo_ && !reward_) {
    // Stage 2: each block's gradient reduce-scattered into gs_ as soon as the backward has it,
    // then its pages released; g_ is never resident whole (train/grad_buckets.h).
    buckets_ = std::make_unique<GradBuckets>(L, shard_off_, dp_->rank());
    gs_.assign(se_ - sb_, 0.f);
    GradBuckets::small_pages(g_.data(), g_.size());
    GradBuckets::release(g_.data(), g_.size());
  }
  if (dp_->size() > 1 && !sharded() && !lora_ && !dpo_ && !reward_ && o_.overlap_comm)  // stage 0: all-reduce overlapped
    overlap_ = std::make_unique<GradBuckets>(L, std::vector<size_t>{0, L.total}, 0);
  if (zero3()) {  // stage 3: only this rank's part of the weights stays; blocks are gathered around their use
    GradBuckets::small_pages(p_.data(), p_.size());
    buckets_->drop_all(p_.data());
    model_->set_weights_hook([this](int64_t l, bool need) {
      if (need)
        buckets_->gather(l, p_.data(), *dp_);
      else
        buckets_->drop(l, p_.data());
    });
  }
  x_.resize(size_t(o_.batch * o_.seq)), y_.resize(size_t(o_.batch * o_.seq));
  if (o_.pack) seg_.resize(size_t(o_.batch * o_.seq)), model_->set_segments(seg_.data());

  st.opts = options_to_json(o_);
  if (!world_.is_root()) return;
  fs::create_directories(dir);
  st.lock = std::make_unique<RunLock>(dir);
  // Checked again under the lock: another run may have written here since the checks above.
  if (resume ? latest_checkpoint(dir) != st.resumed_from : !latest_checkpoint(dir).empty())
    fail(dir, ": another run wrote checkpoints here while this one was starting (newest now ", latest_checkpoint(dir),
         ")");
  if (!resume || extended) write_text(dir + "/run.json", st.opts.dump(2) + "\n");

  // Metrics: on resume keep the lines up to the checkpoint, so the log reads as one run.
  const std::string metrics = dir + "/metrics.jsonl";
  {
    std::string kept;
    if (resume && fs::exists(metrics)) {
      std::istringstream in(read_file(metrics));
      for (std::string line; std::getline(in, line);) {
        nlohmann::json j = nlohmann::json::parse(line, nullptr, false);
        if (j.is_discarded() || !j.contains("step") || j["step"].get<int64_t>() > st.start) continue;
        kept += line + "\n";
        st.hist.step.push_back(j["step"].get<double>()), st.hist.loss.push_back(j.value("loss", NAN));
        if (j.contains("val_loss"))
          st.hist.vstep.push_back(j["step"].get<double>()), st.hist.vloss.push_back(j["val_loss"].get<double>());
      }
    }
    write_text(metrics, kept);
  }
  st.metrics.reset(std::fopen(metrics.c_str(), "a"));
  if (!st.metrics) fail(metrics, ": cannot open for writing");

  std::fprintf(log_, "model: %s, %lld layers, dim %lld, %lld heads (%lld kv), hidden %lld, vocab %lld: %.2fM params\n",
               arch_name(cfg.arch), (long long)cfg.n_layers, (long long)cfg.dim, (long long)cfg.n_heads,
               (long long)cfg.n_kv_heads, (long long)cfg.hidden_dim, (long long)cfg.vocab_size,
               double(L.n_params) / 1e6);
  if (cfg.mla())
    std::fprintf(log_, "attention: latent (MLA): kv LoRA rank %lld, q LoRA rank %lld, key %lld (%lld + %lld RoPE), value %lld\n",
                 (long long)cfg.mla_kv_lora, (long long)cfg.mla_q_lora, (long long)cfg.head_dim,
                 (long long)(cfg.head_dim - cfg.mla_rope), (long long)cfg.mla_rope, (long long)cfg.mla_v_dim);
  if (lora_) {  // the adapter's kind, its share of the base, and the memory of the run
    const LoraConfig& a = o_.lora;
    const double mb = 1.0 / (1 << 20);
    char kind[256], base[160];
    if (a.prefix())
      std::snprintf(kind, sizeof kind,
                    "prefix tuning: %lld key/value rows per layer (initialised from the training split's first tokens)",
                    (long long)a.prefix_len);
    else if (a.bottleneck())
      std::snprintf(kind, sizeof kind, "bottleneck adapters: width %lld, %s, after %s", (long long)a.adapter_dim,
                    a.adapter_gelu ? "gelu" : "relu", adapter_sites_string(a.adapter_sites).c_str());
    else
      std::snprintf(kind, sizeof kind, "LoRA: rank %lld, alpha %g (scale %g), dropout %g on %s", (long long)a.rank,
                    double(a.alpha), double(a.scale()), double(a.dropout),
                    lora_targets_string(lora_->lora.targets).c_str());  // what this model has of them
    if (frozen_model_)
      std::snprintf(base, sizeof base, "%.1f MiB of matrices in their stored types (read in place) + %.1f MiB f32",
                    double(qbase_matrix_bytes_) * mb, double(qbase_f32_) * 4 * mb);
    else
      std::snprintf(base, sizeof base, "%.1f MiB (frozen f32)", double(base_.size()) * 4 * mb);
    std::fprintf(log_,
                 "%s: %.3fM trainable params (%.2f%% of the base)\n"
                 "memory: base %s, adapter + gradient + Adam %.1f MiB, activations %.1f MiB\n",
                 kind, double(lora_->n_params) / 1e6, 100.0 * double(lora_->n_params) / double(L.n_params), base,
                 double(4 * n_train_) * 4 * mb, double(model_->activation_bytes()) * mb);
    std::FILE* f = std::fopen("/proc/self/status", "r");  // what the process holds now (mapped pages once read)
    char line[256];
    while (f && std::fgets(line, sizeof line, f))
      if (std::strncmp(line, "VmRSS:", 6) == 0)
        std::fprintf(log_, "resident memory after setup: %.1f MiB\n", std::atof(line + 6) / 1024.0);
    if (f) std::fclose(f);
  }
  if (cfg.mtp_depth > 0)
    std::fprintf(log_, "multi-token prediction: %lld module(s) predicting up to %lld tokens ahead, loss weight %g / %lld\n",
                 (long long)cfg.mtp_depth, (long long)cfg.mtp_depth + 1, double(o_.mo.mtp_weight), (long long)cfg.mtp_depth);
  if (cfg.is_moe())
    std::fprintf(log_, "experts: %lld per MoE layer (layers %lld..%lld%s), %lld active, width %lld%s; router %s; %.2fM active params\n",
                 (long long)cfg.moe_experts, (long long)cfg.moe_first_dense, (long long)cfg.n_layers - 1,
                 cfg.moe_every > 1 ? (", every " + std::to_string(cfg.moe_every) + "th").c_str() : "",
                 (long long)cfg.moe_used, (long long)cfg.moe_hidden,
                 cfg.moe_shared_hidden > 0 ? (", shared " + std::to_string(cfg.moe_shared_hidden)).c_str() : "",
                 cfg.router_desc().c_str(), double(cfg.active_params()) / 1e6);
  if (dp_->size() > 1) {
    const double mib = 4.0 / (1 << 20);
    std::fprintf(log_,
                 "data parallel: %d ranks, ZeRO stage %d; per rank: parameters %.1f MiB, gradients %.1f MiB, Adam "
                 "moments %.1f MiB\n",
                 dp_->size(), o_.zero,
                 double(zero3() ? se_ - sb_ + GradBuckets::in_flight_elements(L) : p_.size()) * mib,
                 double(buckets_ ? gs_.size() + GradBuckets::in_flight_elements(L) : g_.size()) * mib,
                 double(m_.size() + v_.size()) * mib);
  if (buckets_)
    std::fprintf(log_, "ZeRO-%d buckets: this rank's part %.1f MiB + at most %.1f MiB in flight "
                       "(the embedding/output tensors and one block)\n", o_.zero,
                 double(gs_.size()) * mib, double(GradBuckets::in_flight_elements(L)) * mib);
  }
  std::fprintf(log_, "data: %lld train / %lld val tokens; batch %lld x %lld x %lld accum = %lld tokens/step; %d threads\n",
               (long long)data_.train->size(), (long long)data_.val->size(), (long long)o_.batch, (long long)o_.seq,
               (long long)o_.grad_accum, (long long)(o_.batch * o_.seq * o_.grad_accum * dp_->size()), st.threads);
}

Trainer::~Trainer() = default;

void Trainer::fill_batch(int64_t step, int64_t mb) {
  if (dpo_ || reward_)
    pref_batch(sft_split(data_, false), o_.seed, step, mb, o_.batch, o_.seq, x_.data(), y_.data());
  else if (data_.sft)
    sft_batch(sft_split(data_, false), o_.seed, step, mb, o_.batch, o_.seq, o_.pack, x_.data(), y_.data(),
              o_.pack ? seg_.data() : nullptr);
  else
    train_batch(*data_.train, o_.seed, step, mb, o_.batch, o_.seq, x_.data(), y_.data());
}

void Trainer::init_prefix() {
  const int64_t P = lora_->lora.prefix_len, kvd = lora_->prefix_dim;
  if (data_.train->size() < P)
    fail("--prefix-len ", P, ": ", data_.train->path(), " has only ", data_.train->size(), " tokens");
  std::vector<int32_t> tok(static_cast<size_t>(P)), tgt(static_cast<size_t>(P), -1);
  for (int64_t i = 0; i < P; ++i) tok[size_t(i)] = (*data_.train)[i];
  ModelOptions mo;
  mo.logit_rows = std::min<int64_t>(P, 64);
  Transformer<float> t(*L_, 1, P, mo);
  if (frozen_model_) t.set_frozen_weights(frozen_model_->weights);
  t.forward(base_ptr(), tok.data(), tgt.data());
  for (int64_t l = 0; l < L_->cfg.n_layers; ++l) {
    int64_t stride = 0;
    const auto [k, v] = t.layer_kv(l, &stride);
    const auto& [ko, vo] = lora_->prefix[size_t(l)];
    for (int64_t i = 0; i < P; ++i) {
      std::copy(k + i * stride, k + i * stride + kvd, p_.data() + ko + i * kvd);
      std::copy(v + i * stride, v + i * stride + kvd, p_.data() + vo + i * kvd);
    }
  }
}

// ZeRO-3: the weights outside the blocks (embeddings, final norm, output, MTP modules) are
// read throughout a pass; they are gathered for the scope of one step or evaluation.
struct Trainer::WholeRest {
  Trainer& t;
  explicit WholeRest(Trainer& tr) : t(tr) {
    if (t.zero3()) t.buckets_->gather(-1, t.p_.data(), *t.dp_);
  }
  ~WholeRest() {
    if (t.zero3()) t.buckets_->drop(-1, t.p_.data());
  }
};

Trainer::StepStats Trainer::train_step() {
  const int64_t s = step_;
  const int64_t tokens_per_step = o_.batch * o_.seq * o_.grad_accum * dp_->size();
  // The loss is a mean over the step's targets: every token of a pretraining batch, the
  // response tokens of SFT batches (counted first, over all micro-batches and ranks).
  double targets = double(tokens_per_step);
  if (dpo_ || reward_) {  // DPO, reward model: the mean over the step's pairs
    targets = double(o_.batch / 2 * o_.grad_accum * dp_->size());
  } else if (data_.sft) {
    targets = 0;
    for (int64_t micro = 0; micro < o_.grad_accum; ++micro) {
      fill_batch(s, int64_t(dp_->rank()) * o_.grad_accum + micro);
      targets += double(std::count_if(y_.begin(), y_.end(), [](int32_t t) { return t >= 0; }));
    }
    dp_->all_reduce_sum(&targets, 1);
    if (targets == 0) {  // every response was cut off by --seq: nothing to learn from this step
      StepStats out;
      out.loss = out.grad_norm = NAN, out.lr = o_.sched.at(s), out.skipped = out.no_targets = true;
      ++step_;
      return out;
    }
  }
  const float scale = data_.sft ? float(1.0 / targets) : 1.f / float(tokens_per_step);
  // loss, count, router losses, KD, DPO margin and correct pairs: over micro-batches, then ranks
  // ..., MTP loss and targets; then each rank's training state (weights, gradients, moments: bytes)
  std::vector<double>& loss_count = step_sums_;
  loss_count.assign(9 + 3 * size_t(dp_->size()), 0.0);  // the same size every step: no allocation
  if (L_->cfg.is_moe()) model_->take_expert_counts(), model_->take_dropped();  // not the evaluation's passes
  std::optional<WholeRest> rest(std::in_place, *this);
  for (int64_t micro = 0; micro < o_.grad_accum; ++micro) {
    // Rank r reads micro-batches [r * grad_accum, (r + 1) * grad_accum) of the global batch.
    const int64_t mb = int64_t(dp_->rank()) * o_.grad_accum + micro;
    fill_batch(s, mb);
    if (teacher_) model_->set_teacher(teacher_->logprobs(x_.data()), o_.kd);
    // Dropout masks: a pure function of (seed, step, micro-batch), like the data.
    const uint64_t key = (o_.seed * 0x9e3779b97f4a7c15ull ^ uint64_t(s) * 0xbf58476d1ce4e5b9ull ^ uint64_t(mb + 1)) | 1;
    // The first micro-batch writes g (no zeroing pass); the others add to it.
    blk::CeResult r;
    if (lora_ && micro == 0) std::fill(g_.begin(), g_.end(), 0.f);
    if (reward_) {  // the pairs' rewards, then the Bradley-Terry gradient through the head
      if (micro == 0) std::fill(g_.begin(), g_.end(), 0.f);
      const size_t h = L_->total;
      const DpoStats d = reward_->run(*model_, p_.data(), p_.data() + h, g_.data(), g_.data() + h, x_.data(),
                                      y_.data(), scale, key);
      r.loss_sum = d.loss, r.count = d.pairs;
      loss_count[5] += d.margin, loss_count[6] += d.correct;
    } else if (dpo_) {  // reference and policy log-probabilities, then the pair-weighted backward
      const DpoStats d = lora_ ? dpo_->run(*model_, base_ptr(), nullptr, nullptr,
                                           x_.data(), y_.data(), scale, key, true)
                               : dpo_->run(*model_, p_.data(), ref_.data(), g_.data(), x_.data(), y_.data(), scale,
                                           key, micro == 0);
      r.loss_sum = d.loss, r.count = d.pairs;
      loss_count[5] += d.margin, loss_count[6] += d.correct;
    } else if (lora_) {  // the base frozen (its gradient not formed); the adapter's accumulates in g_
      r = model_->forward_backward(base_ptr(), nullptr, x_.data(), y_.data(), scale,
                                   key, true);
    } else if (buckets_) {  // ZeRO-2: g_ reads as zeros; each block's bucket is reduced as it completes
      model_->set_grad_ready([&](int64_t l) { buckets_->reduce(l, g_.data(), gs_.data(), micro == 0, *dp_); });
      r = model_->forward_backward(p_.data(), g_.data(), x_.data(), y_.data(), scale, key, false);
      model_->set_grad_ready(nullptr);
      buckets_->reduce(-1, g_.data(), gs_.data(), micro == 0, *dp_);
    } else if (overlap_ && micro + 1 == o_.grad_accum) {  // stage 0, last micro-batch: each block's
      // gradient all-reduce starts as soon as the backward has it, under the next blocks' backward
      model_->set_grad_ready([&](int64_t l) { overlap_->start_all_reduce(l, g_.data(), *dp_); });
      r = model_->forward_backward(p_.data(), g_.data(), x_.data(), y_.data(), scale, key, micro == 0);
      model_->set_grad_ready(nullptr);
      overlap_->start_all_reduce(-1, g_.data(), *dp_);
    } else {
      r = model_->forward_backward(p_.data(), g_.data(), x_.data(), y_.data(), scale, key, micro == 0);
    }
    loss_count[0] += r.loss_sum, loss_count[1] += double(r.count);
    loss_count[2] += r.moe_balance_sum, loss_count[3] += r.moe_z_sum, loss_count[4] += r.kd_sum;
    loss_count[7] += r.mtp_sum, loss_count[8] += double(r.mtp_count);
  }
  rest.reset();
  // The gradient this rank's update reads: the all-reduced buffer (stage 0), or its
  // reduce-scattered part (stage 1: in place, in g_; stage 2: gs_, reduced during the
  // backward); the norm over all of it for clipping.
  const float* gsh = g_.data() + sb_;
  double gnorm = 0;
  if (sharded()) {
    if (buckets_)
      gsh = gs_.data();
    else
      dp_->reduce_scatter_sum(g_.data(), g_.data() + sb_, shard_off_);
    const double part = grad_norm(gsh, se_ - sb_);
    double sq = part * part;
    dp_->all_reduce_sum(&sq, 1);
    gnorm = std::sqrt(sq);
  } else {
    if (overlap_)
      dp_->wait_all();
    else
      dp_->all_reduce_sum(g_.data(), g_.size());
    gnorm = grad_norm(g_.data(), g_.size());
    if (tp_group_) {  // the whole model's norm: the split tensors' squares summed over the slices, the rest once
      double split = 0;
      for (const auto& [b, e] : tp_split_) {
        const double n = grad_norm(g_.data() + b, e - b);
        split += n * n;
      }
      double sq[1] = {split};
      tp_group_->all_reduce_sum(sq, 1);
      gnorm = std::sqrt(std::max(0.0, gnorm * gnorm - split) + sq[0]);
    }
  }
  {  // this rank's state, measured: stage 2+'s gradient is its part plus the peak resident in flight
    double* mine = loss_count.data() + 9 + 3 * dp_->rank();
    mine[0] = double(zero3() ? buckets_->peak_weights() : p_.size() * 4);
    mine[1] = double(buckets_ ? gs_.size() * 4 + buckets_->peak_in_flight() + buckets_->tmp_bytes() : g_.size() * 4);
    mine[2] = double((m_.size() + v_.size()) * 4);
  }
  dp_->all_reduce_sum(loss_count.data(), loss_count.size());
  StepStats out;
  for (int r = 0; r < dp_->size(); ++r)  // the largest over the ranks (their shards' overlaps differ)
    for (int k = 0; k < 3; ++k) out.state_bytes[size_t(k)] = std::max(out.state_bytes[size_t(k)], loss_count[size_t(9 + 3 * r + k)]);
  out.loss = loss_count[0] / loss_count[1];
  out.kd = loss_count[4] / loss_count[1];
  out.mtp = loss_count[8] > 0 ? loss_count[7] / loss_count[8] : 0.0;
  out.dpo_margin = loss_count[5] / loss_count[1], out.dpo_accuracy = loss_count[6] / loss_count[1];
  if (L_->cfg.is_moe()) {  // per token of the step (this rank's counts)
    out.moe_balance = loss_count[2] / double(tokens_per_step), out.moe_z = loss_count[3] / double(tokens_per_step);
    out.expert_tokens = model_->take_expert_counts();
    out.moe_dropped = model_->take_dropped();
  }
  out.grad_norm = gnorm;
  out.lr = o_.sched.at(s);
  if (!std::isfinite(out.loss) || !std::isfinite(out.grad_norm)) {
    if (!o_.skip_nonfinite) {
      fail("loss became non-finite at step ", s + 1, " (loss ", out.loss, ", gradient norm ", out.grad_norm,
           "); the last checkpoint is kept; lower --lr or pass --skip-nonfinite to skip such batches");
    }
    out.skipped = true;
  } else {
    // Clipping scales g inside the update (no separate pass over g).
    const float gs = o_.clip > 0 && out.grad_norm > o_.clip ? float(o_.clip / out.grad_norm) : 1.f;
    adamw_step(p_.data() + sb_, gsh, m_.data(), v_.data(), mask_.data() + sb_, se_ - sb_, s + 1, out.lr, o_.adam,
               detect_isa(), gs);
    if (!keep_.empty())  // pruned weights stay pruned
      for (size_t i = sb_; i < std::min(se_, keep_.size()); ++i)
        if (!keep_[i]) p_[i] = 0.f;
    if (sharded() && !zero3()) dp_->all_gather(p_.data(), shard_off_);  // every rank's updated part to every rank
    if (L_->cfg.moe_score_bias && o_.moe_bias_rate > 0 && !lora_) {  // the same loads, so the same move, on every rank
      std::vector<double> c(out.expert_tokens.begin(), out.expert_tokens.end());
      dp_->all_reduce_sum(c.data(), c.size());
      moe_bias_update(*L_, p_.data(), c, o_.moe_bias_rate);
    }
  }
  ++step_;
  out.traffic = take_traffic();
  return out;
}

double Trainer::evaluate() {
  const WholeRest rest(*this);
  const Communicator::Traffic step_traffic = take_traffic();  // evaluation's collectives are not a step's
  struct Restore {
    Communicator& c;
    Communicator::Traffic t;
    Trainer& tr;
    ~Restore() { tr.take_traffic(), c.restore_traffic(t); }
  } restore{*dp_, step_traffic, *this};
  if (teacher_) model_->set_teacher(nullptr, o_.kd);  // validation is the data loss
  if (dpo_ || reward_) {  // the pair loss and pairwise accuracy over the validation pairs
    const SftSplit val = sft_split(data_, true);
    const int64_t pairs = std::min(val.examples() / 2, o_.eval_batches * o_.batch / 2);
    DpoStats sum;
    for (int64_t e0 = 0; e0 < pairs; e0 += o_.batch / 2) {
      for (int64_t b = 0; b < o_.batch; ++b)
        sft_eval_row(val, 2 * std::min(e0 + b / 2, pairs - 1) + b % 2, o_.seq, x_.data() + b * o_.seq, y_.data() + b * o_.seq);
      const DpoStats d = reward_ ? reward_->eval(*model_, p_.data(), p_.data() + L_->total, x_.data(), y_.data())
                                 : dpo_->eval(*model_, lora_ ? base_ptr() : p_.data(),
                                              lora_ ? nullptr : ref_.data(), x_.data(), y_.data());
      const int64_t n = std::min(o_.batch / 2, pairs - e0);  // a partial last batch repeats the last pair
      sum.loss += d.loss * double(n) / double(d.pairs), sum.correct += d.correct * double(n) / double(d.pairs);
      sum.pairs += n;
    }
    st_->val_accuracy = sum.correct / double(std::max<int64_t>(1, sum.pairs));
    return st_->val = sum.loss / double(std::max<int64_t>(1, sum.pairs));
  }
  if (data_.sft) {  // validation rows are padded examples: no packing segments
    model_->set_segments(nullptr);
    st_->val = train::evaluate(*model_, base_params(), sft_split(data_, true), o_.eval_batches * o_.batch);
    if (o_.pack) model_->set_segments(seg_.data());
    return st_->val;
  }
  st_->val = train::evaluate(*model_, base_params(), *data_.val, o_.eval_batches * o_.batch);
  return st_->val;
}

std::string Trainer::save() {
  State& st = *st_;
  const std::string path = checkpoint_path(st.dir, step_);
  Checkpoint c;
  c.cfg = tp_full_ ? tp_full_->cfg : L_->cfg, c.step = step_, c.extra = st.opts;
  if (lora_) c.lora = lora_->lora;
  c.reward_head = o_.reward;
  bool wrote = false;
  try {
    wrote = write_checkpoint(path, c);  // train/trainer_dist.cpp: whole, sharded or gathered slices
  } catch (const Error& e) {
    const std::string prev = latest_checkpoint(st.dir);
    fail("checkpoint at step ", step_, " failed (", e.what(), "); ",
         prev.empty() ? std::string("no earlier checkpoint") : "the previous checkpoint " + prev + " is intact");
  }
  if (!wrote) return "";
  auto all = list_checkpoints(st.dir);
  for (size_t i = 0; i + size_t(o_.keep) < all.size(); ++i) remove_checkpoint(all[i]);
  st.last_checkpoint = path;
  return path;
}

TrainSummary Trainer::run(const volatile std::sig_atomic_t* stop) {
  State& st = *st_;
  const bool root = world_.is_root();
  const int64_t tokens_per_step = o_.batch * o_.seq * o_.grad_accum * dp_->size();
  TrainSummary sum;
  auto t0 = std::chrono::steady_clock::now();
  int64_t timed_steps = 0;
  while (step_ < o_.steps) {
    const StepStats r = train_step();
    if (r.no_targets && root)
      std::fprintf(log_, "step %lld: no response tokens in this step's examples (cut off at --seq %lld?); skipped\n",
                   (long long)step_, (long long)o_.seq);
    else if (r.skipped && root)
      std::fprintf(log_, "step %lld: non-finite loss or gradient, batch skipped\n", (long long)step_);
    const int64_t done = step_;
    ++timed_steps;
    const double el = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    const double tok_s = double(timed_steps * tokens_per_step) / el;
    const bool eval_now = done % o_.eval_interval == 0 || done == o_.steps;
    if (eval_now) evaluate();
    const double val = st.val;
    if (root) {
      nlohmann::json rec = {{"step", done}, {"loss", r.loss}, {"lr", r.lr}, {"grad_norm", r.grad_norm},
                            {"tokens", done * tokens_per_step}, {"tok_s", tok_s}, {"elapsed_s", el}};
      if (eval_now) rec["val_loss"] = val;
      if (teacher_) rec["kd_loss"] = r.kd;
      if (L_->cfg.mtp_depth > 0) rec["mtp_loss"] = r.mtp;
      if (dpo_ || reward_) {  // the pairs' mean margin (beta z for DPO, r_c - r_r for rewards) and accuracy
        const std::string k = reward_ ? "reward" : "dpo";
        rec[k + "_margin"] = r.dpo_margin, rec[k + "_accuracy"] = r.dpo_accuracy;
        if (eval_now) rec["val_accuracy"] = st.val_accuracy;
      }
      rec["state_bytes"] = {{"weights", r.state_bytes[0]}, {"grads", r.state_bytes[1]}, {"optimizer", r.state_bytes[2]}};
      if (world_.size() > 1) {  // this rank's bytes sent per collective in the step (ring algorithms)
        const auto t = r.traffic;
        rec["comm_bytes"] = {{"all_reduce", t.all_reduce}, {"reduce_scatter", t.reduce_scatter},
                             {"all_gather", t.all_gather}};
        rec["comm_s"] = t.seconds;
      }
      if (L_->cfg.is_moe()) {  // the router losses and each MoE layer's tokens per expert
        if (!L_->cfg.moe_hashed()) rec["moe_balance"] = r.moe_balance, rec["moe_router_z"] = r.moe_z;
        nlohmann::json load = nlohmann::json::array();
        const int64_t E = L_->cfg.moe_experts;
        for (int64_t l = 0; l < L_->cfg.n_layers; ++l)
          if (L_->cfg.moe_layer(l))
            load.push_back(std::vector<int64_t>(r.expert_tokens.begin() + l * E, r.expert_tokens.begin() + (l + 1) * E));
        rec["expert_tokens"] = load;
        if (o_.mo.moe_capacity > 0.f) rec["moe_dropped"] = r.moe_dropped;
      }
      std::fprintf(st.metrics.get(), "%s\n", rec.dump().c_str());
      std::fflush(st.metrics.get());
      st.hist.step.push_back(double(done)), st.hist.loss.push_back(r.loss);
      if (eval_now) st.hist.vstep.push_back(double(done)), st.hist.vloss.push_back(val);
      if (done % o_.log_interval == 0 || eval_now || done == st.start + 1) {
        const double eta = double(o_.steps - done) * el / double(timed_steps);
        char vbuf[32] = "-";
        if (std::isfinite(val)) std::snprintf(vbuf, sizeof vbuf, "%.4f", val);
        char kbuf[32] = "";
        if (teacher_) std::snprintf(kbuf, sizeof kbuf, " | kd %.4f", r.kd);
        std::fprintf(log_, "step %6lld/%lld | loss %.4f%s | val %s | lr %.2e | gnorm %.3f | %.0f tok/s | ETA %s\n",
                     (long long)done, (long long)o_.steps, r.loss, kbuf, vbuf, double(r.lr), r.grad_norm, tok_s,
                     fmt_time(eta).c_str());
        std::fflush(log_);
      }
      if (eval_now) plot(st.dir, st.hist);
    }
    bool out_of_time = o_.max_seconds > 0 && el >= o_.max_seconds;
    bool interrupted = stop && *stop && done < o_.steps;
    if (world_.size() > 1) {  // every rank stops at the same step: a signal seen anywhere, the root's clock
      double flags[2] = {interrupted ? 1.0 : 0.0, root && out_of_time ? 1.0 : 0.0};
      world_.all_reduce_sum(flags, 2);
      interrupted = flags[0] > 0, out_of_time = flags[1] > 0;
    }
    if (done % o_.ckpt_interval == 0 || done == o_.steps || out_of_time || interrupted) save();
    sum.steps = done, sum.last_loss = r.loss, sum.val_loss = val, sum.tok_per_s = tok_s;
    sum.checkpoint = st.last_checkpoint;
    if (interrupted) {
      if (root) {
        plot(st.dir, st.hist);
        std::fprintf(log_, "interrupted at step %lld; checkpoint %s written (continue with --resume %s)\n",
                     (long long)done, sum.checkpoint.c_str(), st.dir.c_str());
      }
      sum.interrupted = true;
      break;
    }
    if (out_of_time) {
      if (!eval_now) {
        sum.val_loss = evaluate();
        if (root) plot(st.dir, st.hist);
      }
      if (root) std::fprintf(log_, "time limit reached at step %lld; checkpoint written\n", (long long)done);
      break;
    }
  }
  return sum;
}

TrainSummary run_training(TrainOptions o, bool resume, std::FILE* log, const volatile std::sig_atomic_t* stop) {
  LocalCommunicator comm;
  return run_training(std::move(o), resume, log, stop, comm);
}

TrainSummary run_training(TrainOptions o, bool resume, std::FILE* log, const volatile std::sig_atomic_t* stop,
                          Communicator& comm) {
  Trainer t(std::move(o), resume, log, comm);
  TrainSummary s = t.run(stop);
  s.root = comm.is_root();
  return s;
}

}  // namespace tessera::train
