// Beam search (infer/beam.h): one beam is greedy decoding; with enough beams on
// a tiny vocabulary it finds what an exhaustive search of every sequence finds
// (scores recomputed from scratch, so the forks and frees of the paged cache
// are checked too); a bad beam count is an error.
#include <gtest/gtest.h>

#include <cmath>

#include "core/error.h"
#include "infer/beam.h"
#include "infer/sampler.h"
#include "model/synthetic.h"
#include "model_test_util.h"

using namespace tessera;

namespace {

ModelConfig tiny(int64_t vocab) {
  ModelConfig c = synthetic_config("260k");
  c.n_layers = 2, c.dim = 16, c.n_heads = 2, c.n_kv_heads = 1, c.head_dim = 8, c.hidden_dim = 32;
  c.vocab_size = vocab, c.max_seq_len = 64;
  return c;
}

// log-probability of each token of cont after prompt, in double, from one forward per sequence.
double seq_logprob(Model& m, KernelContext& ctx, const std::vector<int32_t>& prompt, const std::vector<int32_t>& cont) {
  const int64_t V = m.config().vocab_size;
  std::vector<int32_t> all = prompt;
  all.insert(all.end(), cont.begin(), cont.end());
  std::vector<float> out(all.size() * size_t(V));
  m.forward_all(ctx, all.data(), int64_t(all.size()), 0, out.data());
  double lp = 0;
  for (size_t i = 0; i < cont.size(); ++i) {
    const float* l = out.data() + (prompt.size() - 1 + i) * size_t(V);
    double mx = l[0], sum = 0;
    for (int64_t j = 1; j < V; ++j) mx = std::max(mx, double(l[j]));
    for (int64_t j = 0; j < V; ++j) sum += std::exp(double(l[j]) - mx);
    lp += double(l[cont[i]]) - mx - std::log(sum);
  }
  return lp;
}

}  // namespace

TEST(BeamSearch, OneBeamIsGreedy) {
  const Weights w = make_random_weights(tiny(50), DType::F32, 21, 1);
  RunOptions ro;
  ro.max_threads = 2;
  Model m(w, ro);
  KernelContext ctx(2);
  const std::vector<int32_t> prompt{3, 7, 11};
  BeamParams bp;
  bp.beams = 1;
  const auto hyps = beam_search(m, ctx, prompt, 30, bp, [](int32_t) { return false; });
  ASSERT_EQ(hyps.size(), 1u);
  SamplerParams sp;
  sp.temp = 0;
  const std::vector<int32_t> want = test::plain_decode(m, ctx, prompt, 30, sp).tokens;
  EXPECT_EQ(hyps[0].tokens, want);
  EXPECT_FALSE(hyps[0].finished);
  EXPECT_NEAR(hyps[0].logprob, seq_logprob(m, ctx, prompt, want), 1e-3);
}

// Vocabulary of 4 with token 0 ending a hypothesis, 3 new tokens at most:
// 16 beams keep every partial hypothesis, so the best must equal the best of
// all 4 + 12 + 36 finished and 27 unfinished sequences, by raw and by
// length-normalized score.
TEST(BeamSearch, EnoughBeamsEqualExhaustiveSearch) {
  const int64_t V = 4;
  const Weights w = make_random_weights(tiny(V), DType::F32, 5, 1);
  RunOptions ro;
  ro.max_threads = 1;
  Model m(w, ro);
  KernelContext ctx(1);
  const std::vector<int32_t> prompt{1, 2};
  for (float lp : {0.f, 1.f, 2.f}) {
    double best = -INFINITY;
    std::vector<int32_t> best_seq;
    bool best_finished = false;
    auto consider = [&](const std::vector<int32_t>& cont, bool finished) {
      const double s = seq_logprob(m, ctx, prompt, cont) / (lp == 0 ? 1.0 : std::pow(double(cont.size()), lp));
      if (s > best) best = s, best_seq = cont, best_finished = finished;
    };
    for (int32_t a = 0; a < V; ++a) {
      if (a == 0) {
        consider({0}, true);
        continue;
      }
      for (int32_t b = 0; b < V; ++b) {
        if (b == 0) {
          consider({a, 0}, true);
          continue;
        }
        for (int32_t c = 0; c < V; ++c) consider({a, b, c}, c == 0);
      }
    }
    BeamParams bp;
    bp.beams = 16, bp.length_penalty = lp;
    const auto hyps = beam_search(m, ctx, prompt, 3, bp, [](int32_t id) { return id == 0; });
    ASSERT_FALSE(hyps.empty());
    std::vector<int32_t> got = hyps[0].tokens;
    if (hyps[0].finished) got.push_back(0);
    EXPECT_EQ(got, best_seq) << "length penalty " << lp;
    EXPECT_EQ(hyps[0].finished, best_finished) << "length penalty " << lp;
    EXPECT_NEAR(hyps[0].score, best, 1e-4) << "length penalty " << lp;
    // Fewer beams never find better, and hypotheses come best first.
    bp.beams = 2;
    const auto few = beam_search(m, ctx, prompt, 3, bp, [](int32_t id) { return id == 0; });
    EXPECT_LE(few[0].score, best + 1e-6);
    for (size_t i = 1; i < hyps.size(); ++i) EXPECT_GE(hyps[i - 1].score, hyps[i].score);
  }
}

TEST(BeamSearch, BadParametersAreErrors) {
  const Weights w = make_random_weights(tiny(10), DType::F32, 1, 1);
  RunOptions ro;
  ro.max_threads = 1;
  Model m(w, ro);
  KernelContext ctx(1);
  BeamParams bp;
  bp.beams = 0;
  EXPECT_THROW(beam_search(m, ctx, {1}, 5, bp, [](int32_t) { return false; }), Error);
  bp.beams = 2, bp.length_penalty = NAN;
  EXPECT_THROW(beam_search(m, ctx, {1}, 5, bp, [](int32_t) { return false; }), Error);
  bp.length_penalty = 1;
  EXPECT_THROW(beam_search(m, ctx, std::vector<int32_t>(64, 1), 5, bp, [](int32_t) { return false; }), Error);
}

#include "cli_util.h"

TEST(BeamSearch, CliOneBeamIsGreedyAndBeamsDiffer) {
  using namespace tessera::test;
  TESSERA_REQUIRE_SHARED("models/stories260K.bin");
  const std::string base = "generate -m " + q(shared_path("models/stories260K.bin")) + " --tokenizer " +
                           q(shared_path("models/tok512.bin")) + " -p 'Once upon a time' -n 60 -t 2 ";
  const CliResult greedy = run_cli(base + "--temp 0");
  const CliResult one = run_cli(base + "--beams 1");
  const CliResult four = run_cli(base + "--beams 4 --length-penalty 1");
  ASSERT_EQ(one.code, 0) << one.err;
  ASSERT_EQ(four.code, 0) << four.err;
  EXPECT_EQ(one.out, greedy.out);
  EXPECT_NE(four.err.find("beam search (4 beams)"), std::string::npos) << four.err;
  EXPECT_FALSE(four.out.empty());
  const CliResult bad = run_cli(base + "--beams 300");
  EXPECT_NE(bad.code, 0);
  EXPECT_NE(bad.err.find("--beams"), std::string::npos) << bad.err;
  const CliResult both = run_cli(base + "--beams 2 --draft-ngram 2");
  EXPECT_NE(both.code, 0);
  // Under a grammar: the best hypothesis is in the language (here a finished one: the grammar ends after a word).
  const CliResult yes_no =
      run_cli("generate -m " + q(shared_path("models/stories260K.bin")) + " --tokenizer " +
              q(shared_path("models/tok512.bin")) + " -p 'Is the sky blue? Answer:' -n 10 -t 2 --beams 3 --grammar " +
              q("root ::= \" \" (\"yes\" | \"no\") \".\""));
  ASSERT_EQ(yes_no.code, 0) << yes_no.err;
  EXPECT_TRUE(yes_no.out.find(" yes.") != std::string::npos || yes_no.out.find(" no.") != std::string::npos)
      << yes_no.out;
}
