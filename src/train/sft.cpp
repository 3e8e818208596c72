#include "train/sft.h"

#include <algorithm>
#include <filesystem>

#include "core/error.h"
#include "core/mmap.h"
#include "core/rng.h"

namespace fs = std::filesystem;

namespace tessera::train {

namespace {

std::string str_field(const nlohmann::json& j, const char* key, const std::string& where) {
  if (!j.contains(key)) fail(where, ": missing field \"", key, "\"");
  if (!j[key].is_string()) fail(where, ": field \"", key, "\" is not a string");
  return j[key].get<std::string>();
}

// Text pieces in order, each learned or not; tokenized as one text, a token is learned
// when it starts inside a learned piece (by the token counts of the growing prefixes).
SftExample tokenize_pieces(const std::vector<std::pair<std::string, bool>>& pieces, const Tokenizer& tok,
                           bool eos_after) {
  std::string text;
  std::vector<size_t> ends;  // token count of the text up to the end of each piece
  EncodeOptions eo;
  eo.add_special = true, eo.parse_special = true;
  for (const auto& [piece, learned] : pieces) {
    text += piece;
    ends.push_back(tok.encode(text, eo).size());
  }
  SftExample ex;
  ex.tokens = tok.encode(text, eo);
  ex.learn.assign(ex.tokens.size(), 0);
  size_t begin = 0;
  for (size_t i = 0; i < pieces.size(); ++i) {
    const size_t end = std::min(ends[i], ex.tokens.size());
    if (pieces[i].second)
      for (size_t t = begin; t < end; ++t) ex.learn[t] = 1;
    begin = std::max(begin, end);
  }
  // The template / tokenizer may add EOS itself; otherwise a learned ending gets one.
  if (eos_after && tok.eos_id() >= 0 && (ex.tokens.empty() || ex.tokens.back() != tok.eos_id()))
    ex.tokens.push_back(tok.eos_id()), ex.learn.push_back(1);
  return ex;
}

}  // namespace

SftExample sft_example(const nlohmann::json& j, const Tokenizer& tok, const ChatTemplate& tmpl,
                       const std::string& where) {
  if (!j.is_object()) fail(where, ": expected a JSON object ({\"messages\": [...]} or {\"prompt\", \"completion\"})");
  if (j.contains("prompt") || j.contains("completion")) {
    const std::string prompt = str_field(j, "prompt", where), completion = str_field(j, "completion", where);
    if (completion.empty()) fail(where, ": empty \"completion\" (nothing to learn)");
    return tokenize_pieces({{prompt, false}, {completion, true}}, tok, true);
  }
  if (!j.contains("messages")) fail(where, ": expected \"messages\" or \"prompt\" + \"completion\"");
  if (!j["messages"].is_array() || j["messages"].empty()) fail(where, ": \"messages\" must be a non-empty array");
  std::vector<ChatMessage> msgs;
  bool any_assistant = false;
  for (size_t i = 0; i < j["messages"].size(); ++i) {
    const auto& m = j["messages"][i];
    const std::string w = where + ": messages[" + std::to_string(i) + "]";
    if (!m.is_object()) fail(w, ": expected an object with \"role\" and \"content\"");
    ChatMessage cm{str_field(m, "role", w), str_field(m, "content", w)};
    if (cm.role != "system" && cm.role != "user" && cm.role != "assistant" && cm.role != "tool")
      fail(w, ": unknown role '", cm.role, "' (system, user, assistant, tool)");
    any_assistant |= cm.role == "assistant";
    msgs.push_back(std::move(cm));
  }
  if (!any_assistant) fail(where, ": no assistant message (nothing to learn)");
  // Each assistant turn is what its rendering adds to the prompt that opens it.
  std::vector<std::pair<std::string, bool>> pieces;
  std::string done;  // the text rendered so far
  auto extend = [&](const std::string& next, bool learned) {
    if (next.compare(0, done.size(), done) != 0)
      fail(where, ": the chat template '", tmpl.name(),
           "' does not render this conversation as a growing prefix; the assistant turns cannot be located");
    pieces.emplace_back(next.substr(done.size()), learned);
    done = next;
  };
  for (size_t i = 0; i < msgs.size(); ++i) {
    if (msgs[i].role != "assistant") continue;
    const std::vector<ChatMessage> before(msgs.begin(), msgs.begin() + long(i));
    if (!before.empty()) extend(tmpl.apply(before, true), false);
    extend(tmpl.apply(std::vector<ChatMessage>(msgs.begin(), msgs.begin() + long(i + 1)), false), true);
  }
  const std::string all = tmpl.apply(msgs, false);
  if (all.size() > done.size()) extend(all, false);
  return tokenize_pieces(pieces, tok, false);
}

void for_each_jsonl(const std::string& path, const std::function<void(const nlohmann::json&, const std::string&)>& f) {
  const std::string text = read_file(path);
  size_t at = 0, line_no = 0;
  while (at < text.size()) {
    size_t nl = text.find('\n', at);
    if (nl == std::string::npos) nl = text.size();
    const std::string line = text.substr(at, nl - at);
    at = nl + 1, ++line_no;
    if (line.find_first_not_of(" \t\r") == std::string::npos) continue;
    const std::string where = path + ":" + std::to_string(line_no);
    nlohmann::json j;
    try {
      j = nlohmann::json::parse(line);
    } catch (const nlohmann::json::exception& e) {
      fail(where, ": invalid JSON: ", e.what());
    }
    f(j, where);
  }
}

SftStats prepare_sft(const Tokenizer& tok, const std::string& tokenizer_path, const ChatTemplate& tmpl,
                     const std::vector<std::string>& files, const std::string& dir, double val_fraction) {
  if (files.empty()) fail("data prepare-sft: no input files");
  if (!(val_fraction >= 0 && val_fraction < 1)) fail("--val-fraction must be in [0, 1), got ", val_fraction);
  struct Split {
    std::vector<int32_t> tokens, mask, idx;
  } split[2];
  SftStats st;
  for (const auto& f : files) {
    std::vector<SftExample> ex;
    for_each_jsonl(f, [&](const nlohmann::json& j, const std::string& where) { ex.push_back(sft_example(j, tok, tmpl, where)); });
    if (ex.empty()) fail(f, ": no examples");
    // The last examples of each file are held out (at least one stays for training).
    const size_t n_val = std::min(ex.size() - 1, size_t(double(ex.size()) * val_fraction + 0.5));
    for (size_t i = 0; i < ex.size(); ++i) {
      Split& s = split[i + n_val >= ex.size() ? 1 : 0];
      s.idx.push_back(int32_t(s.tokens.size()));
      s.tokens.insert(s.tokens.end(), ex[i].tokens.begin(), ex[i].tokens.end());
      s.mask.insert(s.mask.end(), ex[i].learn.begin(), ex[i].learn.end());
      st.learned_tokens += std::count(ex[i].learn.begin(), ex[i].learn.end(), uint8_t(1));
    }
  }
  const int64_t V = tok.n_vocab();
  fs::create_directories(dir);
  const char* names[2] = {"train", "val"};
  for (int k = 0; k < 2; ++k) {
    Split& s = split[k];
    s.idx.push_back(int32_t(s.tokens.size()));
    write_token_shard(dir + "/" + names[k] + ".bin", s.tokens, V);
    write_token_shard(dir + "/" + names[k] + ".mask.bin", s.mask, 2);
    write_token_shard(dir + "/" + names[k] + ".idx.bin", s.idx, int64_t(s.tokens.size()) + 1);
  }
  st.train_examples = int64_t(split[0].idx.size()) - 1, st.val_examples = int64_t(split[1].idx.size()) - 1;
  st.train_tokens = int64_t(split[0].tokens.size()), st.val_tokens = int64_t(split[1].tokens.size());
  const std::string tok_name = copy_tokenizer(tokenizer_path, dir);
  nlohmann::json meta = {{"format", "tessera-tokens"},
                         {"version", 1},
                         {"vocab_size", V},
                         {"tokenizer", tok_name},
                         {"train_tokens", st.train_tokens},
                         {"val_tokens", st.val_tokens},
                         {"files", files},
                         {"val_fraction", val_fraction},
                         {"sft", {{"chat_template", tmpl.name()},
                                  {"train_examples", st.train_examples},
                                  {"val_examples", st.val_examples},
                                  {"learned_tokens", st.learned_tokens}}}};
  write_meta(dir, meta);
  return st;
}

SftSplit sft_split(const Dataset& d, bool val) {
  if (!d.sft) fail("internal: not an SFT dataset");
  SftSplit s;
  s.tokens = val ? d.val.get() : d.train.get();
  s.mask = val ? d.val_mask.get() : d.train_mask.get();
  s.idx = val ? d.val_idx.get() : d.train_idx.get();
  return s;
}

namespace {
// Example e laid at row position p of a row of T: x, y and seg for positions [p, p + n), n returned.
// Targets: the next token of the same example where the mask says learned, else -1.
int64_t place(const SftSplit& s, int64_t e, int64_t p, int64_t T, int32_t* x, int32_t* y, int32_t* seg) {
  const int64_t b = (*s.idx)[e], end = (*s.idx)[e + 1];
  const int64_t n = std::min(end - b, T - p);
  for (int64_t t = 0; t < n; ++t) {
    x[p + t] = (*s.tokens)[b + t];
    const int64_t nx = b + t + 1;
    y[p + t] = nx < end && (*s.mask)[nx] ? (*s.tokens)[nx] : -1;
    if (seg) seg[p + t] = int32_t(p);
  }
  return n;
}
}  // namespace

void sft_batch(const SftSplit& s, uint64_t seed, int64_t step, int64_t micro, int64_t B, int64_t T, bool pack,
               int32_t* x, int32_t* y, int32_t* seg) {
  const int64_t n_ex = s.examples();
  if (n_ex <= 0) fail(s.tokens->path(), ": no SFT examples");
  for (int64_t b = 0; b < B; ++b) {
    const uint64_t h = splitmix64(splitmix64(splitmix64(seed) ^ uint64_t(step)) ^ (uint64_t(micro) << 20 | uint64_t(b)));
    int64_t e = int64_t(h % uint64_t(n_ex));
    int32_t *xr = x + b * T, *yr = y + b * T, *sr = seg ? seg + b * T : nullptr;
    int64_t p = place(s, e, 0, T, xr, yr, sr);
    while (pack && p < T) p += place(s, e = (e + 1) % n_ex, p, T, xr, yr, sr);
    for (; p < T; ++p) {  // padding: no target, attends only to itself
      xr[p] = 0, yr[p] = -1;
      if (sr) sr[p] = int32_t(p);
    }
  }
}

void sft_eval_row(const SftSplit& s, int64_t i, int64_t T, int32_t* x, int32_t* y) {
  const int64_t n_ex = s.examples();
  if (n_ex <= 0) fail(s.tokens->path(), ": no SFT examples to evaluate (raise --val-fraction)");
  int64_t p = place(s, i % n_ex, 0, T, x, y, nullptr);
  for (; p < T; ++p) x[p] = 0, y[p] = -1;
}

}  // namespace tessera::train
