// One tokenizer interface for every model format: SentencePiece-style BPE
// (scores, byte fallback, dummy-prefix space) and byte-level BPE (merge ranks,
// byte-to-unicode alphabet, per-family pre-tokenizer regex).
#pragma once
#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

namespace tessera {

enum class TokenizerKind { SentencePiece, ByteLevelBPE };

// Token attributes, numbered as GGUF's tokenizer.ggml.token_type.
enum class TokenType : int32_t { Normal = 1, Unknown = 2, Control = 3, UserDefined = 4, Unused = 5, Byte = 6 };

// Everything needed to build a tokenizer, independent of the file it came from.
struct VocabData {
  TokenizerKind kind = TokenizerKind::SentencePiece;
  std::vector<std::string> tokens;  // SentencePiece: pieces with U+2581 for space; byte-level: GPT-2 alphabet
  std::vector<float> scores;        // SentencePiece merge priority (higher merges first)
  std::vector<TokenType> types;     // empty means all Normal
  std::vector<std::string> merges;  // byte-level: "a b" lines in rank order
  std::string pre = "default";      // byte-level pre-tokenizer name (GGUF tokenizer.ggml.pre)
  std::vector<std::string> pre_patterns;  // byte-level: explicit regexes (e.g. from tokenizer.json); override `pre`
  int32_t bos_id = -1, eos_id = -1, unk_id = -1, pad_id = -1;
  std::vector<int32_t> eog_ids;     // extra end-of-generation ids (e.g. <|eot_id|>)
  bool add_bos = true, add_eos = false;
  bool add_space_prefix = true;     // SentencePiece dummy prefix
  // Byte-level: a pre-token that is itself in the vocabulary is emitted as is,
  // without running the merges (HF "ignore_merges"; Llama-3). The llama3 family
  // of `pre` names turns this on as well.
  bool ignore_merges = false;
};

struct EncodeOptions {
  bool add_special = true;    // add BOS/EOS as the model's rules say
  bool parse_special = true;  // recognise control / user-defined token text like "<|endoftext|>"
};

class Tokenizer {
 public:
  explicit Tokenizer(VocabData data);
  ~Tokenizer();
  Tokenizer(Tokenizer&&) noexcept;
  Tokenizer& operator=(Tokenizer&&) noexcept;

  std::vector<int32_t> encode(std::string_view text, const EncodeOptions& opt = {}) const;
  // Raw bytes of one token (byte pieces decoded, U+2581 -> space, byte-level alphabet undone).
  std::string token_bytes(int32_t id) const;
  // Whole-sequence decode; the SentencePiece dummy-prefix space after BOS / at the start is dropped.
  std::string decode(const std::vector<int32_t>& ids) const;
  const std::string& piece(int32_t id) const;  // the vocabulary string as stored
  // Id of a vocabulary string exactly as stored (SentencePiece pieces use U+2581), or -1.
  int32_t find_piece(std::string_view piece) const;
  TokenType type(int32_t id) const;  // Normal when the vocabulary carries no types

  int32_t n_vocab() const;
  int32_t bos_id() const;
  int32_t eos_id() const;
  int32_t unk_id() const;
  bool is_eog(int32_t id) const;  // EOS or another end-of-generation token
  // The token a document starts after: BOS, else the end-of-text token (EOS,
  // e.g. GPT-2's <|endoftext|>, which separates documents), else -1.
  int32_t doc_start_id() const;
  TokenizerKind kind() const;
  const VocabData& data() const;

  struct Impl;  // internal (src/tokenizer/tokenizer_impl.h)

 private:
  std::unique_ptr<Impl> impl_;
};

// Streaming decode: feed ids one at a time; returns the text that is complete
// (a multi-byte UTF-8 character split across tokens is held back until whole).
// The output is always valid UTF-8: a byte that cannot start or continue a
// valid character is emitted as U+FFFD (one per such byte) as soon as that is
// certain; flush() emits one U+FFFD for an incomplete tail. (Tokenizer::decode is
// the byte-exact alternative.) The dummy-prefix space is dropped like decode().
class StreamDecoder {
 public:
  explicit StreamDecoder(const Tokenizer& tok) : tok_(tok) {}
  std::string push(int32_t id);
  std::string flush();  // whatever is pending (invalid bytes as U+FFFD)

 private:
  const Tokenizer& tok_;
  std::string pending_;
  bool first_ = true;
};

// llama2.c tokenizer.bin: int32 max_token_length, then per token f32 score,
// int32 length, bytes. n_vocab < 0 reads until end of file.
Tokenizer load_llama2c_tokenizer(const std::string& path, int32_t n_vocab = -1);

// The loaders below validate everything and throw Error naming the file.
// In-memory parsers take a `name` used in messages (normally the path).
VocabData parse_llama2c_tokenizer(const uint8_t* data, size_t size, const std::string& name, int32_t n_vocab = -1);
// SentencePiece ModelProto (tokenizer.model of Llama-2 and friends).
VocabData parse_sentencepiece_model(const uint8_t* data, size_t size, const std::string& name);
Tokenizer load_sentencepiece_model(const std::string& path);
// tiktoken rank file ("base64 rank" per line). With llama3_specials the 256
// Llama-3 special tokens are appended (ids n..n+255, <|begin_of_text|> first).
VocabData parse_tiktoken(std::string_view text, const std::string& name, bool llama3_specials);
Tokenizer load_tiktoken(const std::string& path, bool llama3_specials = true);
// GPT-2 vocab.json + merges.txt.
Tokenizer load_gpt2_vocab(const std::string& vocab_json, const std::string& merges_txt);
// Hugging Face tokenizer.json (model.type "BPE", byte-level).
VocabData parse_hf_tokenizer_json(std::string_view json, const std::string& name);
Tokenizer load_hf_tokenizer_json(const std::string& path);
// Sniffs the format from the name and content: tokenizer.json / *.json (HF),
// vocab.json (+ merges.txt beside it), *.model (SentencePiece protobuf or
// tiktoken text), *.bin (llama2.c tokenizer).
Tokenizer load_tokenizer_file(const std::string& path);

// GPT-2's byte <-> printable-unicode alphabet used by byte-level vocabularies.
std::string bytes_to_gpt2(std::string_view raw);
// Inverse; characters outside the alphabet are copied through as their UTF-8.
std::string gpt2_to_bytes(std::string_view mapped);

}  // namespace tessera
