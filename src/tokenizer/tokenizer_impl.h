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

// Open-addressing hash map (left id, right id) -> (rank, merged id): the BPE
// inner loop's only lookup, kept flat for cache friendliness.
class MergeTable {
 public:
  struct Entry {
    uint64_t key = kEmpty;
    int32_t rank = 0, merged = 0;
  };
  static constexpr uint64_t kEmpty = ~uint64_t(0);
  static uint64_t key(int32_t a, int32_t b) { return (uint64_t(uint32_t(a)) << 32) | uint32_t(b); }

  void reserve(size_t n) {
    size_t cap = 16;
    while (cap < n * 2) cap <<= 1;
    slots_.assign(cap, Entry{});
    mask_ = cap - 1;
  }
  // Keeps the first insertion of a key (the lowest rank).
  void insert(uint64_t k, int32_t rank, int32_t merged) {
    if ((size_ + 1) * 2 > slots_.size()) grow();
    size_t i = hash(k) & mask_;
    while (slots_[i].key != kEmpty) {
      if (slots_[i].key == k) return;
      i = (i + 1) & mask_;
    }
    slots_[i] = {k, rank, merged};
    ++size_;
  }
  const Entry* find(uint64_t k) const {
    if (slots_.empty()) return nullptr;
    size_t i = hash(k) & mask_;
    while (slots_[i].key != kEmpty) {
      if (slots_[i].key == k) return &slots_[i];
      i = (i + 1) & mask_;
    }
    return nullptr;
  }
  size_t size() const { return size_; }

 private:
  static size_t hash(uint64_t k) {
    k ^= k >> 33;
    k *= 0xff51afd7ed558ccdULL;
    k ^= k >> 33;
    return size_t(k);
  }
  void grow() {
    std::vector<Entry> old = std::move(slots_);
    reserve(old.empty() ? 8 : old.size());
    size_ = 0;
    for (const Entry& e : old)
      if (e.key != kEmpty) insert(e.key, e.rank, e.merged);
  }
  std::vector<Entry> slots_;
  size_t mask_ = 0, size_ = 0;
};

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
  // SentencePiece: ASCII bytes that occur in no multi-byte piece; no merge can
  // cross them, so the text is encoded in independent segments between them.
  std::array<uint8_t, 128> spm_separator{};

  // Byte-level BPE only.
  StringIdMap raw_to_id;                                      // raw bytes -> id (normal tokens)
  MergeTable merges;                                          // (left,right) -> (rank, merged)
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
