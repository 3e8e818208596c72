// The generation loop: prefill the prompt, then sample and decode one token at
// a time, streaming text through a callback, with stop strings held back until
// they are ruled out.
#pragma once
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "infer/grammar.h"
#include "infer/sampler.h"
#include "model/model.h"
#include "tokenizer/tokenizer.h"

namespace tessera {

struct GenerateParams {
  int64_t n_predict = 256;  // < 0: until the context is full
  std::vector<std::string> stop;
  SamplerParams sampling;
  int logprobs = -1;  // >= 0: record each generated token's log-probability and this many alternatives
  // Constrained output (infer/grammar.h): every generated token keeps the text a
  // prefix of the grammar's language; end-of-generation only where it can end.
  // The trie is of the tokenizer's vocabulary. Both null: unconstrained.
  const Grammar* grammar = nullptr;
  const TokenTrie* trie = nullptr;
};

struct GenerateStats {
  int64_t n_prompt = 0, n_generated = 0;
  double prefill_s = 0, decode_s = 0;
  std::string stop_reason;  // "eos", "stop", "length", "context"
  std::vector<int32_t> tokens;  // prompt + generated
  std::vector<TokenLogprob> logprobs;  // per generated token, when GenerateParams::logprobs >= 0
};

// Generation ends at an end-of-generation token, at BOS (a new document starts,
// as llama2.c's run does), at a stop string (not emitted), after n_predict
// tokens, or when the context is full.
// The prompt's token ids. An empty prompt (no tokens) starts from the
// tokenizer's document-start token (BOS, else end-of-text), as llama.cpp does;
// Error when the tokenizer has neither.
std::vector<int32_t> prompt_tokens(const Tokenizer& tok, std::string_view prompt, const EncodeOptions& eo);

GenerateStats generate(Model& model, KernelContext& ctx, const Tokenizer& tok, const std::vector<int32_t>& prompt,
                       const GenerateParams& params, const std::function<void(std::string_view)>& on_text);

// A grammar with what applying it needs: the vocabulary's trie and the tokenizer
// (token bytes; its end-of-generation and BOS tokens are the end tokens).
struct GrammarConstraint {
  const Grammar* grammar = nullptr;
  const TokenTrie* trie = nullptr;
  const Tokenizer* tok = nullptr;
};
// allowed[id] (allowed.size() tokens) = 1 for the tokens state g allows next, the
// end tokens where it can end; false when none is allowed.
bool grammar_allowed(const GrammarState& g, const TokenTrie& trie, const Tokenizer& tok, std::vector<uint8_t>& allowed);

// Grammar-constrained sampling, one step: id (drawn by sampler from the
// unconstrained logits) when grammar state g allows it, else a draw from raw
// (n_vocab logits) with every token g does not allow removed (exactly the
// masked distribution when no filter cuts it); then g moves past the token.
// logits and allowed are scratch (n_vocab); history: prompt + generated so far
// (n_prompt of them the prompt, for the error message). Error when no token fits.
int32_t constrain_sample(Sampler& sampler, GrammarState& g, const TokenTrie& trie, const Tokenizer& tok, int32_t id,
                         const float* raw, std::vector<float>& logits, std::vector<uint8_t>& allowed,
                         const std::vector<int32_t>& history, size_t n_prompt);

// The distribution constrain_sample draws from, into p (n_vocab): with f the
// sampler's distribution of raw (penalties, filters, temperature) and A the tokens
// state g allows (end tokens where it can end), p = f A + (1 - sum f A) x the
// sampler's distribution of raw with every other token removed. work, allowed, q: scratch.
void constrained_distribution(Sampler& sampler, const GrammarState& g, const GrammarConstraint& gc, const float* raw,
                              const std::vector<int32_t>& history, float* p, std::vector<float>& work,
                              std::vector<uint8_t>& allowed, std::vector<float>& q);

class StopMatcher;

// What a generation loop does with each new token (generate() and the
// speculative loop share it): end-of-generation and BOS tokens end it ("eos",
// not added), the token is appended to st.tokens and streamed through on_text
// with stop strings held back ("stop": nothing past the stop string is
// emitted), and n_predict tokens end it ("length", the default reason).
class TokenEmitter {
 public:
  TokenEmitter(const Tokenizer& tok, const GenerateParams& p, GenerateStats& st,
               const std::function<void(std::string_view)>& on_text);
  ~TokenEmitter();
  // false: generation has ended (st.stop_reason says why).
  bool push(int32_t id);
  // Emits the text still held back, unless a stop string ended generation.
  void finish();

 private:
  const Tokenizer& tok_;
  const GenerateParams& p_;
  GenerateStats& st_;
  const std::function<void(std::string_view)>& on_text_;
  std::unique_ptr<StopMatcher> stops_;
  std::unique_ptr<StreamDecoder> dec_;
};

// Holds back text that could be the start of a stop string. push() returns what
// can be emitted now and sets hit when a stop string was found (text before it
// is returned; nothing after it).
class StopMatcher {
 public:
  explicit StopMatcher(std::vector<std::string> stops) : stops_(std::move(stops)) {}
  std::string push(std::string_view text, bool& hit);
  std::string flush();

 private:
  std::vector<std::string> stops_;
  std::string pending_;
};

}  // namespace tessera
