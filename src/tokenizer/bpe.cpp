// Byte-level BPE (GPT-2, Llama-3 and friends): the text is split by the
// family's pre-tokenizer regex; every piece starts as one symbol per byte and
// the adjacent pair with the lowest merge rank is merged (ties: leftmost) until
// no pair has a rank. A per-call cache maps repeated pieces to their ids.
#include <algorithm>

#include "core/error.h"
#include "tokenizer/tokenizer_impl.h"

namespace tessera {

namespace {

struct Sym {
  int32_t id;  // current token (-1: a byte with no token of its own)
  int32_t prev, next;
  bool alive;
};

struct Cand {
  int32_t rank, left, right, left_id, right_id, merged;
};

// Heap order: lowest rank first, then leftmost.
struct CandAfter {
  bool operator()(const Cand& a, const Cand& b) const {
    return a.rank > b.rank || (a.rank == b.rank && a.left > b.left);
  }
};

}  // namespace

struct BpeScratch {
  std::vector<Sym> sym;
  std::vector<Cand> heap;
};

void Tokenizer::Impl::build_bpe() {
  const size_t n = d.tokens.size();
  raw_to_id.reserve(n);
  for (size_t i = 0; i < n; ++i) {
    TokenType t = type_of(int32_t(i));
    if (t == TokenType::Control || t == TokenType::UserDefined || t == TokenType::Unknown) continue;
    raw_to_id.emplace(bytes[i], int32_t(i));
  }
  for (int b = 0; b < 256; ++b) {
    const char c = char(b);
    auto it = raw_to_id.find(std::string_view(&c, 1));
    byte_id[size_t(b)] = it == raw_to_id.end() ? -1 : it->second;
  }
  pre = std::make_unique<PreTokenizer>(d.pre_patterns.empty() ? pretokenizer_patterns(d.pre) : d.pre_patterns);
  ignore_merges = d.ignore_merges || pretokenizer_ignores_merges(d.pre);

  merges.reserve(d.merges.size());
  std::string joined;
  for (size_t r = 0; r < d.merges.size(); ++r) {
    const std::string& m = d.merges[r];
    size_t sp = m.size() > 1 ? m.find(' ', 1) : std::string::npos;
    if (sp == std::string::npos || sp + 1 >= m.size())
      fail("tokenizer: merge ", r, " '", m, "' is not two tokens separated by a space");
    std::string_view a(m.data(), sp), b(m.data() + sp + 1, m.size() - sp - 1);
    auto ia = piece_to_id.find(a), ib = piece_to_id.find(b);
    if (ia == piece_to_id.end()) fail("tokenizer: merge ", r, " '", m, "' names unknown token '", a, "'");
    if (ib == piece_to_id.end()) fail("tokenizer: merge ", r, " '", m, "' names unknown token '", b, "'");
    joined.assign(a);
    joined += b;
    auto ij = piece_to_id.find(joined);
    if (ij == piece_to_id.end()) fail("tokenizer: merge ", r, " '", m, "' makes '", joined, "', which is not in the vocabulary");
    if (r > size_t(INT32_MAX)) fail("tokenizer: too many merges");
    merges.insert(MergeTable::key(ia->second, ib->second), int32_t(r), ij->second);
  }
}

void Tokenizer::Impl::bpe_word(std::string_view w, BpeScratch& s, std::vector<int32_t>& out) const {
  const Impl& m = *this;
  auto& sym = s.sym;
  auto& heap = s.heap;
  sym.clear();
  heap.clear();
  const int32_t n = int32_t(w.size());
  for (int32_t i = 0; i < n; ++i) sym.push_back({m.byte_id[uint8_t(w[size_t(i)])], i - 1, i + 1 < n ? i + 1 : -1, true});
  auto try_add = [&](int32_t l, int32_t r) {
    if (l < 0 || r < 0) return;
    int32_t a = sym[size_t(l)].id, b = sym[size_t(r)].id;
    if (a < 0 || b < 0) return;
    const MergeTable::Entry* e = m.merges.find(MergeTable::key(a, b));
    if (!e) return;
    heap.push_back({e->rank, l, r, a, b, e->merged});
    std::push_heap(heap.begin(), heap.end(), CandAfter{});
  };
  for (int32_t i = 1; i < n; ++i) try_add(i - 1, i);
  while (!heap.empty()) {
    std::pop_heap(heap.begin(), heap.end(), CandAfter{});
    Cand c = heap.back();
    heap.pop_back();
    Sym& l = sym[size_t(c.left)];
    Sym& r = sym[size_t(c.right)];
    if (!l.alive || !r.alive || l.next != c.right || l.id != c.left_id || r.id != c.right_id) continue;  // stale
    l.id = c.merged;
    r.alive = false;
    l.next = r.next;
    if (r.next >= 0) sym[size_t(r.next)].prev = c.left;
    try_add(l.prev, c.left);
    try_add(c.left, l.next);
  }
  for (int32_t i = n > 0 ? 0 : -1; i != -1; i = sym[size_t(i)].next) {
    int32_t id = sym[size_t(i)].id;
    if (id < 0) id = m.d.unk_id;  // a byte the vocabulary lacks
    if (id >= 0) out.push_back(id);
  }
}

void Tokenizer::Impl::encode_bpe(const std::vector<Fragment>& frags, std::vector<int32_t>& out) const {
  size_t total = 0;
  for (const Fragment& f : frags) total += f.text.size();
  const bool use_cache = total >= 4096;
  // piece (a view into the caller's text) -> (offset, count) into cache_ids
  std::unordered_map<std::string_view, std::pair<uint32_t, uint32_t>> cache;
  if (use_cache) cache.reserve(total / 64 + 16);
  std::vector<int32_t> cache_ids;
  BpeScratch scratch;
  for (const Fragment& f : frags) {
    if (f.id >= 0) {
      out.push_back(f.id);
      continue;
    }
    pre->for_each(f.text, [&](std::string_view w) {
      if (w.size() == 1 && byte_id[uint8_t(w[0])] >= 0) {
        out.push_back(byte_id[uint8_t(w[0])]);
        return;
      }
      if (ignore_merges) {
        auto it = raw_to_id.find(w);
        if (it != raw_to_id.end()) {
          out.push_back(it->second);
          return;
        }
      }
      if (use_cache) {
        auto it = cache.find(w);
        if (it != cache.end()) {
          out.insert(out.end(), cache_ids.begin() + it->second.first,
                     cache_ids.begin() + it->second.first + it->second.second);
          return;
        }
      }
      size_t before = out.size();
      bpe_word(w, scratch, out);
      if (use_cache && cache_ids.size() < (size_t(1) << 30)) {
        cache.emplace(w, std::make_pair(uint32_t(cache_ids.size()), uint32_t(out.size() - before)));
        cache_ids.insert(cache_ids.end(), out.begin() + long(before), out.end());
      }
    });
  }
}

}  // namespace tessera
