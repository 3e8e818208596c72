// Loaders for byte-level BPE vocabularies: tiktoken rank files (Llama-3),
// GPT-2 vocab.json + merges.txt, Hugging Face tokenizer.json; and the format
// sniffer load_tokenizer_file.
#include <algorithm>
#include <filesystem>
#include <nlohmann/json.hpp>

#include "core/error.h"
#include "core/mmap.h"
#include "tokenizer/tokenizer.h"
#include "tokenizer/tokenizer_impl.h"

namespace tessera {

namespace {

std::string_view view_of(const MappedFile& f) {
  return {reinterpret_cast<const char*>(f.data()), f.size()};
}

Tokenizer build(VocabData v, const std::string& name) {
  try {
    return Tokenizer(std::move(v));
  } catch (const Error& e) {
    fail(name, ": ", e.what());
  }
}

int base64_value(char c) {
  if (c >= 'A' && c <= 'Z') return c - 'A';
  if (c >= 'a' && c <= 'z') return c - 'a' + 26;
  if (c >= '0' && c <= '9') return c - '0' + 52;
  if (c == '+') return 62;
  if (c == '/') return 63;
  return -1;
}

// Strict base64 (padding optional); false on any bad character or length.
bool base64_decode(std::string_view s, std::string& out) {
  out.clear();
  while (!s.empty() && s.back() == '=') s.remove_suffix(1);
  if (s.size() % 4 == 1) return false;
  uint32_t acc = 0;
  int bits = 0;
  for (char c : s) {
    int v = base64_value(c);
    if (v < 0) return false;
    acc = (acc << 6) | uint32_t(v);
    bits += 6;
    if (bits >= 8) {
      bits -= 8;
      out.push_back(char((acc >> bits) & 0xFF));
    }
  }
  return true;
}

// Meta's Llama-3.1 special tokens (as in its tokenizer.json), ids n_base + 0..255;
// Llama-3.0 had reserved names where 3.1 has finetune_right_pad_id / eom_id / python_tag.
std::vector<std::string> llama3_special_tokens() {
  std::vector<std::string> s = {"<|begin_of_text|>", "<|end_of_text|>", "<|reserved_special_token_0|>",
                                "<|reserved_special_token_1|>", "<|finetune_right_pad_id|>",
                                "<|reserved_special_token_2|>", "<|start_header_id|>", "<|end_header_id|>",
                                "<|eom_id|>", "<|eot_id|>", "<|python_tag|>"};
  for (int i = 3; s.size() < 256; ++i) s.push_back("<|reserved_special_token_" + std::to_string(i) + "|>");
  return s;
}

}  // namespace

// ---------------------------------------------------------------- tiktoken

// Merges are derived from the ranks, as HF's and llama.cpp's converters do:
// for the token of rank r, run BPE on its bytes using only ranks < r; the two
// parts left are the merge, and it gets rank r.
VocabData parse_tiktoken(std::string_view text, const std::string& name, bool llama3_specials) {
  std::vector<std::string> raw;  // by rank
  std::vector<uint8_t> seen;
  // Ranks must be 0..n-1 over n lines: anything larger is an error, not an allocation.
  const size_t max_rank = size_t(std::count(text.begin(), text.end(), '\n')) + 1;
  size_t line_no = 0;
  std::string tok;
  for (size_t pos = 0; pos < text.size();) {
    size_t e = text.find('\n', pos);
    if (e == std::string_view::npos) e = text.size();
    std::string_view line = text.substr(pos, e - pos);
    pos = e + 1;
    ++line_no;
    if (!line.empty() && line.back() == '\r') line.remove_suffix(1);
    if (line.empty()) continue;
    size_t sp = line.find(' ');
    if (sp == std::string_view::npos) fail(name, ":", line_no, ": expected 'base64 rank'");
    if (!base64_decode(line.substr(0, sp), tok) || tok.empty())
      fail(name, ":", line_no, ": bad base64 token '", line.substr(0, sp), "'");
    std::string_view rs = line.substr(sp + 1);
    if (rs.empty() || rs.size() > 9 || !std::all_of(rs.begin(), rs.end(), [](char c) { return c >= '0' && c <= '9'; }))
      fail(name, ":", line_no, ": bad rank '", rs, "'");
    size_t rank = std::stoul(std::string(rs));
    if (rank >= max_rank) fail(name, ":", line_no, ": rank ", rank, " is larger than the number of lines");
    if (rank >= raw.size()) {
      raw.resize(rank + 1);
      seen.resize(rank + 1);
    }
    if (seen[rank]) fail(name, ":", line_no, ": rank ", rank, " appears twice");
    seen[rank] = 1;
    raw[rank] = tok;
  }
  if (raw.empty()) fail(name, ": no tokens in tiktoken file");
  for (size_t r = 0; r < raw.size(); ++r)
    if (!seen[r]) fail(name, ": rank ", r, " is missing (ranks must be 0..", raw.size() - 1, ")");

  StringIdMap rank_of;
  rank_of.reserve(raw.size());
  for (size_t r = 0; r < raw.size(); ++r)
    if (!rank_of.emplace(raw[r], int32_t(r)).second) fail(name, ": token of rank ", r, " appears twice");

  VocabData v;
  v.kind = TokenizerKind::ByteLevelBPE;
  v.tokens.reserve(raw.size() + 256);
  for (const auto& t : raw) v.tokens.push_back(bytes_to_gpt2(t));
  std::vector<std::pair<uint32_t, uint32_t>> parts;  // (offset, length) in the token
  for (size_t r = 0; r < raw.size(); ++r) {
    const std::string& t = raw[r];
    if (t.size() < 2) continue;
    parts.clear();
    for (uint32_t i = 0; i < t.size(); ++i) parts.push_back({i, 1});
    while (parts.size() > 2) {
      int32_t best = -1;
      size_t best_i = 0;
      for (size_t i = 0; i + 1 < parts.size(); ++i) {
        auto it = rank_of.find(std::string_view(t).substr(parts[i].first, parts[i].second + parts[i + 1].second));
        if (it != rank_of.end() && it->second < int32_t(r) && (best < 0 || it->second < best)) {
          best = it->second;
          best_i = i;
        }
      }
      if (best < 0) break;
      parts[best_i].second += parts[best_i + 1].second;
      parts.erase(parts.begin() + long(best_i) + 1);
    }
    if (parts.size() != 2) continue;  // not reachable by merges; only whole-word lookup can produce it
    v.merges.push_back(bytes_to_gpt2(std::string_view(t).substr(0, parts[0].second)) + " " +
                       bytes_to_gpt2(std::string_view(t).substr(parts[1].first)));
  }
  v.pre = "llama-bpe";
  v.ignore_merges = true;
  v.add_bos = false;
  if (llama3_specials) {
    const int32_t base = int32_t(v.tokens.size());
    for (auto& s : llama3_special_tokens()) {
      v.tokens.push_back(s);
    }
    v.types.assign(v.tokens.size(), TokenType::Normal);
    for (size_t i = size_t(base); i < v.tokens.size(); ++i) v.types[i] = TokenType::Control;
    v.bos_id = base;
    v.eos_id = base + 1;
    v.eog_ids = {base + 8, base + 9};  // <|eom_id|>, <|eot_id|>
    v.add_bos = true;
  }
  return v;
}

Tokenizer load_tiktoken(const std::string& path, bool llama3_specials) {
  MappedFile f(path);
  return build(parse_tiktoken(view_of(f), path, llama3_specials), path);
}

// ---------------------------------------------------------------- GPT-2 files

Tokenizer load_gpt2_vocab(const std::string& vocab_json, const std::string& merges_txt) {
  MappedFile vf(vocab_json);
  nlohmann::json j;
  try {
    j = nlohmann::json::parse(view_of(vf));
  } catch (const std::exception& e) {
    fail(vocab_json, ": invalid JSON: ", e.what());
  }
  if (!j.is_object() || j.empty()) fail(vocab_json, ": expected a non-empty JSON object of token -> id");
  VocabData v;
  v.kind = TokenizerKind::ByteLevelBPE;
  v.tokens.resize(j.size());
  std::vector<uint8_t> seen(j.size());
  for (auto it = j.begin(); it != j.end(); ++it) {
    if (!it.value().is_number_integer()) fail(vocab_json, ": id of token '", it.key(), "' is not an integer");
    int64_t id = it.value().get<int64_t>();
    if (id < 0 || id >= int64_t(j.size())) fail(vocab_json, ": token '", it.key(), "' has id ", id, " outside 0..", j.size() - 1);
    if (seen[size_t(id)]) fail(vocab_json, ": id ", id, " is used twice");
    seen[size_t(id)] = 1;
    v.tokens[size_t(id)] = it.key();
  }
  MappedFile mf(merges_txt);
  std::string_view text = view_of(mf);
  size_t line_no = 0;
  for (size_t pos = 0; pos < text.size();) {
    size_t e = text.find('\n', pos);
    if (e == std::string_view::npos) e = text.size();
    std::string_view line = text.substr(pos, e - pos);
    pos = e + 1;
    ++line_no;
    if (!line.empty() && line.back() == '\r') line.remove_suffix(1);
    if (line.empty() || (line_no == 1 && line.substr(0, 8) == "#version")) continue;
    v.merges.emplace_back(line);
  }
  v.types.assign(v.tokens.size(), TokenType::Normal);
  for (size_t i = 0; i < v.tokens.size(); ++i) {
    if (v.tokens[i] == "<|endoftext|>") {
      v.types[i] = TokenType::Control;
      v.bos_id = v.eos_id = int32_t(i);
    }
  }
  v.pre = "gpt2";
  v.add_bos = false;
  return build(std::move(v), vocab_json + " + " + merges_txt);
}

// ---------------------------------------------------------------- tokenizer.json

namespace {

// The first Split regex of the pre-tokenizer (alone or inside a Sequence), or
// "" when there is none; `bytelevel_regex` says a ByteLevel step splits with GPT-2's pattern.
void find_pre_regex(const nlohmann::json& pt, std::vector<std::string>& regexes, bool& bytelevel_regex) {
  if (!pt.is_object()) return;
  std::string type = pt.value("type", "");
  if (type == "Sequence" && pt.contains("pretokenizers") && pt["pretokenizers"].is_array()) {
    for (const auto& p : pt["pretokenizers"]) find_pre_regex(p, regexes, bytelevel_regex);
  } else if (type == "Split" && pt.contains("pattern") && pt["pattern"].is_object()) {
    const auto& pat = pt["pattern"];
    if (pat.contains("Regex") && pat["Regex"].is_string()) regexes.push_back(pat["Regex"].get<std::string>());
  } else if (type == "ByteLevel") {
    if (pt.value("use_regex", true)) bytelevel_regex = true;
  } else if (type == "Digits" && pt.value("individual_digits", false)) {
    regexes.push_back(R"(\p{N})");
  }
}

}  // namespace

VocabData parse_hf_tokenizer_json(std::string_view json, const std::string& name) {
  nlohmann::json j;
  try {
    j = nlohmann::json::parse(json);
  } catch (const std::exception& e) {
    fail(name, ": invalid JSON: ", e.what());
  }
  if (!j.is_object() || !j.contains("model") || !j["model"].is_object()) fail(name, ": no \"model\" object");
  const auto& m = j["model"];
  std::string mtype = m.value("type", "BPE");
  if (mtype != "BPE") fail(name, ": model.type '", mtype, "' is not supported (only BPE)");
  if (!m.contains("vocab") || !m["vocab"].is_object()) fail(name, ": model.vocab is not an object");
  if (m.value("byte_fallback", false))
    fail(name, ": SentencePiece-style tokenizer.json (byte_fallback) is not supported; use tokenizer.model");
  VocabData v;
  v.kind = TokenizerKind::ByteLevelBPE;
  const auto& vocab = m["vocab"];
  int64_t max_id = -1;
  for (auto it = vocab.begin(); it != vocab.end(); ++it) {
    if (!it.value().is_number_integer()) fail(name, ": model.vocab['", it.key(), "'] is not an integer id");
    max_id = std::max(max_id, it.value().get<int64_t>());
  }
  const nlohmann::json empty = nlohmann::json::array();
  const auto& added = j.contains("added_tokens") && j["added_tokens"].is_array() ? j["added_tokens"] : empty;
  for (const auto& a : added) {
    if (!a.is_object() || !a.contains("id") || !a["id"].is_number_integer() || !a.contains("content") ||
        !a["content"].is_string())
      fail(name, ": added_tokens entry without integer id and string content");
    max_id = std::max(max_id, a["id"].get<int64_t>());
  }
  if (max_id < 0) fail(name, ": empty vocabulary");
  const int64_t n_entries = int64_t(vocab.size() + added.size());
  if (max_id >= 2 * n_entries + 1024)
    fail(name, ": token id ", max_id, " is implausibly large for ", n_entries, " tokens");
  v.tokens.resize(size_t(max_id + 1));
  v.types.assign(v.tokens.size(), TokenType::Normal);
  std::vector<uint8_t> seen(v.tokens.size());
  for (auto it = vocab.begin(); it != vocab.end(); ++it) {
    int64_t id = it.value().get<int64_t>();
    if (id < 0) fail(name, ": token '", it.key(), "' has negative id ", id);
    if (seen[size_t(id)]) fail(name, ": id ", id, " is used twice in model.vocab");
    seen[size_t(id)] = 1;
    v.tokens[size_t(id)] = it.key();
  }
  for (const auto& a : added) {
    int64_t id = a["id"].get<int64_t>();
    if (id < 0) fail(name, ": added token has negative id ", id);
    std::string content = a["content"].get<std::string>();
    if (seen[size_t(id)] && v.tokens[size_t(id)] != content)
      fail(name, ": added token ", id, " '", content, "' conflicts with vocab token '", v.tokens[size_t(id)], "'");
    seen[size_t(id)] = 1;
    v.tokens[size_t(id)] = content;
    v.types[size_t(id)] = a.value("special", false) ? TokenType::Control : TokenType::UserDefined;
  }
  for (size_t i = 0; i < seen.size(); ++i) {
    if (!seen[i]) {  // holes in the id space: unreachable placeholders
      v.tokens[i] = "<|unused_" + std::to_string(i) + "|>";
      v.types[i] = TokenType::Unused;
    }
  }
  if (m.contains("merges")) {
    if (!m["merges"].is_array()) fail(name, ": model.merges is not an array");
    for (const auto& mg : m["merges"]) {
      if (mg.is_string()) {
        v.merges.push_back(mg.get<std::string>());
      } else if (mg.is_array() && mg.size() == 2 && mg[0].is_string() && mg[1].is_string()) {
        v.merges.push_back(mg[0].get<std::string>() + " " + mg[1].get<std::string>());
      } else {
        fail(name, ": model.merges[", v.merges.size(), "] is neither \"a b\" nor [\"a\", \"b\"]");
      }
    }
  }
  v.ignore_merges = m.value("ignore_merges", false);
  std::vector<std::string> regexes;
  bool bytelevel_regex = false;
  if (j.contains("pre_tokenizer")) find_pre_regex(j["pre_tokenizer"], regexes, bytelevel_regex);
  if (bytelevel_regex) regexes.push_back(kGpt2Pattern);
  if (!regexes.empty()) {  // a known family by name (GGUF can carry it), else the regexes themselves
    v.pre = pretokenizer_family_of(regexes);
    if (v.pre.empty()) v.pre_patterns = regexes;
  }
  // BOS / EOS by the usual names.
  for (size_t i = 0; i < v.tokens.size(); ++i) {
    if (v.types[i] != TokenType::Control) continue;
    const std::string& t = v.tokens[i];
    if (t == "<|begin_of_text|>" || t == "<s>" || t == "<|startoftext|>") v.bos_id = int32_t(i);
    if (t == "<|end_of_text|>" || t == "</s>" || t == "<|endoftext|>") v.eos_id = int32_t(i);
    if (t == "<|eot_id|>" || t == "<|eom_id|>" || t == "<|im_end|>") v.eog_ids.push_back(int32_t(i));
  }
  v.add_bos = v.tokens.size() > 0 && v.bos_id >= 0 && v.tokens[size_t(v.bos_id)] == "<|begin_of_text|>";
  if (j.contains("post_processor") && j["post_processor"].is_object()) {
    // TemplateProcessing that starts with a special token means BOS is added.
    const auto& pp = j["post_processor"];
    std::string dump = pp.dump();
    if (v.bos_id >= 0 && dump.find("\"" + v.tokens[size_t(v.bos_id)] + "\"") != std::string::npos) v.add_bos = true;
  }
  return v;
}

Tokenizer load_hf_tokenizer_json(const std::string& path) {
  MappedFile f(path);
  return build(parse_hf_tokenizer_json(view_of(f), path), path);
}

// ---------------------------------------------------------------- sniffer

Tokenizer load_tokenizer_file(const std::string& path) {
  namespace fs = std::filesystem;
  const fs::path p(path);
  const std::string fname = p.filename().string();
  const std::string ext = p.extension().string();
  if (fname == "merges.txt") {
    fs::path vocab = p.parent_path() / "vocab.json";
    return load_gpt2_vocab(vocab.string(), path);
  }
  if (ext == ".json") {
    MappedFile f(path);
    std::string_view t = view_of(f);
    if (fname == "vocab.json" || t.find("\"model\"") == std::string_view::npos) {
      fs::path merges = p.parent_path() / "merges.txt";
      if (!fs::exists(merges)) fail(path, ": looks like a GPT-2 vocab.json but ", merges.string(), " is missing");
      return load_gpt2_vocab(path, merges.string());
    }
    return build(parse_hf_tokenizer_json(t, path), path);
  }
  if (ext == ".gguf") fail(path, ": GGUF files are read with load_gguf_tokenizer (formats/gguf_tokenizer.h)");
  MappedFile f(path);
  if (f.size() == 0) fail(path, ": empty file");
  const uint8_t* d = f.data();
  // tiktoken: printable base64 + space + digits on the first line.
  size_t i = 0;
  while (i < f.size() && i < 4096 && base64_value(char(d[i])) >= 0) ++i;
  bool tiktoken = i > 0 && i < f.size() && (d[i] == ' ' || d[i] == '=');
  if (ext == ".model" || (tiktoken && ext != ".bin")) {
    if (tiktoken) return build(parse_tiktoken(view_of(f), path, true), path);
    // SentencePiece protobuf: first field is 1 (pieces), length-delimited.
    if (d[0] == 0x0A) return build(parse_sentencepiece_model(d, f.size(), path), path);
    fail(path, ": .model file is neither a SentencePiece protobuf nor a tiktoken rank file");
  }
  if (ext == ".bin") return build(parse_llama2c_tokenizer(d, f.size(), path), path);
  fail(path, ": unrecognised tokenizer file (expected tokenizer.json, vocab.json/merges.txt, tokenizer.model, "
       "tiktoken ranks or a llama2.c tokenizer .bin)");
}

}  // namespace tessera
