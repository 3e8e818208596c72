// Grammar-constrained sampling overhead (infer/grammar.h): for a tokenizer
// (default: Llama 2's 32K and Llama 3's 128K vocabularies from ../shared) and
// the JSON grammar, the time to build the full token mask over the vocabulary
// trie at typical states (value start, inside a string: the widest, inside a
// number) and the fast path's check of one sampled token. Print as JSON; the
// per-token budget to compare with is a decode step (1B Q4_0: ~11 ms on 2 cores).
#include <algorithm>
#include <chrono>
#include <functional>
#include <cstdio>
#include <exception>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "formats/any_tokenizer.h"
#include "infer/generate.h"
#include "infer/grammar.h"
#include "tokenizer/tokenizer.h"

using namespace tessera;

namespace {

double median_us(const std::function<void()>& f, int reps) {
  std::vector<double> t;
  for (int r = 0; r < reps; ++r) {
    const auto t0 = std::chrono::steady_clock::now();
    f();
    t.push_back(std::chrono::duration<double, std::micro>(std::chrono::steady_clock::now() - t0).count());
  }
  std::nth_element(t.begin(), t.begin() + std::ptrdiff_t(t.size() / 2), t.end());
  return t[t.size() / 2];
}

int run(int argc, char** argv) {
  std::vector<std::string> paths;
  for (int i = 1; i < argc; ++i) paths.emplace_back(argv[i]);
  if (paths.empty())
    paths = {std::string(TESSERA_SHARED_DIR) + "/models/tokenizer.model",
             std::string(TESSERA_SHARED_DIR) + "/tokenizers/llama3/tokenizer.model"};
  const Grammar g = Grammar::parse(kJsonGrammar, "json");
  nlohmann::json out;
  for (const std::string& path : paths) {
    const Tokenizer tok = load_any_tokenizer(path);
    const auto t0 = std::chrono::steady_clock::now();
    const TokenTrie trie(tok);
    const double build_ms = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
    std::vector<uint8_t> allowed(size_t(tok.n_vocab()));
    nlohmann::json r = {{"n_vocab", tok.n_vocab()}, {"trie_nodes", trie.nodes().size()}, {"trie_build_ms", build_ms}};
    for (const auto& [name, prefix] : std::vector<std::pair<std::string, std::string>>{
             {"value_start", "{\"a\": "}, {"in_string", "{\"a\": \"The quick"}, {"in_number", "[12"}}) {
      GrammarState st(g);
      if (!st.accept(prefix)) {
        std::fprintf(stderr, "bench_grammar: prefix not accepted\n");
        return 1;
      }
      const double mask_us = median_us([&] { st.allowed_tokens(trie, allowed); }, 7);
      const int64_t n_allowed = std::count(allowed.begin(), allowed.end(), uint8_t(1));
      const int32_t probe = tok.find_piece("\u2581the") >= 0 ? tok.find_piece("\u2581the") : 100;
      const std::string bytes = tok.token_bytes(probe);
      const double check_us = median_us([&] { (void)st.allows(bytes); }, 101);
      grammar_allowed(st, trie, tok, allowed);  // the state's mask into the trie's cache
      const double cached_us = median_us([&] { (void)grammar_allowed(st, trie, tok, allowed); }, 101);
      r[name] = {{"mask_us", mask_us},
                 {"cached_mask_us", cached_us},
                 {"allowed_tokens", n_allowed},
                 {"check_one_token_us", check_us}};
    }
    out[path] = r;
  }
  std::printf("%s\n", out.dump(2).c_str());
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  try {
    return run(argc, argv);
  } catch (const std::exception& e) {  // e.g. no ../shared: name the missing file
    std::fprintf(stderr, "bench_grammar: %s\n", e.what());
    return 1;
  }
}
