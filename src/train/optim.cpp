#include "train/optim.h"

#include <algorithm>
#include <cmath>
#include <type_traits>

#include "core/error.h"
#include "kernels/adamw.h"

namespace tessera::train {

std::vector<uint8_t> decay_mask(const Layout& L, const AdamWConfig& cfg) {
  std::vector<uint8_t> m(L.total, 0);
  for (const auto& t : L.tensors) {
    const bool d = t.embedding ? cfg.decay_embeddings : (t.matrix || cfg.decay_norms);
    for (size_t i = 0; i < t.numel; ++i) m[t.offset + i] = d;
  }
  for (const auto& l : L.layers)  // a router's selection bias moves by the loads only (moe_bias_update)
    if (l.router_bias != kAbsent) std::fill_n(m.begin() + ptrdiff_t(l.router_bias), L.cfg.moe_experts, uint8_t(0));
  return m;
}

void moe_bias_update(const Layout& L, float* p, const std::vector<double>& counts, float rate) {
  const int64_t E = L.cfg.moe_experts;
  if (int64_t(counts.size()) != L.cfg.n_layers * E)
    fail("moe_bias_update: ", counts.size(), " counts for ", L.cfg.n_layers, " layers of ", E, " experts");
  for (int64_t l = 0; l < L.cfg.n_layers; ++l) {
    const size_t off = L.layers[size_t(l)].router_bias;
    if (off == kAbsent) continue;
    const double* c = counts.data() + l * E;
    double mean = 0;
    for (int64_t e = 0; e < E; ++e) mean += c[e];
    mean /= double(E);
    for (int64_t e = 0; e < E; ++e) p[off + size_t(e)] += rate * float((c[e] < mean) - (c[e] > mean));
  }
}

template <class T>
void adamw_step(T* p, const T* g, T* m, T* v, const uint8_t* mask, size_t n, int64_t t, float lr,
                const AdamWConfig& cfg, Isa isa, float grad_scale) {
  const T b1 = T(cfg.beta1), b2 = T(cfg.beta2), eps = T(cfg.eps), a = T(lr);
  const T c1 = T(1) / (T(1) - std::pow(b1, T(t))), c2 = T(1) / (T(1) - std::pow(b2, T(t)));
  const T decay = T(1) - a * T(cfg.weight_decay);
  if constexpr (std::is_same_v<T, float>) {
    if (isa == Isa::AVX512) {
      constexpr int64_t kChunk = 1 << 14;
      const int64_t nn = int64_t(n);
#pragma omp parallel for schedule(static)
      for (int64_t i = 0; i < nn; i += kChunk)
        cpu::avx512::adamw(p + i, g + i, m + i, v + i, mask + i, std::min(kChunk, nn - i), b1, b2, eps, a, c1, c2,
                           decay, grad_scale);
      return;
    }
  }
#pragma omp parallel for schedule(static)
  for (size_t i = 0; i < n; ++i) {
    const T gi = g[i] * T(grad_scale);
    if (mask[i]) p[i] *= decay;
    m[i] = b1 * m[i] + (T(1) - b1) * gi;
    v[i] = b2 * v[i] + (T(1) - b2) * gi * gi;
    p[i] -= a * (m[i] * c1) / (std::sqrt(v[i] * c2) + eps);
  }
}

template <class T>
double grad_norm(const T* g, size_t n) {
  constexpr size_t kBlock = 1 << 16;
  const size_t nb = (n + kBlock - 1) / kBlock;
  std::vector<double> part(nb, 0.0);
#pragma omp parallel for schedule(static)
  for (size_t b = 0; b < nb; ++b) {
    double s = 0;
    const size_t e = std::min(n, (b + 1) * kBlock);
#pragma omp simd reduction(+ : s)  // lanes in a fixed order: the same sum for any thread count
    for (size_t i = b * kBlock; i < e; ++i) s += double(g[i]) * double(g[i]);
    part[b] = s;
  }
  double s = 0;
  for (double x : part) s += x;
  return std::sqrt(s);
}

template void adamw_step<float>(float*, const float*, float*, float*, const uint8_t*, size_t, int64_t, float,
                                const AdamWConfig&, Isa, float);
template void adamw_step<double>(double*, const double*, double*, double*, const uint8_t*, size_t, int64_t, float,
                                 const AdamWConfig&, Isa, float);
template double grad_norm<float>(const float*, size_t);
template double grad_norm<double>(const double*, size_t);

float Schedule::at(int64_t step) const {
  if (warmup > 0 && step < warmup) return lr * float(step + 1) / float(warmup);
  if (kind == Constant) return lr;
  const double s = double(step - warmup);
  double frac;  // position in the current cosine period, 0..1
  if (kind == Cosine) {
    const double span = double(std::max<int64_t>(1, total - warmup));
    frac = std::min(1.0, s / span);
  } else {
    double len = double(period), start = 0;
    while (s >= start + len) start += len, len *= period_mult;
    frac = (s - start) / len;
  }
  return float(min_lr + 0.5 * (lr - min_lr) * (1.0 + std::cos(M_PI * frac)));
}

void Schedule::validate() const {
  if (!(lr > 0.f)) fail("--lr must be positive, got ", lr);
  if (min_lr < 0.f || min_lr > lr) fail("--min-lr must be in [0, lr], got ", min_lr);
  if (warmup < 0) fail("--warmup must be >= 0, got ", warmup);
  if (kind == CosineRestarts && period <= 0) fail("--sgdr-period must be positive, got ", period);
  if (kind == CosineRestarts && !(period_mult >= 1.f)) fail("--sgdr-mult must be >= 1, got ", period_mult);
}

Schedule::Kind parse_schedule_kind(const std::string& s) {
  if (s == "constant") return Schedule::Constant;
  if (s == "cosine") return Schedule::Cosine;
  if (s == "sgdr" || s == "cosine-restarts") return Schedule::CosineRestarts;
  fail("unknown schedule '", s, "' (known: constant, cosine, sgdr)");
}

}  // namespace tessera::train
