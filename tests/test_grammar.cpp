// GBNF grammars (infer/grammar.h): every example grammar of ../shared/grammars
// parses; strings in and out of their languages; parse errors name the line;
// the trie mask equals trying every token; and generation under a grammar with
// a random-weight model (which would otherwise emit garbage) always yields a
// string of the language, ending only where the grammar can end.
#include <gtest/gtest.h>

#include "cli_util.h"
#include "core/error.h"
#include "formats/load.h"
#include "infer/beam.h"
#include "infer/generate.h"
#include "infer/parallel.h"
#include "infer/grammar.h"
#include "model/synthetic.h"
#include "model_test_util.h"
#include "tokenizer/tokenizer.h"

using namespace tessera;
using namespace tessera::test;

namespace {

Grammar parse(const std::string& text) { return Grammar::parse(text, "test.gbnf"); }

// Whole-string membership.
bool in_language(const Grammar& g, const std::string& s) {
  GrammarState st(g);
  return st.accept(s) && st.can_end();
}
bool prefix_ok(const Grammar& g, const std::string& s) {
  GrammarState st(g);
  return st.accept(s);
}

std::string error_of(const std::string& text) {
  try {
    parse(text);
  } catch (const Error& e) {
    return e.what();
  }
  return "";
}

const char* kGrammars[] = {"arithmetic", "json", "json_arr", "list"};

}  // namespace

TEST(Grammar, LanguageMembership) {
  const Grammar g = parse(R"(root ::= "a" b{2,3} c* ("x" | "yz")?
b ::= [0-9]
c ::= [^a-c\n])");
  EXPECT_TRUE(in_language(g, "a12"));
  EXPECT_TRUE(in_language(g, "a123"));
  EXPECT_FALSE(in_language(g, "a1"));
  EXPECT_TRUE(in_language(g, "a12dd"));
  EXPECT_TRUE(in_language(g, "a12yz"));
  EXPECT_TRUE(in_language(g, "a12x"));  // c* may be empty, then "x"
  EXPECT_TRUE(in_language(g, "a12y"));   // 'y' is a c
  EXPECT_FALSE(in_language(g, "a12b"));  // 'b' is not
  EXPECT_FALSE(in_language(g, "a12dya"));
  EXPECT_TRUE(prefix_ok(g, "a12dy"));
  EXPECT_FALSE(prefix_ok(g, "b"));
  EXPECT_FALSE(prefix_ok(g, "a1234a"));
  // Unicode classes, escapes, and a code point split across accept() calls.
  const Grammar u = parse(R"(root ::= [ぁ-ゟ]+ "\u00e9" "\x41")");
  EXPECT_TRUE(in_language(u, "ひらがなéA"));
  EXPECT_FALSE(in_language(u, "カタカナéA"));
  GrammarState st(u);
  const std::string hi = "ひ";
  EXPECT_TRUE(st.accept(hi.substr(0, 1)));
  EXPECT_FALSE(st.can_end());
  EXPECT_TRUE(st.accept(hi.substr(1)));
  EXPECT_FALSE(st.allows("\xC0\x81"));  // overlong
  EXPECT_FALSE(st.allows("\xF0\x80\x81\xBB"));  // overlong '{'
  // A lead byte whose code points a negated set excludes entirely.
  const Grammar nb = parse("root ::= [^\\u0400-\\u07FF]");
  EXPECT_FALSE(GrammarState(nb).allows("\xD0"));
  EXPECT_TRUE(GrammarState(nb).allows("\xE3"));
}

TEST(Grammar, SharedExampleGrammars) {
  for (const char* name : kGrammars) {
    const std::string path = std::string("grammars/") + name + ".gbnf";
    TESSERA_REQUIRE_SHARED(path);
    EXPECT_NO_THROW(Grammar::parse(slurp(shared_path(path)), path)) << name;
  }
  TESSERA_REQUIRE_SHARED("grammars/json.gbnf");
  const Grammar json = Grammar::parse(slurp(shared_path("grammars/json.gbnf")), "json.gbnf");
  EXPECT_TRUE(in_language(json, R"({"a": [1, 2.5, -3e5, "x\n\u00e9"], "b": {"c": null, "d": true}})"));
  EXPECT_TRUE(in_language(json, "{}"));
  EXPECT_FALSE(in_language(json, R"({"a": })"));
  EXPECT_FALSE(in_language(json, "[1]"));  // root is an object
  const Grammar arith = Grammar::parse(slurp(shared_path("grammars/arithmetic.gbnf")), "arithmetic.gbnf");
  EXPECT_TRUE(in_language(arith, "x1 = (a +2 *b)\n"));
  EXPECT_FALSE(in_language(arith, "x1 = \n"));
  EXPECT_FALSE(in_language(arith, "x1 = (a + 2) * b\n"));  // after '=' a term, not an expression
  const Grammar list = Grammar::parse(slurp(shared_path("grammars/list.gbnf")), "list.gbnf");
  EXPECT_TRUE(in_language(list, "- one\n- two\n"));
  EXPECT_FALSE(in_language(list, "- one\n-two\n"));
  const Grammar any = Grammar::parse(kJsonGrammar, "json");
  for (const char* v : {"[1, {\"a\": []}]", "\"s\"", "-0.5", "null", " true"}) EXPECT_TRUE(in_language(any, v)) << v;
  for (const char* v : {"[1,]", "01", "{a: 1}", "tru"}) EXPECT_FALSE(in_language(any, v)) << v;
}

TEST(Grammar, ParseErrorsNameTheLine) {
  EXPECT_NE(error_of("root ::= a\n").find("'a' is used but not defined"), std::string::npos);
  EXPECT_NE(error_of("item ::= \"x\"\n").find("no 'root' rule"), std::string::npos);
  EXPECT_NE(error_of("root ::= root \"x\" | \"y\"\n").find("left-recursive"), std::string::npos);
  EXPECT_NE(error_of("root ::= x\nx ::= \"a\"? x \"b\"\n").find("left-recursive"), std::string::npos);
  EXPECT_NE(error_of("root ::= \"a\"\n\nx ::= \"unterminated\n").find("test.gbnf:3:"), std::string::npos);
  EXPECT_NE(error_of("root ::= [a-\n").find("test.gbnf:1:"), std::string::npos);
  EXPECT_NE(error_of("root ::= (\"a\"\n").find("missing ')'"), std::string::npos);
  EXPECT_NE(error_of("root ::= \"a\"{3,1}\n").find("n < m"), std::string::npos);
  EXPECT_NE(error_of("root ::= \"a\"\nroot ::= \"b\"\n").find("defined twice"), std::string::npos);
}

TEST(Grammar, TrieMaskEqualsTryingEveryToken) {
  TESSERA_REQUIRE_SHARED("models/tok512.bin");
  TESSERA_REQUIRE_SHARED("grammars/json.gbnf");
  const Tokenizer tok = load_llama2c_tokenizer(shared_path("models/tok512.bin"), 512);
  const TokenTrie trie(tok);
  const Grammar json = Grammar::parse(slurp(shared_path("grammars/json.gbnf")), "json.gbnf");
  std::vector<uint8_t> allowed(512);
  for (const std::string prefix : {"", "{", "{\"ab", "{\"a\": [1", "{\"a\": \"\xE3\x81", "{\"a\": tr"}) {
    GrammarState st(json);
    ASSERT_TRUE(st.accept(prefix)) << prefix;
    st.allowed_tokens(trie, allowed);
    int n = 0;
    for (int32_t id = 0; id < 512; ++id) {
      const TokenType t = tok.type(id);
      const std::string b = tok.token_bytes(id);
      const bool want = !(t == TokenType::Control || t == TokenType::Unknown || t == TokenType::Unused ||
                          tok.is_eog(id) || id == tok.bos_id() || b.empty()) &&
                        st.allows(b);
      EXPECT_EQ(allowed[size_t(id)] != 0, want) << "prefix '" << prefix << "' token " << id << " '" << b << "'";
      n += want;
    }
    EXPECT_GT(n, 0) << prefix;
  }
}

// Masks are cached by state: a state that comes back (the same stacks and pending bytes, in
// an equal grammar at another address) gets the mask a fresh walk gives; another grammar,
// or another state, does not hit.
TEST(Grammar, MaskCacheByState) {
  TESSERA_REQUIRE_SHARED("models/tok512.bin");
  TESSERA_REQUIRE_SHARED("grammars/json.gbnf");
  const Tokenizer tok = load_llama2c_tokenizer(shared_path("models/tok512.bin"), 512);
  const TokenTrie trie(tok);
  const std::string text = slurp(shared_path("grammars/json.gbnf"));
  const Grammar a = Grammar::parse(text, "json.gbnf"), b = Grammar::parse(text, "json.gbnf");
  const Grammar other = Grammar::parse("root ::= \"yes\" | \"no\"", "yes-no");
  EXPECT_EQ(a.fingerprint(), b.fingerprint());
  EXPECT_NE(a.fingerprint(), other.fingerprint());
  std::vector<uint8_t> got(512), fresh(512);
  int64_t hits = trie.mask_hits();
  for (const std::string prefix : {"{\"ab", "{\"a\": [1, 2", "{\"a\": \"\xE3\x81"}) {
    GrammarState s1(a), s2(b), s3(a);
    ASSERT_TRUE(s1.accept(prefix));
    ASSERT_TRUE(s2.accept(prefix));
    ASSERT_TRUE(s3.accept("{"));
    EXPECT_EQ(s1.key(), s2.key());
    EXPECT_NE(s1.key(), s3.key());
    const bool any = grammar_allowed(s1, trie, tok, got);  // walked (or cached by an earlier test)
    const int64_t h0 = trie.mask_hits();
    EXPECT_EQ(grammar_allowed(s2, trie, tok, fresh), any);
    EXPECT_EQ(trie.mask_hits(), h0 + 1) << prefix;
    EXPECT_EQ(got, fresh);
    s2.allowed_tokens(trie, fresh);  // a fresh walk: the same tokens (end tokens aside)
    for (int32_t id = 0; id < 512; ++id)
      if (!tok.is_eog(id) && id != tok.bos_id()) {
        EXPECT_EQ(got[size_t(id)], fresh[size_t(id)]) << prefix << " " << id;
      }
  }
  EXPECT_GE(trie.mask_hits(), hits + 3);
  GrammarState in1(a), in2(a);  // inside a string every character leads back to the same state
  ASSERT_TRUE(in1.accept("{\"ab"));
  ASSERT_TRUE(in2.accept("{\"abcd"));
  EXPECT_EQ(in1.key(), in2.key());
  GrammarState yn(other);
  hits = trie.mask_hits();
  grammar_allowed(yn, trie, tok, got);
  EXPECT_EQ(trie.mask_hits(), hits);
  int n = 0;
  for (uint8_t x : got) n += x;
  EXPECT_LT(n, 20) << "the other grammar's own mask";
}

// A random-weight model (stories260K's shape, its tokenizer) under each example
// grammar and the JSON grammar, 12 seeds each: the text is always a prefix of
// a string of the language, and a whole one when generation ended by itself.
TEST(Grammar, GenerationStaysInTheLanguage) {
  TESSERA_REQUIRE_SHARED("models/tok512.bin");
  RandomStories rs(77);
  const Tokenizer& tok = rs.tok;
  const TokenTrie& trie = rs.trie;
  Model& m = rs.m;
  KernelContext& ctx = rs.ctx;
  std::vector<std::pair<std::string, std::string>> grammars{{"json-value", kJsonGrammar}};
  for (const char* name : kGrammars) {
    const std::string path = std::string("grammars/") + name + ".gbnf";
    if (std::filesystem::exists(shared_path(path))) grammars.emplace_back(name, slurp(shared_path(path)));
  }
  int ended = 0;
  for (const auto& [name, text] : grammars) {
    const Grammar g = Grammar::parse(text, name);
    for (uint64_t seed = 1; seed <= 12; ++seed) {
      GenerateParams gp;
      gp.n_predict = 60;
      gp.sampling.seed = seed;
      gp.sampling.temp = seed % 3 == 0 ? 0.f : 1.0f;
      gp.grammar = &g, gp.trie = &trie;
      std::string out;
      const GenerateStats st = generate(m, ctx, tok, {1}, gp, [&](std::string_view s) { out += s; });
      // The emitted text is the generated tokens' bytes.
      std::string bytes;
      for (size_t i = 1; i < st.tokens.size(); ++i) bytes += tok.token_bytes(st.tokens[i]);
      EXPECT_EQ(out, bytes) << name << " seed " << seed;
      GrammarState gs(g);
      EXPECT_TRUE(gs.accept(bytes)) << name << " seed " << seed << ": '" << bytes << "'";
      if (st.stop_reason == "eos") {
        EXPECT_TRUE(gs.can_end()) << name << " seed " << seed << ": '" << bytes << "'";
        ++ended;
      }
    }
  }
  EXPECT_GT(ended, 0);  // some runs ended where their grammar may end
}

// Beam search under a grammar (infer/beam.h): every hypothesis of every grammar is a
// prefix of its language and a finished one a member, with a random-weight model that
// unconstrained produces garbage; one constrained beam is constrained greedy decoding.
TEST(Grammar, BeamSearchStaysInTheLanguage) {
  TESSERA_REQUIRE_SHARED("models/tok512.bin");
  RandomStories rs(78);
  const Tokenizer& tok = rs.tok;
  // (a short language, whose hypotheses must finish: only an end token can follow it)
  std::vector<std::pair<std::string, std::string>> grammars{{"json-value", kJsonGrammar},
                                                            {"yes-no", "root ::= (\"yes\" | \"no\") \".\"\n"}};
  for (const char* name : kGrammars) {
    const std::string path = std::string("grammars/") + name + ".gbnf";
    if (std::filesystem::exists(shared_path(path))) grammars.emplace_back(name, slurp(shared_path(path)));
  }
  const auto is_end = [&](int32_t id) { return tok.is_eog(id) || id == tok.bos_id(); };
  const auto bytes_of = [&](const std::vector<int32_t>& ids) {
    std::string s;
    for (int32_t id : ids) s += tok.token_bytes(id);
    return s;
  };
  int finished = 0;
  for (const auto& [name, text] : grammars) {
    const Grammar g = Grammar::parse(text, name);
    const GrammarConstraint bg{&g, &rs.trie, &tok};
    BeamParams bp;
    bp.beams = 3;
    const auto hyps = beam_search(rs.m, rs.ctx, {1}, 40, bp, is_end, &bg);
    ASSERT_FALSE(hyps.empty()) << name;
    for (const BeamHypothesis& h : hyps) {
      GrammarState gs(g);
      const std::string s = bytes_of(h.tokens);
      EXPECT_TRUE(gs.accept(s)) << name << ": '" << s << "'";
      if (h.finished) {
        EXPECT_TRUE(gs.can_end()) << name << ": '" << s << "'";
        ++finished;
      }
    }
    // One beam: the constrained greedy tokens.
    bp.beams = 1;
    const auto one = beam_search(rs.m, rs.ctx, {1}, 30, bp, is_end, &bg);
    GenerateParams gp;
    gp.n_predict = 30, gp.sampling.temp = 0.f, gp.grammar = &g, gp.trie = &rs.trie;
    const GenerateStats st = generate(rs.m, rs.ctx, tok, {1}, gp, [](std::string_view) {});
    std::vector<int32_t> greedy(st.tokens.begin() + 1, st.tokens.end());
    if (!greedy.empty() && is_end(greedy.back())) greedy.pop_back();
    EXPECT_EQ(one.front().tokens, greedy) << name;
  }
  EXPECT_GT(finished, 0);
  // Unconstrained, the same search leaves the JSON language at once.
  BeamParams bp;
  bp.beams = 3;
  const auto free = beam_search(rs.m, rs.ctx, {1}, 20, bp, is_end);
  const Grammar json = Grammar::parse(kJsonGrammar, "json");
  GrammarState gs(json);
  EXPECT_FALSE(gs.accept(bytes_of(free.front().tokens)));
}

// Parallel samples under a grammar (infer/parallel.h): sample i is its seed's single
// constrained run (generate() with the grammar), so every sample stays in the language.
TEST(Grammar, ParallelSamplesAreTheirSeedsConstrainedRuns) {
  TESSERA_REQUIRE_SHARED("models/tok512.bin");
  RandomStories rs(79);
  const Tokenizer& tok = rs.tok;
  const Grammar g = Grammar::parse(kJsonGrammar, "json");
  const auto is_end = [&](int32_t id) { return tok.is_eog(id) || id == tok.bos_id(); };
  SamplerParams sp;
  sp.temp = 1.f, sp.seed = 40;
  const GrammarConstraint sg{&g, &rs.trie, &tok};
  const auto samples = sample_parallel(rs.m, rs.ctx, {1}, 4, 30, sp, is_end, &sg);
  ASSERT_EQ(samples.size(), 4u);
  for (int i = 0; i < 4; ++i) {
    GenerateParams gp;
    gp.n_predict = 30, gp.sampling = sp, gp.sampling.seed = sp.seed + uint64_t(i), gp.grammar = &g, gp.trie = &rs.trie;
    const GenerateStats st = generate(rs.m, rs.ctx, tok, {1}, gp, [](std::string_view) {});
    std::vector<int32_t> one(st.tokens.begin() + 1, st.tokens.end());
    if (!one.empty() && is_end(one.back())) one.pop_back();
    EXPECT_EQ(samples[size_t(i)].tokens, one) << "sample " << i;
    std::string s;
    for (int32_t id : samples[size_t(i)].tokens) s += tok.token_bytes(id);
    GrammarState gs(g);
    EXPECT_TRUE(gs.accept(s)) << "sample " << i << ": '" << s << "'";
    if (samples[size_t(i)].ended) {
      EXPECT_TRUE(gs.can_end()) << "sample " << i;
    }
  }
}
