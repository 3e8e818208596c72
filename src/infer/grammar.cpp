#include "infer/grammar.h"

#include <algorithm>
#include <array>
#include <functional>
#include <map>
#include <unordered_map>

#include "core/error.h"
#include "tokenizer/tokenizer.h"

namespace tessera {

const char* const kJsonRules = R"(value  ::= object | array | string | number | boolean | null
object ::= "{" ws ( string ":" ws value ("," ws string ":" ws value)* )? "}" ws
array  ::= "[" ws ( value ("," ws value)* )? "]" ws
char   ::= [^"\\\x7F\x00-\x1F] | "\\" (["\\/bfnrt] | "u" [0-9a-fA-F]{4})
string ::= "\"" char* "\"" ws
integer ::= "-"? ("0" | [1-9] [0-9]{0,15}) ws
number ::= "-"? ("0" | [1-9] [0-9]{0,15}) ("." [0-9]+)? ([eE] [-+]? [0-9]+)? ws
boolean ::= ("true" | "false") ws
null   ::= "null" ws
ws     ::= | " " | "\n" [ \t]{0,20}
)";
const std::string kJsonGrammar = std::string("root ::= ws value\n") + kJsonRules;

bool GrammarElem::matches(uint32_t cp) const {
  bool in = false;
  for (const auto& [lo, hi] : ranges)
    if (cp >= lo && cp <= hi) {
      in = true;
      break;
    }
  return in != negated;
}

namespace {

// Length of the UTF-8 sequence that lead byte b starts (0: not a lead byte).
int utf8_len(uint8_t b) {
  if (b < 0x80) return 1;
  if (b >= 0xC2 && b <= 0xDF) return 2;  // (C0, C1: overlong)
  if ((b & 0xF0) == 0xE0) return 3;
  if (b >= 0xF0 && b <= 0xF4) return 4;
  return 0;
}

// Whether c can be byte i >= 1 of a well-formed sequence starting with lead
// (no overlong forms, no surrogates, nothing above U+10FFFF).
bool utf8_next_ok(uint8_t lead, size_t i, uint8_t c) {
  if ((c & 0xC0) != 0x80) return false;
  if (i != 1) return true;
  if (lead == 0xE0) return c >= 0xA0;
  if (lead == 0xED) return c <= 0x9F;
  if (lead == 0xF0) return c >= 0x90;
  if (lead == 0xF4) return c <= 0x8F;
  return true;
}

uint32_t utf8_decode(std::string_view s) {
  const auto b = [&](size_t i) { return uint32_t(uint8_t(s[i])); };
  switch (s.size()) {
    case 1: return b(0);
    case 2: return (b(0) & 0x1F) << 6 | (b(1) & 0x3F);
    case 3: return (b(0) & 0x0F) << 12 | (b(1) & 0x3F) << 6 | (b(2) & 0x3F);
    default: return (b(0) & 0x07) << 18 | (b(1) & 0x3F) << 12 | (b(2) & 0x3F) << 6 | (b(3) & 0x3F);
  }
}

// The code points a UTF-8 prefix (incomplete) can still become: [lo, hi].
std::pair<uint32_t, uint32_t> utf8_prefix_range(std::string_view p) {
  const int n = utf8_len(uint8_t(p[0]));
  std::string lo(p), hi(p);
  lo.resize(size_t(n), char(0x80));
  hi.resize(size_t(n), char(0xBF));
  static constexpr uint32_t kMin[5] = {0, 0, 0x80, 0x800, 0x10000};  // (shorter forms are overlong)
  return {std::max(utf8_decode(lo), kMin[n]), std::min<uint32_t>(utf8_decode(hi), 0x10FFFF)};
}

// Whether e matches some code point in [lo, hi].
bool elem_may_match(const GrammarElem& e, uint32_t lo, uint32_t hi) {
  if (!e.negated) {
    for (const auto& [a, b] : e.ranges)
      if (a <= hi && b >= lo) return true;
    return false;
  }
  // Negated: some point of [lo, hi] outside every range.
  uint32_t cur = lo;
  for (bool moved = true; moved && cur <= hi;) {
    moved = false;
    for (const auto& [a, b] : e.ranges)
      if (a <= cur && cur <= b) cur = b + 1, moved = true;
  }
  return cur <= hi;
}

}  // namespace

// ---- Parser -------------------------------------------------------------------------------------

class GbnfParser {
 public:
  GbnfParser(std::string_view s, const std::string& where) : s_(s), where_(where) {}

  Grammar run() {
    for (;;) {
      skip(true);
      if (i_ >= s_.size()) break;
      const size_t at = i_;
      const std::string name = parse_name();
      skip(false);
      if (s_.substr(i_, 3) != "::=") error(at, "expected '::=' after rule name '" + name + "'");
      i_ += 3;
      skip(true);
      const uint32_t r = rule_id(name, at);
      if (defined_[r]) error(at, "rule '" + name + "' is defined twice");
      defined_[r] = true;
      g_.rules_[r] = parse_alternatives(0);
      skip(false);
      // A rule ends at a newline, or where the next "name ::=" starts (after an empty body).
      if (i_ < s_.size() && s_[i_] != '\n' && !rule_starts_here())
        error(i_, std::string("unexpected '") + s_[i_] + "'");
    }
    for (size_t r = 0; r < g_.rules_.size(); ++r)
      if (!defined_[r]) error(first_use_[r], "rule '" + g_.names_[r] + "' is used but not defined");
    const auto root = ids_.find("root");
    if (root == ids_.end()) fail(where_, ": the grammar has no 'root' rule");
    g_.root_ = root->second;
    check_left_recursion();
    return std::move(g_);
  }

 private:
  std::string_view s_;
  std::string where_;
  size_t i_ = 0;
  Grammar g_;
  std::map<std::string, uint32_t> ids_;
  std::vector<bool> defined_;
  std::vector<size_t> first_use_;

  [[noreturn]] void error(size_t at, const std::string& what) const {
    const size_t line = size_t(std::count(s_.begin(), s_.begin() + std::ptrdiff_t(std::min(at, s_.size())), '\n')) + 1;
    fail(where_, ":", line, ": ", what);
  }
  uint32_t new_rule(const std::string& name) {
    g_.rules_.emplace_back();
    g_.names_.push_back(name);
    defined_.push_back(true);
    first_use_.push_back(i_);
    return uint32_t(g_.rules_.size() - 1);
  }
  uint32_t rule_id(const std::string& name, size_t at) {
    auto it = ids_.find(name);
    if (it != ids_.end()) return it->second;
    const uint32_t r = new_rule(name);
    defined_[r] = false, first_use_[r] = at;
    ids_[name] = r;
    return r;
  }
  // "name ::=" at i_.
  bool rule_starts_here() const {
    size_t j = i_;
    while (j < s_.size() && name_char(s_[j])) ++j;
    if (j == i_) return false;
    while (j < s_.size() && (s_[j] == ' ' || s_[j] == '\t')) ++j;
    return s_.substr(j, 3) == "::=";
  }
  static bool name_char(char c) {
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '-' || c == '_';
  }
  std::string parse_name() {
    const size_t b = i_;
    while (i_ < s_.size() && name_char(s_[i_])) ++i_;
    if (i_ == b) error(b, i_ < s_.size() ? std::string("expected a rule name, got '") + s_[i_] + "'" : "expected a rule name");
    return std::string(s_.substr(b, i_ - b));
  }
  // Spaces, tabs and comments; newlines too when allowed.
  void skip(bool newlines) {
    while (i_ < s_.size()) {
      const char c = s_[i_];
      if (c == ' ' || c == '\t' || c == '\r' || (newlines && c == '\n')) {
        ++i_;
      } else if (c == '#') {
        while (i_ < s_.size() && s_[i_] != '\n') ++i_;
      } else {
        break;
      }
    }
  }
  uint32_t parse_hex(int digits) {
    uint32_t v = 0;
    for (int k = 0; k < digits; ++k, ++i_) {
      if (i_ >= s_.size()) error(i_, "unfinished escape");
      const char c = s_[i_];
      const int d = c >= '0' && c <= '9' ? c - '0' : c >= 'a' && c <= 'f' ? c - 'a' + 10 : c >= 'A' && c <= 'F' ? c - 'A' + 10 : -1;
      if (d < 0) error(i_, std::string("bad hex digit '") + c + "' in an escape");
      v = v * 16 + uint32_t(d);
    }
    return v;
  }
  // One (possibly escaped) code point of a literal or class.
  uint32_t parse_char() {
    if (i_ >= s_.size()) error(i_, "unfinished literal or character class");
    if (s_[i_] == '\\') {
      ++i_;
      if (i_ >= s_.size()) error(i_, "unfinished escape");
      const char c = s_[i_++];
      switch (c) {
        case 'n': return '\n';
        case 'r': return '\r';
        case 't': return '\t';
        case 'x': return parse_hex(2);
        case 'u': return parse_hex(4);
        case 'U': return parse_hex(8);
        case '\\': case '"': case '[': case ']': case '-': case '^': case '/': case '\'': return uint32_t(uint8_t(c));
        default: error(i_ - 1, std::string("unknown escape '\\") + c + "'");
      }
    }
    const int n = utf8_len(uint8_t(s_[i_]));
    if (n == 0 || i_ + size_t(n) > s_.size()) error(i_, "invalid UTF-8 in the grammar");
    const uint32_t cp = utf8_decode(s_.substr(i_, size_t(n)));
    i_ += size_t(n);
    return cp;
  }
  std::vector<std::vector<GrammarElem>> parse_alternatives(int depth) {
    std::vector<std::vector<GrammarElem>> alts;
    alts.push_back(parse_sequence(depth));
    while (i_ < s_.size() && s_[i_] == '|') {
      ++i_;
      skip(true);  // a newline after '|' continues the rule
      alts.push_back(parse_sequence(depth));
    }
    return alts;
  }
  std::vector<GrammarElem> parse_sequence(int depth) {
    std::vector<GrammarElem> seq;
    size_t atom = 0;  // start of the last atom in seq
    for (;;) {
      skip(depth > 0);
      if (i_ >= s_.size()) break;
      const char c = s_[i_];
      if (c == '|' || c == ')' || c == '\n') break;
      // Rule definitions start a new rule: "name ::=" ends this sequence (at depth 0).
      if (rule_starts_here()) {
        if (depth > 0) error(i_, "missing ')' before the next rule");
        break;
      }
      const size_t start = i_;
      if (c == '"') {
        ++i_;
        atom = seq.size();
        while (i_ < s_.size() && s_[i_] != '"') {
          const uint32_t cp = parse_char();
          GrammarElem e;
          e.ranges = {{cp, cp}};
          seq.push_back(e);
        }
        if (i_ >= s_.size()) error(start, "unterminated string literal");
        ++i_;
      } else if (c == '[') {
        ++i_;
        GrammarElem e;
        if (i_ < s_.size() && s_[i_] == '^') e.negated = true, ++i_;
        while (i_ < s_.size() && s_[i_] != ']') {
          const uint32_t lo = parse_char();
          uint32_t hi = lo;
          if (i_ + 1 < s_.size() && s_[i_] == '-' && s_[i_ + 1] != ']') {
            ++i_;
            hi = parse_char();
            if (hi < lo) error(start, "character range with its end before its start");
          }
          e.ranges.emplace_back(lo, hi);
        }
        if (i_ >= s_.size()) error(start, "unterminated character class");
        ++i_;
        atom = seq.size();
        seq.push_back(std::move(e));
      } else if (c == '.') {
        ++i_;
        GrammarElem e;
        e.ranges = {{0, 0x10FFFF}};
        atom = seq.size();
        seq.push_back(std::move(e));
      } else if (c == '(') {
        ++i_;
        skip(true);
        const uint32_t r = new_rule("group");
        g_.rules_[r] = parse_alternatives(depth + 1);
        skip(true);
        if (i_ >= s_.size() || s_[i_] != ')') error(i_, "missing ')'");
        ++i_;
        atom = seq.size();
        seq.push_back(ref(r));
      } else if (name_char(c)) {
        const size_t at = i_;
        const std::string name = parse_name();
        atom = seq.size();
        seq.push_back(ref(rule_id(name, at)));
      } else if (c == '*' || c == '+' || c == '?' || c == '{') {
        if (seq.empty()) error(i_, std::string("'") + c + "' without anything before it to repeat");
        ++i_;
        int64_t lo = c == '+' ? 1 : 0, hi = c == '?' ? 1 : -1;
        if (c == '{') {
          skip(false);
          lo = parse_int();
          hi = lo;
          skip(false);
          if (i_ < s_.size() && s_[i_] == ',') {
            ++i_;
            skip(false);
            hi = i_ < s_.size() && s_[i_] == '}' ? -1 : parse_int();
            skip(false);
          }
          if (i_ >= s_.size() || s_[i_] != '}') error(i_, "expected '}' to close a repetition");
          ++i_;
          if (hi >= 0 && hi < lo) error(i_, "repetition {m,n} with n < m");
        }
        repeat(seq, atom, lo, hi);
      } else {
        error(i_, std::string("unexpected '") + c + "'");
      }
    }
    return seq;
  }
  int64_t parse_int() {
    const size_t b = i_;
    int64_t v = 0;
    while (i_ < s_.size() && s_[i_] >= '0' && s_[i_] <= '9') v = v * 10 + (s_[i_++] - '0');
    if (i_ == b) error(i_, "expected a number in a repetition");
    if (v > 10000) error(b, "repetition count above 10000");
    return v;
  }
  static GrammarElem ref(uint32_t r) {
    GrammarElem e;
    e.kind = GrammarElem::Rule, e.rule = r;
    return e;
  }
  // seq[atom..] repeated lo to hi (-1: unbounded) times, through helper rules.
  void repeat(std::vector<GrammarElem>& seq, size_t atom, int64_t lo, int64_t hi) {
    std::vector<GrammarElem> x(seq.begin() + std::ptrdiff_t(atom), seq.end());
    seq.resize(atom);
    if (x.size() > 1) {  // one element to repeat
      const uint32_t r = new_rule("repeat");
      g_.rules_[r] = {x};
      x = {ref(r)};
    }
    for (int64_t k = 0; k < lo; ++k) seq.push_back(x[0]);
    if (hi < 0) {  // star ::= x star | (empty)
      const uint32_t r = new_rule("star");
      g_.rules_[r] = {{x[0], ref(r)}, {}};
      seq.push_back(ref(r));
    } else if (hi > lo) {  // opt_k ::= x opt_{k-1} | (empty), opt_1 ::= x | (empty)
      uint32_t prev = 0;
      for (int64_t k = 1; k <= hi - lo; ++k) {
        const uint32_t r = new_rule("optional");
        g_.rules_[r] = k == 1 ? std::vector<std::vector<GrammarElem>>{{x[0]}, {}}
                              : std::vector<std::vector<GrammarElem>>{{x[0], ref(prev)}, {}};
        prev = r;
      }
      seq.push_back(ref(prev));
    }
  }
  // Error on a rule that can reach itself without consuming a character.
  void check_left_recursion() const {
    const size_t n = g_.rules_.size();
    std::vector<bool> nullable(n, false);
    for (bool changed = true; changed;) {
      changed = false;
      for (size_t r = 0; r < n; ++r) {
        if (nullable[r]) continue;
        for (const auto& alt : g_.rules_[r]) {
          const bool all = std::all_of(alt.begin(), alt.end(), [&](const GrammarElem& e) {
            return e.kind == GrammarElem::Rule && nullable[e.rule];
          });
          if (all) {
            nullable[r] = true, changed = true;
            break;
          }
        }
      }
    }
    std::vector<std::vector<uint32_t>> first(n);  // rules reachable at the left edge
    for (size_t r = 0; r < n; ++r)
      for (const auto& alt : g_.rules_[r])
        for (const GrammarElem& e : alt) {
          if (e.kind != GrammarElem::Rule) break;
          first[r].push_back(e.rule);
          if (!nullable[e.rule]) break;
        }
    std::vector<int> state(n, 0);  // 0 new, 1 on the path, 2 done
    std::vector<uint32_t> path;
    const std::function<void(uint32_t)> dfs = [&](uint32_t r) {
      state[r] = 1;
      for (uint32_t s : first[r]) {
        if (state[s] == 1) {
          std::string named = g_.names_[s];
          for (uint32_t q : path)  // name a user rule of the cycle
            if (!is_helper(g_.names_[q])) named = g_.names_[q];
          fail(where_, ": rule '", named, "' is left-recursive (it can reach itself before matching a character)");
        }
        if (state[s] == 0) {
          path.push_back(s);
          dfs(s);
          path.pop_back();
        }
      }
      state[r] = 2;
    };
    for (uint32_t r = 0; r < n; ++r)
      if (state[r] == 0) {
        path.assign(1, r);
        dfs(r);
      }
  }
  static bool is_helper(const std::string& n) {
    return n == "group" || n == "repeat" || n == "star" || n == "optional";
  }
};

Grammar Grammar::parse(std::string_view text, const std::string& where) { return GbnfParser(text, where).run(); }

// ---- Vocabulary trie -------------------------------------------------------------------------------

TokenTrie::TokenTrie(const Tokenizer& tok) {
  nodes_.emplace_back();
  for (int32_t id = 0; id < tok.n_vocab(); ++id) {
    const TokenType t = tok.type(id);
    if (t == TokenType::Control || t == TokenType::Unknown || t == TokenType::Unused || tok.is_eog(id) ||
        id == tok.bos_id())
      continue;
    const std::string b = tok.token_bytes(id);
    if (b.empty()) continue;
    uint32_t n = 0;
    for (const char c : b) {
      auto& ch = nodes_[n].children;
      auto it = std::lower_bound(ch.begin(), ch.end(), uint8_t(c),
                                 [](const std::pair<uint8_t, uint32_t>& a, uint8_t v) { return a.first < v; });
      if (it == ch.end() || it->first != uint8_t(c)) {
        const uint32_t fresh = uint32_t(nodes_.size());
        it = ch.insert(it, {uint8_t(c), fresh});
        nodes_.emplace_back();  // (invalidates ch, not it's value)
        n = fresh;
      } else {
        n = it->second;
      }
    }
    nodes_[n].ids.push_back(id);
  }
}

// ---- Matcher -----------------------------------------------------------------------------------------

namespace {

// Pushes the stacks st becomes once its top is a character set (or it is empty) into out.
void expand(const Grammar& g, GrammarState::Stack st, std::vector<GrammarState::Stack>& out) {
  while (!st.empty()) {
    const GrammarState::Pos p = st.back();
    const auto& alt = g.alts(p.rule)[p.alt];
    if (p.idx >= alt.size()) {
      st.pop_back();
      continue;
    }
    const GrammarElem& e = alt[p.idx];
    if (e.kind == GrammarElem::Chars) {
      out.push_back(std::move(st));
      return;
    }
    // The continuation after the reference, then each alternative of the referenced rule on top.
    if (++st.back().idx >= alt.size()) st.pop_back();
    const auto& alts = g.alts(e.rule);
    for (size_t a = 0; a < alts.size(); ++a) {
      GrammarState::Stack s2 = st;
      s2.push_back({e.rule, uint16_t(a), 0});
      expand(g, std::move(s2), out);
    }
    return;
  }
  out.push_back(std::move(st));  // complete
}

void dedupe(std::vector<GrammarState::Stack>& v) {
  std::sort(v.begin(), v.end());
  v.erase(std::unique(v.begin(), v.end()), v.end());
}

}  // namespace

GrammarState::GrammarState(const Grammar& g) : g_(&g) {
  for (size_t a = 0; a < g.alts(g.root()).size(); ++a) expand(g, {{g.root(), uint16_t(a), 0}}, stacks_);
  dedupe(stacks_);
}

std::vector<GrammarState::Stack> GrammarState::step(const std::vector<Stack>& stacks, uint32_t cp) const {
  std::vector<Stack> out;
  for (const Stack& st : stacks) {
    if (st.empty()) continue;
    const Pos p = st.back();
    if (!g_->alts(p.rule)[p.alt][p.idx].matches(cp)) continue;
    Stack next = st;
    ++next.back().idx;
    expand(*g_, std::move(next), out);
  }
  dedupe(out);
  return out;
}

bool GrammarState::advance(std::vector<Stack>& stacks, std::string& pending, std::string_view bytes) const {
  for (const char c : bytes) {
    if (pending.empty() && utf8_len(uint8_t(c)) == 0) return false;  // not a lead byte
    if (!pending.empty() && !utf8_next_ok(uint8_t(pending[0]), pending.size(), uint8_t(c))) return false;
    pending.push_back(c);
    if (int(pending.size()) < utf8_len(uint8_t(pending[0]))) continue;
    stacks = step(stacks, utf8_decode(pending));
    pending.clear();
    if (stacks.empty()) return false;
  }
  // An incomplete code point: some set must still be able to match it.
  return pending.empty() || may_continue(stacks, pending);
}

bool GrammarState::allows(std::string_view bytes) const {
  std::vector<Stack> s = stacks_;
  std::string p = pending_;
  return advance(s, p, bytes);
}

bool GrammarState::accept(std::string_view bytes) {
  std::vector<Stack> s = stacks_;
  std::string p = pending_;
  if (!advance(s, p, bytes)) return false;
  stacks_ = std::move(s), pending_ = std::move(p);
  return true;
}

uint64_t Grammar::fingerprint() const {
  uint64_t h = 0xcbf29ce484222325ull;  // FNV-1a over every element's fields
  auto mix = [&](uint64_t v) {
    for (int i = 0; i < 8; ++i) h = (h ^ ((v >> (8 * i)) & 0xff)) * 0x100000001b3ull;
  };
  mix(root_), mix(rules_.size());
  for (const auto& alts : rules_) {
    mix(alts.size());
    for (const auto& seq : alts) {
      mix(seq.size());
      for (const GrammarElem& e : seq) {
        mix(uint64_t(e.kind) | uint64_t(e.negated) << 8 | uint64_t(e.rule) << 16), mix(e.ranges.size());
        for (const auto& [a, b] : e.ranges) mix(uint64_t(a) << 32 | b);
      }
    }
  }
  return h;
}

std::string GrammarState::key() const {
  const uint64_t f = g_->fingerprint();
  std::string k(reinterpret_cast<const char*>(&f), sizeof f);
  for (const Stack& st : stacks_) {
    const uint32_t n = uint32_t(st.size());
    k.append(reinterpret_cast<const char*>(&n), sizeof n);
    for (const Pos& p : st) {
      const uint64_t v = uint64_t(p.rule) << 32 | uint64_t(p.alt) << 16 | p.idx;
      k.append(reinterpret_cast<const char*>(&v), sizeof v);
    }
  }
  return k.append(1, '\0').append(pending_);
}

bool TokenTrie::cached_mask(const std::string& key, std::vector<uint8_t>& allowed, bool& any) const {
  const std::lock_guard<std::mutex> lock(mask_mu_);
  const auto it = masks_.find(key);
  if (it == masks_.end() || it->second.first.size() != allowed.size()) return false;
  std::copy(it->second.first.begin(), it->second.first.end(), allowed.begin());
  any = it->second.second;
  ++mask_hits_;
  return true;
}

void TokenTrie::store_mask(const std::string& key, const std::vector<uint8_t>& allowed, bool any) const {
  const std::lock_guard<std::mutex> lock(mask_mu_);
  if (masks_.size() >= kMaskCache) masks_.clear();
  masks_[key] = {allowed, any};
}

int64_t TokenTrie::mask_hits() const {
  const std::lock_guard<std::mutex> lock(mask_mu_);
  return mask_hits_;
}

bool GrammarState::can_end() const {
  return pending_.empty() && std::any_of(stacks_.begin(), stacks_.end(), [](const Stack& s) { return s.empty(); });
}

bool GrammarState::finished() const {
  return std::all_of(stacks_.begin(), stacks_.end(), [](const Stack& s) { return s.empty(); });
}

struct GrammarState::Walk {
  const TokenTrie& trie;
  std::vector<uint8_t>& allowed;
  std::map<std::vector<Stack>, int32_t> ids;
  std::vector<std::vector<Stack>> sets;
  std::vector<std::array<int32_t, 128>> ascii;  // per set: ASCII code point -> set (-1: dead, -2: not yet known)
  std::unordered_map<uint64_t, int32_t> next;    // other code points: set << 21 | code point -> set

  int32_t intern(std::vector<Stack>&& s) {
    auto [it, fresh] = ids.try_emplace(std::move(s), int32_t(sets.size()));
    if (fresh) {
      sets.push_back(it->first);
      ascii.emplace_back().fill(-2);
    }
    return it->second;
  }
};

bool GrammarState::may_continue(const std::vector<Stack>& stacks, std::string_view partial) const {
  const std::pair<uint32_t, uint32_t> range = utf8_prefix_range(partial);
  const uint32_t lo = range.first, hi = range.second;  // (plain variables: lambdas may capture them)
  return std::any_of(stacks.begin(), stacks.end(), [&](const Stack& st) {
    return !st.empty() && elem_may_match(g_->alts(st.back().rule)[st.back().alt][st.back().idx], lo, hi);
  });
}

void GrammarState::walk(Walk& w, uint32_t node, int32_t set, const char* pending, size_t n_pending) const {
  const auto& n = w.trie.nodes()[node];
  if (node != 0)
    for (int32_t id : n.ids) w.allowed[size_t(id)] = 1;
  char buf[4];
  std::copy(pending, pending + n_pending, buf);
  for (const auto& [byte, child] : n.children) {
    if (n_pending == 0 ? utf8_len(byte) == 0 : !utf8_next_ok(uint8_t(buf[0]), n_pending, byte)) continue;
    buf[n_pending] = char(byte);
    const size_t len = n_pending + 1;
    if (int(len) < utf8_len(uint8_t(buf[0]))) {  // still inside a code point
      if (may_continue(w.sets[size_t(set)], std::string_view(buf, len))) walk(w, child, set, buf, len);
      continue;
    }
    const uint32_t cp = utf8_decode(std::string_view(buf, len));
    int32_t to;
    if (cp < 128 && (to = w.ascii[size_t(set)][cp]) != -2) {
      // known
    } else if (auto it = w.next.find(uint64_t(set) << 21 | cp); cp >= 128 && it != w.next.end()) {
      to = it->second;
    } else {
      std::vector<Stack> s = step(w.sets[size_t(set)], cp);
      to = s.empty() ? -1 : w.intern(std::move(s));
      if (cp < 128) w.ascii[size_t(set)][cp] = to;  // (intern may grow ascii: index it afresh)
      else w.next.emplace(uint64_t(set) << 21 | cp, to);
    }
    if (to >= 0) walk(w, child, to, buf, 0);
  }
}

void GrammarState::allowed_tokens(const TokenTrie& trie, std::vector<uint8_t>& allowed) const {
  std::fill(allowed.begin(), allowed.end(), 0);
  Walk w{trie, allowed, {}, {}, {}, {}};
  const int32_t root = w.intern(std::vector<Stack>(stacks_));
  walk(w, 0, root, pending_.data(), pending_.size());
}

}  // namespace tessera
