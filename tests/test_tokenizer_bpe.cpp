// Byte-level BPE: GPT-2 vocab.json + merges.txt and Llama-3 tiktoken ranks
// against llama.cpp's vectors, round trips, special tokens, tokenizer.json.
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <random>

#include "core/error.h"
#include "tokenizer/pretokenizer.h"
#include "tokenizer/tokenizer.h"
#include "tokenizer_test_util.h"

using namespace tessera;
using namespace tessera::testutil;

namespace {

const EncodeOptions kRaw{false, false};

bool have_gpt2() { return shared_exists("tokenizers/gpt2/vocab.json") && shared_exists("tokenizers/gpt2/merges.txt"); }
bool have_llama3() { return shared_exists("tokenizers/llama3/tokenizer.model"); }

const Tokenizer& gpt2() {
  static const Tokenizer t =
      load_gpt2_vocab(shared_path("tokenizers/gpt2/vocab.json"), shared_path("tokenizers/gpt2/merges.txt"));
  return t;
}
const Tokenizer& llama3() {
  static const Tokenizer t = load_tiktoken(shared_path("tokenizers/llama3/tokenizer.model"));
  return t;
}

void check_vectors(const Tokenizer& tok, const std::string& base) {
  auto cases = read_vectors(base);
  ASSERT_EQ(cases.size(), 46u);
  for (const auto& c : cases) {
    auto ids = tok.encode(c.text, kRaw);
    EXPECT_EQ(ids_str(ids), ids_str(c.ids)) << "text: '" << c.text << "'";
    EXPECT_EQ(tok.decode(ids), c.text);
  }
}

std::string random_bytes(std::mt19937& rng, size_t n) {
  // Mostly ASCII and valid multi-byte characters, with stray invalid bytes.
  static const char* pieces[] = {"a", "b", " ", "  ", "\n", "\t", "1", "23", "'s", "!", "\xC3\xA9", "\xE4\xB8\xAD",
                                 "\xF0\x9F\x98\x80", "\xC3", "\x80", "\xFF", "\xE2\x96", "\xED\xA0\x80", "\r\n"};
  std::string s;
  while (s.size() < n) {
    if (rng() % 4 == 0) {
      s.push_back(char(rng() & 0xFF));
    } else {
      s += pieces[rng() % (sizeof pieces / sizeof *pieces)];
    }
  }
  return s;
}

}  // namespace

TEST(TokBpe, Gpt2VocabMatchesGpt2Vectors) {
  if (!have_gpt2()) GTEST_SKIP() << "../shared/tokenizers/gpt2 not present";
  EXPECT_EQ(gpt2().n_vocab(), 50257);
  EXPECT_EQ(gpt2().eos_id(), 50256);
  check_vectors(gpt2(), shared_path("tokenizers/llama.cpp-vectors/ggml-vocab-gpt-2.gguf"));
}

TEST(TokBpe, Llama3TiktokenMatchesLlamaBpeVectors) {
  if (!have_llama3()) GTEST_SKIP() << "../shared/tokenizers/llama3/tokenizer.model not present";
  EXPECT_EQ(llama3().n_vocab(), 128256);
  EXPECT_EQ(llama3().bos_id(), 128000);
  EXPECT_EQ(llama3().eos_id(), 128001);
  EXPECT_TRUE(llama3().is_eog(128009));
  EXPECT_EQ(llama3().piece(128009), "<|eot_id|>");
  EXPECT_EQ(llama3().piece(128006), "<|start_header_id|>");
  EXPECT_EQ(llama3().piece(128255), "<|reserved_special_token_247|>");
  check_vectors(llama3(), shared_path("tokenizers/llama.cpp-vectors/ggml-vocab-llama-bpe.gguf"));
}

TEST(TokBpe, SpecialTokensAreParsedOnlyWhenAsked) {
  if (!have_llama3()) GTEST_SKIP() << "../shared/tokenizers/llama3/tokenizer.model not present";
  const std::string text = "<|start_header_id|>user<|end_header_id|>\n\nHi<|eot_id|>";
  auto ids = llama3().encode(text);
  ASSERT_GE(ids.size(), 5u);
  EXPECT_EQ(ids[0], 128000);
  EXPECT_EQ(ids[1], 128006);
  EXPECT_EQ(ids.back(), 128009);
  EXPECT_EQ(llama3().decode(ids), "<|begin_of_text|>" + text);
  auto plain = llama3().encode(text, {false, false});
  for (int32_t id : plain) EXPECT_LT(id, 128000);
  EXPECT_EQ(llama3().decode(plain), text);
  if (have_gpt2()) {
    auto g = gpt2().encode("a<|endoftext|>b");
    EXPECT_EQ(g, (std::vector<int32_t>{64, 50256, 65}));
  }
}

TEST(TokBpe, SharedDataRoundTrips) {
  if (!have_gpt2() || !have_llama3()) GTEST_SKIP() << "../shared tokenizers not present";
  for (const char* f : {"data/tinyshakespeare.txt", "data/tinystories_val.txt", "data/frankenstein.txt",
                        "tokenizers/bpe-training/corpus.en"}) {
    if (!shared_exists(f)) continue;
    const std::string t = read_all(shared_path(f));
    EXPECT_EQ(gpt2().decode(gpt2().encode(t)), t) << f;
    EXPECT_EQ(llama3().decode(llama3().encode(t, kRaw)), t) << f;
  }
}

TEST(TokBpe, RandomBytesIncludingInvalidUtf8RoundTrip) {
  if (!have_gpt2() || !have_llama3()) GTEST_SKIP() << "../shared tokenizers not present";
  std::mt19937 rng(1234);
  for (int i = 0; i < 300; ++i) {
    std::string s = random_bytes(rng, 1 + rng() % 200);
    ASSERT_EQ(gpt2().decode(gpt2().encode(s)), s) << i;
    ASSERT_EQ(llama3().decode(llama3().encode(s, kRaw)), s) << i;
  }
  std::string big = random_bytes(rng, 20000);  // exercises the per-call cache
  EXPECT_EQ(gpt2().decode(gpt2().encode(big)), big);
}

TEST(TokBpe, StreamDecoderOnByteLevel) {
  if (!have_gpt2()) GTEST_SKIP() << "../shared/tokenizers/gpt2 not present";
  const std::string text = "na\xC3\xAFve \xE4\xB8\xAD\xE6\x96\x87 \xF0\x9F\xA6\x8A!";
  auto ids = gpt2().encode(text);
  StreamDecoder sd(gpt2());
  std::string out;
  int held = 0;
  for (int32_t id : ids) {
    std::string s = sd.push(id);
    if (s.empty()) ++held;
    out += s;
  }
  out += sd.flush();
  EXPECT_EQ(out, text);
  EXPECT_GT(held, 0);  // some characters were split across tokens and held back
}

TEST(TokBpe, ByteAlphabetIsABijection) {
  for (int b = 0; b < 256; ++b) {
    std::string raw(1, char(b));
    EXPECT_EQ(gpt2_to_bytes(bytes_to_gpt2(raw)), raw);
  }
  EXPECT_EQ(bytes_to_gpt2(" "), "\xC4\xA0");  // Ġ
  EXPECT_EQ(bytes_to_gpt2("\n"), "\xC4\x8A");  // Ċ
}

TEST(TokBpe, TinyVocabTokenizerJson) {
  // A hand-written tokenizer.json: merges in both encodings, an added special.
  const std::string json = R"({
    "added_tokens": [{"id": 7, "content": "<|end|>", "special": true}],
    "pre_tokenizer": {"type": "ByteLevel", "add_prefix_space": false, "use_regex": true},
    "model": {"type": "BPE", "vocab": {"a": 0, "b": 1, "ab": 2, "\u0120": 3, "\u0120ab": 4, "c": 5, "abc": 6},
              "merges": ["a b", ["\u0120", "ab"], "ab c"]}})";
  Tokenizer tok(parse_hf_tokenizer_json(json, "inline"));
  EXPECT_EQ(tok.n_vocab(), 8);
  EXPECT_EQ(tok.encode("ab abc<|end|>ab"), (std::vector<int32_t>{2, 4, 5, 7, 2}));
  EXPECT_EQ(tok.decode({2, 4, 5, 7}), "ab abc<|end|>");
}

// DeepSeek pre-tokenizers: the regex sequences split as llama.cpp's lists do
// (no reference vectors in ../shared for these vocabularies; splits worked out by hand).
TEST(TokBpe, DeepSeekPreTokenizerSplits) {
  auto pieces = [](const std::string& family, const std::string& text) {
    PreTokenizer pt(pretokenizer_patterns(family));
    std::vector<std::string_view> out;
    pt.split(text, out);
    return std::vector<std::string>(out.begin(), out.end());
  };
  using V = std::vector<std::string>;
  EXPECT_EQ(pieces("deepseek-coder", "Hello, world 123\n"), (V{"Hello", ",", " world", " ", "1", "2", "3", "\n"}));
  EXPECT_EQ(pieces("deepseek-llm", "Hi there!! 2024"), (V{"Hi", " there", "!!", " ", "2024"}));
  EXPECT_EQ(pieces("deepseek-v3", "abc12345 def"), (V{"abc", "123", "45", " def"}));
  EXPECT_EQ(pieces("deepseek-v3", "你好world"), (V{"你好", "world"}));
}
