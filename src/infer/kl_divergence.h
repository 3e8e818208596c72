// Comparing a model's next-token distributions with a base model's, as
// llama.cpp's perplexity tool does (--kl-divergence-base / --kl-divergence):
// the base run saves, for every scored position, its log-probabilities; a
// later run of another model (typically a quantized copy) over the same
// tokens reports KL(base || model) (mean, percentiles, max), how often both
// pick the same most likely token, both perplexities and their ratio, and the
// RMS change in the probability of the actual next token.
//
// File (little-endian; written to PATH.tmp and renamed into place):
//   "TSKLBASE" | u32 version 1 | i64 n_ctx | i64 n_vocab | i32 bos | i64 n_windows | i64 n_ids | i32 ids[n_ids]
//   then per scored position, in order: f32 lo | f32 step | u16 q[n_vocab],
//   log p[v] = lo + step * q[v] (log-probabilities below -30 are stored as -30).
#pragma once
#include <cstdint>
#include <cstdio>
#include <string>
#include <vector>

namespace tessera {

// The evaluation a base file describes: perplexity() over ids with these windows.
struct KlRun {
  int64_t n_ctx = 0, n_vocab = 0, n_windows = 0;
  int32_t bos = -1;
  std::vector<int32_t> ids;
};

class KlBaseWriter {
 public:
  KlBaseWriter(const std::string& path, const KlRun& run);
  ~KlBaseWriter();
  KlBaseWriter(const KlBaseWriter&) = delete;
  KlBaseWriter& operator=(const KlBaseWriter&) = delete;
  void add(const float* logits, int64_t rows);  // rows x n_vocab logits, the next scored positions
  void finish();                                // flushes and renames into place

 private:
  std::string path_, tmp_;
  std::FILE* f_ = nullptr;
  int64_t V_;
  std::vector<double> lp_;
  std::vector<uint16_t> q_;
};

class KlBaseReader {
 public:
  explicit KlBaseReader(const std::string& path);  // throws Error naming the file when it is not a base file
  ~KlBaseReader();
  KlBaseReader(const KlBaseReader&) = delete;
  KlBaseReader& operator=(const KlBaseReader&) = delete;
  const KlRun& run() const { return run_; }
  void next(float* logp);  // the next position's n_vocab base log-probabilities

 private:
  std::string path_;
  std::FILE* f_ = nullptr;
  KlRun run_;
  std::vector<uint16_t> q_;
};

struct KlStats {
  int64_t n = 0;
  double kl_mean = 0, kl_stderr = 0, kl_median = 0, kl_p90 = 0, kl_p95 = 0, kl_p99 = 0, kl_p999 = 0, kl_max = 0;
  double top1_agreement = 0;           // fraction of positions with the same most likely token
  double ppl_model = 0, ppl_base = 0;  // over the same positions
  double ppl_ratio = 0;                // ppl_model / ppl_base
  double rms_dp = 0;                   // RMS of p_model(next) - p_base(next)
};

class KlAccumulator {
 public:
  // One position: base log-probabilities (n_vocab), the model's logits, the actual next token.
  void add(const float* base_logp, const float* logits, int64_t n_vocab, int32_t target);
  KlStats finish() const;

 private:
  std::vector<double> kl_;
  double nll_model_ = 0, nll_base_ = 0, dp2_ = 0;
  int64_t same_top_ = 0;
  std::vector<double> lp_;  // scratch
};

}  // namespace tessera
