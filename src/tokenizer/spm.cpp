// SentencePiece-style BPE, as llama.cpp's llm_tokenizer_spm: the text (with a
// dummy-prefix space, spaces as U+2581) is split into UTF-8 characters, then
// the adjacent pair whose concatenation is a vocabulary piece with the highest
// score is merged (ties: leftmost) until no pair is in the vocabulary. Symbols
// that are not pieces fall back to <0xXX> byte pieces, else to <unk>.
#include <queue>

#include "core/error.h"
#include "tokenizer/tokenizer_impl.h"

namespace tessera {

namespace {

struct Symbol {
  uint32_t off;  // byte offset in the escaped text
  uint32_t n;    // byte length (0: merged into its left neighbour)
  int32_t prev, next;
};

struct Bigram {
  float score;
  int32_t left, right;
  uint32_t size;  // bytes of the concatenation when it was queued
};

struct BigramLess {
  bool operator()(const Bigram& a, const Bigram& b) const {
    return a.score < b.score || (a.score == b.score && a.left > b.left);
  }
};

}  // namespace

void Tokenizer::Impl::build_spm() {
  // Nothing beyond the common tables: the piece map, byte pieces and scores.
  if (!d.merges.empty()) fail("tokenizer: SentencePiece vocabulary must not carry merges");
}

void Tokenizer::Impl::encode_spm(const std::vector<Fragment>& frags, std::vector<int32_t>& out) const {
  std::string text;
  std::vector<Symbol> sym;
  std::priority_queue<Bigram, std::vector<Bigram>, BigramLess> queue;
  bool prev_special = true;  // the start counts as "after a special": gets the dummy prefix
  for (const Fragment& f : frags) {
    if (f.id >= 0) {
      out.push_back(f.id);
      prev_special = true;
      continue;
    }
    text.clear();
    if (d.add_space_prefix && prev_special) text = "\xE2\x96\x81";
    prev_special = false;
    for (char c : f.text) {
      if (c == ' ') {
        text += "\xE2\x96\x81";
      } else {
        text.push_back(c);
      }
    }
    if (text.size() > UINT32_MAX / 2) fail("tokenizer: text fragment too long (", text.size(), " bytes)");

    // (N) symbols, one per UTF-8 character
    sym.clear();
    for (size_t off = 0; off < text.size();) {
      size_t n = std::min(utf8_len(uint8_t(text[off])), text.size() - off);
      int32_t idx = int32_t(sym.size());
      sym.push_back({uint32_t(off), uint32_t(n), idx - 1, off + n == text.size() ? -1 : idx + 1});
      off += n;
    }
    auto try_add = [&](int32_t l, int32_t r) {
      if (l < 0 || r < 0) return;
      std::string_view s(text.data() + sym[size_t(l)].off, sym[size_t(l)].n + sym[size_t(r)].n);
      auto it = piece_to_id.find(s);
      if (it == piece_to_id.end()) return;
      float score = d.scores.empty() ? 0.f : d.scores[size_t(it->second)];
      queue.push({score, l, r, uint32_t(s.size())});
    };
    for (size_t i = 1; i < sym.size(); ++i) try_add(int32_t(i - 1), int32_t(i));
    while (!queue.empty()) {
      Bigram b = queue.top();
      queue.pop();
      Symbol& l = sym[size_t(b.left)];
      Symbol& r = sym[size_t(b.right)];
      if (l.n == 0 || r.n == 0 || l.n + r.n != b.size) continue;  // stale
      l.n += r.n;
      r.n = 0;
      l.next = r.next;
      if (r.next >= 0) sym[size_t(r.next)].prev = b.left;
      try_add(l.prev, b.left);
      try_add(b.left, l.next);
    }
    for (int32_t i = sym.empty() ? -1 : 0; i != -1; i = sym[size_t(i)].next) {
      const Symbol& s = sym[size_t(i)];
      auto it = piece_to_id.find(std::string_view(text.data() + s.off, s.n));
      if (it != piece_to_id.end()) {
        out.push_back(it->second);
        continue;
      }
      bool have_bytes = true;
      for (uint32_t k = 0; k < s.n; ++k) have_bytes = have_bytes && byte_id[uint8_t(text[s.off + k])] >= 0;
      if (have_bytes) {
        for (uint32_t k = 0; k < s.n; ++k) out.push_back(byte_id[uint8_t(text[s.off + k])]);
      } else if (d.unk_id >= 0) {
        out.push_back(d.unk_id);  // no byte fallback: one <unk> per unknown character
      }
    }
  }
}

}  // namespace tessera
