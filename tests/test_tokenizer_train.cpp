// BPE training reproduces the reference merges and vocab; the writers round-trip.
#include <gtest/gtest.h>

#include <filesystem>
#include <nlohmann/json.hpp>

#include <unistd.h>

#include "core/error.h"
#include "tokenizer/bpe_train.h"
#include "tokenizer/tokenizer.h"
#include "tokenizer_test_util.h"

using namespace tessera;
using namespace tessera::testutil;

namespace {

std::string temp_dir() {
  auto d = std::filesystem::temp_directory_path() / ("tessera_tok_" + std::to_string(::getpid()));
  std::filesystem::create_directories(d);
  return d.string();
}

}  // namespace

TEST(TokTrain, ReproducesReferenceMergesAndVocab) {
  const std::string dir = "tokenizers/bpe-training/";
  if (!shared_exists(dir + "corpus.en")) GTEST_SKIP() << "../shared/" << dir << " not present";
  const std::string corpus = read_all(shared_path(dir + "corpus.en"));
  BpeTrainOptions opt;
  opt.vocab_size = 500;
  opt.special_tokens = {"<|endoftext|>"};
  BpeTrainResult r = train_bpe({corpus}, opt);
  VocabData v = r.to_vocab_data();
  ASSERT_EQ(v.tokens.size(), 500u);

  // Merges: "a b" lines in GPT-2's alphabet.
  const std::string ref_merges = read_all(shared_path(dir + "train-bpe-reference-merges.txt"));
  std::vector<std::string> ref_lines;
  for (size_t pos = 0; pos < ref_merges.size();) {
    size_t e = ref_merges.find('\n', pos);
    if (e == std::string::npos) e = ref_merges.size();
    if (e > pos) ref_lines.push_back(ref_merges.substr(pos, e - pos));
    pos = e + 1;
  }
  ASSERT_EQ(v.merges.size(), ref_lines.size());
  for (size_t i = 0; i < ref_lines.size(); ++i) EXPECT_EQ(v.merges[i], ref_lines[i]) << "merge " << i;

  // Vocab: token -> id.
  auto ref_vocab = nlohmann::json::parse(read_all(shared_path(dir + "train-bpe-reference-vocab.json")));
  ASSERT_EQ(ref_vocab.size(), v.tokens.size());
  for (auto it = ref_vocab.begin(); it != ref_vocab.end(); ++it) {
    int id = it.value().get<int>();
    ASSERT_LT(size_t(id), v.tokens.size());
    EXPECT_EQ(v.tokens[size_t(id)], it.key()) << "id " << id;
  }
}

TEST(TokTrain, WrittenFilesLoadAndEncodeLikeTheTrainer) {
  const std::string dir = "tokenizers/bpe-training/";
  if (!shared_exists(dir + "tinystories_sample.txt")) GTEST_SKIP() << "../shared/" << dir << " not present";
  const std::string text = read_all(shared_path(dir + "tinystories_sample.txt"));
  BpeTrainOptions opt;
  opt.vocab_size = 400;
  opt.special_tokens = {"<|endoftext|>", "<|pad|>"};
  int calls = 0;
  opt.progress = [&](int32_t, int32_t) { ++calls; };
  VocabData v = train_bpe({text}, opt).to_vocab_data();
  EXPECT_GT(calls, 0);
  Tokenizer direct(v);
  const std::string d = temp_dir();
  save_hf_tokenizer_json(v, d + "/tokenizer.json");
  save_gpt2_vocab(v, d + "/vocab.json", d + "/merges.txt");
  Tokenizer from_json = load_tokenizer_file(d + "/tokenizer.json");
  Tokenizer from_vocab = load_tokenizer_file(d + "/vocab.json");
  const std::string sample = text + "<|endoftext|>Once upon a time \xF0\x9F\x90\xB1 <|pad|>";
  auto ids = direct.encode(sample);
  EXPECT_EQ(from_json.encode(sample), ids);
  // vocab.json carries no token types: only <|endoftext|> is known to be special.
  const std::string sample2 = text + "<|endoftext|>Once";
  EXPECT_EQ(from_vocab.encode(sample2), direct.encode(sample2));
  EXPECT_EQ(direct.decode(ids), sample);
  EXPECT_EQ(from_json.piece(1), "<|pad|>");
  EXPECT_EQ(from_json.type(1), TokenType::Control);
  std::filesystem::remove_all(d);
}

TEST(TokTrain, RejectsTooSmallVocab) {
  BpeTrainOptions opt;
  opt.vocab_size = 100;
  EXPECT_THROW(train_bpe({"abc"}, opt), Error);
}
