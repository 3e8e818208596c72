// Internal: the state behind Tokenizer, shared by tokenizer.cpp (common parts),
// spm.cpp (SentencePiece-style BPE) and bpe.cpp (byte-level BPE).
#pragma once
#include <array>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include "tokenizer/pretokenizer.h"
#include "tokenizer/tokenizer.h"

namespace tessera {

struct StringHash {
  using is_transparent = void;
  size_t operator()(std::string_view s) const noexcept { return std::hash<std::string_view>{}(s); }
};
// string -> id with lookups by string_view (no temporary strings).
using StringIdMap = std::unordered_map<std::string, int32_t, StringHash, std::equal_to<>>;

// A piece of input after special-token splitting: raw text or one special id.
struct Fragment {
  std::string_view text;
  int32_t id = -1;  // >= 0: a special token
};

struct BpeScratch;

struct Tokenizer::Impl {
  VocabData d;
  StringIdMap piece_to_id;                  // vocabulary string (as stored) -> id
  std::vector<std::string> bytes;           // decoded bytes of every token
  std::vector<uint8_t> eog;                 // per id: end of generation
  // Control / user-defined / unknown tokens matched in the text, grouped by
  // their first byte, longest text first.
  std::array<std::vector<int32_t>, 256> specials_by_first;
  std::array<int32_t, 256> byte_id{};       // token of each single byte (-1: none)

  // Byte-level BPE only.
  StringIdMap raw_to_id;                                      // raw bytes -> id (normal tokens)
  std::unordered_map<uint64_t, std::pair<int32_t, int32_t>> merges;  // (left,right) -> (rank, merged)
  std::unique_ptr<PreTokenizer> pre;
  bool ignore_merges = false;

  explicit Impl(VocabData data);
  void build_common();
  void build_spm();
  void build_bpe();

  TokenType type_of(int32_t id) const {
    return d.types.empty() ? TokenType::Normal : d.types[size_t(id)];
  }
  void split_specials(std::string_view text, bool parse_special, std::vector<Fragment>& out) const;
  void encode_spm(const std::vector<Fragment>& frags, std::vector<int32_t>& out) const;
  void encode_bpe(const std::vector<Fragment>& frags, std::vector<int32_t>& out) const;
  void bpe_word(std::string_view w, BpeScratch& s, std::vector<int32_t>& out) const;
};

// UTF-8 sequence length from its first byte (1 for continuation / invalid bytes,
// as llama.cpp does, so that every byte belongs to exactly one symbol).
inline size_t utf8_len(uint8_t c) {
  if (c < 0x80) return 1;
  if ((c & 0xE0) == 0xC0) return 2;
  if ((c & 0xF0) == 0xE0) return 3;
  if ((c & 0xF8) == 0xF0) return 4;
  return 1;
}

}  // namespace tessera
