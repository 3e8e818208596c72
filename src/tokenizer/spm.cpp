// SentencePiece-style BPE, as llama.cpp's llm_tokenizer_spm: the text (with a
// dummy-prefix space, spaces as U+2581) is split into UTF-8 characters, then
// the adjacent pair whose concatenation is a vocabulary piece with the highest
// score is merged (ties: leftmost) until no pair is in the vocabulary. Symbols
// that are not pieces fall back to <0xXX> byte pieces, else to <unk>.
#include <algorithm>

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
  spm_separator.fill(1);
  for (const std::string& p : d.tokens) {
    if (p.size() < 2) continue;
    for (char c : p)
      if (uint8_t(c) < 128) spm_separator[uint8_t(c)] = 0;
  }
}

namespace {

// Merges one segment text[b, e) and appends its ids.
void merge_segment(const Tokenizer::Impl& m, std::string_view text, size_t b, size_t e, std::vector<Symbol>& sym,
                   std::vector<Bigram>& heap, std::vector<int32_t>& out) {
  sym.clear();
  heap.clear();
  for (size_t off = b; off < e;) {
    size_t n = std::min(utf8_len(uint8_t(text[off])), e - off);
    // An invalid sequence ends at the first non-continuation byte, so that it
    // cannot swallow the start of the next character (e.g. an escaped space).
    for (size_t k = 1; k < n; ++k) {
      if ((uint8_t(text[off + k]) & 0xC0) != 0x80) {
        n = k;
        break;
      }
    }
    int32_t idx = int32_t(sym.size());
    sym.push_back({uint32_t(off), uint32_t(n), idx - 1, off + n == e ? -1 : idx + 1});
    off += n;
  }
  auto try_add = [&](int32_t l, int32_t r) {
    if (l < 0 || r < 0) return;
    std::string_view s(text.data() + sym[size_t(l)].off, sym[size_t(l)].n + sym[size_t(r)].n);
    auto it = m.piece_to_id.find(s);
    if (it == m.piece_to_id.end()) return;
    float score = m.d.scores.empty() ? 0.f : m.d.scores[size_t(it->second)];
    heap.push_back({score, l, r, uint32_t(s.size())});
    std::push_heap(heap.begin(), heap.end(), BigramLess{});
  };
  for (size_t i = 1; i < sym.size(); ++i) try_add(int32_t(i - 1), int32_t(i));
  while (!heap.empty()) {
    std::pop_heap(heap.begin(), heap.end(), BigramLess{});
    Bigram g = heap.back();
    heap.pop_back();
    Symbol& l = sym[size_t(g.left)];
    Symbol& r = sym[size_t(g.right)];
    if (l.n == 0 || r.n == 0 || l.n + r.n != g.size) continue;  // stale
    l.n += r.n;
    r.n = 0;
    l.next = r.next;
    if (r.next >= 0) sym[size_t(r.next)].prev = g.left;
    try_add(l.prev, g.left);
    try_add(g.left, l.next);
  }
  for (int32_t i = sym.empty() ? -1 : 0; i != -1; i = sym[size_t(i)].next) {
    const Symbol& s = sym[size_t(i)];
    auto it = m.piece_to_id.find(std::string_view(text.data() + s.off, s.n));
    if (it != m.piece_to_id.end()) {
      out.push_back(it->second);
      continue;
    }
    bool have_bytes = true;
    for (uint32_t k = 0; k < s.n; ++k) have_bytes = have_bytes && m.byte_id[uint8_t(text[s.off + k])] >= 0;
    if (have_bytes) {
      for (uint32_t k = 0; k < s.n; ++k) out.push_back(m.byte_id[uint8_t(text[s.off + k])]);
    } else if (m.d.unk_id >= 0) {
      out.push_back(m.d.unk_id);  // no byte fallback: one <unk> per unknown character
    }
  }
}

}  // namespace

void Tokenizer::Impl::encode_spm(const std::vector<Fragment>& frags, std::vector<int32_t>& out) const {
  std::string text;
  std::vector<Symbol> sym;
  std::vector<Bigram> heap;
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
    // Segments end just after each separator byte; no merge crosses one
    // (the heap's order is only ever compared within a segment, so the result
    // is the same as merging the whole text at once).
    for (size_t b = 0; b < text.size();) {
      size_t e = b;
      while (e < text.size() && !(uint8_t(text[e]) < 128 && spm_separator[uint8_t(text[e])])) ++e;
      if (e < text.size()) ++e;
      merge_segment(*this, text, b, e, sym, heap, out);
      b = e;
    }
  }
}

}  // namespace tessera
