// libFuzzer target: byte-level BPE and SentencePiece round trips on small
// in-memory vocabularies, and the tokenizer file parsers on arbitrary bytes.
// The first input byte picks the mode; the rest is the payload.
#include <cstdint>
#include <cstdlib>
#include <string>

#include "core/error.h"
#include "tokenizer/tokenizer.h"

using namespace tessera;

namespace {

Tokenizer make_bpe() {
  VocabData v;
  v.kind = TokenizerKind::ByteLevelBPE;
  v.pre = "gpt2";
  for (int b = 0; b < 256; ++b) v.tokens.push_back(bytes_to_gpt2(std::string(1, char(b))));
  const char* merges[][2] = {{" ", "t"}, {"h", "e"}, {" t", "he"}, {"i", "n"}, {" ", "a"}, {"e", "r"},
                             {"\xC3", "\xA9"}, {" ", " "}, {"  ", "  "}, {"in", "g"}, {"\n", "\n"}};
  for (auto& m : merges) {
    std::string a = bytes_to_gpt2(m[0]), b = bytes_to_gpt2(m[1]);
    v.merges.push_back(a + " " + b);
    v.tokens.push_back(a + b);
  }
  v.tokens.push_back("<|endoftext|>");
  v.types.assign(v.tokens.size(), TokenType::Normal);
  v.types.back() = TokenType::Control;
  v.eos_id = int32_t(v.tokens.size() - 1);
  v.add_bos = false;
  return Tokenizer(std::move(v));
}

Tokenizer make_spm() {
  VocabData v;
  v.kind = TokenizerKind::SentencePiece;
  v.tokens = {"<unk>", "<s>", "</s>"};
  v.types = {TokenType::Unknown, TokenType::Control, TokenType::Control};
  char buf[8];
  for (int b = 0; b < 256; ++b) {
    std::snprintf(buf, sizeof buf, "<0x%02X>", b);
    v.tokens.push_back(buf);
    v.types.push_back(TokenType::Byte);
  }
  for (const char* p : {"\xE2\x96\x81", "a", "b", "\xE2\x96\x81" "a", "ab", "\xE2\x96\x81" "ab", "\xC3\xA9"}) {
    v.tokens.push_back(p);
    v.types.push_back(TokenType::Normal);
  }
  v.scores.assign(v.tokens.size(), 0.f);
  for (size_t i = 259; i < v.scores.size(); ++i) v.scores[i] = -float(i);
  v.unk_id = 0;
  v.bos_id = 1;
  v.eos_id = 2;
  return Tokenizer(std::move(v));
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  static const Tokenizer bpe = make_bpe();
  static const Tokenizer spm = make_spm();
  if (size == 0) return 0;
  const uint8_t mode = data[0] % 6;
  const std::string s(reinterpret_cast<const char*>(data + 1), size - 1);
  try {
    switch (mode) {
      case 0: {
        if (bpe.decode(bpe.encode(s, {false, false})) != s) std::abort();
        auto ids = bpe.encode(s);  // with specials: still exact
        if (bpe.decode(ids) != s) std::abort();
        StreamDecoder sd(bpe);
        for (int32_t id : ids) sd.push(id);
        sd.flush();
        break;
      }
      case 1:
        // U+2581 in the text decodes as a space (SentencePiece's escaping): not a round trip.
        if (s.find("\xE2\x96\x81") == std::string::npos && spm.decode(spm.encode(s, {true, false})) != s) std::abort();
        break;
      case 2: Tokenizer(parse_hf_tokenizer_json(s, "fuzz.json")); break;
      case 3: Tokenizer(parse_llama2c_tokenizer(data + 1, size - 1, "fuzz.bin")); break;
      case 4: Tokenizer(parse_sentencepiece_model(data + 1, size - 1, "fuzz.model")); break;
      case 5: Tokenizer(parse_tiktoken(s, "fuzz.tiktoken", false)); break;
    }
  } catch (const Error&) {
    // Bad input files are expected to be rejected with an Error.
  }
  return 0;
}
