// Grammar-constrained generation with llama.cpp's GBNF grammars
// (../shared/grammars/GBNF.md): rules of alternatives over code-point sets
// and rule references, with groups, *, +, ?, {m}, {m,}, {m,n} (expanded into
// helper rules at parse time) and comments. The matcher is a pushdown
// automaton kept as a set of stacks of grammar positions (each stack's top a
// character set, an empty stack a complete parse), advanced one code point at
// a time; multi-byte UTF-8 split across tokens is carried between tokens.
//
// Token masking walks a prefix tree of the vocabulary's byte strings with the
// automaton, so tokens sharing a prefix share its work and a dead prefix
// prunes its whole subtree. Generation samples first and only builds the mask
// when the sampled token is not allowed; rejecting and redrawing from the
// masked distribution gives exactly the masked distribution.
#pragma once
#include <cstdint>
#include <mutex>
#include <string>
#include <unordered_map>
#include <string_view>
#include <vector>

namespace tessera {

class Tokenizer;

// The rules of JSON (RFC 8259 syntax, whitespace limited as llama.cpp's
// json.gbnf does): value, object, array, string (char), integer, number,
// boolean, null, ws. kJsonGrammar: any JSON value (root ::= ws value).
extern const char* const kJsonRules;
extern const std::string kJsonGrammar;

struct GrammarElem {
  enum Kind : uint8_t { Chars, Rule } kind = Chars;
  bool negated = false;
  uint32_t rule = 0;                                // Rule
  std::vector<std::pair<uint32_t, uint32_t>> ranges;  // Chars: inclusive code-point ranges
  bool matches(uint32_t cp) const;
};

class Grammar {
 public:
  // Parses GBNF text; Error naming where (a file name) and the line on a syntax error, an
  // undefined rule, a missing root rule or left recursion.
  static Grammar parse(std::string_view text, const std::string& where);
  size_t n_rules() const { return rules_.size(); }
  // rules_[r]: alternatives; each a sequence of elements (empty: matches nothing more).
  const std::vector<std::vector<GrammarElem>>& alts(uint32_t r) const { return rules_[r]; }
  uint32_t root() const { return root_; }
  // A hash of the rules (GrammarState::key): equal for equal grammars, whatever their address.
  uint64_t fingerprint() const;
  const std::string& name(uint32_t r) const { return names_[r]; }

 private:
  friend class GbnfParser;
  std::vector<std::vector<std::vector<GrammarElem>>> rules_;
  std::vector<std::string> names_;
  uint32_t root_ = 0;
};

// Prefix tree of a vocabulary's token byte strings.
class TokenTrie {
 public:
  explicit TokenTrie(const Tokenizer& tok);
  struct Node {
    std::vector<std::pair<uint8_t, uint32_t>> children;  // byte -> node, by byte
    std::vector<int32_t> ids;                            // tokens whose bytes end here
  };
  const std::vector<Node>& nodes() const { return nodes_; }

  // Masks already computed (grammar_allowed, infer/generate.h), by GrammarState::key(): a
  // state that comes back (inside a JSON string, a list's separator) is not walked again.
  // At most kMaskCache of them (cleared when full); safe to share between threads.
  static constexpr size_t kMaskCache = 64;
  bool cached_mask(const std::string& key, std::vector<uint8_t>& allowed, bool& any) const;
  void store_mask(const std::string& key, const std::vector<uint8_t>& allowed, bool any) const;
  int64_t mask_hits() const;

 private:
  std::vector<Node> nodes_;
  mutable std::mutex mask_mu_;
  mutable std::unordered_map<std::string, std::pair<std::vector<uint8_t>, bool>> masks_;
  mutable int64_t mask_hits_ = 0;
};

class GrammarState {
 public:
  explicit GrammarState(const Grammar& g);
  // Whether bytes can come next; accept() also moves past them (false: unchanged).
  bool allows(std::string_view bytes) const;
  bool accept(std::string_view bytes);
  // The grammar can end here (an end-of-generation token is allowed).
  bool can_end() const;
  // Nothing but the end can follow.
  bool finished() const;
  // allowed[id] = 1 for every token of trie whose bytes can come next, else 0 (n_vocab entries).
  void allowed_tokens(const TokenTrie& trie, std::vector<uint8_t>& allowed) const;
  // The state as bytes (its grammar's fingerprint, stacks and pending bytes): equal keys allow the same tokens.
  std::string key() const;

  struct Pos {
    uint32_t rule;
    uint16_t alt, idx;
    bool operator==(const Pos&) const = default;
    auto operator<=>(const Pos&) const = default;
  };
  using Stack = std::vector<Pos>;

 private:
  const Grammar* g_;
  std::vector<Stack> stacks_;  // each top: a Chars element (or empty: complete)
  std::string pending_;        // bytes of an incomplete UTF-8 code point
  // The stacks after code point cp from stacks (deduplicated, tops expanded).
  std::vector<Stack> step(const std::vector<Stack>& stacks, uint32_t cp) const;
  bool advance(std::vector<Stack>& stacks, std::string& pending, std::string_view bytes) const;
  // The mask's walk over the trie, with stack sets interned and their
  // transitions by code point memoized (most nodes are then one lookup).
  struct Walk;
  void walk(Walk& w, uint32_t node, int32_t set, const char* pending, size_t n_pending) const;
  bool may_continue(const std::vector<Stack>& stacks, std::string_view partial) const;
};

}  // namespace tessera
