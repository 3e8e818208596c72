#include "tokenizer/pretokenizer.h"

#define PCRE2_CODE_UNIT_WIDTH 8
#include <pcre2.h>

#include <memory>

#include "core/error.h"

namespace tessera {

const char* const kGpt2Pattern =
    R"('s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+)";

namespace {

const char* const kLlama3Pattern =
    R"((?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+)";
// Qwen2: like Llama-3 but single digits.
const char* const kQwen2Pattern =
    R"((?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+)";

struct Family {
  const char* names;  // '|'-separated aliases; the first is the name written to GGUF (one llama.cpp knows)
  std::vector<std::string> patterns;
  bool ignore_merges;
};

const std::vector<Family>& families() {
  static const std::vector<Family> k = {
      {"gpt-2|default|gpt2|mpt|olmo|gpt-neox|jais|phi-2|stablelm2", {kGpt2Pattern}, false},
      {"llama-bpe|llama3|llama-v3|llama-3|smaug-bpe|falcon3|dbrx", {kLlama3Pattern}, true},
      {"qwen2|qwen2.5|qwen-2.5|deepseek-r1-qwen", {kQwen2Pattern}, false},
      // Digits are split one by one before the GPT-2 pattern runs.
      {"starcoder|refact|command-r|smollm|codeshell|exaone|minerva", {R"(\p{N})", kGpt2Pattern}, false},
      {"falcon", {R"([\p{P}\$\+<=>\^~\|`]+)", kGpt2Pattern, "[0-9][0-9][0-9]"}, false},
      // DeepSeek families: the regex lists llama.cpp uses for them (applied in sequence).
      {"deepseek-llm",
       {"[\r\n]",
        R"(\s?[A-Za-z\x{b5}\x{c0}-\x{d6}\x{d8}-\x{f6}\x{f8}-\x{1ba}\x{1bc}-\x{1bf}\x{1c4}-\x{293}\x{295}-\x{2af}\x{370}-\x{373}\x{376}\x{377}\x{37b}-\x{37d}\x{37f}\x{386}\x{388}-\x{38a}\x{38c}\x{38e}-\x{3a1}\x{3a3}-\x{3f5}\x{3f7}-\x{481}\x{48a}-\x{52f}\x{531}-\x{556}\x{10a0}-\x{10c5}\x{13a0}-\x{13f5}\x{13f8}-\x{13fd}\x{1c90}-\x{1cba}\x{1cbd}-\x{1cbf}\x{1d00}-\x{1d2b}\x{1d6b}-\x{1d77}\x{1d79}-\x{1d9a}\x{1e00}-\x{1f15}\x{1f18}-\x{1f1d}\x{1f20}-\x{1f45}\x{1f48}-\x{1f4d}\x{1f50}-\x{1f57}\x{1f59}\x{1f5b}\x{1f5d}\x{1f5f}-\x{1f7d}\x{1f80}-\x{1fb4}\x{1fb6}-\x{1fbc}\x{1fbe}\x{1fc2}-\x{1fc4}\x{1fc6}-\x{1fcc}\x{1fd0}-\x{1fd3}\x{1fd6}-\x{1fdb}\x{1fe0}-\x{1fec}\x{1ff2}-\x{1ff4}\x{1ff6}-\x{1ffc}\x{2102}\x{2107}\x{210a}-\x{2113}\x{2115}\x{2119}-\x{211d}\x{2124}\x{2126}\x{2128}\x{212a}-\x{212d}\x{212f}-\x{2134}\x{2139}\x{213c}-\x{213f}\x{2145}-\x{2149}\x{214e}\x{2183}\x{2184}\x{2c00}-\x{2c7b}\x{2c7e}-\x{2ce4}\x{2ceb}-\x{2cee}\x{2cf2}\x{2cf3}\x{a640}-\x{a66d}\x{a680}-\x{a69b}\x{a722}-\x{a76f}\x{a771}-\x{a787}\x{a78b}-\x{a78e}\x{ab70}-\x{abbf}\x{fb00}-\x{fb06}\x{fb13}-\x{fb17}\x{ff21}-\x{ff3a}\x{ff41}-\x{ff5a}\x{10400}-\x{1044f}\x{104b0}-\x{104d3}\x{104d8}-\x{104fb}\x{10c80}-\x{10cb2}\x{10cc0}-\x{10cf2}\x{118a0}-\x{118df}\x{1e900}-\x{1e943}]+)",
        R"(\s?[!-/:-~\x{ff01}-\x{ff0f}\x{ff1a}-\x{ff5e}\x{2018}-\x{201f}\x{3000}-\x{3002}]+)", R"(\s+$)", R"([\x{4e00}-\x{9fa5}\x{0800}-\x{4e00}\x{ac00}-\x{d7ff}]+)", R"(\p{N}+)"},
       false},
      {"deepseek-coder", {"[\r\n]", R"(\s?\p{L}+)", R"(\s?\p{P}+)", R"([\x{4e00}-\x{9fa5}\x{0800}-\x{4e00}\x{ac00}-\x{d7ff}]+)", R"(\p{N})"}, false},
      {"deepseek-v3|deepseek3-llm|hunyuan-dense",
       {R"(\p{N}{1,3})", R"([\x{4e00}-\x{9fa5}\x{3040}-\x{309f}\x{30a0}-\x{30ff}]+)",
        R"([!"#$%&'()*+,\-./:;<=>?@\[\\\]^_`{|}~][A-Za-z]+|[^\r\n\p{L}\p{P}\p{S}]?[\p{L}\p{M}]+| ?[\p{P}\p{S}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+)"},
       false},
  };
  return k;
}

const Family* find_family(const std::string& name) {
  for (const auto& f : families()) {
    std::string_view names = f.names;
    while (!names.empty()) {
      size_t bar = names.find('|');
      std::string_view n = names.substr(0, bar);
      if (n == name) return &f;
      if (bar == std::string_view::npos) break;
      names.remove_prefix(bar + 1);
    }
  }
  return nullptr;
}

struct MatchState {
  pcre2_match_data* md = nullptr;
  pcre2_match_context* mc = nullptr;
  pcre2_jit_stack* js = nullptr;
  ~MatchState() {
    if (md) pcre2_match_data_free(md);
    if (mc) pcre2_match_context_free(mc);
    if (js) pcre2_jit_stack_free(js);
  }
};

}  // namespace

std::vector<std::string> pretokenizer_patterns(const std::string& family) {
  const Family* f = find_family(family);
  if (!f) {
    std::string known;
    for (const auto& fam : families()) known += std::string(known.empty() ? "" : "|") + fam.names;
    fail("unknown pre-tokenizer '", family, "' (known: ", known, ")");
  }
  return f->patterns;
}

std::string pretokenizer_family_of(const std::vector<std::string>& patterns) {
  for (const auto& f : families())
    if (f.patterns == patterns) {
      const std::string_view names = f.names;
      return std::string(names.substr(0, names.find('|')));
    }
  return "";
}

bool pretokenizer_ignores_merges(const std::string& family) {
  const Family* f = find_family(family);
  return f && f->ignore_merges;
}

PreTokenizer::PreTokenizer(std::vector<std::string> patterns) : patterns_(std::move(patterns)) {
  for (const auto& p : patterns_) {
    int err = 0;
    PCRE2_SIZE off = 0;
    pcre2_code* code = pcre2_compile(reinterpret_cast<PCRE2_SPTR>(p.data()), p.size(),
                                     PCRE2_UTF | PCRE2_UCP | PCRE2_MATCH_INVALID_UTF, &err, &off, nullptr);
    if (!code) {
      PCRE2_UCHAR msg[256];
      pcre2_get_error_message(err, msg, sizeof msg);
      for (void* c : codes_) pcre2_code_free(static_cast<pcre2_code*>(c));
      fail("pre-tokenizer regex '", p, "' at offset ", off, ": ", reinterpret_cast<const char*>(msg));
    }
    pcre2_jit_compile(code, PCRE2_JIT_COMPLETE);  // falls back to the interpreter if JIT is unavailable
    codes_.push_back(code);
  }
}

PreTokenizer::~PreTokenizer() {
  for (void* c : codes_) pcre2_code_free(static_cast<pcre2_code*>(c));
}

void PreTokenizer::split(std::string_view text, std::vector<std::string_view>& out) const {
  for_each(text, [&](std::string_view p) { out.push_back(p); });
}

void PreTokenizer::for_each(std::string_view text, const std::function<void(std::string_view)>& fn) const {
  if (text.empty()) return;
  std::vector<std::string_view> cur{text}, next;
  MatchState ms;
  ms.mc = pcre2_match_context_create(nullptr);
  ms.js = pcre2_jit_stack_create(32 * 1024, 4 * 1024 * 1024, nullptr);
  if (ms.mc && ms.js) pcre2_jit_stack_assign(ms.mc, nullptr, ms.js);
  for (size_t r = 0; r < codes_.size(); ++r) {
    const auto* code = static_cast<const pcre2_code*>(codes_[r]);
    if (ms.md) pcre2_match_data_free(ms.md);
    ms.md = pcre2_match_data_create_from_pattern(code, nullptr);
    if (!ms.md) fail("pre-tokenizer: out of memory");
    const bool last = r + 1 == codes_.size();
    auto emit = [&](std::string_view p) {
      if (last) {
        fn(p);
      } else {
        next.push_back(p);
      }
    };
    for (std::string_view piece : cur) {
      const auto* s = reinterpret_cast<PCRE2_SPTR>(piece.data());
      size_t pos = 0, gap = 0;  // gap: start of text not yet assigned to a piece
      while (pos < piece.size()) {
        int rc = pcre2_match(code, s, piece.size(), pos, 0, ms.md, ms.mc);
        if (rc == PCRE2_ERROR_NOMATCH) break;
        if (rc < 0) {
          PCRE2_UCHAR msg[256];
          pcre2_get_error_message(rc, msg, sizeof msg);
          fail("pre-tokenizer regex '", patterns_[r], "': ", reinterpret_cast<const char*>(msg));
        }
        const PCRE2_SIZE* ov = pcre2_get_ovector_pointer(ms.md);
        size_t b = ov[0], e = ov[1];
        if (e <= b) {  // empty match: step over one byte, it stays in the gap
          pos = b + 1;
          continue;
        }
        if (b > gap) emit(piece.substr(gap, b - gap));
        emit(piece.substr(b, e - b));
        pos = gap = e;
      }
      if (gap < piece.size()) emit(piece.substr(gap));
    }
    if (!last) {
      cur.swap(next);
      next.clear();
    }
  }
}

}  // namespace tessera
