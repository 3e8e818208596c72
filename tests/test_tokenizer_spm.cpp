// SentencePiece-style BPE: llama2.c tokenizer.bin, the SentencePiece protobuf,
// llama.cpp's llama-spm vectors, decoding and streaming.
#include <gtest/gtest.h>

#include <random>

#include "core/error.h"
#include "tokenizer/tokenizer.h"
#include "tokenizer_test_util.h"

using namespace tessera;
using namespace tessera::testutil;

namespace {

const EncodeOptions kRaw{false, false};  // the vectors: no BOS, no special parsing

void check_vectors(const Tokenizer& tok, const std::string& base) {
  auto cases = read_vectors(base);
  ASSERT_EQ(cases.size(), 46u);
  for (const auto& c : cases) {
    EXPECT_EQ(ids_str(tok.encode(c.text, kRaw)), ids_str(c.ids)) << "text: '" << c.text << "'";
  }
}

}  // namespace

TEST(TokSpm, Llama2cTokenizerBinMatchesLlamaSpmVectors) {
  if (!shared_exists("models/tokenizer.bin")) GTEST_SKIP() << "../shared/models/tokenizer.bin not present";
  Tokenizer tok = load_llama2c_tokenizer(shared_path("models/tokenizer.bin"));
  EXPECT_EQ(tok.n_vocab(), 32000);
  EXPECT_EQ(tok.bos_id(), 1);
  EXPECT_EQ(tok.eos_id(), 2);
  check_vectors(tok, shared_path("tokenizers/llama.cpp-vectors/ggml-vocab-llama-spm.gguf"));
}

TEST(TokSpm, SentencePieceModelMatchesLlamaSpmVectors) {
  if (!shared_exists("models/tokenizer.model")) GTEST_SKIP() << "../shared/models/tokenizer.model not present";
  Tokenizer tok = load_sentencepiece_model(shared_path("models/tokenizer.model"));
  EXPECT_EQ(tok.n_vocab(), 32000);
  EXPECT_EQ(tok.bos_id(), 1);
  EXPECT_EQ(tok.eos_id(), 2);
  EXPECT_EQ(tok.unk_id(), 0);
  EXPECT_TRUE(tok.data().add_space_prefix);
  check_vectors(tok, shared_path("tokenizers/llama.cpp-vectors/ggml-vocab-llama-spm.gguf"));
}

TEST(TokSpm, ModelAndBinAgree) {
  if (!shared_exists("models/tokenizer.model") || !shared_exists("models/tokenizer.bin"))
    GTEST_SKIP() << "../shared/models/tokenizer.{model,bin} not present";
  Tokenizer a = load_sentencepiece_model(shared_path("models/tokenizer.model"));
  Tokenizer b = load_llama2c_tokenizer(shared_path("models/tokenizer.bin"));
  ASSERT_EQ(a.n_vocab(), b.n_vocab());
  for (int32_t i = 0; i < a.n_vocab(); ++i) {
    ASSERT_EQ(a.piece(i), b.piece(i)) << "id " << i;
    ASSERT_EQ(a.type(i), b.type(i)) << "id " << i;
    ASSERT_EQ(a.token_bytes(i), b.token_bytes(i)) << "id " << i;
  }
  const std::string text = read_all(shared_path("data/tinystories_val.txt")).substr(0, 20000);
  EXPECT_EQ(a.encode(text), b.encode(text));
}

TEST(TokSpm, Tok512StoriesSentence) {
  if (!shared_exists("models/tok512.bin")) GTEST_SKIP() << "../shared/models/tok512.bin not present";
  Tokenizer tok = load_llama2c_tokenizer(shared_path("models/tok512.bin"));
  EXPECT_EQ(tok.n_vocab(), 512);
  const std::string text = "One day, a clever fox found a shiny key under the old oak tree.";
  auto ids = tok.encode(text);
  EXPECT_EQ(ids.size(), 35u);
  EXPECT_EQ(ids[0], 1);
  EXPECT_EQ(tok.decode(ids), text);
  EXPECT_EQ(tok.encode(text, {false, true}).size(), 34u);
}

TEST(TokSpm, DecodeRoundTripsAndDropsDummyPrefix) {
  if (!shared_exists("models/tokenizer.bin")) GTEST_SKIP() << "../shared/models/tokenizer.bin not present";
  Tokenizer tok = load_llama2c_tokenizer(shared_path("models/tokenizer.bin"));
  for (std::string s : {"Hello world", " Hello  world ", "\xF0\x9F\x9A\x80 rocket \xE1\x9E\x80", "a\tb\nc", ""}) {
    EXPECT_EQ(tok.decode(tok.encode(s)), s) << s;
    EXPECT_EQ(tok.decode(tok.encode(s, {false, false})), s) << s;
  }
  // Specials are parsed and decode to nothing (SentencePiece's rule).
  auto ids = tok.encode("<s>Hi</s>");
  EXPECT_EQ(ids.front(), 1);
  EXPECT_EQ(ids[1], 1);
  EXPECT_EQ(ids.back(), 2);
  EXPECT_EQ(tok.decode(ids), "Hi");
  auto raw = tok.encode("<s>", {false, false});
  EXPECT_GT(raw.size(), 1u);  // plain text when parse_special is off
  EXPECT_EQ(tok.decode(raw), "<s>");
  // Every text of the shared data round-trips.
  for (const char* f : {"data/tinystories_val.txt", "data/frankenstein.txt"}) {
    if (!shared_exists(f)) continue;
    std::string t = read_all(shared_path(f)).substr(0, 100000);
    EXPECT_EQ(tok.decode(tok.encode(t)), t) << f;
  }
}

TEST(TokSpm, StreamDecoderHoldsSplitCharacters) {
  if (!shared_exists("models/tok512.bin")) GTEST_SKIP() << "../shared/models/tok512.bin not present";
  Tokenizer tok = load_llama2c_tokenizer(shared_path("models/tok512.bin"));
  // tok512 has few multi-byte pieces: "é" and an emoji come out as byte tokens.
  const std::string text = "caf\xC3\xA9 \xF0\x9F\x98\x80 ok";
  auto ids = tok.encode(text);
  StreamDecoder sd(tok);
  std::string out;
  for (int32_t id : ids) {
    std::string piece = sd.push(id);
    // Every chunk is complete UTF-8 on its own.
    for (size_t i = 0; i < piece.size(); ++i) {
      auto c = uint8_t(piece[i]);
      size_t n = c < 0x80 ? 1 : c < 0xE0 ? 2 : c < 0xF0 ? 3 : 4;
      ASSERT_LE(i + n, piece.size());
      i += n - 1;
    }
    out += piece;
  }
  out += sd.flush();
  EXPECT_EQ(out, text);
  // Invalid / incomplete bytes become U+FFFD.
  StreamDecoder bad(tok);
  std::string b = bad.push(3 + 0xF0);
  b += bad.push(3 + 0x9F);
  EXPECT_EQ(b, "");
  b += bad.push(3 + 'A');
  EXPECT_EQ(b, "\xEF\xBF\xBD\xEF\xBF\xBD" "A");
  EXPECT_EQ(bad.push(3 + 0xE2), "");
  EXPECT_EQ(bad.flush(), "\xEF\xBF\xBD");
}

TEST(TokSpm, RandomBytesRoundTripWithByteFallback) {
  if (!shared_exists("models/tokenizer.bin")) GTEST_SKIP() << "../shared/models/tokenizer.bin not present";
  Tokenizer tok = load_llama2c_tokenizer(shared_path("models/tokenizer.bin"));
  std::mt19937 rng(99);
  for (int i = 0; i < 300; ++i) {
    std::string s;
    size_t n = 1 + rng() % 100;
    while (s.size() < n) {
      uint32_t r = rng();
      if (r % 3 == 0) {
        s.push_back(char(r >> 8));
      } else {
        s += std::string("a ,\xC3\xA9\xE4\xB8\xAD\n").substr((r >> 8) % 6, 1 + (r >> 16) % 3);
      }
    }
    if (s.find("\xE2\x96\x81") != std::string::npos) continue;  // U+2581 decodes as a space by design
    ASSERT_EQ(tok.decode(tok.encode(s, {true, false})), s) << i;
  }
}
