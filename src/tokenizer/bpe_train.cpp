#include "tokenizer/bpe_train.h"

#include <algorithm>
#include <nlohmann/json.hpp>
#include <unordered_map>

#include "core/error.h"
#include "core/mmap.h"
#include "tokenizer/pretokenizer.h"

namespace tessera {

namespace {

inline uint64_t pkey(int32_t a, int32_t b) { return (uint64_t(uint32_t(a)) << 32) | uint32_t(b); }
inline int32_t pleft(uint64_t k) { return int32_t(k >> 32); }
inline int32_t pright(uint64_t k) { return int32_t(k & 0xFFFFFFFFu); }

struct Word {
  std::vector<int32_t> syms;
  int64_t count;
};

struct HeapEntry {
  int64_t count;
  uint64_t pair;
};

// Bytes in GPT-2's alphabet order: printable ones first, then the rest.
std::vector<uint8_t> gpt2_byte_order() {
  std::vector<uint8_t> order;
  for (int b = 0; b < 256; ++b)
    if ((b >= 33 && b <= 126) || (b >= 161 && b <= 172) || b >= 174) order.push_back(uint8_t(b));
  for (int b = 0; b < 256; ++b)
    if (!((b >= 33 && b <= 126) || (b >= 161 && b <= 172) || b >= 174)) order.push_back(uint8_t(b));
  return order;
}

// Calls fn on each stretch of text between special tokens (longest special wins).
void split_on_specials(std::string_view text, const std::vector<std::string>& specials,
                       const std::function<void(std::string_view)>& fn) {
  size_t start = 0, i = 0;
  while (i < text.size()) {
    size_t hit = 0;
    for (const auto& s : specials)
      if (s.size() > hit && text.compare(i, s.size(), s) == 0) hit = s.size();
    if (!hit) {
      ++i;
      continue;
    }
    if (i > start) fn(text.substr(start, i - start));
    i += hit;
    start = i;
  }
  if (start < text.size()) fn(text.substr(start));
}

}  // namespace

BpeTrainResult train_bpe(const std::vector<std::string_view>& texts, const BpeTrainOptions& opt) {
  BpeTrainResult res;
  const auto n_special = int32_t(opt.special_tokens.size());
  if (opt.vocab_size < n_special + 256)
    fail("BPE training: vocab size ", opt.vocab_size, " is smaller than ", n_special, " specials + 256 bytes");
  for (const auto& s : opt.special_tokens)
    if (s.empty()) fail("BPE training: empty special token");
  res.n_special = n_special;
  res.vocab = opt.special_tokens;
  std::array<int32_t, 256> byte_id{};
  for (uint8_t b : gpt2_byte_order()) {
    byte_id[b] = int32_t(res.vocab.size());
    res.vocab.emplace_back(1, char(b));
  }

  // Pre-token frequencies (views into the caller's texts).
  PreTokenizer pre({kGpt2Pattern});
  std::unordered_map<std::string_view, int64_t> freq;
  for (std::string_view t : texts) {
    split_on_specials(t, opt.special_tokens, [&](std::string_view seg) {
      pre.for_each(seg, [&](std::string_view w) { ++freq[w]; });
    });
  }
  std::vector<Word> words;
  words.reserve(freq.size());
  for (const auto& [w, c] : freq) {
    if (w.size() < 2) continue;  // a single byte never takes part in a pair
    Word wd{{}, c};
    wd.syms.reserve(w.size());
    for (unsigned char ch : w) wd.syms.push_back(byte_id[ch]);
    words.push_back(std::move(wd));
  }
  // Deterministic order regardless of hash iteration (only affects speed).
  std::sort(words.begin(), words.end(), [](const Word& a, const Word& b) { return a.syms < b.syms; });

  std::unordered_map<uint64_t, int64_t> counts;
  std::unordered_map<uint64_t, std::vector<int32_t>> where;
  for (size_t wi = 0; wi < words.size(); ++wi) {
    const Word& w = words[wi];
    for (size_t i = 0; i + 1 < w.syms.size(); ++i) {
      uint64_t k = pkey(w.syms[i], w.syms[i + 1]);
      counts[k] += w.count;
      auto& v = where[k];
      if (v.empty() || v.back() != int32_t(wi)) v.push_back(int32_t(wi));
    }
  }
  const auto& vocab = res.vocab;
  // Max-heap: higher count first, then the lexicographically greater byte pair.
  auto less = [&](const HeapEntry& x, const HeapEntry& y) {
    if (x.count != y.count) return x.count < y.count;
    int c = vocab[size_t(pleft(x.pair))].compare(vocab[size_t(pleft(y.pair))]);
    if (c != 0) return c < 0;
    return vocab[size_t(pright(x.pair))] < vocab[size_t(pright(y.pair))];
  };
  std::vector<HeapEntry> heap;
  heap.reserve(counts.size());
  for (const auto& [k, c] : counts) heap.push_back({c, k});
  std::make_heap(heap.begin(), heap.end(), less);

  const int32_t wanted = opt.vocab_size - n_special - 256;
  std::unordered_map<uint64_t, int64_t> delta;
  std::vector<int32_t> merged;
  while (int32_t(res.merges.size()) < wanted && !heap.empty()) {
    std::pop_heap(heap.begin(), heap.end(), less);
    HeapEntry top = heap.back();
    heap.pop_back();
    auto ci = counts.find(top.pair);
    if (ci == counts.end() || ci->second != top.count || top.count <= 0) continue;  // stale
    const int32_t a = pleft(top.pair), b = pright(top.pair);
    const auto c = int32_t(res.vocab.size());
    res.vocab.push_back(vocab[size_t(a)] + vocab[size_t(b)]);
    res.merges.emplace_back(vocab[size_t(a)], vocab[size_t(b)]);

    std::vector<int32_t> ws = std::move(where[top.pair]);
    where.erase(top.pair);
    counts.erase(ci);
    std::sort(ws.begin(), ws.end());
    ws.erase(std::unique(ws.begin(), ws.end()), ws.end());
    delta.clear();
    for (int32_t wi : ws) {
      Word& w = words[size_t(wi)];
      merged.clear();
      for (size_t i = 0; i < w.syms.size();) {
        if (i + 1 < w.syms.size() && w.syms[i] == a && w.syms[i + 1] == b) {
          merged.push_back(c);
          i += 2;
        } else {
          merged.push_back(w.syms[i]);
          ++i;
        }
      }
      if (merged.size() == w.syms.size()) continue;  // index entry was stale
      for (size_t i = 0; i + 1 < w.syms.size(); ++i) delta[pkey(w.syms[i], w.syms[i + 1])] -= w.count;
      for (size_t i = 0; i + 1 < merged.size(); ++i) {
        uint64_t k = pkey(merged[i], merged[i + 1]);
        delta[k] += w.count;
        if (merged[i] == c || merged[i + 1] == c) {
          auto& v = where[k];
          if (v.empty() || v.back() != wi) v.push_back(wi);
        }
      }
      w.syms.swap(merged);
    }
    for (const auto& [k, dc] : delta) {
      if (k == top.pair || dc == 0) continue;
      int64_t& cnt = counts[k];
      cnt += dc;
      if (cnt > 0) {
        heap.push_back({cnt, k});
        std::push_heap(heap.begin(), heap.end(), less);
      } else {
        counts.erase(k);
      }
    }
    if (opt.progress && (res.merges.size() % 100 == 0 || int32_t(res.merges.size()) == wanted))
      opt.progress(int32_t(res.merges.size()), wanted);
  }
  return res;
}

VocabData BpeTrainResult::to_vocab_data() const {
  VocabData v;
  v.kind = TokenizerKind::ByteLevelBPE;
  v.pre = "gpt2";
  v.add_bos = false;
  v.tokens.reserve(vocab.size());
  v.types.reserve(vocab.size());
  for (size_t i = 0; i < vocab.size(); ++i) {
    bool special = int32_t(i) < n_special;
    v.tokens.push_back(special ? vocab[i] : bytes_to_gpt2(vocab[i]));
    v.types.push_back(special ? TokenType::Control : TokenType::Normal);
  }
  for (const auto& [a, b] : merges) v.merges.push_back(bytes_to_gpt2(a) + " " + bytes_to_gpt2(b));
  if (n_special > 0) v.eos_id = 0;
  return v;
}

// ---------------------------------------------------------------- writers

namespace {

void write_text(const std::string& path, const std::string& s) {
  AtomicFileWriter w(path);
  w.write(s.data(), s.size());
  w.commit();
}

}  // namespace

void save_hf_tokenizer_json(const VocabData& v, const std::string& path) {
  if (v.kind != TokenizerKind::ByteLevelBPE) fail(path, ": only byte-level BPE vocabularies can be written as tokenizer.json");
  using ojson = nlohmann::ordered_json;
  ojson added = ojson::array();
  ojson vocab = ojson::object();
  for (size_t i = 0; i < v.tokens.size(); ++i) {
    TokenType t = v.types.empty() ? TokenType::Normal : v.types[i];
    if (t == TokenType::Control || t == TokenType::UserDefined) {
      added.push_back({{"id", i}, {"content", v.tokens[i]}, {"single_word", false}, {"lstrip", false},
                       {"rstrip", false}, {"normalized", false}, {"special", t == TokenType::Control}});
    }
    vocab[v.tokens[i]] = i;
  }
  const std::string pattern = v.pre_patterns.empty() ? pretokenizer_patterns(v.pre)[0] : v.pre_patterns[0];
  ojson pre_tok;
  if (pattern == kGpt2Pattern && v.pre_patterns.size() <= 1) {
    pre_tok = {{"type", "ByteLevel"}, {"add_prefix_space", false}, {"trim_offsets", true}, {"use_regex", true}};
  } else {
    ojson seq = ojson::array();
    for (const auto& p : v.pre_patterns.empty() ? pretokenizer_patterns(v.pre) : v.pre_patterns)
      seq.push_back({{"type", "Split"}, {"pattern", {{"Regex", p}}}, {"behavior", "Isolated"}, {"invert", false}});
    seq.push_back({{"type", "ByteLevel"}, {"add_prefix_space", false}, {"trim_offsets", true}, {"use_regex", false}});
    pre_tok = {{"type", "Sequence"}, {"pretokenizers", seq}};
  }
  ojson j = {
      {"version", "1.0"},
      {"truncation", nullptr},
      {"padding", nullptr},
      {"added_tokens", added},
      {"normalizer", nullptr},
      {"pre_tokenizer", pre_tok},
      {"post_processor", nullptr},
      {"decoder", {{"type", "ByteLevel"}, {"add_prefix_space", true}, {"trim_offsets", true}, {"use_regex", true}}},
      {"model",
       {{"type", "BPE"}, {"dropout", nullptr}, {"unk_token", nullptr}, {"continuing_subword_prefix", nullptr},
        {"end_of_word_suffix", nullptr}, {"fuse_unk", false}, {"byte_fallback", false},
        {"ignore_merges", v.ignore_merges}, {"vocab", vocab}, {"merges", v.merges}}},
  };
  write_text(path, j.dump(2) + "\n");
}

void save_gpt2_vocab(const VocabData& v, const std::string& vocab_json, const std::string& merges_txt) {
  if (v.kind != TokenizerKind::ByteLevelBPE) fail(vocab_json, ": only byte-level BPE vocabularies can be written as vocab.json");
  nlohmann::ordered_json vocab = nlohmann::ordered_json::object();
  for (size_t i = 0; i < v.tokens.size(); ++i) vocab[v.tokens[i]] = i;
  std::string merges = "#version: 0.2\n";
  for (const auto& m : v.merges) merges += m + "\n";
  write_text(vocab_json, vocab.dump(4) + "\n");
  write_text(merges_txt, merges);
}

}  // namespace tessera
