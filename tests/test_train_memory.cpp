// Training-memory calculator: the ZeRO paper's Table 1, input validation,
// activation estimates, and the `tessera memory` command.
#include <gtest/gtest.h>

#include "train/transformer.h"

#include <cmath>
#include <string>

#include "cli_util.h"
#include "core/error.h"
#include "formats/load.h"
#include "model/synthetic.h"
#include "train/memory.h"

using namespace tessera;
using namespace tessera::train;

namespace {

// Asserts that `what` throws tessera::Error whose message contains `needle`.
template <typename F>
void expect_error(F&& what, const std::string& needle) {
  try {
    what();
    ADD_FAILURE() << "no error thrown; expected one mentioning '" << needle << "'";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find(needle), std::string::npos) << e.what();
  }
}

// Number of decimals the paper printed in `s` ("31.4" -> 1, "120" -> 0).
int decimals(const std::string& s) {
  const size_t dot = s.find('.');
  return dot == std::string::npos ? 0 : int(s.size() - dot - 1);
}

}  // namespace

TEST(TrainMemory, ZeroPaperTable1For7_5BParameters) {
  // Rajbhandari et al., ZeRO (2019), Table 1: 7.5B parameters, mixed-precision Adam (K = 12).
  const int64_t dps[] = {1, 4, 16, 64, 256, 1024};
  const char* paper[4][6] = {
      {"120", "120", "120", "120", "120", "120"},      // stage 0 (baseline DP)
      {"120", "52.5", "35.6", "31.4", "30.4", "30.1"},  // P_os
      {"120", "41.3", "21.6", "16.6", "15.4", "15.1"},  // P_os+g
      {"120", "30", "7.5", "1.88", "0.47", "0.12"},     // P_os+g+p
  };
  for (int s = 0; s < 4; ++s)
    for (int i = 0; i < 6; ++i) {
      const double gb = zero_memory(7.5e9, dps[i], s, Precision::Mixed).total() / 1e9;
      const std::string printed = paper[s][i];
      // Matches what the paper printed to its last digit (round half up: 41.25 -> 41.3).
      const double half_ulp = 0.5 * std::pow(10.0, -decimals(printed));
      EXPECT_LE(std::fabs(gb - std::stod(printed)), half_ulp + 1e-9)
          << "stage " << s << " dp " << dps[i] << ": " << gb << " GB vs paper " << printed;
    }
  // And the 3-significant-digit formatting reproduces the paper where it printed 3 digits.
  EXPECT_EQ(format_gb(zero_memory(7.5e9, 4, 2, Precision::Mixed).total()), "41.3");
  EXPECT_EQ(format_gb(zero_memory(7.5e9, 64, 3, Precision::Mixed).total()), "1.88");
  EXPECT_EQ(format_gb(zero_memory(7.5e9, 16, 1, Precision::Mixed).total()), "35.6");
  EXPECT_EQ(format_gb(zero_memory(7.5e9, 1024, 3, Precision::Mixed).total()), "0.117");
  EXPECT_EQ(format_gb(120e9), "120");
  EXPECT_EQ(format_gb(1234.4e9), "1230");
  EXPECT_EQ(format_gb(999.6e9), "1000");
}

TEST(TrainMemory, StagesShardTheRightPartsAndPrecisions) {
  const double P = 1e9;
  const DeviceMemory s0 = zero_memory(P, 8, 0, Precision::Mixed);
  EXPECT_DOUBLE_EQ(s0.weights, 2 * P);
  EXPECT_DOUBLE_EQ(s0.grads, 2 * P);
  EXPECT_DOUBLE_EQ(s0.optimizer, 12 * P);
  const DeviceMemory s1 = zero_memory(P, 8, 1, Precision::Mixed);
  EXPECT_DOUBLE_EQ(s1.optimizer, 12 * P / 8);
  EXPECT_DOUBLE_EQ(s1.grads, 2 * P);
  const DeviceMemory s2 = zero_memory(P, 8, 2, Precision::Mixed);
  EXPECT_DOUBLE_EQ(s2.grads, 2 * P / 8);
  EXPECT_DOUBLE_EQ(s2.weights, 2 * P);
  const DeviceMemory s3 = zero_memory(P, 8, 3, Precision::Mixed);
  EXPECT_DOUBLE_EQ(s3.total(), 16 * P / 8);
  EXPECT_DOUBLE_EQ(bytes_per_param(Precision::FP32).total(), 16);
  EXPECT_DOUBLE_EQ(bytes_per_param(Precision::FP32).optimizer, 8);
  EXPECT_DOUBLE_EQ(bytes_per_param(Precision::BF16).total(), 8);
  EXPECT_EQ(parse_precision("fp32"), Precision::FP32);
  EXPECT_EQ(parse_precision("bf16"), Precision::BF16);
  EXPECT_STREQ(precision_name(parse_precision("mixed")), "mixed");
}

TEST(TrainMemory, BadValuesAreRejectedNamingTheFlag) {
  expect_error([] { zero_memory(0, 1, 0, Precision::Mixed); }, "--params");
  expect_error([] { zero_memory(-5, 1, 0, Precision::Mixed); }, "-5");
  expect_error([] { zero_memory(NAN, 1, 0, Precision::Mixed); }, "--params");
  expect_error([] { zero_memory(1e9, 0, 0, Precision::Mixed); }, "--dp");
  expect_error([] { zero_memory(1e9, 4, 4, Precision::Mixed); }, "--zero");
  expect_error([] { zero_memory(1e9, 4, -1, Precision::Mixed); }, "got -1");
  expect_error([] { parse_precision("fp8"); }, "--precision");
  expect_error([] { parse_precision("fp8"); }, "fp8");
  const ModelConfig c = synthetic_config("15m");
  expect_error([&] { activation_memory(c, 0, 16, Precision::Mixed); }, "--batch");
  expect_error([&] { activation_memory(c, 1, -3, Precision::Mixed); }, "--seq");
  expect_error([&] { activation_memory(synthetic_config("gpt2-tiny"), 1, 4096, Precision::Mixed); }, "--seq 4096");
  ModelConfig bad = c;
  bad.dim = 0;
  EXPECT_THROW(activation_memory(bad, 1, 16, Precision::Mixed), Error);
}

TEST(TrainMemory, ParameterCountFromConfigMatchesBuiltWeights) {
  for (const char* name : {"15m", "260k", "gpt2-tiny"}) {
    const LoadedModel lm = load_model(std::string("synthetic:") + name);
    EXPECT_EQ(count_params(synthetic_config(name)), lm.weights.n_params()) << name;
  }
  // 1b is untied: 2 x V x C of embeddings.
  const ModelConfig c = synthetic_config("1b");
  EXPECT_EQ(count_params(c), 2 * c.vocab_size * c.dim + c.dim +
                                 c.n_layers * (2 * c.dim + c.dim * (c.q_dim() + 2 * c.kv_dim()) +
                                               c.dim * c.q_dim() + 3 * c.hidden_dim * c.dim));
}

TEST(TrainMemory, ActivationEstimateIsSane) {
  for (const char* name : {"1b", "gpt2-tiny"}) {
    const ModelConfig c = synthetic_config(name);
    const ActivationEstimate a = activation_memory(c, 4, 64, Precision::Mixed);
    EXPECT_EQ(a.tokens, 256);
    EXPECT_GT(a.full, 0);
    EXPECT_LT(a.recompute, a.full) << name;
    EXPECT_GT(a.recompute, 0);
    // Linear in the number of sequences (the attention term grows with seq, not batch).
    const ActivationEstimate b = activation_memory(c, 8, 64, Precision::Mixed);
    EXPECT_NEAR(b.full, 2 * a.full, 1e-6 * a.full);
    EXPECT_NEAR(b.recompute, 2 * a.recompute, 1e-6 * a.recompute);
    // fp32 activations are twice the bf16 ones, up to the fp32 norm statistics.
    const ActivationEstimate f = activation_memory(c, 4, 64, Precision::FP32);
    EXPECT_GT(f.full, 1.9 * a.full);
    EXPECT_LE(f.full, 2 * a.full);
    // Longer sequences cost more per token (attention probabilities: n_heads * T per token).
    const ActivationEstimate l = activation_memory(c, 2, 128, Precision::Mixed);
    EXPECT_EQ(l.tokens, a.tokens);
    EXPECT_NEAR(l.per_token_layer - a.per_token_layer, 2.0 * double(c.n_heads) * 64, 1e-9);
  }
  // Hand count for Llama 15m, bf16, T = 256: per token per layer
  // C + C + (q + 2kv) + nh*T + q + C + C + 3H elements x 2 bytes + 2 fp32 rstd.
  const ModelConfig c = synthetic_config("15m");
  const ActivationEstimate a = activation_memory(c, 1, 256, Precision::Mixed);
  const double C = 288, H = 768;
  EXPECT_DOUBLE_EQ(a.per_token_layer, 2 * (4 * C + 3 * C + 6 * 256 + C + 3 * H) + 8);
  EXPECT_DOUBLE_EQ(a.full, 256 * (6 * a.per_token_layer + a.per_token_head));
  EXPECT_DOUBLE_EQ(a.recompute, 256 * (6 * 2 * C + a.per_token_layer - 2 * C + a.per_token_head));
}

// Latent attention: the estimate counts what train/mla_train.cpp keeps per token and layer,
// and the trainer's own arena (fp32, flash) grows from MHA to MLA by that amount.
TEST(TrainMemory, LatentAttentionLayers) {
  ModelConfig c = synthetic_config("mla-1b");
  const ActivationEstimate a = activation_memory(c, 1, 256, Precision::FP32, 0, true);
  ModelConfig mha = c;
  mha.mla_kv_lora = mha.mla_q_lora = mha.mla_rope = mha.mla_v_dim = 0;
  const ActivationEstimate b = activation_memory(mha, 1, 256, Precision::FP32, 0, true);
  // q, k, v expanded (3 q instead of q + 2 kv), latents 2 x 512 + 64, kv_b nh x (128 + 128), att2 nh x 128, one rstd.
  const double q = double(c.q_dim()), kv = double(c.kv_dim()), nh = double(c.n_heads);
  EXPECT_DOUBLE_EQ(a.per_token_layer - b.per_token_layer,
                   4 * (2 * q - 2 * kv + 2 * 512 + 64 + nh * 256 + nh * 128) + 4);
  // A small MLA model: the Transformer's stored activations per token and layer match the estimate's MLA share.
  ModelConfig t;
  t.arch = Arch::Llama;
  t.dim = 32, t.n_layers = 2, t.n_heads = 4, t.n_kv_heads = 4, t.hidden_dim = 48, t.vocab_size = 40, t.max_seq_len = 64;
  t.head_dim = 12, t.mla_rope = 4, t.mla_v_dim = 8, t.mla_kv_lora = 16, t.mla_q_lora = 12;
  ModelConfig t0 = t;
  t0.mla_kv_lora = t0.mla_q_lora = t0.mla_rope = t0.mla_v_dim = 0;
  const double est = activation_memory(t, 4, 64, Precision::FP32, 0, true).full -
                     activation_memory(t0, 4, 64, Precision::FP32, 0, true).full;
  const tessera::train::Layout L(t), L0(t0);
  tessera::train::ModelOptions mo;
  mo.recompute = false;
  const double real = double(tessera::train::Transformer<float>(L, 4, 64, mo).activation_bytes()) -
                      double(tessera::train::Transformer<float>(L0, 4, 64, mo).activation_bytes());
  EXPECT_GT(real, est);        // the arena also holds the backward's scratch
  EXPECT_LT(real, 1.6 * est);  // of one layer's size
}

TEST(CliMemory, ZeroStage3AtDp64AndBadStage) {
  using namespace tessera::test;
  CliResult r = run_cli("memory --params 7.5e9 --dp 64 --zero 3");
  ASSERT_EQ(r.code, 0) << r.err;
  EXPECT_NE(r.out.find("1.88"), std::string::npos) << r.out;
  EXPECT_EQ(r.out.find("ZeRO-1"), std::string::npos) << "only the asked stage is printed:\n" << r.out;

  CliResult bad = run_cli("memory --params 7.5e9 --zero 5");
  EXPECT_NE(bad.code, 0);
  EXPECT_NE(bad.err.find("--zero"), std::string::npos) << bad.err;
  EXPECT_TRUE(bad.out.empty()) << bad.out;

  CliResult t = run_cli("memory --params 7.5e9 --table");
  ASSERT_EQ(t.code, 0) << t.err;
  for (const char* v : {"52.5", "35.6", "31.4", "30.4", "30.1", "41.3", "21.6", "16.6", "15.4", "15.1", "7.5"})
    EXPECT_NE(t.out.find(v), std::string::npos) << v << " missing from\n" << t.out;

  CliResult j = run_cli("memory -m synthetic:15m --batch 2 --seq 64 --zero 1 --dp 4 --json");
  ASSERT_EQ(j.code, 0) << j.err;
  EXPECT_NE(j.out.find("\"recompute_bytes\""), std::string::npos) << j.out;
  EXPECT_NE(j.out.find("\"tokens\": 128"), std::string::npos) << j.out;
  EXPECT_NE(run_cli("memory --params 1e9 --batch 4").code, 0);  // activations need a model
}

// A fused output + loss keeps the logits of at most logit_rows tokens: the
// estimate drops the rest of the (tokens, V) logits and nothing else.
TEST(TrainMemory, FusedLogitsKeepOnlyTheirRows) {
  const ModelConfig c = synthetic_config("15m");
  const ActivationEstimate s = activation_memory(c, 8, 256, Precision::FP32);
  const ActivationEstimate f = activation_memory(c, 8, 256, Precision::FP32, 256);
  const double dropped = double(8 * 256 - 256) * double(c.vocab_size) * 4;
  EXPECT_DOUBLE_EQ(s.full - f.full, dropped);
  EXPECT_DOUBLE_EQ(s.recompute - f.recompute, dropped);
  EXPECT_THROW(activation_memory(c, 8, 256, Precision::FP32, -1), tessera::Error);
}

// --attention flash: the (T, T) probabilities (n_heads x T per token, activation bytes)
// become one fp32 log-sum-exp per head, so the per-token cost no longer grows with T.
TEST(TrainMemory, FlashAttentionKeepsALogSumExpPerHead) {
  const ModelConfig c = synthetic_config("15m");
  const ActivationEstimate s = activation_memory(c, 1, 256, Precision::Mixed);
  const ActivationEstimate f = activation_memory(c, 1, 256, Precision::Mixed, 0, true);
  EXPECT_DOUBLE_EQ(s.per_token_layer - f.per_token_layer, 2.0 * 6 * 256 - 4.0 * 6);
  const ActivationEstimate f2 = activation_memory(c, 1, 2048, Precision::Mixed, 0, true);
  EXPECT_DOUBLE_EQ(f2.per_token_layer, f.per_token_layer);
  using namespace tessera::test;
  CliResult r = run_cli("memory -m synthetic:15m --batch 32 --seq 2048 --attention flash --json");
  ASSERT_EQ(r.code, 0) << r.err;
  EXPECT_NE(r.out.find("\"attention\": \"flash\""), std::string::npos) << r.out;
  EXPECT_NE(run_cli("memory --params 1e9 --attention flash").code, 0);
  EXPECT_NE(run_cli("memory -m synthetic:15m --attention tiled").code, 0);
}
