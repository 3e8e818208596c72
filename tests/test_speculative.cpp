// Speculative decoding (infer/speculative.h): the acceptance rule on the worked
// example, the residual draw, prompt lookup, exactness of the output
// distribution against the target's (chi-square over 100k seeded runs on tiny
// random models, with the draft's own distribution as the control the test
// must reject), and greedy identity on the shared models and through the CLI.
#include <gtest/gtest.h>

#include <cmath>
#include <map>

#include "cli_util.h"
#include "formats/load.h"
#include "infer/speculative.h"
#include "model/synthetic.h"
#include "model_test_util.h"

using namespace tessera;
using namespace tessera::test;

TEST(Speculative, WorkedExampleAcceptanceProbabilities) {
  // "dogs love chasing after cars": draft .8 .7 .9 .8 .7, target .9 .8 .8 .3 .8.
  const double pd[5] = {.8, .7, .9, .8, .7}, pt[5] = {.9, .8, .8, .3, .8};
  const double want[5] = {1, 1, .8 / .9, .375, 1};
  for (int i = 0; i < 5; ++i) EXPECT_NEAR(spec_accept_probability(pt[i], pd[i]), want[i], 1e-12) << i;
  EXPECT_NEAR(spec_accept_probability(.8, .9), 0.889, 5e-4);
  EXPECT_EQ(spec_accept_probability(.5, 0), 1.0);
}

TEST(Speculative, ResidualDraw) {
  // max(0, pt - pd) = (.3, 0, 0): always token 0.
  const float pt[3] = {.5f, .3f, .2f}, pd[3] = {.2f, .5f, .3f};
  for (float u : {0.f, .3f, .999f}) EXPECT_EQ(spec_residual_draw(pt, pd, 3, u), 0);
  // (0, .2, .1) normalized: token 1 below u = 2/3, token 2 above.
  const float pd2[3] = {.5f, .1f, .1f};
  EXPECT_EQ(spec_residual_draw(pt, pd2, 3, .6f), 1);
  EXPECT_EQ(spec_residual_draw(pt, pd2, 3, .7f), 2);
  // pt == pd: no residual mass, a draw from pt.
  EXPECT_EQ(spec_residual_draw(pt, pt, 3, .6f), 1);
}

TEST(Speculative, NgramProposals) {
  const std::vector<int32_t> h{1, 2, 3, 9, 8, 1, 2, 3};
  EXPECT_EQ(ngram_propose(h, 3, 2), (std::vector<int32_t>{9, 8}));
  EXPECT_EQ(ngram_propose(h, 3, 10), (std::vector<int32_t>{9, 8, 1, 2, 3}));
  // The latest earlier occurrence of the longest matching suffix.
  const std::vector<int32_t> h2{5, 7, 1, 6, 4, 5, 7, 2, 4, 5, 7};
  EXPECT_EQ(ngram_propose(h2, 3, 1), (std::vector<int32_t>{2}));  // "4 5 7" at 4..6 -> 2
  EXPECT_EQ(ngram_propose(h2, 1, 1), (std::vector<int32_t>{2}));  // "7" latest at 6 -> 2
  EXPECT_TRUE(ngram_propose({1, 2, 3}, 2, 4).empty());
}

namespace {

ModelConfig tiny(int64_t vocab) {
  ModelConfig c = synthetic_config("260k");
  c.n_layers = 1, c.dim = 16, c.n_heads = 2, c.n_kv_heads = 1, c.head_dim = 8, c.hidden_dim = 32;
  c.vocab_size = vocab, c.max_seq_len = 16;
  return c;
}

// Exact probabilities of every 3-token continuation of prompt under m (with the sampler's distribution).
std::vector<double> exact_three(Model& m, KernelContext& ctx, const std::vector<int32_t>& prompt,
                                const SamplerParams& sp) {
  const int64_t V = m.config().vocab_size;
  Sampler s(sp, int32_t(V));
  const size_t Vs = size_t(V);
  std::vector<float> logits(Vs), p1(Vs), p2(Vs), p3(Vs);
  std::vector<double> out(size_t(V * V * V));
  auto dist = [&](std::vector<int32_t> seq, std::vector<float>& p) {
    const float* l = m.forward(ctx, seq.data(), int64_t(seq.size()), 0);
    std::copy(l, l + V, logits.begin());
    s.distribution(logits.data(), seq, p.data());
  };
  std::vector<int32_t> seq = prompt;
  dist(seq, p1);
  for (int32_t a = 0; a < V; ++a) {
    seq.push_back(a);
    dist(seq, p2);
    for (int32_t b = 0; b < V; ++b) {
      seq.push_back(b);
      dist(seq, p3);
      for (int32_t c = 0; c < V; ++c) out[size_t((a * V + b) * V + c)] = double(p1[a]) * p2[b] * p3[c];
      seq.pop_back();
    }
    seq.pop_back();
  }
  return out;
}

// Pearson's statistic of counts against probabilities (cells expecting < 5 merged) and its degrees of freedom.
std::pair<double, int> chi_square(const std::vector<int64_t>& counts, const std::vector<double>& p, int64_t n) {
  double stat = 0, small_e = 0, small_o = 0;
  int cells = 0;
  for (size_t i = 0; i < p.size(); ++i) {
    const double e = p[i] * double(n);
    if (e < 5) {
      small_e += e, small_o += double(counts[i]);
      continue;
    }
    stat += (double(counts[i]) - e) * (double(counts[i]) - e) / e, ++cells;
  }
  if (small_e > 0) stat += (small_o - small_e) * (small_o - small_e) / small_e, ++cells;
  return {stat, cells - 1};
}

// The chi-square value exceeded with probability 0.001 (Wilson-Hilferty).
double chi_square_critical_001(int df) {
  const double z = 3.0902, a = 2.0 / (9.0 * df);
  return df * std::pow(1 - a + z * std::sqrt(a), 3);
}

}  // namespace

// The first three tokens of 100k seeded speculative runs (draft: another
// random model, K = 2, so runs mix acceptances, rejections and bonus tokens)
// follow the target's exact distribution; the same counts are rejected
// against the draft's distribution (the test can fail).
TEST(Speculative, OutputDistributionIsTheTargets) {
  const int64_t V = 6;
  const Weights wt = make_random_weights(tiny(V), DType::F32, 11, 1);
  const Weights wd = make_random_weights(tiny(V), DType::F32, 12, 1);
  RunOptions ro;
  ro.max_threads = 1;
  Model target(wt, ro), draft(wd, ro);
  KernelContext ctx(1);
  SamplerParams sp;
  sp.temp = 1.3f, sp.top_k = 0, sp.top_p = 1.f, sp.min_p = 0.f;
  const std::vector<int32_t> prompt{1, 4};
  const std::vector<double> pt = exact_three(target, ctx, prompt, sp), pd = exact_three(draft, ctx, prompt, sp);

  const int64_t runs = 100000;
  std::vector<int64_t> counts(size_t(V * V * V), 0);
  SpeculativeParams spec;
  spec.draft_max = 2;
  SpeculativeStats total;
  for (int64_t r = 0; r < runs; ++r) {
    sp.seed = uint64_t(r) + 1;
    std::vector<int32_t> got;
    const SpeculativeStats st = speculative_decode(target, &draft, ctx, prompt, sp, spec, 3, [&](int32_t id) {
      got.push_back(id);
      return true;
    });
    ASSERT_EQ(got.size(), 3u);
    ++counts[size_t((got[0] * V + got[1]) * V + got[2])];
    total.drafted += st.drafted, total.accepted += st.accepted;
  }
  // Both branches of the test ran often.
  EXPECT_GT(total.acceptance(), 0.2);
  EXPECT_LT(total.acceptance(), 0.95);
  const auto [stat, df] = chi_square(counts, pt, runs);
  EXPECT_LT(stat, chi_square_critical_001(df)) << "df " << df;
  const auto [stat_d, df_d] = chi_square(counts, pd, runs);
  EXPECT_GT(stat_d, chi_square_critical_001(df_d)) << "df " << df_d;
}

TEST(Speculative, GreedyIdentityOnSharedModels) {
  TESSERA_REQUIRE_SHARED("models/stories260K.bin");
  TESSERA_REQUIRE_SHARED("models/llama2xs.bin");
  LoadedModel lt = load_model(shared_path("models/stories260K.bin"));
  LoadedModel ld = load_model(shared_path("models/llama2xs.bin"));
  RunOptions ro;
  ro.max_threads = 2;
  Model target(lt.weights, ro), draft(ld.weights, ro);
  KernelContext ctx(2);
  const std::vector<int32_t> prompt{1, 403, 407, 261, 378};  // BOS "Once upon a time"
  const int n = 150;
  SamplerParams sp;
  sp.temp = 0;
  const std::vector<int32_t> want = plain_decode(target, ctx, prompt, n, sp).tokens;
  for (int mode = 0; mode < 3; ++mode) {  // draft model with K = 4, K = 8; prompt lookup
    SpeculativeParams spec;
    spec.draft_max = mode == 1 ? 8 : 4;
    spec.ngram = mode == 2 ? 3 : 0;
    std::vector<int32_t> got;
    const SpeculativeStats st =
        speculative_decode(target, mode == 2 ? nullptr : &draft, ctx, prompt, sp, spec, n, [&](int32_t id) {
          got.push_back(id);
          return true;
        });
    EXPECT_EQ(got, want) << "mode " << mode;
    EXPECT_GT(st.accepted, 0) << "mode " << mode;
    EXPECT_LT(st.target_forwards, n) << "mode " << mode;
  }
}

TEST(Speculative, CliGreedyIdentityAndErrors) {
  TESSERA_REQUIRE_SHARED("models/stories260K.bin");
  TESSERA_REQUIRE_SHARED("models/llama2xs.bin");
  const std::string base = "generate -m " + q(shared_path("models/stories260K.bin")) + " --tokenizer " +
                           q(shared_path("models/tok512.bin")) + " -p 'Once upon a time' -n 100 --temp 0 -t 2 ";
  const CliResult plain = run_cli(base);
  ASSERT_EQ(plain.code, 0) << plain.err;
  const CliResult d = run_cli(base + "--draft " + q(shared_path("models/llama2xs.bin")) + " --draft-max 6");
  ASSERT_EQ(d.code, 0) << d.err;
  EXPECT_EQ(d.out, plain.out);
  EXPECT_NE(d.err.find("accepted"), std::string::npos) << d.err;
  const CliResult g = run_cli(base + "--draft-ngram 2");
  ASSERT_EQ(g.code, 0) << g.err;
  EXPECT_EQ(g.out, plain.out);
  // A draft with another vocabulary; both drafters at once.
  const CliResult v = run_cli(base + "--draft synthetic:15m");
  EXPECT_NE(v.code, 0);
  EXPECT_NE(v.err.find("vocabulary"), std::string::npos) << v.err;
  const CliResult both = run_cli(base + "--draft-ngram 2 --draft " + q(shared_path("models/llama2xs.bin")));
  EXPECT_NE(both.code, 0);
  EXPECT_NE(both.err.find("alternatives"), std::string::npos) << both.err;
  // Under a grammar: the constrained greedy text.
  const CliResult json = run_cli(base + "--json");
  ASSERT_EQ(json.code, 0) << json.err;
  const CliResult json_d = run_cli(base + "--json --draft " + q(shared_path("models/llama2xs.bin")));
  ASSERT_EQ(json_d.code, 0) << json_d.err;
  EXPECT_EQ(json_d.out, json.out);
}

// Under a grammar (infer/generate.h constrained_distribution): the distribution
// speculative decoding tests against is the one constrained sampling draws from
// (checked against constrain_sample's draws), its output over two tokens follows
// that distribution (chi-square), and at temperature 0 it is the constrained greedy text.
namespace {

// The draft: the target's weights with the final norm's gains x 4 (sharper
// distributions, mostly the same ranking), so proposals are often but not always accepted.
Weights sharpened(uint64_t seed) {
  Weights w = make_random_weights(synthetic_config("260k"), DType::F32, seed, 1);
  float* g = const_cast<float*>(w.out_norm.f32());
  for (int64_t i = 0; i < w.out_norm.numel(); ++i) g[i] *= 4.f;
  return w;
}

struct GrammarRig {
  RandomStories target{77};
  Weights wd = sharpened(77);
  Model draft{wd, RandomStories::one_thread()};
  Grammar g = Grammar::parse(kJsonGrammar, "json");
  GrammarConstraint gc{&g, &target.trie, &target.tok};
};

}  // namespace

TEST(Speculative, GrammarDistributionIsConstrainedSampling) {
  TESSERA_REQUIRE_SHARED("models/tok512.bin");
  GrammarRig r;
  const int64_t V = 512;
  SamplerParams sp;
  sp.temp = 1.f, sp.top_k = 6, sp.seed = 9;
  const std::vector<int32_t> prompt{1};
  const float* l = r.target.m.forward(r.target.ctx, prompt.data(), 1, 0);
  const std::vector<float> raw(l, l + V);
  Sampler s(sp, int32_t(V));
  GrammarState st(r.g);
  std::vector<float> p(static_cast<size_t>(V)), work(static_cast<size_t>(V)), q, scratch(static_cast<size_t>(V));
  std::vector<uint8_t> allowed;
  constrained_distribution(s, st, r.gc, raw.data(), prompt, p.data(), work, allowed, q);
  double sum = 0;
  for (float x : p) sum += x;
  EXPECT_NEAR(sum, 1.0, 1e-5);
  const int64_t n = 40000;
  std::vector<int64_t> counts(size_t(V), 0);
  int64_t redrawn = 0;
  for (int64_t i = 0; i < n; ++i) {
    GrammarState g = st;
    std::copy(raw.begin(), raw.end(), scratch.begin());
    const int32_t first = s.sample(scratch.data(), prompt);
    const int32_t id = constrain_sample(s, g, r.target.trie, r.target.tok, first, raw.data(), scratch, allowed, prompt, 1);
    redrawn += id != first;
    ++counts[size_t(id)];
  }
  EXPECT_GT(redrawn, n / 10) << "the grammar refuses some of what the sampler draws";
  std::vector<double> pd(p.begin(), p.end());
  const auto [stat, df] = chi_square(counts, pd, n);
  EXPECT_LT(stat, chi_square_critical_001(df)) << "df " << df;
}

TEST(Speculative, GrammarOutputFollowsConstrainedSampling) {
  TESSERA_REQUIRE_SHARED("models/tok512.bin");
  GrammarRig r;
  const int64_t V = 512;
  SamplerParams sp;
  sp.temp = 1.f, sp.top_k = 3;
  const std::vector<int32_t> prompt{1};
  // The exact distribution of the first two constrained tokens.
  Sampler s(sp, int32_t(V));
  std::vector<float> p1(static_cast<size_t>(V)), p2(static_cast<size_t>(V)), work(static_cast<size_t>(V)), q;
  std::vector<uint8_t> allowed;
  const GrammarState s0(r.g);
  const float* l = r.target.m.forward(r.target.ctx, prompt.data(), 1, 0);
  constrained_distribution(s, s0, r.gc, l, prompt, p1.data(), work, allowed, q);
  std::vector<double> exact(size_t(V * V), 0.0);
  for (int32_t a = 0; a < V; ++a) {
    if (p1[size_t(a)] <= 0.f || r.target.tok.is_eog(a)) continue;
    GrammarState s1 = s0;
    s1.accept(r.target.tok.token_bytes(a));
    const std::vector<int32_t> seq{1, a};
    l = r.target.m.forward(r.target.ctx, seq.data(), 2, 0);
    constrained_distribution(s, s1, r.gc, l, seq, p2.data(), work, allowed, q);
    for (int32_t b = 0; b < V; ++b) exact[size_t(a * V + b)] = double(p1[size_t(a)]) * p2[size_t(b)];
  }
  const int64_t runs = 8000;
  std::vector<int64_t> counts(size_t(V * V), 0);
  SpeculativeParams spec;
  spec.draft_max = 2;
  SpeculativeStats total;
  for (int64_t i = 0; i < runs; ++i) {
    sp.seed = uint64_t(i) + 1;
    std::vector<int32_t> got;
    const SpeculativeStats st = speculative_decode(r.target.m, &r.draft, r.target.ctx, prompt, sp, spec, 2,
                                                   [&](int32_t id) {
                                                     got.push_back(id);
                                                     return true;
                                                   },
                                                   &r.gc);
    ASSERT_EQ(got.size(), 2u);
    ++counts[size_t(got[0] * V + got[1])];
    total.drafted += st.drafted, total.accepted += st.accepted;
  }
  EXPECT_GT(total.acceptance(), 0.05);
  EXPECT_LT(total.acceptance(), 0.95);
  const auto [stat, df] = chi_square(counts, exact, runs);
  EXPECT_LT(stat, chi_square_critical_001(df)) << "df " << df;
}

TEST(Speculative, GrammarGreedyIdentity) {
  TESSERA_REQUIRE_SHARED("models/tok512.bin");
  GrammarRig r;
  GenerateParams gp;
  gp.n_predict = 40, gp.sampling.temp = 0.f, gp.grammar = &r.g, gp.trie = &r.target.trie;
  const GenerateStats plain = generate(r.target.m, r.target.ctx, r.target.tok, {1}, gp, [](std::string_view) {});
  for (int mode = 0; mode < 2; ++mode) {  // a draft model; prompt lookup
    SpeculativeParams spec;
    spec.draft_max = 4, spec.ngram = mode == 1 ? 2 : 0;
    SpeculativeStats sst;
    const GenerateStats st = generate_speculative(r.target.m, mode == 0 ? &r.draft : nullptr, r.target.ctx,
                                                  r.target.tok, {1}, gp, spec, sst, [](std::string_view) {});
    EXPECT_EQ(st.tokens, plain.tokens) << "mode " << mode;
  }
}
