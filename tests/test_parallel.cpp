// Parallel samples (infer/parallel.h): sample i of one batch is the sample a
// single run with seed + i draws; majority voting; and the CLI's --n,
// --self-consistency, --json-output and --logprobs.
#include <gtest/gtest.h>

#include <set>

#include <nlohmann/json.hpp>

#include "cli_util.h"
#include "infer/parallel.h"
#include "model/synthetic.h"
#include "model_test_util.h"

using namespace tessera;
using namespace tessera::test;

TEST(ParallelSamples, EachSampleIsItsSeedsSingleRun) {
  ModelConfig c = synthetic_config("260k");
  c.n_layers = 2, c.dim = 32, c.n_heads = 4, c.n_kv_heads = 2, c.head_dim = 8, c.hidden_dim = 64;
  c.vocab_size = 40, c.max_seq_len = 64;
  const Weights w = make_random_weights(c, DType::F32, 8, 1);
  RunOptions ro;
  ro.max_threads = 2;
  Model m(w, ro);
  KernelContext ctx(2);
  SamplerParams sp;
  sp.temp = 1.0f, sp.top_k = 0, sp.top_p = 1.f, sp.min_p = 0.f, sp.seed = 100;
  const std::vector<int32_t> prompt{5, 9, 13, 2};
  const auto is_end = [](int32_t id) { return id == 0; };
  const auto samples = sample_parallel(m, ctx, prompt, 5, 20, sp, is_end);
  ASSERT_EQ(samples.size(), 5u);
  std::set<std::vector<int32_t>> distinct;
  for (int i = 0; i < 5; ++i) {
    SamplerParams one = sp;
    one.seed = sp.seed + uint64_t(i);
    const PlainRun run = plain_decode(m, ctx, prompt, 20, one, is_end);
    const std::vector<int32_t>& want = run.tokens;
    const bool ended = run.ended;
    const double lp = run.logprob;
    EXPECT_EQ(samples[size_t(i)].tokens, want) << "sample " << i;
    EXPECT_EQ(samples[size_t(i)].ended, ended) << "sample " << i;
    EXPECT_NEAR(samples[size_t(i)].logprob, lp, 1e-3) << "sample " << i;
    distinct.insert(want);
  }
  EXPECT_GT(distinct.size(), 1u);  // the seeds differ
}

TEST(ParallelSamples, MajorityVote) {
  const Vote v = majority_vote({"4", "5", "4", "", "5", ""}, {-1, -0.5, -2, 0, -0.1, 0});
  EXPECT_EQ(v.answer, "5");  // 2 votes each; "5" has the higher mean score (-0.3 vs -1.5)
  EXPECT_EQ(v.votes, 2);
  EXPECT_NEAR(v.mean_score, -0.3, 1e-12);
  EXPECT_EQ(majority_vote({"a", "b", "a"}, {-9, 0, -9}).answer, "a");
  EXPECT_EQ(majority_vote({"", ""}, {0, 0}).votes, 0);
}

TEST(ParallelSamples, CliSamplesVotesAndLogprobs) {
  TESSERA_REQUIRE_SHARED("models/stories260K.bin");
  const std::string base = "generate -m " + q(shared_path("models/stories260K.bin")) + " --tokenizer " +
                           q(shared_path("models/tok512.bin")) + " -p 'Once upon a time' -t 2 ";
  const CliResult n = run_cli(base + "-n 30 --n 4 --json-output -s 7");
  ASSERT_EQ(n.code, 0) << n.err;
  const auto jn = nlohmann::json::parse(n.out);
  ASSERT_EQ(jn["samples"].size(), 4u);
  EXPECT_NE(jn["samples"][0]["text"], jn["samples"][1]["text"]);
  const CliResult sc = run_cli(base + "-n 40 --self-consistency 8 --answer-regex 'named (\\w+)' --json-output -s 3");
  ASSERT_EQ(sc.code, 0) << sc.err;
  const auto js = nlohmann::json::parse(sc.out);
  ASSERT_EQ(js["samples"].size(), 8u);
  int votes = 0;
  for (const auto& s : js["samples"]) votes += s["answer"] == js["answer"];
  EXPECT_EQ(votes, js["votes"].get<int>());
  EXPECT_GE(votes, 2);
  const CliResult plain_sc = run_cli(base + "-n 40 --self-consistency 8 --answer-regex 'named (\\w+)' -s 3");
  ASSERT_EQ(plain_sc.code, 0) << plain_sc.err;
  EXPECT_EQ(plain_sc.out, js["answer"].get<std::string>() + "\n");
  // --logprobs at temperature 0: each token is its own top alternative, alternatives in order.
  const CliResult lp = run_cli(base + "-n 8 --temp 0 --logprobs 3");
  ASSERT_EQ(lp.code, 0) << lp.err;
  const auto jl = nlohmann::json::parse(lp.out);
  ASSERT_EQ(jl["tokens"].size(), 8u);
  std::string text;
  for (const auto& t : jl["tokens"]) {
    ASSERT_EQ(t["top_logprobs"].size(), 3u);
    EXPECT_EQ(t["top_logprobs"][0]["id"], t["id"]);
    EXPECT_LE(t["logprob"].get<double>(), 0.0);
    EXPECT_GE(t["top_logprobs"][0]["logprob"].get<double>(), t["top_logprobs"][1]["logprob"].get<double>());
    text += t["text"].get<std::string>();
  }
  EXPECT_EQ(text, jl["text"].get<std::string>());
  // Errors.
  const CliResult no_re = run_cli(base + "--self-consistency 4");
  EXPECT_NE(no_re.code, 0);
  EXPECT_NE(no_re.err.find("--answer-regex"), std::string::npos) << no_re.err;
  const CliResult bad_re = run_cli(base + "--self-consistency 4 --answer-regex '(unclosed'");
  EXPECT_NE(bad_re.code, 0);
  EXPECT_NE(bad_re.err.find("regular expression"), std::string::npos) << bad_re.err;
  const CliResult lp_n = run_cli(base + "--n 2 --logprobs 2");
  EXPECT_NE(lp_n.code, 0);
  const CliResult big = run_cli(base + "--n 1000");
  EXPECT_NE(big.code, 0);
  EXPECT_NE(big.err.find("--n"), std::string::npos) << big.err;
}
