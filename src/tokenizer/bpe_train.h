// Byte-level BPE training (GPT-2 style) and tokenizer file writers.
//
// The text is split at the special tokens (which never take part in merges),
// pre-tokenized with GPT-2's regex, and pre-token frequencies are counted.
// Each step merges the most frequent adjacent pair; ties go to the
// lexicographically greater pair of byte strings (compare the left tokens'
// bytes, then the right ones'). Pair counts and the pair -> words index are
// updated incrementally. Ids: special tokens first, then the 256 bytes in
// GPT-2's alphabet order (printable bytes first), then one id per merge.
#pragma once
#include <cstdint>
#include <functional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "tokenizer/tokenizer.h"

namespace tessera {

struct BpeTrainOptions {
  int32_t vocab_size = 0;                   // specials + 256 + merges
  std::vector<std::string> special_tokens;  // e.g. "<|endoftext|>"
  // Called now and then with (merges done, merges wanted).
  std::function<void(int32_t, int32_t)> progress;
};

struct BpeTrainResult {
  std::vector<std::string> vocab;                            // raw bytes by id
  std::vector<std::pair<std::string, std::string>> merges;  // raw bytes, in order
  int32_t n_special = 0;
  // As a byte-level tokenizer: GPT-2 alphabet, "gpt2" pre-tokenizer, the
  // specials as control tokens (the first one is EOS, as GPT-2's <|endoftext|>).
  VocabData to_vocab_data() const;
};

// Throws Error when vocab_size is smaller than specials + 256.
BpeTrainResult train_bpe(const std::vector<std::string_view>& texts, const BpeTrainOptions& opt);

// Hugging Face tokenizer.json (BPE model, ByteLevel pre-tokenizer and decoder),
// written atomically. Loadable by load_hf_tokenizer_json and HF tokenizers.
void save_hf_tokenizer_json(const VocabData& v, const std::string& path);
// GPT-2's vocab.json + merges.txt, written atomically.
void save_gpt2_vocab(const VocabData& v, const std::string& vocab_json, const std::string& merges_txt);

}  // namespace tessera
