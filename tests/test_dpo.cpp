// Direct preference optimisation (train/dpo.h): the pair loss and weights
// against float64 hand computations, the whole model's DPO gradient against
// central differences, and `data prepare-pref` + `finetune --dpo-beta` /
// `train --dpo-beta` from the command line.
#include <gtest/gtest.h>
#include <omp.h>

#include <cmath>
#include <filesystem>
#include <fstream>
#include <functional>
#include <random>

#include "cli_util.h"
#include "pref_test_util.h"
#include "nlohmann/json.hpp"
#include "train/dpo.h"

using namespace tessera;
using namespace tessera::train;
using tessera::test::q;
using tessera::test::run_cli;
namespace fs = std::filesystem;

TEST(Dpo, PairLossAndWeightsMatchTheFormula) {
  // Pair 0: policy gains 1 nat on chosen and loses 1 on rejected against the reference: z = 0.1 * 2.
  // Pair 1: the other way round: z = -0.2.
  const double pol[4] = {-5, -7, -9, -2}, ref[4] = {-6, -6, -8, -3};
  float w[4];
  const DpoStats st = dpo_pairs(pol, ref, 2, 0.1f, w);
  const double b = double(0.1f);  // beta as the float it is passed as
  const double z0 = b * ((-5 + 6) - (-7 + 6)), z1 = b * ((-9 + 8) - (-2 + 3));
  EXPECT_NEAR(z0, 0.2, 1e-8);
  EXPECT_NEAR(z1, -0.2, 1e-8);
  auto softplus = [](double x) { return std::log(1 + std::exp(x)); };
  auto sigmoid = [](double x) { return 1 / (1 + std::exp(-x)); };
  EXPECT_NEAR(st.loss, softplus(-z0) + softplus(-z1), 1e-12);  // 0.598139 + 0.798139
  EXPECT_NEAR(st.margin, z0 + z1, 1e-12);
  EXPECT_EQ(st.correct, 1);
  EXPECT_EQ(st.pairs, 2);
  EXPECT_NEAR(w[0], b * sigmoid(-z0), 1e-8);
  EXPECT_NEAR(w[1], -b * sigmoid(-z0), 1e-8);
  EXPECT_NEAR(w[2], b * sigmoid(-z1), 1e-8);
  // Far from zero the loss stays finite and exact: softplus(1000) = 1000, softplus(-1000) = 0.
  const double big_pol[2] = {0, -1e4}, big_ref[2] = {0, 0};
  EXPECT_NEAR(dpo_pairs(big_pol, big_ref, 1, 0.1f, w).loss, 0.0, 1e-300);
  EXPECT_NEAR(dpo_pairs(big_ref, big_pol, 1, 0.1f, w).loss, 1e4 * double(0.1f), 1e-9);  // beta is a float
}

// The DPO gradient of a whole model: per-row nll summed per sequence, the pair
// weights, then the weighted backward, against central differences of the loss.
TEST(Dpo, WholeModelGradientMatchesFiniteDifferences) {
  const test::OneThread one_thread;
  ModelConfig c;
  c.arch = Arch::Llama;
  c.dim = 8, c.n_layers = 2, c.n_heads = 4, c.n_kv_heads = 2, c.head_dim = 2, c.hidden_dim = 12;
  c.vocab_size = 11, c.max_seq_len = 8, c.tied_embeddings = false;
  Layout L(c);
  std::mt19937_64 rng(3);
  std::normal_distribution<double> nd(0.0, 0.3);
  std::vector<double> p(L.total);
  for (auto& x : p) x = nd(rng);
  const int64_t B = 4, T = 5, N = B * T;  // 2 pairs
  std::vector<int32_t> x(N), y(N);
  for (int64_t i = 0; i < N; ++i) x[i] = int32_t(rng() % 11), y[i] = i % T < 2 ? -1 : int32_t(rng() % 11);
  const double ref[4] = {-9.5, -8.0, -7.2, -9.9};
  const float beta = 0.7f;
  Transformer<double> m(L, B, T, ModelOptions{});
  std::vector<double> nll(static_cast<size_t>(N));
  auto seq_logp = [&](std::vector<double>& lp) {
    m.set_row_nll(nll.data());
    m.forward(p.data(), x.data(), y.data());
    m.set_row_nll(nullptr);
    lp.assign(static_cast<size_t>(B), 0.0);
    for (int64_t i = 0; i < N; ++i) lp[size_t(i / T)] -= nll[size_t(i)];
  };
  auto f = [&] {
    std::vector<double> lp;
    seq_logp(lp);
    return dpo_pairs(lp.data(), ref, 2, beta, nullptr).loss / 2;
  };
  std::vector<double> lp;
  seq_logp(lp);
  float sw[4];
  dpo_pairs(lp.data(), ref, 2, beta, sw);
  std::vector<float> w(static_cast<size_t>(N));
  for (int64_t i = 0; i < N; ++i) w[size_t(i)] = sw[i / T];
  std::vector<double> g(L.total, 0.0);
  m.set_row_weights(w.data());
  m.forward_backward(p.data(), g.data(), x.data(), y.data(), 0.5f);  // mean over the 2 pairs
  m.set_row_weights(nullptr);
  double mag = 0;
  const double rel = test::fd_rel_error(p, g, f, L.total, [](size_t i) { return i + 7; }, &mag);
  EXPECT_GT(mag, 1e-4);
  EXPECT_LT(rel, 1e-4);
}

TEST(Dpo, PreferencePairsFromTheCommandLine) {
  TESSERA_REQUIRE_SHARED("models/stories260K.bin");
  const std::string dir = test::temp_path("dpo_cli");
  fs::remove_all(dir);
  fs::create_directories(dir);
  {
    test::write_kindness_pairs(dir + "/pref.jsonl");
    std::ofstream(dir + "/bad.jsonl") << R"({"prompt": "x", "chosen": "y"})" << "\n";
  }
  const std::string tok = test::shared_path("models/tok512.bin"), base = test::shared_path("models/stories260K.bin");
  auto r = run_cli("data prepare-pref --tokenizer " + q(tok) + " -o " + q(dir + "/pref") + " " + q(dir + "/pref.jsonl"));
  ASSERT_EQ(r.code, 0) << r.err;
  EXPECT_NE(r.err.find("76 train + 4 val preference pairs"), std::string::npos) << r.err;
  r = run_cli("data prepare-pref --tokenizer " + q(tok) + " -o " + q(dir + "/bad") + " " + q(dir + "/bad.jsonl"));
  EXPECT_NE(r.code, 0);
  EXPECT_NE(r.err.find("bad.jsonl:1: missing string field \"rejected\""), std::string::npos) << r.err;
  const std::string common = " --init " + q(base) + " --tokenizer " + q(tok) + " --data " + q(dir + "/pref") +
                             " --dpo-beta 0.1 --batch 8 --seq 48 --eval-interval 40 -t 2 --steps 40";
  for (const std::string cmd : {"finetune --lr 1e-3", "train --lr 3e-4"}) {
    const std::string run = dir + "/" + cmd.substr(0, cmd.find(' '));
    r = run_cli(cmd + common + " -o " + q(run));
    ASSERT_EQ(r.code, 0) << r.err;
    std::ifstream m(run + "/metrics.jsonl");
    std::string first, line, last;
    std::getline(m, first);
    while (std::getline(m, line)) last = line;
    const auto a = nlohmann::json::parse(first), b = nlohmann::json::parse(last);
    EXPECT_NEAR(double(a["loss"]), std::log(2.0), 1e-6) << cmd << ": the policy starts as the reference";
    EXPECT_GT(double(b["dpo_margin"]), 1.0) << cmd << ": the chosen/rejected margin grows";
    EXPECT_EQ(double(b["val_accuracy"]), 1.0) << cmd;
  }
  r = run_cli("finetune" + common + " --batch 7 -o " + q(dir + "/odd"));
  EXPECT_NE(r.code, 0);
  EXPECT_NE(r.err.find("must be even"), std::string::npos) << r.err;
  // SFT data without pairs is refused.
  std::ofstream(dir + "/sft.jsonl") << R"({"prompt": "a", "completion": " b"})" << "\n"
                                    << R"({"prompt": "c", "completion": " d"})" << "\n";
  ASSERT_EQ(run_cli("data prepare-sft --tokenizer " + q(tok) + " -o " + q(dir + "/sft") + " " + q(dir + "/sft.jsonl")).code, 0);
  r = run_cli("finetune --init " + q(base) + " --tokenizer " + q(tok) + " --data " + q(dir + "/sft") +
              " --dpo-beta 0.1 --batch 2 --seq 16 --steps 1 -o " + q(dir + "/nopairs"));
  EXPECT_NE(r.code, 0);
  EXPECT_NE(r.err.find("holds no preference pairs"), std::string::npos) << r.err;
  fs::remove_all(dir);
}
