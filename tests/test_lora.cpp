// LoRA fine-tuning from the command line on stories260K: `tessera finetune`,
// the adapter exported as a GGUF LoRA file, a PEFT directory and a merged
// model, all three giving the same perplexity through `--lora`; resume bit for
// bit; bad input. (Gradients: tests/test_train_grad.cpp, TrainGrad.Lora*.)
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>

#include "cli_util.h"
#include "formats/gguf.h"
#include "nlohmann/json.hpp"
#include "train/checkpoint.h"
#include "train/lora.h"

using namespace tessera;
using tessera::test::q;
using tessera::test::run_cli;
namespace fs = std::filesystem;

namespace {

class LoraCli : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    if (!fs::exists(test::shared_path("data/tinyshakespeare.txt")) ||
        !fs::exists(test::shared_path("models/stories260K.bin")))
      return;
    dir_ = test::temp_path("lora_cli");
    fs::remove_all(dir_);
    fs::create_directories(dir_);
    std::ifstream in(test::shared_path("data/tinyshakespeare.txt"));
    std::string text(200000, '\0');
    in.read(text.data(), std::streamsize(text.size()));
    std::ofstream(dir_ + "/corpus.txt") << text;
    std::ofstream(dir_ + "/eval.txt") << text.substr(190000, 6000);
    auto r = run_cli("data prepare --tokenizer " + q(tok()) + " -o " + q(dir_ + "/data") + " " +
                     q(dir_ + "/corpus.txt"));
    ASSERT_EQ(r.code, 0) << r.err;
  }
  static void TearDownTestSuite() {
    if (!dir_.empty()) fs::remove_all(dir_);
  }
  void SetUp() override {
    TESSERA_REQUIRE_SHARED("data/tinyshakespeare.txt");
    TESSERA_REQUIRE_SHARED("models/stories260K.bin");
  }
  static std::string base() { return test::shared_path("models/stories260K.bin"); }
  static std::string tok() { return test::shared_path("models/tok512.bin"); }
  static std::string finetune(const std::string& out, int steps, const std::string& extra = "") {
    return "finetune --init " + q(base()) + " --tokenizer " + q(tok()) + " --data " + q(dir_ + "/data") + " -o " +
           q(out) + " --batch 4 --seq 64 --lr 3e-3 --ckpt-interval 5 --eval-interval 10 --eval-batches 2 -t 2" +
           " --seed 3 --steps " + std::to_string(steps) + " " + extra;
  }
  // The perplexity line of `tessera perplexity ARGS` on the held-out text.
  static std::string ppl(const std::string& args) {
    auto r = run_cli("perplexity " + args + " -f " + q(dir_ + "/eval.txt") + " -c 128");
    EXPECT_EQ(r.code, 0) << args << "\n" << r.err;
    const size_t at = r.out.find("mean NLL");
    return at == std::string::npos ? r.err : r.out.substr(at);
  }
  static inline std::string dir_;
};

}  // namespace

TEST_F(LoraCli, FinetunesAndEveryExportComputesTheSameModel) {
  const std::string run = dir_ + "/run";
  auto r = run_cli(finetune(run, 30));
  ASSERT_EQ(r.code, 0) << r.err;
  EXPECT_NE(r.err.find("LoRA: rank 8, alpha 16 (scale 2)"), std::string::npos) << r.err;
  EXPECT_NE(r.err.find("trainable params"), std::string::npos);
  // Only the adapter (and its Adam moments) is in the checkpoint.
  const auto ck = train::load_checkpoint(train::latest_checkpoint(run));
  ASSERT_TRUE(ck.lora.enabled());
  const train::Layout L(ck.cfg);
  EXPECT_EQ(ck.params.size(), train::LoraLayout(L, ck.lora).total);
  EXPECT_LT(ck.params.size() * 4, L.total);

  ASSERT_EQ(run_cli("export " + q(run) + " -o " + q(dir_ + "/ad.gguf")).code, 0);
  ASSERT_EQ(run_cli("export " + q(run) + " -o " + q(dir_ + "/peft")).code, 0);
  r = run_cli("export " + q(run) + " --merge-lora -o " + q(dir_ + "/merged.gguf"));
  ASSERT_EQ(r.code, 0) << r.err;
  // llama.cpp's adapter format.
  const auto g = gguf::File::open(dir_ + "/ad.gguf");
  EXPECT_EQ(g->get_string("general.type"), "adapter");
  EXPECT_EQ(g->get_string("adapter.type"), "lora");
  EXPECT_EQ(g->get_string("general.architecture"), "llama");
  EXPECT_EQ(g->get_float("adapter.lora.alpha"), 16.0);
  EXPECT_EQ(g->tensor("blk.0.attn_q.weight.lora_a").shape, (std::vector<int64_t>{8, 64}));
  EXPECT_EQ(g->tensor("blk.4.ffn_down.weight.lora_b").shape, (std::vector<int64_t>{64, 8}));
  const auto pc = nlohmann::json::parse(test::slurp(dir_ + "/peft/adapter_config.json"));
  EXPECT_EQ(pc["r"], 8);
  EXPECT_EQ(pc["peft_type"], "LORA");

  const std::string merged = ppl("-m " + q(dir_ + "/merged.gguf"));
  const std::string b = "-m " + q(base()) + " --tokenizer " + q(tok());
  EXPECT_EQ(ppl(b + " --lora " + q(dir_ + "/ad.gguf")), merged);
  EXPECT_EQ(ppl(b + " --lora " + q(dir_ + "/peft")), merged);
  EXPECT_NE(ppl(b), merged);
  EXPECT_NE(ppl(b + " --lora " + q(dir_ + "/ad.gguf") + ":0.5"), merged);
  // A Hugging Face base (half-split q/k rows) with the same adapters: the permutation of B's rows.
  ASSERT_EQ(run_cli("convert " + q(base()) + " " + q(dir_ + "/hf") + " --tokenizer " + q(tok())).code, 0);
  EXPECT_EQ(ppl("-m " + q(dir_ + "/hf") + " --tokenizer " + q(tok()) + " --lora " + q(dir_ + "/peft")), merged);
  EXPECT_EQ(ppl("-m " + q(dir_ + "/hf") + " --tokenizer " + q(tok()) + " --lora " + q(dir_ + "/ad.gguf")), merged);
  // Two adapters at half scale each are the one at full scale (both merged in f32).
  const std::string half = q(dir_ + "/ad.gguf") + ":0.5";
  const auto nll = [](const std::string& line) { return std::stod(line.substr(9)); };
  EXPECT_NEAR(nll(ppl(b + " --lora " + half + " --lora " + half)), nll(merged), 1e-5);
  // The fine-tuned adapter fits the new text better than the base.
  EXPECT_LT(nll(merged), nll(ppl(b)) - 0.5);
}

TEST_F(LoraCli, ResumeIsBitIdenticalAndKeepsTheAdapterSettings) {
  const std::string a = dir_ + "/ra", b = dir_ + "/rb";
  // A constant rate: extending the run with --steps leaves the schedule as it was.
  const std::string opts = "--lora-rank 4 --lora-dropout 0.1 --lora-targets q,v --schedule constant --warmup 0";
  ASSERT_EQ(run_cli(finetune(a, 20, opts)).code, 0);
  ASSERT_EQ(run_cli(finetune(b, 10, opts)).code, 0);
  auto r = run_cli("finetune --resume " + q(b) + " --steps 20");
  ASSERT_EQ(r.code, 0) << r.err;
  EXPECT_TRUE(test::slurp(train::checkpoint_path(a, 20)) == test::slurp(train::checkpoint_path(b, 20)))
      << "the resumed run ends with other adapter weights";
  const auto ck = train::load_checkpoint(train::checkpoint_path(b, 20));
  EXPECT_EQ(ck.lora.rank, 4);
  EXPECT_EQ(train::lora_targets_string(ck.lora.targets), "q,v");
  r = run_cli("finetune --resume " + q(b) + " --steps 25 --lora-rank 8");
  EXPECT_NE(r.code, 0);
  EXPECT_NE(r.err.find("--lora-rank cannot be changed"), std::string::npos) << r.err;
}

TEST_F(LoraCli, BadInputGetsClearErrors) {
  auto r = run_cli("finetune --data " + q(dir_ + "/data") + " -o " + q(dir_ + "/x1") + " --steps 2");
  EXPECT_NE(r.code, 0);
  EXPECT_NE(r.err.find("--init MODEL is required"), std::string::npos) << r.err;
  r = run_cli(finetune(dir_ + "/x2", 2, "--lora-targets q,ffn"));
  EXPECT_NE(r.code, 0);
  EXPECT_NE(r.err.find("unknown target 'ffn'"), std::string::npos) << r.err;
  r = run_cli(finetune(dir_ + "/x3", 2, "--lora-alpha -1"));
  EXPECT_NE(r.code, 0);
  EXPECT_NE(r.err.find("--lora-alpha"), std::string::npos) << r.err;
  // An adapter for another model's shapes, a file that is not an adapter, a bad scale.
  const std::string run = dir_ + "/small";
  ASSERT_EQ(run_cli(finetune(run, 2)).code, 0);
  ASSERT_EQ(run_cli("export " + q(run) + " -o " + q(dir_ + "/small.gguf")).code, 0);
  r = run_cli("generate -m synthetic:gpt2-tiny --lora " + q(dir_ + "/small.gguf") + " -p hi -n 2");
  EXPECT_NE(r.code, 0);
  EXPECT_NE(r.err.find("small.gguf"), std::string::npos) << r.err;
  r = run_cli("generate -m " + q(base()) + " --tokenizer " + q(tok()) + " --lora " + q(base()) + " -p hi -n 2");
  EXPECT_NE(r.code, 0);
  EXPECT_NE(r.err.find("not a LoRA adapter"), std::string::npos) << r.err;
  r = run_cli("generate -m " + q(base()) + " --tokenizer " + q(tok()) + " --lora " + q(dir_ + "/small.gguf") +
              ":x -p hi -n 2");
  EXPECT_NE(r.code, 0);
  EXPECT_NE(r.err.find("FILE:SCALE"), std::string::npos) << r.err;
  // --merge-lora on a run that is not a LoRA run; --type on an adapter.
  ASSERT_EQ(run_cli("train --data " + q(dir_ + "/data") + " -o " + q(dir_ + "/full") +
                    " --dim 16 --layers 1 --heads 2 --batch 2 --seq 16 --steps 1 -t 2")
                .code,
            0);
  r = run_cli("export " + q(dir_ + "/full") + " --merge-lora -o " + q(dir_ + "/m.gguf"));
  EXPECT_NE(r.code, 0);
  EXPECT_NE(r.err.find("not a LoRA run"), std::string::npos) << r.err;
  r = run_cli("export " + q(run) + " --type q8_0 -o " + q(dir_ + "/a8.gguf"));
  EXPECT_NE(r.code, 0);
  EXPECT_NE(r.err.find("--merge-lora"), std::string::npos) << r.err;
}

// A quantized base takes the adapter too: merged, then quantized again to the matrix's type.
TEST_F(LoraCli, AQuantizedBaseTakesTheAdapter) {
  const std::string run = dir_ + "/rq";
  ASSERT_EQ(run_cli(finetune(run, 20)).code, 0);
  ASSERT_EQ(run_cli("export " + q(run) + " -o " + q(dir_ + "/rq.gguf")).code, 0);
  ASSERT_EQ(run_cli("export " + q(run) + " --merge-lora -o " + q(dir_ + "/rq_merged.gguf")).code, 0);
  ASSERT_EQ(run_cli("convert " + q(base()) + " " + q(dir_ + "/q8.gguf") + " --type q8_0 --tokenizer " + q(tok())).code,
            0);
  const auto nll = [](const std::string& line) { return std::stod(line.substr(9)); };
  const double merged = nll(ppl("-m " + q(dir_ + "/rq_merged.gguf")));
  const double q8 = nll(ppl("-m " + q(dir_ + "/q8.gguf") + " --lora " + q(dir_ + "/rq.gguf")));
  EXPECT_NEAR(q8, merged, 0.02 * merged);
  EXPECT_LT(q8, nll(ppl("-m " + q(dir_ + "/q8.gguf"))) - 0.3);
}

// Prefix tuning (--prefix-len): trains, resumes bit for bit, exports PEFT's PREFIX_TUNING files,
// and --prefix-adapter runs them, on the llama2.c model and on its Hugging Face conversion (keys
// in the other RoPE order); what it cannot be combined with is refused by name.
TEST_F(LoraCli, PrefixTuningTrainsExportsAndRuns) {
  const std::string a = dir_ + "/pa", b = dir_ + "/pb";
  const std::string opts = "--prefix-len 8 --lr 1e-2 --schedule constant --warmup 0";
  auto r = run_cli(finetune(a, 20, opts));
  ASSERT_EQ(r.code, 0) << r.err;
  EXPECT_NE(r.err.find("prefix tuning: 8 key/value rows per layer"), std::string::npos) << r.err;
  ASSERT_EQ(run_cli(finetune(b, 10, opts)).code, 0);
  ASSERT_EQ(run_cli("finetune --resume " + q(b) + " --steps 20").code, 0);
  EXPECT_TRUE(test::slurp(train::checkpoint_path(a, 20)) == test::slurp(train::checkpoint_path(b, 20)))
      << "the resumed prefix differs";
  const auto ck = train::load_checkpoint(train::checkpoint_path(a, 20));
  EXPECT_EQ(ck.lora.prefix_len, 8);
  EXPECT_EQ(ck.params.size(), train::LoraLayout(train::Layout(ck.cfg), ck.lora).total);

  ASSERT_EQ(run_cli("export " + q(a) + " -o " + q(dir_ + "/prefix")).code, 0);
  const auto pc = nlohmann::json::parse(test::slurp(dir_ + "/prefix/adapter_config.json"));
  EXPECT_EQ(pc["peft_type"], "PREFIX_TUNING");
  EXPECT_EQ(pc["num_virtual_tokens"], 8);
  EXPECT_EQ(pc["token_dim"], 32);  // 4 KV heads of 8
  const auto nll = [](const std::string& line) { return std::stod(line.substr(9)); };
  const std::string m = "-m " + q(base()) + " --tokenizer " + q(tok());
  const double tuned = nll(ppl(m + " --prefix-adapter " + q(dir_ + "/prefix")));
  EXPECT_LT(tuned, nll(ppl(m)) - 0.3);
  ASSERT_EQ(run_cli("convert " + q(base()) + " " + q(dir_ + "/hfp") + " --tokenizer " + q(tok())).code, 0);
  EXPECT_NEAR(nll(ppl("-m " + q(dir_ + "/hfp") + " --tokenizer " + q(tok()) + " --prefix-adapter " +
                      q(dir_ + "/prefix"))),
              tuned, 1e-4);
  r = run_cli("generate " + m + " --prefix-adapter " + q(dir_ + "/prefix") + " -p ROMEO -n 8 --temp 0");
  EXPECT_EQ(r.code, 0) << r.err;

  r = run_cli(finetune(dir_ + "/px1", 2, "--prefix-len 4 --lora-rank 4"));
  EXPECT_NE(r.code, 0);
  EXPECT_NE(r.err.find("choose one per run"), std::string::npos) << r.err;
  r = run_cli("export " + q(a) + " -o " + q(dir_ + "/p.gguf"));
  EXPECT_NE(r.code, 0);
  EXPECT_NE(r.err.find("no prefix-tuning adapter format"), std::string::npos) << r.err;
  r = run_cli("generate " + m + " --lora " + q(dir_ + "/prefix") + " -p hi -n 2");
  EXPECT_NE(r.code, 0);
  EXPECT_NE(r.err.find("--prefix-adapter"), std::string::npos) << r.err;
  for (const char* mode : {"--beams 2", "--n 2 --temp 1", "--draft-ngram 2"}) {  // the batched forward
    r = run_cli("generate " + m + " --prefix-adapter " + q(dir_ + "/prefix") + " -p ROMEO -n 6 " + mode);
    EXPECT_EQ(r.code, 0) << mode << "\n" << r.err;
  }
  r = run_cli("generate -m synthetic:gpt2-tiny --prefix-adapter " + q(dir_ + "/prefix") + " -p hi -n 2");
  EXPECT_NE(r.code, 0);
  EXPECT_NE(r.err.find("adapter_config.json"), std::string::npos) << r.err;
}

// Bottleneck adapters (--adapter-dim): train, resume bit for bit, export as a GGUF adapter file,
// and --bottleneck-adapter runs them in plain decoding and with beams (the batched forward).
TEST_F(LoraCli, BottleneckAdaptersTrainExportAndRun) {
  const std::string a = dir_ + "/ba", b = dir_ + "/bb";
  const std::string opts = "--adapter-dim 8 --adapter-act gelu --lr 1e-2 --schedule constant --warmup 0";
  auto r = run_cli(finetune(a, 20, opts));
  ASSERT_EQ(r.code, 0) << r.err;
  EXPECT_NE(r.err.find("bottleneck adapters: width 8, gelu, after attn,ffn"), std::string::npos) << r.err;
  ASSERT_EQ(run_cli(finetune(b, 10, opts)).code, 0);
  ASSERT_EQ(run_cli("finetune --resume " + q(b) + " --steps 20").code, 0);
  EXPECT_TRUE(test::slurp(train::checkpoint_path(a, 20)) == test::slurp(train::checkpoint_path(b, 20)))
      << "the resumed adapters differ";
  ASSERT_EQ(run_cli("export " + q(a) + " -o " + q(dir_ + "/bn.gguf")).code, 0);
  const auto g = gguf::File::open(dir_ + "/bn.gguf");
  EXPECT_EQ(g->get_string("adapter.type"), "bottleneck");
  EXPECT_EQ(g->tensor("blk.4.ffn_adapter_down.weight").shape, (std::vector<int64_t>{8, 64}));
  const auto nll = [](const std::string& line) { return std::stod(line.substr(9)); };
  const std::string m = "-m " + q(base()) + " --tokenizer " + q(tok());
  EXPECT_LT(nll(ppl(m + " --bottleneck-adapter " + q(dir_ + "/bn.gguf"))), nll(ppl(m)) - 0.5);
  r = run_cli("generate " + m + " --bottleneck-adapter " + q(dir_ + "/bn.gguf") + " -p ROMEO -n 8 --beams 2");
  EXPECT_EQ(r.code, 0) << r.err;

  r = run_cli("export " + q(a) + " -o " + q(dir_ + "/bndir"));
  EXPECT_NE(r.code, 0);
  EXPECT_NE(r.err.find("one GGUF file"), std::string::npos) << r.err;
  r = run_cli("export " + q(a) + " --merge-lora -o " + q(dir_ + "/bm.gguf"));
  EXPECT_NE(r.code, 0);
  EXPECT_NE(r.err.find("not linear"), std::string::npos) << r.err;
  r = run_cli("generate " + m + " --lora " + q(dir_ + "/bn.gguf") + " -p hi -n 2");
  EXPECT_NE(r.code, 0);
  EXPECT_NE(r.err.find("--bottleneck-adapter"), std::string::npos) << r.err;
  r = run_cli(finetune(dir_ + "/bx", 2, "--adapter-act gelu"));
  EXPECT_NE(r.code, 0);
  EXPECT_NE(r.err.find("give --adapter-dim"), std::string::npos) << r.err;
  r = run_cli(finetune(dir_ + "/bx2", 2, "--adapter-dim 4 --prefix-len 2"));
  EXPECT_NE(r.code, 0);
  EXPECT_NE(r.err.find("choose one per run"), std::string::npos) << r.err;
  r = run_cli("generate -m synthetic:gpt2-tiny --bottleneck-adapter " + q(dir_ + "/bn.gguf") + " -p hi -n 2");
  EXPECT_NE(r.code, 0);
  EXPECT_NE(r.err.find("bn.gguf"), std::string::npos) << r.err;
}
