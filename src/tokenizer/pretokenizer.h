// Byte-level BPE pre-tokenizers: one or more PCRE2 regexes (UTF-8 + Unicode
// properties, JIT-compiled) applied in sequence, as llama.cpp does per
// tokenizer.ggml.pre family. Text between matches is kept as its own piece, so
// every input byte (invalid UTF-8 included) ends up in exactly one piece.
#pragma once
#include <functional>
#include <string>
#include <string_view>
#include <vector>

namespace tessera {

class PreTokenizer {
 public:
  // Throws Error when a pattern does not compile.
  explicit PreTokenizer(std::vector<std::string> patterns);
  ~PreTokenizer();
  PreTokenizer(const PreTokenizer&) = delete;
  PreTokenizer& operator=(const PreTokenizer&) = delete;

  // Appends the pieces of `text` (views into it) to `out`. Thread-safe.
  void split(std::string_view text, std::vector<std::string_view>& out) const;
  // Calls fn on each piece in order (no intermediate storage for one regex).
  void for_each(std::string_view text, const std::function<void(std::string_view)>& fn) const;
  const std::vector<std::string>& patterns() const { return patterns_; }

 private:
  std::vector<std::string> patterns_;
  std::vector<void*> codes_;  // pcre2_code_8*
};

// The regexes of a tokenizer.ggml.pre family name ("gpt2", "llama-bpe", "qwen2",
// ...). Throws Error naming the family when unknown.
std::vector<std::string> pretokenizer_patterns(const std::string& family);
// The family name of exactly these regexes, as llama.cpp's tokenizer.ggml.pre
// spells it ("gpt-2", "llama-bpe", "qwen2", ...), or "" when no family has them.
std::string pretokenizer_family_of(const std::vector<std::string>& patterns);
// Whether llama.cpp turns on ignore_merges for this family (the Llama-3 ones).
bool pretokenizer_ignores_merges(const std::string& family);

// GPT-2's pattern (also the BPE trainer's).
extern const char* const kGpt2Pattern;

}  // namespace tessera
