// Supervised fine-tuning data (train/sft.h): which tokens are learned for chat
// and prompt/completion examples, padded and packed batches, packed rows
// computing exactly what separate rows do, and `tessera data prepare-sft` +
// `tessera finetune` from the command line.
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <random>

#include "cli_util.h"
#include "core/error.h"
#include "formats/any_tokenizer.h"
#include "train/sft.h"
#include "train/transformer.h"

using namespace tessera;
using namespace tessera::train;
using tessera::test::q;
using tessera::test::run_cli;
namespace fs = std::filesystem;

namespace {

std::string learned_text(const Tokenizer& tok, const SftExample& ex) {
  std::vector<int32_t> ids;
  for (size_t i = 0; i < ex.tokens.size(); ++i)
    if (ex.learn[i]) ids.push_back(ex.tokens[i]);
  return tok.decode(ids);
}

}  // namespace

TEST(Sft, OnlyTheAssistantTurnsAndTheCompletionAreLearned) {
  TESSERA_REQUIRE_SHARED("models/tok512.bin");
  const Tokenizer tok = load_any_tokenizer(test::shared_path("models/tok512.bin"));
  const ChatTemplate chatml = ChatTemplate::builtin("chatml");
  const auto j = nlohmann::json::parse(R"({"messages": [
      {"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi there"},
      {"role": "assistant", "content": "Hello friend"}, {"role": "user", "content": "Bye"},
      {"role": "assistant", "content": "See you"}]})");
  const SftExample ex = sft_example(j, tok, chatml, "t:1");
  ASSERT_EQ(ex.tokens.size(), ex.learn.size());
  EXPECT_EQ(ex.tokens, tok.encode(chatml.apply({{"system", "Be brief."}, {"user", "Hi there"},
                                                {"assistant", "Hello friend"}, {"user", "Bye"},
                                                {"assistant", "See you"}},
                                               false)))
      << "the example is the whole rendered conversation, tokenized once";
  // The two assistant turns with their end-of-turn markers, nothing of the system / user turns.
  const std::string learned = learned_text(tok, ex);
  EXPECT_NE(learned.find("Hello friend<|im_end|>"), std::string::npos) << learned;
  EXPECT_NE(learned.find("See you<|im_end|>"), std::string::npos) << learned;
  EXPECT_EQ(learned.find("Hi there"), std::string::npos) << learned;
  EXPECT_EQ(learned.find("Be brief"), std::string::npos) << learned;
  EXPECT_EQ(learned.find("user"), std::string::npos) << learned;
  EXPECT_EQ(ex.learn.front(), 0);

  const SftExample pc =
      sft_example(nlohmann::json::parse(R"({"prompt": "Q: 2+2?\nA:", "completion": " four"})"), tok, chatml, "t:2");
  const auto prompt = tok.encode("Q: 2+2?\nA:");
  EXPECT_EQ(std::count(pc.learn.begin(), pc.learn.end(), uint8_t(1)), int64_t(pc.tokens.size() - prompt.size()));
  EXPECT_EQ(pc.tokens.back(), tok.eos_id());
  EXPECT_EQ(pc.learn.back(), 1) << "the model learns to stop";
  EXPECT_EQ(learned_text(tok, pc), "four");  // (decode drops the leading space of a sequence)

  for (const char* bad : {R"({"messages": [{"role": "user", "content": "x"}]})", R"({"prompt": "x"})",
                          R"({"messages": [{"role": "robot", "content": "x"}, {"role": "assistant", "content": "y"}]})",
                          R"({"text": "x"})", R"([1, 2])"}) {
    try {
      sft_example(nlohmann::json::parse(bad), tok, chatml, "f.jsonl:7");
      ADD_FAILURE() << "accepted " << bad;
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find("f.jsonl:7"), std::string::npos) << e.what();
    }
  }
}

// Two packed examples in one row give each example exactly the loss it has alone
// in a padded row: no attention across the boundary (RoPE is relative).
TEST(Sft, PackedRowsComputeWhatSeparateRowsDo) {
  ModelConfig c;
  c.arch = Arch::Llama;
  c.dim = 16, c.n_layers = 2, c.n_heads = 4, c.n_kv_heads = 2, c.head_dim = 4, c.hidden_dim = 24;
  c.vocab_size = 13, c.max_seq_len = 16, c.tied_embeddings = true;
  Layout L(c);
  std::vector<double> p(L.total);
  std::mt19937_64 rng(4);
  std::normal_distribution<double> nd(0.0, 0.3);
  for (auto& x : p) x = nd(rng);
  const int64_t T = 12;
  // Example A: 5 tokens, example B: 7 tokens; targets inside each example only.
  const std::vector<int32_t> a = {1, 5, 7, 2, 9}, b = {3, 3, 8, 1, 4, 6, 11};
  std::vector<int32_t> x(static_cast<size_t>(T)), y(static_cast<size_t>(T), -1), seg(static_cast<size_t>(T));
  for (size_t i = 0; i < a.size(); ++i) x[i] = a[i], seg[i] = 0, y[i] = i + 1 < a.size() ? a[i + 1] : -1;
  for (size_t i = 0; i < b.size(); ++i)
    x[a.size() + i] = b[i], seg[a.size() + i] = int32_t(a.size()), y[a.size() + i] = i + 1 < b.size() ? b[i + 1] : -1;
  Transformer<double> packed(L, 1, T, ModelOptions{});
  packed.set_segments(seg.data());
  const double both = packed.forward(p.data(), x.data(), y.data()).loss_sum;
  Transformer<double> alone(L, 1, T, ModelOptions{});
  auto solo = [&](const std::vector<int32_t>& e) {
    std::vector<int32_t> xs(static_cast<size_t>(T), 0), ys(static_cast<size_t>(T), -1);
    for (size_t i = 0; i < e.size(); ++i) xs[i] = e[i], ys[i] = i + 1 < e.size() ? e[i + 1] : -1;
    return alone.forward(p.data(), xs.data(), ys.data()).loss_sum;
  };
  EXPECT_NEAR(both, solo(a) + solo(b), 1e-10 * std::abs(both));
  packed.set_segments(nullptr);  // without the segments B sees A
  EXPECT_GT(std::abs(packed.forward(p.data(), x.data(), y.data()).loss_sum - both), 1e-6);
}

TEST(Sft, PrepareTrainAndPackFromTheCommandLine) {
  TESSERA_REQUIRE_SHARED("models/stories260K.bin");
  const std::string dir = test::temp_path("sft_cli");
  fs::remove_all(dir);
  fs::create_directories(dir);
  {
    std::ofstream f(dir + "/chat.jsonl");
    const char* names[] = {"Tom", "Lily", "Ben", "Sue", "Max", "Anna"};
    const char* pets[] = {"cat", "dog", "bird", "fish", "frog"};
    for (int i = 0; i < 120; ++i) {
      const std::string n = names[(i * 7) % 6], a = pets[(i * 3) % 5];
      if (i % 3 == 0)
        f << R"({"prompt": "Q: What is )" << n << R"('s pet?\nA:", "completion": " )" << n << " has a " << a
          << R"(."})" << "\n";
      else
        f << R"({"messages": [{"role": "user", "content": "Tell me about )" << n
          << R"(."}, {"role": "assistant", "content": ")" << n << " had a little " << a << R"(."}]})" << "\n";
    }
    std::ofstream(dir + "/bad.jsonl") << R"({"messages": [{"role": "user", "content": "x"}]})" << "\n";
    std::ofstream(dir + "/plain.txt") << "Once upon a time there was a cat. It liked to play in the sun.\n";
  }
  const std::string tok = test::shared_path("models/tok512.bin"), base = test::shared_path("models/stories260K.bin");
  auto r = run_cli("data prepare-sft --tokenizer " + q(tok) + " -o " + q(dir + "/data") + " " + q(dir + "/chat.jsonl"));
  ASSERT_EQ(r.code, 0) << r.err;
  EXPECT_NE(r.err.find("114 train + 6 val examples"), std::string::npos) << r.err;
  r = run_cli("data prepare-sft --tokenizer " + q(tok) + " -o " + q(dir + "/bad") + " " + q(dir + "/bad.jsonl"));
  EXPECT_NE(r.code, 0);
  EXPECT_NE(r.err.find("bad.jsonl:1: no assistant message"), std::string::npos) << r.err;
  for (const std::string mode : {"", " --pack"}) {
    const std::string run = dir + "/run" + (mode.empty() ? "" : "_pack");
    r = run_cli("finetune --init " + q(base) + " --tokenizer " + q(tok) + " --data " + q(dir + "/data") + " -o " +
                q(run) + " --steps 40 --batch 8 --seq 64 --lr 3e-3 --eval-interval 40 --eval-batches 1 -t 2" + mode);
    ASSERT_EQ(r.code, 0) << r.err;
    std::ifstream m(run + "/metrics.jsonl");
    std::string first, line, last;
    std::getline(m, first);
    while (std::getline(m, line)) last = line;
    const double l0 = nlohmann::json::parse(first)["loss"], v = nlohmann::json::parse(last)["val_loss"];
    EXPECT_LT(v, 0.5 * l0) << mode << ": the responses are learned";
  }
  // The plain trainer refuses --pack on pretraining data.
  r = run_cli("data prepare --tokenizer " + q(tok) + " -o " + q(dir + "/plain") + " " + q(dir + "/plain.txt"));
  ASSERT_EQ(r.code, 0) << r.err;
  r = run_cli("train --data " + q(dir + "/plain") + " -o " + q(dir + "/x") + " --dim 16 --layers 1 --heads 2 --batch 2 "
              "--seq 16 --steps 1 --pack");
  EXPECT_NE(r.code, 0);
  EXPECT_NE(r.err.find("not an SFT dataset"), std::string::npos) << r.err;
  fs::remove_all(dir);
}
