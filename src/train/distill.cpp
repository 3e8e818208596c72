#include "train/distill.h"

#include <algorithm>
#include <cmath>

#include "core/error.h"

namespace tessera::train {

void KdOptions::validate() const {
  if (!(alpha >= 0.f && alpha <= 1.f)) fail("--kd-alpha must be in [0, 1], got ", alpha);
  if (!(temp > 0.f)) fail("--kd-temp must be positive, got ", temp);
}

template <class T>
blk::CeResult kd_cross_entropy(T* logits, const int32_t* targets, const float* teacher_logp, int64_t N, int64_t V,
                               const KdOptions& kd, float scale) {
  std::vector<double> nll(static_cast<size_t>(N)), zz(static_cast<size_t>(N)), kl(static_cast<size_t>(N));
  const T a = T(kd.alpha), tau = T(kd.temp), sc = T(scale);
#pragma omp parallel
  {
    std::vector<T> q(static_cast<size_t>(V));  // log softmax(z / tau)
#pragma omp for schedule(static)
    for (int64_t n = 0; n < N; ++n) {
      T* z = logits + n * V;
      const int32_t t = targets[n];
      if (t < 0) {
        std::fill(z, z + V, T(0));
        continue;
      }
      const float* pt = teacher_logp + n * V;
      T mx = z[0];
      for (int64_t v = 1; v < V; ++v) mx = std::max(mx, z[v]);
      T s1 = 0, st = 0;
      for (int64_t v = 0; v < V; ++v) s1 += std::exp(z[v] - mx), st += std::exp((z[v] - mx) / tau);
      const T lse = mx + std::log(s1), lse_t = mx / tau + std::log(st);
      nll[size_t(n)] = double(lse - z[t]), zz[size_t(n)] = double(lse) * double(lse);
      for (int64_t v = 0; v < V; ++v) q[size_t(v)] = z[v] / tau - lse_t;
      // KL and its gradient with respect to z / tau (times tau^2 / tau = tau for z).
      T k = 0;
      if (!kd.reverse) {  // sum p_t (log p_t - log q)
        for (int64_t v = 0; v < V; ++v) {
          const T p = T(std::exp(pt[v]));
          if (p > 0) k += p * (T(pt[v]) - q[size_t(v)]);
        }
      } else {  // sum q (log q - log p_t)
        for (int64_t v = 0; v < V; ++v) k += std::exp(q[size_t(v)]) * (q[size_t(v)] - T(pt[v]));
      }
      kl[size_t(n)] = double(tau * tau * k);
      for (int64_t v = 0; v < V; ++v) {
        const T ps = std::exp(z[v] - lse), qs = std::exp(q[size_t(v)]);
        const T data = ps - (v == t ? T(1) : T(0));
        const T dkl = kd.reverse ? qs * ((q[size_t(v)] - T(pt[v])) - k) : qs - T(std::exp(pt[v]));
        z[v] = ((T(1) - a) * data + a * tau * dkl) * sc;
      }
    }
  }
  blk::CeResult r;
  for (int64_t n = 0; n < N; ++n)
    if (targets[n] >= 0) r.loss_sum += nll[size_t(n)], r.z_sum += zz[size_t(n)], r.kd_sum += kl[size_t(n)], ++r.count;
  return r;
}

template blk::CeResult kd_cross_entropy<float>(float*, const int32_t*, const float*, int64_t, int64_t,
                                               const KdOptions&, float);
template blk::CeResult kd_cross_entropy<double>(double*, const int32_t*, const float*, int64_t, int64_t,
                                                const KdOptions&, float);

Teacher::Teacher(const KdOptions& kd, int64_t vocab, int64_t B, int64_t T, int threads)
    : lm_(load_model(kd.teacher, kd.teacher_tokenizer)), ctx_(threads), B_(B), T_(T), V_(vocab), temp_(kd.temp) {
  const ModelConfig& c = lm_.weights.cfg;
  if (c.vocab_size != vocab)
    fail("--teacher ", kd.teacher, ": vocabulary of ", c.vocab_size, " tokens, the student's has ", vocab,
         " (teacher and student must share the tokenizer)");
  if (T > c.max_seq_len)
    fail("--teacher ", kd.teacher, ": --seq ", T, " exceeds the teacher's context ", c.max_seq_len);
  repack_weights(lm_.weights, ctx_.isa, threads);
  RunOptions ro;
  ro.n_ctx = T, ro.max_batch = std::min<int64_t>(T, 256), ro.max_threads = threads;
  ro.persistent_team = false;  // between training steps: no spinning team beside OpenMP's
  model_ = std::make_unique<Model>(lm_.weights, ro);
  out_.resize(size_t(B * T * vocab));
}

const float* Teacher::logprobs(const int32_t* x) {
  for (int64_t b = 0; b < B_; ++b) model_->forward_all(ctx_, x + b * T_, T_, 0, out_.data() + b * T_ * V_);
  const float inv = 1.f / temp_;
#pragma omp parallel for schedule(static)
  for (int64_t n = 0; n < B_ * T_; ++n) {
    float* z = out_.data() + n * V_;
    float mx = z[0];
    for (int64_t v = 1; v < V_; ++v) mx = std::max(mx, z[v]);
    double s = 0;
    for (int64_t v = 0; v < V_; ++v) s += std::exp(double((z[v] - mx) * inv));
    const float lse = float(std::log(s));
    for (int64_t v = 0; v < V_; ++v) z[v] = (z[v] - mx) * inv - lse;
  }
  return out_.data();
}

}  // namespace tessera::train
