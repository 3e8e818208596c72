// A frozen base kept in its stored type (finetune --qlora; Transformer::set_frozen_weights):
// the loss and the adapter's gradients against the same base widened to f32 (F16 matrices:
// equal to rounding; Q4_0 / Q8_0: within the inference kernels' activation quantization),
// for Llama (separate embedding and output) and GPT-2 (tied), with LoRA, prefix tuning and
// bottleneck adapters; and `tessera finetune --qlora` from the command line.
#include <gtest/gtest.h>

#include <cmath>
#include <filesystem>
#include <fstream>

#include "cli_util.h"
#include "core/error.h"
#include "model/synthetic.h"
#include "train/checkpoint.h"
#include "train/lora.h"
#include "train/params.h"
#include "train/transformer.h"

using namespace tessera;
using namespace tessera::train;
using tessera::test::q;
using tessera::test::run_cli;
namespace fs = std::filesystem;

namespace {

// Loss and adapter gradient of one pass on the f32 widening of w and on w itself.
struct Pass {
  double loss;
  std::vector<float> grad;
};
Pass run(const Weights& w, const LoraConfig& lc, bool frozen) {
  const Layout L(w.cfg);
  const LoraLayout LL(L, lc);
  ParamVec p(L.total), a(LL.total), ga(LL.total);
  params_from_weights(L, w, p.data(), frozen);
  init_lora(LL, a.data(), 3);
  for (size_t i = 0; i < a.size(); ++i) a[i] += 0.02f * float(int(i % 7) - 3);  // B and W_up non-zero too
  const int64_t B = 2, T = 16;
  std::vector<int32_t> tok(B * T), tgt(B * T);
  for (size_t i = 0; i < tok.size(); ++i)
    tok[i] = int32_t((i * 37 + 5) % uint64_t(w.cfg.vocab_size)), tgt[i] = int32_t((i * 11 + 2) % uint64_t(w.cfg.vocab_size));
  Transformer<float> m(L, B, T, ModelOptions{});
  m.attach_lora(LL);
  m.set_lora_params(a.data(), ga.data());
  if (frozen) m.set_frozen_weights(w);
  const auto r = m.forward_backward(p.data(), nullptr, tok.data(), tgt.data(), 1.f / float(B * T), 0, true);
  return {r.loss_sum / double(r.count), std::vector<float>(ga.begin(), ga.end())};
}

void expect_close(const Weights& w, const LoraConfig& lc, double tol, const std::string& what) {
  const Pass wide = run(w, lc, false), frozen = run(w, lc, true);
  EXPECT_NEAR(frozen.loss, wide.loss, tol * wide.loss) << what;
  double e = 0, m = 0;
  for (size_t i = 0; i < wide.grad.size(); ++i)
    e = std::max(e, double(std::fabs(frozen.grad[i] - wide.grad[i]))), m = std::max(m, double(std::fabs(wide.grad[i])));
  EXPECT_GT(m, 0.0) << what;
  EXPECT_LT(e, tol * 20 * m) << what;
}

}  // namespace

TEST(QLora, FrozenStoredTypesMatchTheWidenedBase) {
  ModelConfig llama = synthetic_config("260k");
  llama.dim = 64, llama.hidden_dim = 96, llama.n_layers = 2, llama.vocab_size = 300, llama.max_seq_len = 32;  // 300: the output layer's dX in two chunks of rows
  ModelConfig gpt2 = synthetic_config("gpt2-tiny");
  gpt2.vocab_size = 96, gpt2.max_seq_len = 32;
  LoraConfig lora, prefix, bottleneck;
  lora.rank = 4, lora.alpha = 8.f, lora.targets = parse_lora_targets("all");
  prefix.prefix_len = 3;
  bottleneck.adapter_dim = 8;
  ModelConfig moe = synthetic_config("moe-tiny-shared");  // experts, a shared expert, a dense first layer
  moe.vocab_size = 96, moe.max_seq_len = 32;
  for (const auto& [cfg, name] : {std::pair{llama, "llama"}, std::pair{gpt2, "gpt2"}, std::pair{moe, "moe"}}) {
    const Weights f16 = make_random_weights(cfg, DType::F16, 5, 2);
    expect_close(f16, lora, 1e-5, std::string(name) + " f16 lora");
    expect_close(f16, prefix, 1e-5, std::string(name) + " f16 prefix");
    expect_close(f16, bottleneck, 1e-5, std::string(name) + " f16 bottleneck");
    expect_close(make_random_weights(cfg, DType::Q8_0, 5, 2), lora, 1e-2, std::string(name) + " q8_0 lora");
    expect_close(make_random_weights(cfg, DType::Q4_0, 5, 2), lora, 2e-2, std::string(name) + " q4_0 lora");
  }
  ModelConfig mla = synthetic_config("mla-tiny");  // latent attention with a q LoRA (dense: q8_0 noise would flip routes)
  mla.vocab_size = 96, mla.max_seq_len = 32, mla.moe_experts = 0, mla.layer_cfg.clear();
  expect_close(make_random_weights(mla, DType::F16, 5, 2), lora, 1e-5, "mla f16 lora");
  expect_close(make_random_weights(mla, DType::Q8_0, 5, 2), lora, 1e-2, "mla q8_0 lora");
  const Layout L(llama);
  Transformer<double> d(L, 1, 4, ModelOptions{});
  const Weights w = make_random_weights(llama, DType::F16, 5, 2);
  EXPECT_THROW(d.set_frozen_weights(w), Error);  // float only
  ModelOptions bf;
  bf.bf16 = true;
  Transformer<float> b(L, 1, 4, bf);
  EXPECT_THROW(b.set_frozen_weights(w), Error);
}

// The command line: a Q8_0 base kept as Q8_0, the adapter exported and applied to that base.
TEST(QLora, FinetuneKeepsTheBaseQuantized) {
  TESSERA_REQUIRE_SHARED("data/tinyshakespeare.txt");
  TESSERA_REQUIRE_SHARED("models/stories260K.bin");
  const std::string dir = test::temp_path("qlora_cli");
  fs::remove_all(dir);
  fs::create_directories(dir);
  const std::string tok = test::shared_path("models/tok512.bin");
  std::ifstream in(test::shared_path("data/tinyshakespeare.txt"));
  std::string text(120000, '\0');
  in.read(text.data(), std::streamsize(text.size()));
  std::ofstream(dir + "/corpus.txt") << text;
  std::ofstream(dir + "/eval.txt") << text.substr(110000, 6000);
  ASSERT_EQ(run_cli("data prepare --tokenizer " + q(tok) + " -o " + q(dir + "/data") + " " + q(dir + "/corpus.txt")).code, 0);
  ASSERT_EQ(run_cli("convert " + q(test::shared_path("models/stories260K.bin")) + " " + q(dir + "/q8.gguf") +
                    " --type q8_0 --tokenizer " + q(tok))
                .code,
            0);
  const std::string ft = "finetune --init " + q(dir + "/q8.gguf") + " --data " + q(dir + "/data") +
                         " --batch 4 --seq 64 --lr 3e-3 -t 2 --seed 3 --qlora --lora-rank 8 --schedule constant --warmup 0";
  auto r = run_cli(ft + " -o " + q(dir + "/a") + " --steps 30");
  ASSERT_EQ(r.code, 0) << r.err;
  EXPECT_NE(r.err.find("of matrices in their stored types"), std::string::npos) << r.err;
  EXPECT_NE(r.err.find("resident memory after setup"), std::string::npos) << r.err;
  ASSERT_EQ(run_cli(ft + " -o " + q(dir + "/b") + " --steps 15").code, 0);
  r = run_cli("finetune --resume " + q(dir + "/b") + " --steps 30");
  ASSERT_EQ(r.code, 0) << r.err;
  EXPECT_TRUE(test::slurp(checkpoint_path(dir + "/a", 30)) == test::slurp(checkpoint_path(dir + "/b", 30)))
      << "the resumed QLoRA run differs";
  EXPECT_TRUE(load_checkpoint(checkpoint_path(dir + "/a", 30)).lora.quantized_base);
  ASSERT_EQ(run_cli("export " + q(dir + "/a") + " -o " + q(dir + "/ad.gguf")).code, 0);
  auto ppl = [&](const std::string& extra) {
    auto p = run_cli("perplexity -m " + q(dir + "/q8.gguf") + extra + " -f " + q(dir + "/eval.txt") + " -c 128");
    EXPECT_EQ(p.code, 0) << p.err;
    const size_t at = p.out.find("mean NLL");
    return at == std::string::npos ? 0.0 : std::stod(p.out.substr(at + 9));
  };
  EXPECT_LT(ppl(" --lora " + q(dir + "/ad.gguf")), ppl("") - 0.3);
  r = run_cli("finetune --init " + q(dir + "/q8.gguf") + " --data " + q(dir + "/data") + " -o " + q(dir + "/c") +
              " --steps 1 --qlora --precision bf16");
  EXPECT_NE(r.code, 0);
  EXPECT_NE(r.err.find("--qlora"), std::string::npos) << r.err;
  fs::remove_all(dir);
}
