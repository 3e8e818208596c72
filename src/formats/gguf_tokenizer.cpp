#include "formats/gguf_tokenizer.h"

#include <cmath>

#include "core/error.h"

namespace tessera {

VocabData gguf_vocab_data(const gguf::File& f) {
  const std::string model = f.get_string("tokenizer.ggml.model");
  VocabData v;
  if (model == "llama") {
    v.kind = TokenizerKind::SentencePiece;
  } else if (model == "gpt2") {
    v.kind = TokenizerKind::ByteLevelBPE;
  } else {
    fail(f.path(), ": tokenizer.ggml.model '", model, "' is not supported (llama or gpt2)");
  }
  v.tokens = f.get_string_array("tokenizer.ggml.tokens");
  const size_t n = v.tokens.size();
  if (n == 0) fail(f.path(), ": tokenizer.ggml.tokens is empty");
  if (f.find("tokenizer.ggml.scores")) {
    std::vector<double> s = f.get_num_array("tokenizer.ggml.scores");
    if (s.size() != n) fail(f.path(), ": tokenizer.ggml.scores has ", s.size(), " entries for ", n, " tokens");
    v.scores.assign(s.begin(), s.end());
  }
  if (f.find("tokenizer.ggml.token_type")) {
    std::vector<double> t = f.get_num_array("tokenizer.ggml.token_type");
    if (t.size() != n) fail(f.path(), ": tokenizer.ggml.token_type has ", t.size(), " entries for ", n, " tokens");
    v.types.reserve(n);
    for (size_t i = 0; i < n; ++i) {
      double x = t[i];
      if (x != std::floor(x) || x < 1 || x > 6) fail(f.path(), ": tokenizer.ggml.token_type[", i, "] = ", x, " is not 1..6");
      v.types.push_back(TokenType(int32_t(x)));
    }
  }
  if (v.kind == TokenizerKind::ByteLevelBPE) {
    if (!f.find("tokenizer.ggml.merges")) fail(f.path(), ": tokenizer.ggml.merges is missing (needed for gpt2 tokenizers)");
    v.merges = f.get_string_array("tokenizer.ggml.merges");
    v.pre = f.get_string_or("tokenizer.ggml.pre", "default");
  }
  auto id = [&](const char* key, int64_t def) -> int32_t {
    int64_t x = f.get_int_or(key, def);
    if (x < 0 || x >= int64_t(n)) {
      if (!f.find(key)) return -1;  // default outside this vocabulary
      fail(f.path(), ": ", key, " = ", x, " is outside the vocabulary of ", n);
    }
    return int32_t(x);
  };
  const bool spm = v.kind == TokenizerKind::SentencePiece;
  v.bos_id = id("tokenizer.ggml.bos_token_id", spm ? 1 : -1);
  v.eos_id = id("tokenizer.ggml.eos_token_id", spm ? 2 : -1);
  v.unk_id = id("tokenizer.ggml.unknown_token_id", spm ? 0 : -1);
  v.pad_id = id("tokenizer.ggml.padding_token_id", -1);
  for (const char* key : {"tokenizer.ggml.eot_token_id", "tokenizer.ggml.eom_token_id"}) {
    int32_t e = id(key, -1);
    if (e >= 0) v.eog_ids.push_back(e);
  }
  v.add_bos = f.get_bool_or("tokenizer.ggml.add_bos_token", spm);
  v.add_eos = f.get_bool_or("tokenizer.ggml.add_eos_token", false);
  v.add_space_prefix = f.get_bool_or("tokenizer.ggml.add_space_prefix", spm);
  return v;
}

Tokenizer load_gguf_tokenizer(const gguf::File& f) {
  VocabData v = gguf_vocab_data(f);
  try {
    return Tokenizer(std::move(v));
  } catch (const Error& e) {
    fail(f.path(), ": ", e.what());
  }
}

}  // namespace tessera
