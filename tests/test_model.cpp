// Whole-model checks on stories260K against an independent float64 reference
// written here from the llama2.c format description (not reusing production code).
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <fstream>
#include <vector>

#include "core/error.h"
#include "formats/llama2c.h"
#include "model/model.h"
#include "test_util.h"

using namespace tessera;

namespace {

// Minimal float64 Llama over a llama2.c legacy file.
struct RefLlama {
  int dim, hidden, layers, heads, kv_heads, vocab, seq;
  std::vector<double> emb, att_norm, wq, wk, wv, wo, ffn_norm, w1, w2, w3, final_norm;
  std::vector<std::vector<double>> kcache, vcache;  // per layer (seq, kv_dim)

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
          const double ang = pos * std::pow(10000.0, -double(j) / hd);
          const double a = vec[size_t(i)], b = vec[size_t(i + 1)];
          vec[size_t(i)] = a * std::cos(ang) - b * std::sin(ang);
          vec[size_t(i + 1)] = a * std::sin(ang) + b * std::cos(ang);
        }
      };
      rot(q, dim);
      rot(k, kvd);
      std::copy(k.begin(), k.end(), kcache[size_t(l)].begin() + long(pos) * kvd);
      std::copy(v.begin(), v.end(), vcache[size_t(l)].begin() + long(pos) * kvd);
      for (int h = 0; h < heads; ++h) {
        const int kh = h / (heads / kv_heads);
        std::vector<double> s(static_cast<size_t>(pos + 1));
        double mx = -1e300;
        for (int t = 0; t <= pos; ++t) {
          double d = 0;
          for (int i = 0; i < hd; ++i) d += q[size_t(h * hd + i)] * kcache[size_t(l)][size_t(t) * kvd + kh * hd + i];
          s[size_t(t)] = d / std::sqrt(double(hd));
          mx = std::max(mx, s[size_t(t)]);
        }
        double sum = 0;
        for (auto& e : s) sum += (e = std::exp(e - mx));
        for (int i = 0; i < hd; ++i) {
          double a = 0;
          for (int t = 0; t <= pos; ++t) a += s[size_t(t)] / sum * vcache[size_t(l)][size_t(t) * kvd + kh * hd + i];
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
};

const std::vector<int32_t> kTokens = {1, 403, 407, 261, 378, 395, 342, 263, 289, 260, 381, 500, 301, 282, 265, 30};

}  // namespace

TEST(Model, Stories260KMatchesFloat64Reference) {
  TESSERA_REQUIRE_SHARED("models/stories260K.bin");
  const std::string path = test::shared_path("models/stories260K.bin");
  Weights w = load_llama2c(path);
  EXPECT_EQ(w.cfg.dim, 64);
  EXPECT_EQ(w.cfg.n_kv_heads, 4);
  RefLlama ref(path);
  for (int threads : {1, 2}) {
    Model m(w, RunOptions{});
    KernelContext ctx(threads);
    for (size_t p = 0; p < kTokens.size(); ++p) {
      const float* lg = m.forward(ctx, &kTokens[p], 1, int64_t(p));
      std::vector<double> want = ref.step(kTokens[p], int(p));
      double err = 0, mag = 0;
      for (size_t i = 0; i < want.size(); ++i) {
        err = std::max(err, std::fabs(double(lg[i]) - want[i]));
        mag = std::max(mag, std::fabs(want[i]));
      }
      EXPECT_LT(err, 1e-4 * std::max(1.0, mag)) << "position " << p << " threads " << threads;
    }
  }
}

TEST(Model, PrefillEqualsTokenByTokenDecode) {
  TESSERA_REQUIRE_SHARED("models/stories260K.bin");
  Weights w = load_llama2c(test::shared_path("models/stories260K.bin"));
  const int64_t V = w.cfg.vocab_size, n = int64_t(kTokens.size());
  KernelContext ctx(2);
  RunOptions ro;
  ro.max_batch = 5;  // forces several chunks
  Model batched(w, ro);
  std::vector<float> all(size_t(n * V));
  batched.forward_all(ctx, kTokens.data(), n, 0, all.data());
  Model step(w, RunOptions{});
  for (int64_t p = 0; p < n; ++p) {
    const float* lg = step.forward(ctx, &kTokens[size_t(p)], 1, p);
    for (int64_t i = 0; i < V; ++i) ASSERT_NEAR(lg[i], all[size_t(p * V + i)], 1e-4) << "pos " << p << " id " << i;
  }
}

TEST(Model, F16KvCacheStaysClose) {
  TESSERA_REQUIRE_SHARED("models/stories260K.bin");
  Weights w = load_llama2c(test::shared_path("models/stories260K.bin"));
  KernelContext ctx(1);
  RunOptions a, b;
  b.kv_f16 = true;
  Model m32(w, a), m16(w, b);
  const float* l32 = m32.forward(ctx, kTokens.data(), int64_t(kTokens.size()), 0);
  std::vector<float> keep(l32, l32 + w.cfg.vocab_size);
  const float* l16 = m16.forward(ctx, kTokens.data(), int64_t(kTokens.size()), 0);
  for (int64_t i = 0; i < w.cfg.vocab_size; ++i) EXPECT_NEAR(keep[size_t(i)], l16[i], 2e-2);
}

TEST(Model, Ak42Int8LoadsAndTracksFp32) {
  TESSERA_REQUIRE_SHARED("models/stories260K_q8.bin");
  Weights w8 = load_llama2c(test::shared_path("models/stories260K_q8.bin"));
  Weights w32 = load_llama2c(test::shared_path("models/stories260K.bin"));
  EXPECT_EQ(w8.tok_embd.dtype, DType::Q8_G);
  EXPECT_EQ(w8.tok_embd.group, 4);
  KernelContext ctx(1);
  Model m8(w8, RunOptions{}), m32(w32, RunOptions{});
  const float* a = m32.forward(ctx, kTokens.data(), int64_t(kTokens.size()), 0);
  std::vector<float> keep(a, a + w32.cfg.vocab_size);
  const float* b = m8.forward(ctx, kTokens.data(), int64_t(kTokens.size()), 0);
  EXPECT_EQ(std::max_element(keep.begin(), keep.end()) - keep.begin(), std::max_element(b, b + 512) - b);
  for (int64_t i = 0; i < w32.cfg.vocab_size; ++i) EXPECT_NEAR(keep[size_t(i)], b[i], 0.5);
}

TEST(Model, ContextOverflowAndBadTokensAreErrors) {
  TESSERA_REQUIRE_SHARED("models/stories260K.bin");
  Weights w = load_llama2c(test::shared_path("models/stories260K.bin"));
  RunOptions ro;
  ro.n_ctx = 8;
  Model m(w, ro);
  KernelContext ctx(1);
  EXPECT_THROW(m.forward(ctx, kTokens.data(), 9, 0), Error);
  const int32_t bad = 512;
  EXPECT_THROW(m.forward(ctx, &bad, 1, 0), Error);
}

#include "infer/perplexity.h"
#include "tokenizer/tokenizer.h"

namespace {
const char* kGolden = "One day, a clever fox found a shiny key under the old oak tree.";
}

TEST(Model, GoldenSentenceNllMatchesReference) {
  TESSERA_REQUIRE_SHARED("models/stories260K.bin");
  Tokenizer tok = load_llama2c_tokenizer(test::shared_path("models/tok512.bin"), 512);
  const std::vector<int32_t> ids = tok.encode(kGolden);
  ASSERT_EQ(ids.size(), 35u);
  ASSERT_EQ(ids[0], 1);
  KernelContext ctx(2);
  Weights w = load_llama2c(test::shared_path("models/stories260K.bin"));
  Model m(w, RunOptions{});
  const double nll = sequence_nll(m, ctx, ids);
  EXPECT_NEAR(nll, 54.40412, 0.005);                  // 4 significant digits: 54.40
  EXPECT_NEAR(std::exp(nll / 34), 4.95363, 0.0005);  // 4.954
  Weights w8 = load_llama2c(test::shared_path("models/stories260K_q8.bin"));
  Model m8(w8, RunOptions{});
  const double nll8 = sequence_nll(m8, ctx, ids);
  EXPECT_NEAR(nll8, 54.311, 0.005);
  EXPECT_NEAR(std::exp(nll8 / 34), 4.9401, 0.0005);
}
