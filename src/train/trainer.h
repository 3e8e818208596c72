// The training loop: batches from a token dataset, forward/backward with
// gradient accumulation, clipping, AdamW under a schedule, periodic
// evaluation, metrics (JSONL), the loss plot (SVG) and crash-safe
// checkpoints; resumable bit for bit.
#pragma once
#include <array>
#include <csignal>
#include <cstdint>
#include <cstdio>
#include <memory>
#include <utility>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "model/config.h"
#include "train/communicator.h"
#include "train/data.h"
#include "train/lora.h"
#include "train/optim.h"
#include "train/params.h"
#include "train/transformer.h"

namespace tessera::train {

struct TrainOptions {
  std::string data_dir;       // from 'tessera data prepare'
  std::string out_dir;        // checkpoints, metrics.jsonl, loss.svg, run.json
  std::string init_model;     // start from this model (any loadable format); "" = random init
  std::string init_tokenizer; // tokenizer for init_model when it carries none (recorded for export)
  ModelConfig model;          // used when init_model is empty
  // Sparse upcycling of init_model (a dense Llama-family model): every feed-forward copied
  // into this many experts (+ upcycle_noise x N(0, 1) x each matrix's RMS), a fresh router
  // choosing model.moe_used of them (train/params.h upcycle_weights).
  int64_t upcycle_experts = 0;
  float upcycle_noise = 0.f;
  // DeepSeek-V3's auxiliary-loss-free balancing of a router with a selection bias
  // (ModelConfig::moe_score_bias): after each step every bias moves by this much
  // toward even loads (train/optim.h moe_bias_update); 0 keeps the biases as they are.
  float moe_bias_rate = 0.001f;
  // Multi-token prediction modules to add (DeepSeek-V3's MTP; train/mtp.cpp): a new model gets
  // this depth; an --init model without modules gets fresh ones (one with modules keeps its own).
  int64_t mtp = 0;
  // Fine-tuning with LoRA (tessera finetune): init_model frozen, only the adapter trained;
  // checkpoints hold the adapter and its optimizer states, and a resume reloads init_model.
  LoraConfig lora;
  // Distillation (tessera distill): the teacher's distribution as a second target (train/distill.h).
  KdOptions kd;
  // Direct preference optimisation on a preference dataset (train/dpo.h): beta > 0 enables it.
  float dpo_beta = 0.f;
  // A reward model on a preference dataset (tessera train-reward, train/reward.h).
  bool reward = false;
  int64_t batch = 8, seq = 256, grad_accum = 1, steps = 1000;
  // SFT datasets (train/sft.h): pack several examples into a row (attention kept inside each)
  // instead of one padded example per row.
  bool pack = false;
  // Data parallelism over the Communicator's ranks (mpirun): ZeRO stage 0 (replicas,
  // gradients all-reduced), 1 (AdamW moments sharded: each rank updates its shard of the
  // flat buffer, the weights are all-gathered), 2 (gradients reduce-scattered too, block by
  // block during the backward), 3 (weights too: a block's gathered around its use).
  int zero = 0;
  bool overlap_comm = false;  // stage 0: each block's all-reduce started during the backward
  // Tensor parallelism (train/tensor_parallel.h): groups of tp consecutive ranks each hold one
  // slice of the blocks; the world's ranks / tp groups are the data-parallel ranks.
  int tp = 1;
  int tp_override = 0;  // --resume with --tp: slice the (whole) checkpoints anew
  // Recovery fine-tuning of a pruned model: the blocks' weights that are zero at the start
  // stay zero (train/prune.h sparsity_mask).
  bool keep_sparsity = false;
  int64_t ranks = 1;  // the ranks the global batch was laid out for (set by the Trainer; kept by resumes)
  Schedule sched;
  AdamWConfig adam;
  float clip = 1.f;           // max global gradient norm (0: off)
  ModelOptions mo;
  uint64_t seed = 1;
  int threads = 0;            // 0: all cores
  int64_t eval_interval = 100, eval_batches = 8, ckpt_interval = 100, keep = 3, log_interval = 10;
  bool skip_nonfinite = false;  // skip a batch whose loss or gradient is NaN/inf instead of stopping
  std::string precision = "fp32";
  double max_seconds = 0;     // stop (with a checkpoint) after this wall time (0: no limit)

  void validate() const;      // Error naming the flag
};
nlohmann::json options_to_json(const TrainOptions& o);
TrainOptions options_from_json(const nlohmann::json& j, const std::string& where);

struct TrainSummary {
  int64_t steps = 0;          // total optimizer steps done (including before a resume)
  double last_loss = 0, val_loss = 0, tok_per_s = 0;
  std::string checkpoint;     // the last checkpoint written
  bool interrupted = false;   // stopped early by *stop (a checkpoint of the last step was written)
  bool root = true;           // rank 0 (the one that reports)
};

// One training run: set up (a new run, or a resume from out_dir's newest
// checkpoint), then step / evaluate / save, or run() for the whole loop.
// Batches are a pure function of (seed, step, micro-batch, rank); gradients,
// the loss and the gradient norm go through the Communicator (a no-op for one
// process), and only the root rank writes run.json, metrics, plots and
// checkpoints. Resuming reproduces an uninterrupted run bit for bit.
class Trainer {
 public:
  // Validates the options, loads the data and the starting parameters and takes
  // the run directory's lock. Error naming the flag, file or step on bad input.
  Trainer(TrainOptions o, bool resume, std::FILE* log, Communicator& comm);
  ~Trainer();
  Trainer(const Trainer&) = delete;
  Trainer& operator=(const Trainer&) = delete;

  struct StepStats {
    double loss = 0, grad_norm = 0;
    float lr = 0;
    bool skipped = false;  // non-finite loss or gradient, skipped (--skip-nonfinite)
    bool no_targets = false;  // SFT: no response token in the step's batches (skipped)
    Communicator::Traffic traffic;  // this rank's bytes sent in the step's collectives
    // Training state a rank holds (bytes; the largest over the ranks): weights, gradients, Adam
    // moments. ZeRO-2/3's gradient (and ZeRO-3's weights): the shard plus the peak resident in flight.
    std::array<double, 3> state_bytes{};
    double kd = 0;                  // distillation: tau^2 KL per target token
    double dpo_margin = 0, dpo_accuracy = 0;  // DPO: mean beta-scaled reward margin, fraction of pairs ranked right
    // Mixture-of-experts models: the router losses (per token, summed over the MoE
    // layers, before their coefficients) and the rows each expert took, (layers, E).
    double moe_balance = 0, moe_z = 0;
    std::vector<int64_t> expert_tokens;
    int64_t moe_dropped = 0;  // slots dropped by --moe-capacity
    double mtp = 0;           // multi-token prediction: the modules' mean cross-entropy per target
  };
  // One optimizer step: grad_accum micro-batches of forward + backward, the
  // gradient all-reduce, clipping and AdamW. Error on a non-finite loss unless skipping.
  StepStats train_step();
  double evaluate();           // mean validation loss over eval_batches batches
  std::string save();          // checkpoint of the current step (root only; "" elsewhere)
  // The loop: steps to options().steps with logging, evaluation, plots and
  // checkpoints. stop, when given, is polled after every step: once it is
  // non-zero the run writes a checkpoint of that step and returns (interrupted).
  // The front end sets it from a signal handler (SIGINT / SIGTERM).
  TrainSummary run(const volatile std::sig_atomic_t* stop = nullptr);

  int64_t step() const { return step_; }  // optimizer steps done
  const TrainOptions& options() const { return o_; }
  const Layout& layout() const { return *L_; }
  // The trained parameters: the model's (Layout), or with LoRA the adapter's (LoraLayout).
  const float* params() const { return p_.data(); }
  const float* base_params() const { return lora_ ? base_ptr() : p_.data(); }
  const LoraLayout* lora_layout() const { return lora_.get(); }

 private:
  struct State;  // files and history (trainer.cpp)
  TrainOptions o_;
  std::FILE* log_;
  Communicator& world_;  // every rank of the job
  Communicator* dp_;     // the data-parallel group: world_, or with --tp the ranks holding the same slice
  std::unique_ptr<Communicator> dp_group_, tp_group_;  // --tp's split of world_ (tp_group_: one slice each)
  std::unique_ptr<Layout> tp_full_;                   // --tp: the whole model's layout (L_ is this rank's slice)
  std::vector<std::pair<size_t, size_t>> tp_split_;   // --tp: the split tensors' ranges in L_ (the clipping norm)
  std::vector<double> step_sums_;                     // train_step's per-step sums (reused)
  void make_groups();    // --tp: tensor-parallel groups of consecutive ranks, data-parallel groups across them
  Communicator::Traffic take_traffic();  // this rank's bytes and time in both groups since the last take
  // Writes checkpoint c (its header filled) at path as this run keeps them: whole from rank 0,
  // ZeRO shards from every rank plus rank 0's manifest, or tensor-parallel slices gathered.
  // True on the rank that completed the file. Every rank calls it (collectives inside).
  bool write_checkpoint(const std::string& path, struct Checkpoint& c);
  std::unique_ptr<State> st_;
  Dataset data_;
  std::unique_ptr<Layout> L_;
  ParamVec p_, g_, m_, v_;  // what is trained: the model, or the LoRA adapter
  std::unique_ptr<LoraLayout> lora_;
  std::unique_ptr<Teacher> teacher_;  // distillation
  std::unique_ptr<class DpoStep> dpo_;  // preference tuning
  std::unique_ptr<class RewardStep> reward_;  // reward model
  ParamVec ref_;                      // full-parameter DPO: the frozen reference
  ParamVec base_;           // an adapter run's frozen model (f32; see qbase_ for --qlora)
  // --qlora: the loaded base model (its matrices are read in place, in their stored type), and
  // the f32 flat buffer of the rest: an anonymous mapping whose matrix regions are never touched.
  std::unique_ptr<struct LoadedModel> frozen_model_;
  std::shared_ptr<float> qbase_;
  size_t qbase_f32_ = 0, qbase_matrix_bytes_ = 0;  // f32 elements written; the frozen matrices' bytes
  const float* base_ptr() const { return qbase_ ? qbase_.get() : base_.data(); }
  size_t n_train_ = 0;      // elements of p_ (Layout or LoraLayout total)
  // ZeRO: the ranks' parts of the flat buffer (size() + 1 offsets), this rank's [sb_, se_)
  // (everything without sharding); m_ and v_ hold that part only; gs_ its reduced gradient (stage 2;
  // stage 1 reduces in place into g_'s part).
  std::vector<size_t> shard_off_;
  size_t sb_ = 0, se_ = 0;
  ParamVec gs_;
  std::unique_ptr<class GradBuckets> buckets_;  // stage 2 (full training): the backward's buckets
  std::unique_ptr<class GradBuckets> overlap_;  // stage 0 (full training): buckets all-reduced during the backward
  bool sharded() const { return o_.zero >= 1 && dp_->size() > 1; }
  bool zero3() const { return buckets_ && o_.zero >= 3; }  // weights sharded too
  struct WholeRest;  // ZeRO-3: the weights outside the blocks gathered for a scope
  std::vector<uint8_t> mask_;
  std::vector<uint8_t> keep_;  // --keep-sparsity: 1 where a weight may be non-zero
  std::unique_ptr<Transformer<float>> model_;
  std::vector<int32_t> x_, y_, seg_;  // a micro-batch: inputs, targets, packed examples' first positions
  void fill_batch(int64_t step, int64_t mb);  // x_, y_ (and seg_) of micro-batch mb of the global batch
  // Prefix tuning's start: each layer's prefix rows are the base model's keys (after RoPE) and
  // values of the training split's first P tokens, so the untrained prefix is the model having
  // read them (Li & Liang's initialisation from real words' activations).
  void init_prefix();
  int64_t step_ = 0;
};

// Runs (or, with resume, continues) training on one process: a Trainer with a
// LocalCommunicator; progress goes to log (stderr in the CLI).
TrainSummary run_training(TrainOptions o, bool resume, std::FILE* log,
                          const volatile std::sig_atomic_t* stop = nullptr);
// The same on the given communicator (one rank of an MPI job).
TrainSummary run_training(TrainOptions o, bool resume, std::FILE* log, const volatile std::sig_atomic_t* stop,
                          Communicator& comm);

// Mean next-token loss of the parameters over n windows of the validation shard
// (an SFT dataset's: over its first n validation examples, response tokens only).
double evaluate(Transformer<float>& m, const float* p, const class TokenShard& val, int64_t n_windows);
double evaluate(Transformer<float>& m, const float* p, const struct SftSplit& val, int64_t n_examples);

}  // namespace tessera::train
