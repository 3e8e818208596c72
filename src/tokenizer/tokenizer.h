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
  int32_t bos_id = -1, eos_id = -1, unk_id = -1, pad_id = -1;
  std::vector<int32_t> eog_ids;     // extra end-of-generation ids (e.g. <|eot_id|>)
  bool add_bos = true, add_eos = false;
  bool add_space_prefix = true;     // SentencePiece dummy prefix
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

  int32_t n_vocab() const;
  int32_t bos_id() const;
  int32_t eos_id() const;
  bool is_eog(int32_t id) const;  // EOS or another end-of-generation token
  TokenizerKind kind() const;
  const VocabData& data() const;

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

// Streaming decode: feed ids one at a time; returns the text that is complete
// (a multi-byte UTF-8 character split across tokens is held back until whole).
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

}  // namespace tessera
