#include "infer/kl_divergence.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <filesystem>

#include <unistd.h>

#include "core/error.h"

namespace tessera {

namespace {

constexpr char kMagic[8] = {'T', 'S', 'K', 'L', 'B', 'A', 'S', 'E'};
constexpr uint32_t kVersion = 1;
constexpr float kFloor = -30.f;  // log-probabilities below this are stored as this

// log softmax of logits(n) into out, in double.
void log_softmax(const float* logits, int64_t n, double* out) {
  const float mx = *std::max_element(logits, logits + n);
  double sum = 0;
  for (int64_t v = 0; v < n; ++v) sum += std::exp(double(logits[v] - mx));
  const double lse = double(mx) + std::log(sum);
  for (int64_t v = 0; v < n; ++v) out[v] = double(logits[v]) - lse;
}

template <class T>
void put(std::FILE* f, const T& v, const std::string& path) {
  if (std::fwrite(&v, sizeof v, 1, f) != 1) fail(path, ": write failed");
}
template <class T>
void get(std::FILE* f, T& v, const std::string& path, const char* what) {
  if (std::fread(&v, sizeof v, 1, f) != 1) fail(path, ": truncated KL-divergence base file (reading ", what, ")");
}

}  // namespace

KlBaseWriter::KlBaseWriter(const std::string& path, const KlRun& run)
    : path_(path), tmp_(path + ".tmp"), V_(run.n_vocab), lp_(size_t(run.n_vocab)), q_(size_t(run.n_vocab)) {
  f_ = std::fopen(tmp_.c_str(), "wb");
  if (!f_) fail(tmp_, ": cannot create (", std::strerror(errno), ")");
  if (std::fwrite(kMagic, 1, 8, f_) != 8) fail(tmp_, ": write failed");
  put(f_, kVersion, tmp_);
  put(f_, run.n_ctx, tmp_);
  put(f_, run.n_vocab, tmp_);
  put(f_, run.bos, tmp_);
  put(f_, run.n_windows, tmp_);
  put(f_, int64_t(run.ids.size()), tmp_);
  if (!run.ids.empty() && std::fwrite(run.ids.data(), 4, run.ids.size(), f_) != run.ids.size())
    fail(tmp_, ": write failed");
}

KlBaseWriter::~KlBaseWriter() {
  if (f_) {  // not finished: leave nothing behind
    std::fclose(f_);
    std::remove(tmp_.c_str());
  }
}

void KlBaseWriter::add(const float* logits, int64_t rows) {
  std::vector<double>& lp = lp_;
  for (int64_t r = 0; r < rows; ++r) {
    log_softmax(logits + r * V_, V_, lp.data());
    const float lo = kFloor, hi = float(*std::max_element(lp.begin(), lp.end()));
    const float step = hi > lo ? (hi - lo) / 65535.f : 1.f;
    for (int64_t v = 0; v < V_; ++v) {
      const double x = std::clamp((lp[size_t(v)] - lo) / step, 0.0, 65535.0);
      q_[size_t(v)] = uint16_t(std::lround(x));
    }
    put(f_, lo, tmp_);
    put(f_, step, tmp_);
    if (std::fwrite(q_.data(), 2, q_.size(), f_) != q_.size()) fail(tmp_, ": write failed");
  }
}

void KlBaseWriter::finish() {
  const bool ok = std::fflush(f_) == 0 && ::fsync(fileno(f_)) == 0;
  std::fclose(f_);
  f_ = nullptr;
  if (!ok) {
    std::remove(tmp_.c_str());
    fail(tmp_, ": write failed");
  }
  std::error_code ec;
  std::filesystem::rename(tmp_, path_, ec);
  if (ec) fail(path_, ": cannot rename ", tmp_, " into place (", ec.message(), ")");
}

KlBaseReader::KlBaseReader(const std::string& path) : path_(path) {
  f_ = std::fopen(path.c_str(), "rb");
  if (!f_) fail(path, ": cannot open KL-divergence base file (", std::strerror(errno), ")");
  char magic[8];
  if (std::fread(magic, 1, 8, f_) != 8 || std::memcmp(magic, kMagic, 8) != 0)
    fail(path, ": not a KL-divergence base file (write one with perplexity --kl-divergence-base)");
  uint32_t version = 0;
  get(f_, version, path, "version");
  if (version != kVersion) fail(path, ": KL-divergence base file version ", version, ", this build reads ", kVersion);
  int64_t n_ids = 0;
  get(f_, run_.n_ctx, path, "n_ctx");
  get(f_, run_.n_vocab, path, "n_vocab");
  get(f_, run_.bos, path, "bos");
  get(f_, run_.n_windows, path, "n_windows");
  get(f_, n_ids, path, "n_ids");
  if (run_.n_ctx < 2 || run_.n_vocab < 1 || run_.n_windows < 1 || n_ids < 1 || n_ids > (int64_t(1) << 32))
    fail(path, ": corrupt KL-divergence base header (n_ctx ", run_.n_ctx, ", n_vocab ", run_.n_vocab, ", windows ",
         run_.n_windows, ", ids ", n_ids, ")");
  run_.ids.resize(size_t(n_ids));
  if (std::fread(run_.ids.data(), 4, size_t(n_ids), f_) != size_t(n_ids))
    fail(path, ": truncated KL-divergence base file (token ids)");
  q_.resize(size_t(run_.n_vocab));
}

KlBaseReader::~KlBaseReader() {
  if (f_) std::fclose(f_);
}

void KlBaseReader::next(float* logp) {
  float lo = 0, step = 0;
  get(f_, lo, path_, "log-probabilities");
  get(f_, step, path_, "log-probabilities");
  if (std::fread(q_.data(), 2, q_.size(), f_) != q_.size())
    fail(path_, ": truncated KL-divergence base file (log-probabilities)");
  for (size_t v = 0; v < q_.size(); ++v) logp[v] = lo + step * float(q_[v]);
}

void KlAccumulator::add(const float* base_logp, const float* logits, int64_t V, int32_t target) {
  lp_.resize(size_t(2 * V));
  double* lb = lp_.data();
  double* lm = lp_.data() + V;
  // Renormalize the stored base (its rounding leaves the sum of p a little off 1).
  double mx = base_logp[0];
  for (int64_t v = 1; v < V; ++v) mx = std::max(mx, double(base_logp[v]));
  double sum = 0;
  for (int64_t v = 0; v < V; ++v) sum += std::exp(double(base_logp[v]) - mx);
  const double lse = mx + std::log(sum);
  for (int64_t v = 0; v < V; ++v) lb[v] = double(base_logp[v]) - lse;
  log_softmax(logits, V, lm);
  double kl = 0;
  int64_t top_b = 0, top_m = 0;
  for (int64_t v = 0; v < V; ++v) {
    kl += std::exp(lb[v]) * (lb[v] - lm[v]);
    if (lb[v] > lb[top_b]) top_b = v;
    if (lm[v] > lm[top_m]) top_m = v;
  }
  kl_.push_back(std::max(kl, 0.0));
  same_top_ += top_b == top_m;
  nll_model_ -= lm[target];
  nll_base_ -= lb[target];
  const double dp = std::exp(lm[target]) - std::exp(lb[target]);
  dp2_ += dp * dp;
}

KlStats KlAccumulator::finish() const {
  KlStats s;
  s.n = int64_t(kl_.size());
  if (s.n == 0) return s;
  const double n = double(s.n);
  double sum = 0, sum2 = 0;
  for (double k : kl_) sum += k, sum2 += k * k;
  s.kl_mean = sum / n;
  s.kl_stderr = s.n > 1 ? std::sqrt(std::max(0.0, sum2 / n - s.kl_mean * s.kl_mean) / (n - 1)) : 0;
  std::vector<double> k = kl_;
  std::sort(k.begin(), k.end());
  auto pct = [&](double p) { return k[size_t(std::min(n - 1, std::floor(p * (n - 1) + 0.5)))]; };
  s.kl_median = pct(0.5), s.kl_p90 = pct(0.9), s.kl_p95 = pct(0.95), s.kl_p99 = pct(0.99), s.kl_p999 = pct(0.999);
  s.kl_max = k.back();
  s.top1_agreement = double(same_top_) / n;
  s.ppl_model = std::exp(nll_model_ / n);
  s.ppl_base = std::exp(nll_base_ / n);
  s.ppl_ratio = s.ppl_model / s.ppl_base;
  s.rms_dp = std::sqrt(dp2_ / n);
  return s;
}

}  // namespace tessera
