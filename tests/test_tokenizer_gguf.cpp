// GGUF vocab files against their llama.cpp vectors and against the
// tokenizer files they were converted from. Needs the GGUF reader
// (formats/gguf.cpp); compiled out until it is in the tree.
#include <gtest/gtest.h>

#ifdef TESSERA_HAVE_GGUF
#include "formats/gguf.h"
#include "formats/gguf_tokenizer.h"
#include "tokenizer/tokenizer.h"
#include "tokenizer_test_util.h"

using namespace tessera;
using namespace tessera::testutil;

namespace {

const EncodeOptions kRaw{false, false};

void check_vectors(const Tokenizer& tok, const std::string& base) {
  auto cases = read_vectors(base);
  ASSERT_EQ(cases.size(), 46u);
  for (const auto& c : cases) EXPECT_EQ(ids_str(tok.encode(c.text, kRaw)), ids_str(c.ids)) << "text: '" << c.text << "'";
}

void check_same(const Tokenizer& a, const Tokenizer& b) {
  ASSERT_EQ(a.n_vocab(), b.n_vocab());
  for (int32_t i = 0; i < a.n_vocab(); ++i) ASSERT_EQ(a.token_bytes(i), b.token_bytes(i)) << "id " << i;
  EXPECT_EQ(a.bos_id(), b.bos_id());
  EXPECT_EQ(a.eos_id(), b.eos_id());
  const std::string text = read_all(shared_path("data/tinyshakespeare.txt")).substr(0, 50000);
  EXPECT_EQ(a.encode(text), b.encode(text));
}

}  // namespace

TEST(TokGguf, LlamaSpmVocabMatchesVectorsAndTokenizerModel) {
  const std::string g = "tokenizers/llama.cpp-vectors/ggml-vocab-llama-spm.gguf";
  if (!shared_exists(g)) GTEST_SKIP() << "../shared/" << g << " not present";
  auto f = gguf::File::open(shared_path(g));
  Tokenizer tok = load_gguf_tokenizer(*f);
  EXPECT_EQ(tok.kind(), TokenizerKind::SentencePiece);
  check_vectors(tok, shared_path(g));
  if (shared_exists("models/tokenizer.model")) check_same(tok, load_sentencepiece_model(shared_path("models/tokenizer.model")));
  if (shared_exists("models/tokenizer.bin")) check_same(tok, load_llama2c_tokenizer(shared_path("models/tokenizer.bin")));
}

TEST(TokGguf, Gpt2VocabMatchesVectorsAndVocabJson) {
  const std::string g = "tokenizers/llama.cpp-vectors/ggml-vocab-gpt-2.gguf";
  if (!shared_exists(g)) GTEST_SKIP() << "../shared/" << g << " not present";
  auto f = gguf::File::open(shared_path(g));
  Tokenizer tok = load_gguf_tokenizer(*f);
  EXPECT_EQ(tok.kind(), TokenizerKind::ByteLevelBPE);
  check_vectors(tok, shared_path(g));
  if (shared_exists("tokenizers/gpt2/vocab.json"))
    check_same(tok, load_gpt2_vocab(shared_path("tokenizers/gpt2/vocab.json"), shared_path("tokenizers/gpt2/merges.txt")));
}

#else

TEST(TokGguf, NeedsGgufReader) { GTEST_SKIP() << "formats/gguf.cpp is not in this tree yet: GGUF tokenizer tests compiled out"; }

#endif
