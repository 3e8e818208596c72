// Reward models (train/reward.h): the Bradley-Terry loss against float64 hand
// computations, the gradient of model + head against central differences, and
// `tessera train-reward` + `tessera reward` from the command line.
#include <gtest/gtest.h>
#include <omp.h>

#include <cmath>
#include <filesystem>
#include <fstream>
#include <random>
#include <sstream>

#include "cli_util.h"
#include "pref_test_util.h"
#include "nlohmann/json.hpp"
#include "train/reward.h"

using namespace tessera;
using namespace tessera::train;
using tessera::test::q;
using tessera::test::run_cli;
namespace fs = std::filesystem;

TEST(Reward, BradleyTerryLossMatchesTheFormula) {
  const double r[4] = {1.5, -0.5, 0.2, 0.9};  // pair 0 ranked right by 2, pair 1 wrong by 0.7
  float dr[4];
  const DpoStats st = reward_pairs(r, 2, dr);
  auto sig = [](double x) { return 1 / (1 + std::exp(-x)); };
  EXPECT_NEAR(st.loss, -std::log(sig(2.0)) - std::log(sig(-0.7)), 1e-12);  // 0.126928 + 1.103186
  EXPECT_EQ(st.correct, 1);
  EXPECT_NEAR(dr[0], -sig(-2.0), 1e-7);  // raising the chosen reward lowers the loss
  EXPECT_NEAR(dr[1], sig(-2.0), 1e-7);
  EXPECT_NEAR(dr[2], -sig(0.7), 1e-7);
  EXPECT_NEAR(dr[3], sig(0.7), 1e-7);
  const int32_t y[2 * 5] = {3, 4, -1, -1, -1, 1, 2, 3, 4, -1};
  int32_t last[2];
  last_tokens(y, 2, 5, last);
  EXPECT_EQ(last[0], 2);  // the token after the last target: the example's final token
  EXPECT_EQ(last[1], 4);
}

TEST(Reward, ModelAndHeadGradientsMatchFiniteDifferences) {
  const test::OneThread one_thread;
  ModelConfig c;
  c.arch = Arch::Llama;
  c.dim = 8, c.n_layers = 2, c.n_heads = 4, c.n_kv_heads = 2, c.head_dim = 2, c.hidden_dim = 12;
  c.vocab_size = 11, c.max_seq_len = 8, c.tied_embeddings = true;
  Layout L(c);
  std::mt19937_64 rng(8);
  std::normal_distribution<double> nd(0.0, 0.3);
  std::vector<double> p(L.total + reward_head_padded(c));
  for (auto& x : p) x = nd(rng);
  const int64_t B = 4, T = 5, N = B * T;
  std::vector<int32_t> x(N), y(N);
  for (int64_t i = 0; i < N; ++i) x[i] = int32_t(rng() % 11), y[i] = i % T == T - 1 || (i / T == 2 && i % T >= 2) ? -1 : int32_t(rng() % 11);
  int32_t last[B];
  last_tokens(y.data(), B, T, last);
  Transformer<double> m(L, B, T, ModelOptions{});
  double r[B];
  auto f = [&] {
    m.set_reward(p.data() + L.total, nullptr, last, nullptr, r);
    m.forward(p.data(), x.data(), y.data());
    return reward_pairs(r, 2, nullptr).loss / 2;
  };
  f();
  float dr[B];
  reward_pairs(r, 2, dr);
  std::vector<double> g(p.size(), 0.0);
  m.set_reward(p.data() + L.total, g.data() + L.total, last, dr, r);
  m.forward_backward(p.data(), g.data(), x.data(), y.data(), 0.5f);
  double mag = 0;
  const double rel = test::fd_rel_error(p, g, f, L.total + reward_head_size(c),
                                        [&](size_t i) { return i + (i < L.total ? 5 : 1); }, &mag);  // all of the head
  EXPECT_GT(mag, 1e-4);
  EXPECT_LT(rel, 1e-4);
}

TEST(Reward, TrainAndScoreFromTheCommandLine) {
  TESSERA_REQUIRE_SHARED("models/stories260K.bin");
  const std::string dir = test::temp_path("reward_cli");
  fs::remove_all(dir);
  fs::create_directories(dir);
  test::write_kindness_pairs(dir + "/pref.jsonl");
  const std::string tok = test::shared_path("models/tok512.bin"), base = test::shared_path("models/stories260K.bin");
  ASSERT_EQ(run_cli("data prepare-pref --tokenizer " + q(tok) + " -o " + q(dir + "/pref") + " " + q(dir + "/pref.jsonl")).code, 0);
  auto r = run_cli("train-reward --init " + q(base) + " --tokenizer " + q(tok) + " --data " + q(dir + "/pref") +
                   " -o " + q(dir + "/rm") + " --batch 8 --seq 48 --lr 1e-3 --steps 40 --eval-interval 40 -t 2");
  ASSERT_EQ(r.code, 0) << r.err;
  std::ifstream m(dir + "/rm/metrics.jsonl");
  std::string line, last;
  while (std::getline(m, line)) last = line;
  const auto j = nlohmann::json::parse(last);
  EXPECT_EQ(double(j["val_accuracy"]), 1.0) << last;
  EXPECT_GT(double(j["reward_margin"]), 1.0) << last;
  r = run_cli("reward " + q(dir + "/rm") + " -p 'Once upon a time, Ben hugged mom.' -p 'Once upon a time, Ben yelled at mom.'");
  ASSERT_EQ(r.code, 0) << r.err;
  std::istringstream out(r.out);
  double good_r = 0, bad_r = 0;
  std::string rest;
  out >> good_r;
  std::getline(out, rest);
  out >> bad_r;
  EXPECT_GT(good_r, bad_r + 1.0) << r.out;
  r = run_cli("reward " + q(base) + " -p hi");
  EXPECT_NE(r.code, 0);
  r = run_cli("train-reward --data " + q(dir + "/pref") + " -o " + q(dir + "/x") + " --steps 1");
  EXPECT_NE(r.code, 0);
  EXPECT_NE(r.err.find("--init MODEL is required"), std::string::npos) << r.err;
  fs::remove_all(dir);
}
