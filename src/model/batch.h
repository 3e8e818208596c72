// A batch of rows for Model::forward: each row is one token of one sequence at
// one position. Rows of many sequences may be mixed in any order; within a
// sequence its rows come in order of consecutive positions, the first at or
// before the sequence's cached length (an earlier position rewinds the
// sequence there). want_logits marks the rows whose logits are returned.
#pragma once
#include <cstdint>
#include <vector>

namespace tessera {

// Rows of a prompt per forward where a caller feeds it in chunks (beam search, parallel
// sampling), so a sliding-window layer's ring (model/kv_cache.h) needs room for this many only.
constexpr int64_t kPromptChunk = 64;

struct Batch {
  std::vector<int32_t> token;
  std::vector<int64_t> pos;
  std::vector<int32_t> seq;
  std::vector<uint8_t> want_logits;

  void add(int32_t t, int64_t p, int32_t s, bool logits) {
    token.push_back(t), pos.push_back(p), seq.push_back(s), want_logits.push_back(logits ? 1 : 0);
  }
  void clear() { token.clear(), pos.clear(), seq.clear(), want_logits.clear(); }
  int64_t size() const { return int64_t(token.size()); }
  int64_t n_logits() const {
    int64_t n = 0;
    for (uint8_t w : want_logits) n += w;
    return n;
  }
};

}  // namespace tessera
