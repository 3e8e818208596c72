#include "train/data.h"

#include <cstring>
#include <filesystem>
#include <nlohmann/json.hpp>

#define PCRE2_CODE_UNIT_WIDTH 8
#include <pcre2.h>

#include "core/error.h"
#include "core/rng.h"

namespace fs = std::filesystem;

namespace tessera::train {

namespace {
constexpr char kMagic[8] = {'T', 'S', 'R', 'T', 'O', 'K', 'S', '1'};
constexpr size_t kHeader = 24;

inline uint64_t mix(uint64_t z) { return splitmix64(z); }

// A compiled line regex (byte mode: fortune files and other old corpora are not
// always valid UTF-8).
class LineRegex {
 public:
  explicit LineRegex(const std::string& pattern) {
    int err = 0;
    PCRE2_SIZE off = 0;
    code_ = pcre2_compile(reinterpret_cast<PCRE2_SPTR>(pattern.data()), pattern.size(), 0, &err, &off, nullptr);
    if (!code_) {
      PCRE2_UCHAR msg[256];
      pcre2_get_error_message(err, msg, sizeof msg);
      fail("--doc-sep '", pattern, "': bad regex at offset ", off, ": ", reinterpret_cast<const char*>(msg));
    }
    md_ = pcre2_match_data_create_from_pattern(code_, nullptr);
  }
  ~LineRegex() {
    pcre2_match_data_free(md_);
    pcre2_code_free(code_);
  }
  LineRegex(const LineRegex&) = delete;
  LineRegex& operator=(const LineRegex&) = delete;
  bool matches(std::string_view line) const {
    return pcre2_match(code_, reinterpret_cast<PCRE2_SPTR>(line.data()), line.size(), 0, 0, md_, nullptr) >= 0;
  }

 private:
  pcre2_code* code_ = nullptr;
  pcre2_match_data* md_ = nullptr;
};

bool blank(std::string_view s) {
  for (char c : s)
    if (c != ' ' && c != '\t' && c != '\n' && c != '\r') return false;
  return true;
}

bool ends_with(const std::string& s, std::string_view suf) {
  return s.size() >= suf.size() && s.compare(s.size() - suf.size(), suf.size(), suf) == 0;
}

}  // namespace

double text_fraction(std::string_view s) {
  if (s.empty()) return 0;
  size_t n = 0;
  for (unsigned char c : s) n += (c == ' ' || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z'));
  return double(n) / double(s.size());
}

Documents read_documents(const std::string& path, const DocumentOptions& o) {
  const std::string text = read_file(path);
  Documents r;
  r.bytes = int64_t(text.size());
  auto add = [&](std::string doc) {
    if (blank(doc)) return;
    if (o.min_text_fraction > 0 && text_fraction(doc) < o.min_text_fraction) {
      ++r.dropped;
      return;
    }
    r.docs.push_back(std::move(doc));
  };
  if (ends_with(path, ".jsonl")) {
    size_t line_no = 0, at = 0;
    while (at < text.size()) {
      size_t nl = text.find('\n', at);
      if (nl == std::string::npos) nl = text.size();
      const std::string_view line(text.data() + at, nl - at);
      at = nl + 1, ++line_no;
      if (blank(line)) continue;
      nlohmann::json j;
      try {
        j = nlohmann::json::parse(line);
      } catch (const nlohmann::json::exception& e) {
        fail(path, ":", line_no, ": invalid JSON: ", e.what());
      }
      if (!j.is_object() || !j.contains("text"))
        fail(path, ":", line_no, ": expected an object with a \"text\" field (one document per line)");
      if (!j["text"].is_string()) fail(path, ":", line_no, ": field \"text\" is not a string");
      add(j["text"].get<std::string>());
    }
    return r;
  }
  if (o.doc_sep.empty()) {
    add(text);
    return r;
  }
  const LineRegex sep(o.doc_sep);
  size_t at = 0, doc_start = 0;
  while (at < text.size()) {
    size_t nl = text.find('\n', at);
    const size_t end = nl == std::string::npos ? text.size() : nl;
    std::string_view line(text.data() + at, end - at);
    if (!line.empty() && line.back() == '\r') line.remove_suffix(1);
    if (sep.matches(line)) {
      add(text.substr(doc_start, at - doc_start));
      doc_start = std::min(text.size(), end + 1);
    }
    at = end + 1;
  }
  if (doc_start < text.size()) add(text.substr(doc_start));
  return r;
}

void write_token_shard(const std::string& path, const std::vector<int32_t>& tokens, int64_t vocab_size) {
  const uint32_t bpt = vocab_size <= 65536 ? 2 : 4, version = 1;
  const uint64_t n = tokens.size();
  AtomicFileWriter w(path);
  w.write(kMagic, 8);
  w.write(&version, 4);
  w.write(&bpt, 4);
  w.write(&n, 8);
  if (bpt == 2) {
    std::vector<uint16_t> t(tokens.begin(), tokens.end());
    w.write(t.data(), t.size() * 2);
  } else {
    w.write(tokens.data(), tokens.size() * 4);
  }
  w.commit();
}

TokenShard::TokenShard(const std::string& path) : f_(path) {
  if (f_.size() < kHeader || std::memcmp(f_.data(), kMagic, 8) != 0)
    fail(path, ": not a Tessera token shard (bad magic; write one with 'tessera data prepare')");
  uint32_t version, bpt;
  uint64_t n;
  std::memcpy(&version, f_.data() + 8, 4);
  std::memcpy(&bpt, f_.data() + 12, 4);
  std::memcpy(&n, f_.data() + 16, 8);
  if (version != 1) fail(path, ": unsupported token shard version ", version);
  if (bpt != 2 && bpt != 4) fail(path, ": bytes per token must be 2 or 4, got ", bpt);
  if (n > (f_.size() - kHeader) / bpt) fail(path, ": header says ", n, " tokens but the file holds ", (f_.size() - kHeader) / bpt);
  data_ = f_.data() + kHeader;
  n_ = int64_t(n);
  bpt_ = int(bpt);
}

int32_t TokenShard::operator[](int64_t i) const {
  if (bpt_ == 2) {
    uint16_t v;
    std::memcpy(&v, data_ + i * 2, 2);
    return v;
  }
  int32_t v;
  std::memcpy(&v, data_ + i * 4, 4);
  return v;
}

PrepareStats prepare_data(const Tokenizer& tok, const std::string& tokenizer_path,
                          const std::vector<std::string>& files, const std::string& dir, const PrepareOptions& o) {
  if (files.empty()) fail("data prepare: no input files");
  if (!(o.val_fraction >= 0 && o.val_fraction < 1)) fail("--val-fraction must be in [0, 1), got ", o.val_fraction);
  PrepareStats st;
  std::vector<int32_t> train, val;
  EncodeOptions eo;
  for (const auto& f : files) {
    const Documents d = read_documents(f, o.docs);
    st.bytes += d.bytes;
    st.documents += int64_t(d.docs.size()), st.dropped_documents += d.dropped;
    std::vector<std::vector<int32_t>> ids(d.docs.size());
    size_t n_tokens = 0;
    for (size_t i = 0; i < d.docs.size(); ++i) {
      ids[i] = tok.encode(d.docs[i], eo);
      if (o.add_eos && tok.eos_id() >= 0 && (ids[i].empty() || ids[i].back() != tok.eos_id()))
        ids[i].push_back(tok.eos_id());
      n_tokens += ids[i].size();
    }
    const double target = double(n_tokens) * o.val_fraction;
    if (ids.size() == 1) {  // one document: its last tokens are held out
      const size_t n_val = size_t(target);
      train.insert(train.end(), ids[0].begin(), ids[0].end() - long(n_val));
      val.insert(val.end(), ids[0].end() - long(n_val), ids[0].end());
      continue;
    }
    // Several documents: whole documents from the end of the file, up to the
    // boundary nearest to the requested fraction.
    size_t first_val = ids.size();
    double acc = 0;
    while (first_val > 1 && acc + double(ids[first_val - 1].size()) / 2 <= target)
      acc += double(ids[--first_val].size());
    for (size_t i = 0; i < ids.size(); ++i) {
      auto& dst = i < first_val ? train : val;
      dst.insert(dst.end(), ids[i].begin(), ids[i].end());
    }
  }
  if (st.bytes == 0) {
    std::string names;
    for (const auto& f : files) names += (names.empty() ? "" : ", ") + f;
    fail("data prepare: ", names, ": no text to tokenize (0 bytes)");
  }
  if (st.documents == 0 && st.dropped_documents > 0)
    fail("data prepare: all ", st.dropped_documents, " documents were dropped by the minimum text fraction ",
         o.docs.min_text_fraction);
  if (st.documents == 0) fail("data prepare: the input holds only blank documents");
  if (train.empty())
    fail("data prepare: all ", val.size(), " tokens went to the validation split (--val-fraction ", o.val_fraction,
         "); lower it or give more text");
  const int64_t V = tok.n_vocab();
  fs::create_directories(dir);
  write_token_shard(dir + "/train.bin", train, V);
  write_token_shard(dir + "/val.bin", val, V);
  const std::string tok_name = copy_tokenizer(tokenizer_path, dir);
  nlohmann::json meta = {{"format", "tessera-tokens"}, {"version", 1},           {"vocab_size", V},
                         {"tokenizer", tok_name},      {"train_tokens", train.size()}, {"val_tokens", val.size()},
                         {"files", files},             {"val_fraction", o.val_fraction},
                         {"documents", st.documents},  {"dropped_documents", st.dropped_documents},
                         {"doc_sep", o.docs.doc_sep}};
  write_meta(dir, meta);
  st.train_tokens = int64_t(train.size()), st.val_tokens = int64_t(val.size());
  return st;
}

std::string copy_tokenizer(const std::string& tokenizer_path, const std::string& dir) {
  if (tokenizer_path.empty()) return "";
  const std::string name = fs::path(tokenizer_path).filename().string();
  const std::string dst = dir + "/" + name;
  if (!fs::exists(dst) || !fs::equivalent(tokenizer_path, dst)) {
    const std::string bytes = read_file(tokenizer_path);
    AtomicFileWriter w(dst);
    w.write(bytes.data(), bytes.size());
    w.commit();
  }
  return name;
}

void write_meta(const std::string& dir, const nlohmann::json& meta) {
  const std::string ms = meta.dump(2) + "\n";
  AtomicFileWriter w(dir + "/meta.json");
  w.write(ms.data(), ms.size());
  w.commit();
}

Dataset open_dataset(const std::string& dir) {
  const std::string mp = dir + "/meta.json";
  if (!fs::exists(mp)) fail(dir, ": no meta.json (prepare the data with 'tessera data prepare -o ", dir, " ...')");
  nlohmann::json meta;
  try {
    meta = nlohmann::json::parse(read_file(mp));
  } catch (const nlohmann::json::exception& e) {
    fail(mp, ": invalid JSON: ", e.what());
  }
  Dataset d;
  if (!meta.contains("vocab_size") || !meta["vocab_size"].is_number_integer()) fail(mp, ": missing field vocab_size");
  d.vocab_size = meta["vocab_size"].get<int64_t>();
  if (meta.contains("tokenizer") && meta["tokenizer"].is_string() && !meta["tokenizer"].get<std::string>().empty())
    d.tokenizer_path = dir + "/" + meta["tokenizer"].get<std::string>();
  d.train = std::make_unique<TokenShard>(dir + "/train.bin");
  d.val = std::make_unique<TokenShard>(dir + "/val.bin");
  if (meta.contains("sft")) {  // train/sft.h
    d.sft = true;
    d.preference = meta.contains("preference");
    d.train_mask = std::make_unique<TokenShard>(dir + "/train.mask.bin");
    d.val_mask = std::make_unique<TokenShard>(dir + "/val.mask.bin");
    d.train_idx = std::make_unique<TokenShard>(dir + "/train.idx.bin");
    d.val_idx = std::make_unique<TokenShard>(dir + "/val.idx.bin");
    auto check = [](const TokenShard& toks, const TokenShard& mask, const TokenShard& idx) {
      if (mask.size() != toks.size())
        fail(mask.path(), ": ", mask.size(), " mask entries for ", toks.size(), " tokens");
      if (idx.size() < 1 || idx[idx.size() - 1] != toks.size())
        fail(idx.path(), ": example offsets do not end at the shard's ", toks.size(), " tokens");
    };
    check(*d.train, *d.train_mask, *d.train_idx);
    check(*d.val, *d.val_mask, *d.val_idx);
  }
  return d;
}

void train_batch(const TokenShard& s, uint64_t seed, int64_t step, int64_t micro, int64_t B, int64_t T, int32_t* x,
                 int32_t* y) {
  if (s.size() < T + 1)
    fail(s.path(), ": has ", s.size(), " tokens, fewer than one training sequence of ", T + 1,
         " (use more text or a smaller --seq)");
  const uint64_t span = uint64_t(s.size() - T);  // window starts in [0, span)
  for (int64_t b = 0; b < B; ++b) {
    const uint64_t h = mix(mix(mix(seed) ^ uint64_t(step)) ^ (uint64_t(micro) << 20 | uint64_t(b)));
    const int64_t o = int64_t(h % span);
    for (int64_t t = 0; t < T; ++t) {
      x[b * T + t] = s[o + t];
      y[b * T + t] = s[o + t + 1];
    }
  }
}

void eval_window(const TokenShard& s, int64_t i, int64_t T, int32_t* x, int32_t* y) {
  if (s.size() < T + 1)
    fail(s.path(), ": has ", s.size(), " tokens, fewer than one evaluation window of ", T + 1,
         " (raise --val-fraction or lower --seq)");
  const int64_t n_win = (s.size() - 1) / T;
  const int64_t o = (i % n_win) * T;
  for (int64_t t = 0; t < T; ++t) x[t] = s[o + t], y[t] = s[o + t + 1];
}

}  // namespace tessera::train
