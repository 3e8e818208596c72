// Supervised fine-tuning data: examples whose loss counts only the response.
// `tessera data prepare-sft` reads JSONL, one example per line:
//   {"messages": [{"role": "user", "content": ...}, {"role": "assistant", ...}, ...]}
//     rendered with a chat template; every assistant turn (its text and the
//     template's end-of-turn marker) is learned, the rest is context;
//   {"prompt": ..., "completion": ...}: the completion (and EOS) is learned.
// Beside train.bin / val.bin (the examples' tokens back to back) it writes
// {train,val}.mask.bin (1 where the token is a target the loss counts) and
// {train,val}.idx.bin (the examples' first tokens, then the total), all token
// shards (train/data.h), and meta.json's "sft" block.
#pragma once
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "infer/chat_template.h"
#include "tokenizer/tokenizer.h"
#include "train/data.h"

namespace tessera::train {

struct SftExample {
  std::vector<int32_t> tokens;
  std::vector<uint8_t> learn;  // per token: 1 when the loss counts it as a target
};

// One JSONL object as an example. Error naming `where` (file:line) on a missing or
// mistyped field, an unknown role, or a template that does not render the
// conversation as a growing prefix (the assistant spans could not be found).
SftExample sft_example(const nlohmann::json& j, const Tokenizer& tok, const ChatTemplate& tmpl,
                       const std::string& where);

// Calls f(object, "FILE:LINE") for every non-blank line of a JSONL file; Error naming
// FILE:LINE on invalid JSON.
void for_each_jsonl(const std::string& path, const std::function<void(const nlohmann::json&, const std::string&)>& f);

struct SftStats {
  int64_t train_examples = 0, val_examples = 0, train_tokens = 0, val_tokens = 0, learned_tokens = 0;
};
// Tokenizes the JSONL files and writes DIR (as above; the tokenizer is copied like prepare_data's).
// val_fraction: of each file, the last examples.
SftStats prepare_sft(const Tokenizer& tok, const std::string& tokenizer_path, const ChatTemplate& tmpl,
                     const std::vector<std::string>& files, const std::string& dir, double val_fraction);

// An SFT split: tokens, their loss mask and the example offsets.
struct SftSplit {
  const TokenShard *tokens = nullptr, *mask = nullptr, *idx = nullptr;
  int64_t examples() const { return idx ? idx->size() - 1 : 0; }
};
// The dataset's train / val split (Dataset::sft must be set).
SftSplit sft_split(const Dataset& d, bool val);

// Rows (B, T) of training examples for (seed, step, micro): x the inputs, y the
// targets (-1 where the loss does not count: context, padding, an example's end),
// seg the first position of each token's example in its row.
// Padded (pack false): one example per row, from its start, cut at T + 1 tokens, padded.
// Packed: a row is filled with consecutive examples from a random one on (the last cut
// at the row's end); with seg given to the model, no example attends to another.
void sft_batch(const SftSplit& s, uint64_t seed, int64_t step, int64_t micro, int64_t B, int64_t T, bool pack,
               int32_t* x, int32_t* y, int32_t* seg);
// Evaluation row i: example i % examples, padded (x, y: (T)).
void sft_eval_row(const SftSplit& s, int64_t i, int64_t T, int32_t* x, int32_t* y);

}  // namespace tessera::train
