// KL divergence of a model against a saved base (infer/kl_divergence.h): the
// statistics against a float64 computation by hand, the base file's round
// trip, and the perplexity CLI end to end on ../shared/reference/quant.
#include <gtest/gtest.h>

#include <cmath>
#include <filesystem>
#include <fstream>

#include "cli_util.h"
#include "core/error.h"
#include "infer/kl_divergence.h"

using namespace tessera;
using tessera::test::q;
using tessera::test::run_cli;

namespace {

std::vector<double> softmax(const std::vector<float>& l) {
  double mx = l[0], s = 0;
  for (float v : l) mx = std::max(mx, double(v));
  std::vector<double> p;
  for (float v : l) p.push_back(std::exp(double(v) - mx)), s += p.back();
  for (double& v : p) v /= s;
  return p;
}

TEST(KlDivergence, StatisticsMatchFloat64) {
  // Two positions over 4 tokens. Base logits b, model logits m; the next tokens 2 and 0.
  const std::vector<std::vector<float>> b = {{1.f, 2.f, 3.f, 0.5f}, {0.f, -1.f, 2.f, 2.5f}};
  const std::vector<std::vector<float>> m = {{1.2f, 1.8f, 2.9f, 0.4f}, {0.3f, -1.f, 2.6f, 2.2f}};
  const int32_t next[2] = {2, 0};
  KlAccumulator acc;
  double kl_sum = 0, nll_m = 0, nll_b = 0, dp2 = 0;
  std::vector<double> kls;
  for (int i = 0; i < 2; ++i) {
    const auto pb = softmax(b[size_t(i)]), pm = softmax(m[size_t(i)]);
    double kl = 0;
    for (size_t v = 0; v < 4; ++v) kl += pb[v] * std::log(pb[v] / pm[v]);
    kls.push_back(kl), kl_sum += kl;
    nll_m -= std::log(pm[size_t(next[i])]), nll_b -= std::log(pb[size_t(next[i])]);
    dp2 += std::pow(pm[size_t(next[i])] - pb[size_t(next[i])], 2);
    std::vector<float> lb;
    for (double p : pb) lb.push_back(float(std::log(p)));
    acc.add(lb.data(), m[size_t(i)].data(), 4, next[i]);
  }
  const KlStats s = acc.finish();
  EXPECT_EQ(s.n, 2);
  EXPECT_NEAR(s.kl_mean, kl_sum / 2, 1e-7);
  EXPECT_NEAR(s.kl_max, std::max(kls[0], kls[1]), 1e-7);
  EXPECT_NEAR(s.ppl_model, std::exp(nll_m / 2), 1e-5);
  EXPECT_NEAR(s.ppl_base, std::exp(nll_b / 2), 1e-5);
  EXPECT_NEAR(s.ppl_ratio, std::exp((nll_m - nll_b) / 2), 1e-5);
  EXPECT_NEAR(s.rms_dp, std::sqrt(dp2 / 2), 1e-6);
  EXPECT_DOUBLE_EQ(s.top1_agreement, 0.5);  // position 0: both pick 2; position 1: base 3, model 2
}

TEST(KlDivergence, BaseFileRoundTripsLogProbabilities) {
  const std::string path = test::temp_path("kl_rt.base");
  const int64_t V = 300;
  std::vector<float> logits(size_t(2 * V));
  for (int64_t i = 0; i < 2 * V; ++i) logits[size_t(i)] = float(std::sin(0.37 * double(i)) * 6.0);
  {
    KlBaseWriter w(path, KlRun{4, V, 1, 1, {7, 8, 9}});
    w.add(logits.data(), 2);
    w.finish();
  }
  KlBaseReader r(path);
  EXPECT_EQ(r.run().n_ctx, 4);
  EXPECT_EQ(r.run().n_vocab, V);
  EXPECT_EQ(r.run().bos, 1);
  EXPECT_EQ(r.run().ids, (std::vector<int32_t>{7, 8, 9}));
  std::vector<float> lp(static_cast<size_t>(V));
  for (int row = 0; row < 2; ++row) {
    r.next(lp.data());
    std::vector<float> l(logits.begin() + row * V, logits.begin() + (row + 1) * V);
    const auto p = softmax(l);
    for (int64_t v = 0; v < V; ++v)  // step = (max log p + 30) / 65535: within half a step
      EXPECT_NEAR(lp[size_t(v)], std::max(std::log(p[size_t(v)]), -30.0), 3e-4) << "row " << row << " token " << v;
  }
  EXPECT_THROW(r.next(lp.data()), Error);  // past the end: truncated, named
  std::filesystem::remove(path);
  std::ofstream(path) << "not a base file";
  try {
    KlBaseReader bad(path);
    ADD_FAILURE() << "no error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("not a KL-divergence base file"), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find(path), std::string::npos) << e.what();
  }
  std::filesystem::remove(path);
}

double json_num(const std::string& out, const std::string& key) {
  const size_t at = out.find("\"" + key + "\":");
  return at == std::string::npos ? NAN : std::stod(out.substr(at + key.size() + 3));
}

// llama.cpp's own Q4_K_M and Q8_0 files against the f32 model: KL grows with fewer bits;
// the f32 model against itself gives zero; bits per byte is the NLL over the text's bytes.
TEST(KlDivergence, PerplexityCliComparesQuantizedModels) {
  TESSERA_REQUIRE_SHARED("reference/quant/tinystories-f32.gguf");
  TESSERA_REQUIRE_SHARED("data/tinystories_val.txt");
  const std::string dir = test::shared_path("reference/quant/");
  const std::string text = test::temp_path("kl_text.txt"), base = test::temp_path("kl.base");
  const std::string body = test::slurp(test::shared_path("data/tinystories_val.txt")).substr(0, 20000);
  std::ofstream(text) << body;
  auto r = run_cli("perplexity -m " + q(dir + "tinystories-f32.gguf") + " -f " + q(text) + " -c 128 -t 2 --json " +
                   "--kl-divergence-base " + q(base));
  ASSERT_EQ(r.code, 0) << r.err;
  const double nll = json_num(r.out, "nll"), tokens = json_num(r.out, "tokens"), bpb = json_num(r.out, "bits_per_byte");
  // The windows cover all but the last partial one: the bytes scored are 97-100% of the file's.
  const double covered = nll * tokens / std::log(2.0) / bpb / double(body.size());
  EXPECT_GT(covered, 0.97) << r.out;
  EXPECT_LE(covered, 1.0) << r.out;
  ASSERT_TRUE(std::filesystem::exists(base));
  EXPECT_FALSE(std::filesystem::exists(base + ".tmp"));
  double prev = -1;
  for (const std::string t : {"f32", "q8_0", "q4_k_m", "q2_k"}) {
    r = run_cli("perplexity -m " + q(dir + "tinystories-" + t + ".gguf") + " --kl-divergence " + q(base) + " -t 2 --json");
    ASSERT_EQ(r.code, 0) << r.err;
    const double kl = json_num(r.out, "mean"), top1 = json_num(r.out, "top1_agreement");
    if (t == "f32") {
      EXPECT_LT(kl, 1e-6) << r.out;  // the same model: only the stored rounding of log p
      EXPECT_DOUBLE_EQ(top1, 1.0) << r.out;
      EXPECT_NEAR(json_num(r.out, "ppl_ratio"), 1.0, 1e-5) << r.out;
    } else {
      EXPECT_GT(kl, prev * 2) << t << ": " << r.out;  // q8_0 ~1e-4, q4_k_m ~4e-3, q2_k ~5e-2
      EXPECT_LT(top1, 1.0) << r.out;
      EXPECT_GT(json_num(r.out, "ppl_ratio"), 0.99) << r.out;
    }
    prev = std::max(kl, 1e-7);
  }
  // The same text must tokenize to the base's tokens; another text is an error naming both.
  std::ofstream(text) << "A different story. " << body;
  r = run_cli("perplexity -m " + q(dir + "tinystories-q8_0.gguf") + " -f " + q(text) + " --kl-divergence " + q(base));
  EXPECT_EQ(r.code, 1);
  EXPECT_NE(r.err.find("tokenizes differently"), std::string::npos) << r.err;
  r = run_cli("perplexity -m " + q(dir + "tinystories-q8_0.gguf") + " --kl-divergence " + q(text));
  EXPECT_EQ(r.code, 1);
  EXPECT_NE(r.err.find("not a KL-divergence base file"), std::string::npos) << r.err;
  std::filesystem::remove(text);
  std::filesystem::remove(base);
}

}  // namespace
