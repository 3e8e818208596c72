// The first-run experience: `tessera demo` on the installed fortunes writes
// text-like samples; `data prepare` cuts documents (--doc-sep, JSONL); an
// empty prompt starts from the document-start token for every tokenizer kind.
#include <gtest/gtest.h>

#include <cctype>
#include <filesystem>
#include <fstream>
#include <set>

#include "cli_util.h"
#include "core/error.h"
#include "infer/generate.h"
#include "tokenizer/bpe_train.h"
#include "train/data.h"

using namespace tessera;
using tessera::test::q;
using tessera::test::run_cli;
namespace fs = std::filesystem;

namespace {

const char* kFortunes = "/usr/share/games/fortunes";

// The text between "--- sample N ---" markers of the demo's stdout.
std::vector<std::string> demo_samples(const std::string& out) {
  std::vector<std::string> r;
  size_t at = 0;
  while ((at = out.find("--- sample ", at)) != std::string::npos) {
    const size_t start = out.find('\n', at) + 1;
    const size_t end = out.find("\n---", start);
    r.push_back(out.substr(start, end - start));
    at = end;
  }
  return r;
}

// Lower-cased runs of 3+ ASCII letters.
std::set<std::string> words(const std::string& s) {
  std::set<std::string> w;
  std::string cur;
  for (size_t i = 0; i <= s.size(); ++i) {
    const char c = i < s.size() ? s[i] : ' ';
    if (std::isalpha(static_cast<unsigned char>(c))) {
      cur += char(std::tolower(static_cast<unsigned char>(c)));
    } else {
      if (cur.size() >= 3) w.insert(cur);
      cur.clear();
    }
  }
  return w;
}

TEST(FirstRun, DemoSamplesAreText) {
  if (!fs::is_directory(kFortunes)) GTEST_SKIP() << kFortunes << " is absent (install the 'fortunes' package)";
  const std::string dir = test::temp_path("first_run_demo");
  fs::remove_all(dir);
  // A fixed step count (not a time budget) so the result does not depend on how busy the machine is.
  const auto r = run_cli("demo --steps 400 --samples 5 -t 2 -o " + q(dir));
  ASSERT_EQ(r.code, 0) << r.err;
  EXPECT_NE(r.err.find("files left out as mostly non-text: ascii-art"), std::string::npos) << r.err;
  EXPECT_NE(r.err.find(" documents from "), std::string::npos) << r.err;
  const auto samples = demo_samples(r.out);
  ASSERT_EQ(samples.size(), 5u) << r.out;
  std::string all;
  for (const auto& s : samples) all += s + "\n";
  ASSERT_GT(all.size(), 60u) << r.out;

  size_t text = 0, run = 0, longest = 0;
  for (size_t i = 0; i < all.size(); ++i) {
    const auto c = static_cast<unsigned char>(all[i]);
    text += std::isalpha(c) || std::isspace(c);
    run = i > 0 && all[i] == all[i - 1] ? run + 1 : 1;
    longest = std::max(longest, run);
  }
  EXPECT_GE(double(text) / double(all.size()), 0.7) << all;
  EXPECT_LE(longest, 20u) << all;

  // Words of the samples that also occur in the training text.
  std::set<std::string> corpus;
  for (const auto& e : fs::directory_iterator(kFortunes)) {
    if (e.path().has_extension()) continue;
    for (auto& w : words(test::slurp(e.path().string()))) corpus.insert(w);
  }
  size_t known = 0;
  for (const auto& w : words(all)) known += corpus.count(w);
  EXPECT_GE(known, 10u) << all;
  fs::remove_all(dir);
}

class Documents : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = test::temp_path("documents");
    fs::remove_all(dir_);
    fs::create_directories(dir_);
  }
  void TearDown() override { fs::remove_all(dir_); }
  std::string write(const std::string& name, const std::string& text) {
    const std::string p = dir_ + "/" + name;
    std::ofstream(p, std::ios::binary) << text;
    return p;
  }
  std::string dir_;
};

TEST_F(Documents, DocSepCutsAtMatchingLines) {
  const std::string p = write("f.txt", "one\nline two\n%\nsecond\r\n%\r\n\n%\nthird");
  train::DocumentOptions o;
  EXPECT_EQ(train::read_documents(p, o).docs.size(), 1u);
  o.doc_sep = "^%$";
  const auto d = train::read_documents(p, o);
  ASSERT_EQ(d.docs.size(), 3u);  // the blank document between the last two separators is dropped
  EXPECT_EQ(d.docs[0], "one\nline two\n");
  EXPECT_EQ(d.docs[1], "second\r\n");
  EXPECT_EQ(d.docs[2], "third");
  o.min_text_fraction = 0.6;
  const std::string art = write("art.txt", "hello there\n%\n####||####\n%\nbye now\n");
  const auto a = train::read_documents(art, o);
  ASSERT_EQ(a.docs.size(), 2u);
  EXPECT_EQ(a.dropped, 1);
  o.doc_sep = "(";
  try {
    train::read_documents(p, o);
    FAIL() << "a bad regex must be refused";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("--doc-sep '('"), std::string::npos) << e.what();
  }
}

TEST_F(Documents, JsonlOneDocumentPerLine) {
  const std::string p = write("c.jsonl", "{\"text\": \"first doc\", \"id\": 1}\n\n{\"text\": \"second\\ndoc\"}\n");
  const auto d = train::read_documents(p, {});
  ASSERT_EQ(d.docs.size(), 2u);
  EXPECT_EQ(d.docs[1], "second\ndoc");
  for (const auto& [text, what] : std::vector<std::pair<std::string, std::string>>{
           {"{\"text\": \"ok\"}\n{\"txt\": 1}\n", "c2.jsonl:2: expected an object with a \"text\" field"},
           {"{\"text\": 5}\n", "c2.jsonl:1: field \"text\" is not a string"},
           {"{\"text\": \"a\"}\n{oops\n", "c2.jsonl:2: invalid JSON"}}) {
    const std::string bad = write("c2.jsonl", text);
    try {
      train::read_documents(bad, {});
      FAIL() << text;
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find(what), std::string::npos) << e.what();
    }
  }
}

// Each document ends with EOS; whole documents go to the validation split.
TEST_F(Documents, PrepareEndsEveryDocumentWithEos) {
  std::string text, jsonl;
  for (int i = 0; i < 40; ++i) {
    const std::string doc = "fortune number " + std::to_string(i) + " says hello\n";
    text += doc + "%\n";
    jsonl += "{\"text\": \"fortune number " + std::to_string(i) + " says hello\\n\"}\n";
  }
  const std::string txt = write("f.txt", text), js = write("f.jsonl", jsonl);
  BpeTrainOptions bo;
  bo.vocab_size = 300;
  bo.special_tokens = {"<|endoftext|>"};
  const std::vector<std::string_view> texts{text};
  const Tokenizer tok(train_bpe(texts, bo).to_vocab_data());
  ASSERT_GE(tok.eos_id(), 0);
  train::PrepareOptions po;
  po.val_fraction = 0.1;
  po.docs.doc_sep = "^%$";
  const auto st = train::prepare_data(tok, "", {txt}, dir_ + "/a", po);
  EXPECT_EQ(st.documents, 40);
  const auto sj = train::prepare_data(tok, "", {js}, dir_ + "/b", po);
  EXPECT_EQ(sj.documents, 40);
  EXPECT_EQ(sj.train_tokens, st.train_tokens);
  for (const std::string sub : {"/a", "/b"}) {
    const auto d = train::open_dataset(dir_ + sub);
    int64_t eos_train = 0, eos_val = 0;
    for (int64_t i = 0; i < d.train->size(); ++i) eos_train += (*d.train)[i] == tok.eos_id();
    for (int64_t i = 0; i < d.val->size(); ++i) eos_val += (*d.val)[i] == tok.eos_id();
    EXPECT_EQ(eos_train + eos_val, 40) << sub;
    EXPECT_EQ(eos_val, 4) << sub;  // 10% of 40 equal documents, whole
    EXPECT_EQ((*d.val)[d.val->size() - 1], tok.eos_id());
    EXPECT_EQ((*d.train)[d.train->size() - 1], tok.eos_id());
  }
  // The CLI cuts the same documents and says how many it read.
  const std::string tp = dir_ + "/tok.json";
  save_hf_tokenizer_json(tok.data(), tp);
  auto r = run_cli("data prepare --tokenizer " + q(tp) + " --doc-sep '^%$' -o " + q(dir_ + "/c") + " " + q(txt));
  ASSERT_EQ(r.code, 0) << r.err;
  EXPECT_NE(r.err.find("40 documents"), std::string::npos) << r.err;
  r = run_cli("data prepare --tokenizer " + q(tp) + " --doc-sep '[' -o " + q(dir_ + "/d") + " " + q(txt));
  EXPECT_EQ(r.code, 1);
  EXPECT_NE(r.err.find("--doc-sep '['"), std::string::npos) << r.err;
}

// A GPT-2-style model (byte-level BPE, no BOS) generates from an empty prompt.
TEST_F(Documents, GenerateEmptyPromptWithoutBos) {
  std::string text;
  for (int i = 0; i < 300; ++i) text += "the cat sat on the mat number " + std::to_string(i % 17) + ".\n";
  const std::string corpus = write("corpus.txt", text), tp = dir_ + "/tok.json";
  auto r = run_cli("tokenizer train --vocab-size 300 --special '<|endoftext|>' -o " + q(tp) + " " + q(corpus));
  ASSERT_EQ(r.code, 0) << r.err;
  r = run_cli("data prepare --tokenizer " + q(tp) + " -o " + q(dir_ + "/data") + " " + q(corpus));
  ASSERT_EQ(r.code, 0) << r.err;
  r = run_cli("train --data " + q(dir_ + "/data") + " -o " + q(dir_ + "/run") +
              " --dim 32 --layers 1 --heads 2 --kv-heads 2 --batch 2 --seq 16 --steps 3 -t 1");
  ASSERT_EQ(r.code, 0) << r.err;
  r = run_cli("export " + q(dir_ + "/run") + " -o " + q(dir_ + "/m.gguf"));
  ASSERT_EQ(r.code, 0) << r.err;
  r = run_cli("generate -m " + q(dir_ + "/m.gguf") + " -p '' -n 8 --temp 0 -t 1");
  ASSERT_EQ(r.code, 0) << r.err;
  EXPECT_NE(r.err.find("prompt 1 tokens"), std::string::npos) << r.err;
}

TEST(FirstRun, EmptyPromptStartsFromDocumentStart) {
  BpeTrainOptions bo;
  bo.vocab_size = 280;
  bo.special_tokens = {"<|endoftext|>"};
  const std::vector<std::string_view> texts{"some text to learn from, some text"};
  const Tokenizer bpe(train_bpe(texts, bo).to_vocab_data());
  ASSERT_LT(bpe.bos_id(), 0);
  EXPECT_EQ(prompt_tokens(bpe, "", {}), std::vector<int32_t>{bpe.eos_id()});
  EXPECT_EQ(bpe.doc_start_id(), bpe.eos_id());
  BpeTrainOptions no_special;
  no_special.vocab_size = 270;
  const Tokenizer plain(train_bpe(texts, no_special).to_vocab_data());
  ASSERT_LT(plain.doc_start_id(), 0);
  EXPECT_THROW(prompt_tokens(plain, "", {}), Error);
}

}  // namespace
