// Independent float64 Llama over a llama2.c legacy file, written from the
// format description (not reusing production code). Shared by the model and
// training tests.
#pragma once
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <fstream>
#include <string>
#include <vector>

namespace tessera::test {

// Minimal float64 Llama over a llama2.c legacy file.
struct RefLlama {
  int dim, hidden, layers, heads, kv_heads, vocab, seq;
  std::vector<double> emb, att_norm, wq, wk, wv, wo, ffn_norm, w1, w2, w3, final_norm;
  std::vector<std::vector<double>> kcache, vcache;  // per layer (seq, kv_dim)
  std::vector<double> freq_div;  // RoPE scaling: frequency j / 2 divided by freq_div[j / 2]; empty = none
  std::vector<int> window;       // per layer: > 0 attends to the last window positions only (a band mask); empty = none

  explicit RefLlama(const std::string& path) {
    std::ifstream in(path, std::ios::binary);
    int32_t h[7];
    in.read(reinterpret_cast<char*>(h), sizeof h);
    dim = h[0], hidden = h[1], layers = h[2], heads = h[3], kv_heads = h[4], vocab = std::abs(h[5]), seq = h[6];
    const int kvd = dim / heads * kv_heads;
    auto rd = [&](std::vector<double>& v, size_t n) {
      std::vector<float> f(n);
      in.read(reinterpret_cast<char*>(f.data()), std::streamsize(n * 4));
      v.assign(f.begin(), f.end());
    };
    rd(emb, size_t(vocab) * dim);
    rd(att_norm, size_t(layers) * dim);
    rd(wq, size_t(layers) * dim * dim);
    rd(wk, size_t(layers) * dim * kvd);
    rd(wv, size_t(layers) * dim * kvd);
    rd(wo, size_t(layers) * dim * dim);
    rd(ffn_norm, size_t(layers) * dim);
    rd(w1, size_t(layers) * dim * hidden);
    rd(w2, size_t(layers) * dim * hidden);
    rd(w3, size_t(layers) * dim * hidden);
    rd(final_norm, size_t(dim));
    kcache.assign(size_t(layers), std::vector<double>(size_t(seq) * kvd));
    vcache.assign(size_t(layers), std::vector<double>(size_t(seq) * kvd));
  }

  static void rms(std::vector<double>& o, const std::vector<double>& x, const double* w) {
    double ss = 0;
    for (double v : x) ss += v * v;
    const double s = 1.0 / std::sqrt(ss / double(x.size()) + 1e-5);
    for (size_t i = 0; i < x.size(); ++i) o[i] = x[i] * s * w[i];
  }
  static void mv(std::vector<double>& y, const double* W, const std::vector<double>& x, int n, int k) {
    for (int i = 0; i < n; ++i) {
      double a = 0;
      for (int j = 0; j < k; ++j) a += W[size_t(i) * k + j] * x[size_t(j)];
      y[size_t(i)] = a;
    }
  }

  std::vector<double> step(int token, int pos) {
    const int hd = dim / heads, kvd = hd * kv_heads;
    std::vector<double> x(emb.begin() + long(token) * dim, emb.begin() + long(token + 1) * dim);
    std::vector<double> xb(static_cast<size_t>(dim)), q(static_cast<size_t>(dim)), k(static_cast<size_t>(kvd)), v(static_cast<size_t>(kvd)), att(static_cast<size_t>(dim)),
        o(static_cast<size_t>(dim)), g(static_cast<size_t>(hidden)), u(static_cast<size_t>(hidden));
    for (int l = 0; l < layers; ++l) {
      rms(xb, x, &att_norm[size_t(l) * dim]);
      mv(q, &wq[size_t(l) * dim * dim], xb, dim, dim);
      mv(k, &wk[size_t(l) * dim * kvd], xb, kvd, dim);
      mv(v, &wv[size_t(l) * dim * kvd], xb, kvd, dim);
      auto rot = [&](std::vector<double>& vec, int n) {
        for (int i = 0; i < n; i += 2) {
          const int j = i % hd;
          const double ang = pos * std::pow(10000.0, -double(j) / hd) / (freq_div.empty() ? 1.0 : freq_div[size_t(j / 2)]);
          const double a = vec[size_t(i)], b = vec[size_t(i + 1)];
          vec[size_t(i)] = a * std::cos(ang) - b * std::sin(ang);
          vec[size_t(i + 1)] = a * std::sin(ang) + b * std::cos(ang);
        }
      };
      rot(q, dim);
      rot(k, kvd);
      std::copy(k.begin(), k.end(), kcache[size_t(l)].begin() + long(pos) * kvd);
      std::copy(v.begin(), v.end(), vcache[size_t(l)].begin() + long(pos) * kvd);
      // Keys [lo, pos]: the band of a sliding window, else all of them.
      const int lo = !window.empty() && window[size_t(l)] > 0 ? std::max(0, pos - window[size_t(l)] + 1) : 0;
      for (int h = 0; h < heads; ++h) {
        const int kh = h / (heads / kv_heads);
        std::vector<double> s(static_cast<size_t>(pos + 1), -1e300);
        double mx = -1e300;
        for (int t = lo; t <= pos; ++t) {
          double d = 0;
          for (int i = 0; i < hd; ++i) d += q[size_t(h * hd + i)] * kcache[size_t(l)][size_t(t) * kvd + kh * hd + i];
          s[size_t(t)] = d / std::sqrt(double(hd));
          mx = std::max(mx, s[size_t(t)]);
        }
        double sum = 0;
        for (auto& e : s) sum += (e = std::exp(e - mx));  // masked keys: exp(-1e300 - mx) = 0
        for (int i = 0; i < hd; ++i) {
          double a = 0;
          for (int t = lo; t <= pos; ++t) a += s[size_t(t)] / sum * vcache[size_t(l)][size_t(t) * kvd + kh * hd + i];
          att[size_t(h * hd + i)] = a;
        }
      }
      mv(o, &wo[size_t(l) * dim * dim], att, dim, dim);
      for (int i = 0; i < dim; ++i) x[size_t(i)] += o[size_t(i)];
      rms(xb, x, &ffn_norm[size_t(l) * dim]);
      mv(g, &w1[size_t(l) * dim * hidden], xb, hidden, dim);
      mv(u, &w3[size_t(l) * dim * hidden], xb, hidden, dim);
      for (int i = 0; i < hidden; ++i) g[size_t(i)] = g[size_t(i)] / (1 + std::exp(-g[size_t(i)])) * u[size_t(i)];
      mv(o, &w2[size_t(l) * dim * hidden], g, dim, hidden);
      for (int i = 0; i < dim; ++i) x[size_t(i)] += o[size_t(i)];
    }
    rms(xb, x, final_norm.data());
    std::vector<double> logits(static_cast<size_t>(vocab));
    mv(logits, emb.data(), xb, vocab, dim);
    return logits;
  }

  // Mean next-token cross-entropy of tokens(n) (targets tokens[1..n)), from position 0.
  double loss(const std::vector<int32_t>& tokens) {
    double s = 0;
    for (size_t t = 0; t + 1 < tokens.size(); ++t) {
      const std::vector<double> z = step(tokens[t], int(t));
      double mx = z[0];
      for (double v : z) mx = std::max(mx, v);
      double sum = 0;
      for (double v : z) sum += std::exp(v - mx);
      s += mx + std::log(sum) - z[size_t(tokens[t + 1])];
    }
    return s / double(tokens.size() - 1);
  }
};

}  // namespace tessera::test
