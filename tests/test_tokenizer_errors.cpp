// Corrupt, truncated and inconsistent tokenizer inputs throw tessera::Error
// naming the file and the problem; nothing crashes.
#include <gtest/gtest.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <random>

#include "core/error.h"
#include "formats/any_tokenizer.h"
#include "tokenizer/tokenizer.h"
#include "tokenizer_test_util.h"

using namespace tessera;
using namespace tessera::testutil;

namespace {

std::string write_temp(const std::string& name, const std::string& content) {
  auto dir = std::filesystem::temp_directory_path() / ("tessera_tokerr_" + std::to_string(::getpid()));
  std::filesystem::create_directories(dir);
  std::string p = (dir / name).string();
  std::ofstream(p, std::ios::binary) << content;
  return p;
}

// Runs f, expecting an Error whose message contains every one of `parts`.
template <typename F>
void expect_error(F&& f, std::initializer_list<std::string> parts) {
  try {
    f();
    ADD_FAILURE() << "no error thrown";
  } catch (const Error& e) {
    for (const auto& p : parts) EXPECT_NE(std::string(e.what()).find(p), std::string::npos) << e.what();
  }
}

}  // namespace

TEST(TokErrors, EveryTruncationOfLlama2cTokenizerThrows) {
  if (!shared_exists("models/tok512.bin")) GTEST_SKIP() << "../shared/models/tok512.bin not present";
  const std::string full = read_all(shared_path("models/tok512.bin"));
  const auto* d = reinterpret_cast<const uint8_t*>(full.data());
  EXPECT_EQ(parse_llama2c_tokenizer(d, full.size(), "tok512", 512).tokens.size(), 512u);
  for (size_t n = 0; n < full.size(); ++n) {
    EXPECT_THROW(parse_llama2c_tokenizer(d, n, "tok512", 512), Error) << "prefix " << n;
    // Reading to end of file: either an error or a shorter vocabulary, never a crash.
    try {
      EXPECT_LT(parse_llama2c_tokenizer(d, n, "tok512").tokens.size(), 512u);
    } catch (const Error&) {
    }
  }
  const std::string p = write_temp("tok_trunc.bin", full.substr(0, 1000));
  expect_error([&] { load_llama2c_tokenizer(p, 512); }, {p, "truncated"});
  // More pieces than the model's vocabulary: another model's tokenizer, an error rather than its first pieces.
  const std::string whole = write_temp("tok_whole.bin", full);
  expect_error([&] { load_llama2c_tokenizer(whole, 300); }, {whole, "more pieces than the model's vocabulary of 300"});
}

TEST(TokErrors, TruncatedSentencePieceModelNeverCrashes) {
  if (!shared_exists("models/tokenizer.model")) GTEST_SKIP() << "../shared/models/tokenizer.model not present";
  const std::string full = read_all(shared_path("models/tokenizer.model"));
  const auto* d = reinterpret_cast<const uint8_t*>(full.data());
  int errors = 0;
  for (size_t n = 0; n < full.size(); n += 4999) {
    try {
      VocabData v = parse_sentencepiece_model(d, n, "spm");
      EXPECT_LT(v.tokens.size(), 32000u);
    } catch (const Error&) {
      ++errors;
    }
  }
  EXPECT_GT(errors, 0);
  // A piece length running past the end.
  std::string bad = "\x0A\x7F\x0A\x05hello";
  expect_error([&] { parse_sentencepiece_model(reinterpret_cast<const uint8_t*>(bad.data()), bad.size(), "bad.model"); },
               {"bad.model", "past the end"});
}

TEST(TokErrors, TiktokenProblemsAreNamed) {
  expect_error([] { parse_tiktoken("IQ== 0\n!!! 1\n", "r.tiktoken", false); }, {"r.tiktoken:2", "base64"});
  expect_error([] { parse_tiktoken("IQ== 0\nIg== 2\n", "r.tiktoken", false); }, {"rank 1 is missing"});
  expect_error([] { parse_tiktoken("IQ== 0\nIg== 0\n", "r.tiktoken", false); }, {"rank 0 appears twice"});
  expect_error([] { parse_tiktoken("IQ== x\n", "r.tiktoken", false); }, {"bad rank"});
  expect_error([] { parse_tiktoken("IQ== 999999999\n", "r.tiktoken", false); }, {"larger than the number of lines"});
  expect_error([] { parse_hf_tokenizer_json(R"({"model": {"vocab": {"a": 99999999}}})", "t.json"); },
               {"implausibly large"});
  expect_error([] { parse_tiktoken("", "r.tiktoken", false); }, {"no tokens"});
  VocabData ok = parse_tiktoken("YQ== 0\nYg== 1\nYWI= 2\n", "r", false);
  ASSERT_EQ(ok.merges.size(), 1u);
  EXPECT_EQ(ok.merges[0], "a b");
}

TEST(TokErrors, BadJsonAndMergesAreNamed) {
  expect_error([] { parse_hf_tokenizer_json("{not json", "t.json"); }, {"t.json", "invalid JSON"});
  expect_error([] { parse_hf_tokenizer_json(R"({"model": {"type": "Unigram", "vocab": []}})", "t.json"); },
               {"Unigram"});
  expect_error(
      [] {
        Tokenizer t(parse_hf_tokenizer_json(R"({"model": {"type": "BPE", "vocab": {"a": 0, "b": 1}, "merges": ["a c"]}})",
                                            "t.json"));
      },
      {"merge 0 'a c'", "unknown token 'c'"});
  expect_error(
      [] {
        Tokenizer t(parse_hf_tokenizer_json(R"({"model": {"type": "BPE", "vocab": {"a": 0, "b": 1}, "merges": ["a b"]}})",
                                            "t.json"));
      },
      {"not in the vocabulary"});
  const std::string v = write_temp("vocab.json", R"({"a": 0, "b": 1, "ab": 2})");
  const std::string m = write_temp("merges.txt", "#version: 0.2\na b\nab zz\n");
  expect_error([&] { load_gpt2_vocab(v, m); }, {v, "unknown token 'zz'"});
  expect_error([&] { load_tokenizer_file(v); }, {"unknown token 'zz'"});
  const std::string dup = write_temp("dup.json", R"({"a": 0, "b": 0})");
  expect_error([&] { load_gpt2_vocab(dup, m); }, {"used twice"});
}

TEST(TokErrors, FilesAndIdsAreChecked) {
  expect_error([] { load_tokenizer_file("/nonexistent/tokenizer.json"); }, {"/nonexistent/tokenizer.json"});
  const std::string junk = write_temp("junk.xyz", "hello");
  expect_error([&] { load_tokenizer_file(junk); }, {junk, "unrecognised"});
  const std::string empty_model = write_temp("empty.model", "");
  expect_error([&] { load_tokenizer_file(empty_model); }, {"empty"});
  if (shared_exists("models/stories260K.bin"))
    expect_error([] { load_any_tokenizer(shared_path("models/stories260K.bin")); }, {"--tokenizer"});
  VocabData v;
  v.tokens = {"a", "b"};
  v.bos_id = 5;
  expect_error([&] { Tokenizer t(v); }, {"bos id 5"});
  v.bos_id = -1;
  v.scores = {1.f};
  expect_error([&] { Tokenizer t(v); }, {"1 scores for 2 tokens"});
  v.scores.clear();
  Tokenizer t(v);
  expect_error([&] { t.decode({0, 7}); }, {"token id 7"});
  expect_error([&] { t.token_bytes(-1); }, {"token id -1"});
  v.kind = TokenizerKind::ByteLevelBPE;
  v.pre = "no-such-family";
  expect_error([&] { Tokenizer b(v); }, {"unknown pre-tokenizer 'no-such-family'"});
}

TEST(TokErrors, RandomBytesAsTokenizerFilesNeverCrash) {
  std::mt19937 rng(7);
  for (int i = 0; i < 2000; ++i) {
    std::string s(rng() % 64, '\0');
    for (auto& c : s) c = char(rng() % 4 == 0 ? "{}[]\":,0a "[rng() % 11] : rng() & 0xFF);
    const auto* d = reinterpret_cast<const uint8_t*>(s.data());
    auto attempt = [](auto&& f) {
      try {
        f();
      } catch (const Error&) {
      }
    };
    attempt([&] { Tokenizer t(parse_hf_tokenizer_json(s, "r.json")); });
    attempt([&] { Tokenizer t(parse_llama2c_tokenizer(d, s.size(), "r.bin")); });
    attempt([&] { Tokenizer t(parse_sentencepiece_model(d, s.size(), "r.model")); });
    attempt([&] { Tokenizer t(parse_tiktoken(s, "r.tiktoken", true)); });
  }
}
