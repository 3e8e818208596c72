// The training loop: batches from a token dataset, forward/backward with
// gradient accumulation, clipping, AdamW under a schedule, periodic
// evaluation, metrics (JSONL), the loss plot (SVG) and crash-safe
// checkpoints; resumable bit for bit.
#pragma once
#include <csignal>
#include <cstdint>
#include <cstdio>
#include <string>

#include <nlohmann/json.hpp>

#include "model/config.h"
#include "train/optim.h"
#include "train/transformer.h"

namespace tessera::train {

struct TrainOptions {
  std::string data_dir;       // from 'tessera data prepare'
  std::string out_dir;        // checkpoints, metrics.jsonl, loss.svg, run.json
  std::string init_model;     // start from this model (any loadable format); "" = random init
  std::string init_tokenizer; // tokenizer for init_model when it carries none (recorded for export)
  ModelConfig model;          // used when init_model is empty
  int64_t batch = 8, seq = 256, grad_accum = 1, steps = 1000;
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
};

// Runs (or, with resume, continues from out_dir's newest checkpoint) training;
// progress goes to log (stderr in the CLI).
// stop, when given, is polled after every optimizer step: once it is non-zero
// the run writes a checkpoint of that step and returns (interrupted = true).
// The front end sets it from a signal handler (SIGINT / SIGTERM).
TrainSummary run_training(TrainOptions o, bool resume, std::FILE* log,
                          const volatile std::sig_atomic_t* stop = nullptr);

// Mean next-token loss of the parameters over n windows of the validation shard.
double evaluate(Transformer<float>& m, const float* p, const class TokenShard& val, int64_t n_windows);

}  // namespace tessera::train
