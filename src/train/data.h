// Token datasets for training: `tessera data prepare` writes DIR/train.bin and
// DIR/val.bin (binary token shards) plus DIR/meta.json; the trainer memory-maps
// them and draws batches as a pure function of (seed, step), so a resumed run
// sees exactly the batches an uninterrupted one would.
//
// Shard file: "TSRTOKS1" (8 bytes), uint32 version (1), uint32 bytes per token
// (2 or 4), uint64 token count, then the tokens (little-endian).
#pragma once
#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include <nlohmann/json.hpp>

#include "core/mmap.h"
#include "tokenizer/tokenizer.h"

namespace tessera::train {

void write_token_shard(const std::string& path, const std::vector<int32_t>& tokens, int64_t vocab_size);

class TokenShard {
 public:
  explicit TokenShard(const std::string& path);  // Error naming the file on a bad header / size
  int64_t size() const { return n_; }
  int32_t operator[](int64_t i) const;
  const std::string& path() const { return f_.path(); }

 private:
  MappedFile f_;
  const uint8_t* data_ = nullptr;
  int64_t n_ = 0;
  int bpt_ = 2;
};

// How input files become documents. A file ending in ".jsonl" holds one JSON
// object per line with a string field "text": one document each (blank lines
// are skipped). Any other file is text: one document, or, with doc_sep, cut
// into documents at every line that matches the regex doc_sep (PCRE2, matched
// against the line without its newline; the separator line belongs to no
// document). Documents that are empty or only whitespace are dropped.
struct DocumentOptions {
  std::string doc_sep;             // "" : a text file is one document
  double min_text_fraction = 0.0;  // drop documents whose share of letters and spaces is below this
};
struct Documents {
  std::vector<std::string> docs;
  int64_t dropped = 0;  // documents left out by min_text_fraction
  int64_t bytes = 0;    // bytes of the file read
};
// Errors name the file (and the line, for JSONL) on unreadable input, bad
// JSON, a missing or non-string "text", or a regex that does not compile.
Documents read_documents(const std::string& path, const DocumentOptions& o);
// Share of bytes that are ASCII letters or spaces (the demo's "is this prose" test).
double text_fraction(std::string_view s);

struct PrepareOptions {
  double val_fraction = 0.05;  // per file: the last documents (or, for one document, its last tokens) go to val.bin
  bool add_eos = true;         // end each document with the tokenizer's EOS (when it has one)
  DocumentOptions docs;
};
struct PrepareStats {
  int64_t train_tokens = 0, val_tokens = 0, bytes = 0;
  int64_t documents = 0, dropped_documents = 0;
};
// Tokenizes files (each a list of documents, see DocumentOptions), writes
// DIR/{train.bin,val.bin,meta.json} and copies the tokenizer file to DIR/ (the
// trainer and export pick it up from there). Every document ends with EOS, so
// the model learns what a document start looks like.
PrepareStats prepare_data(const Tokenizer& tok, const std::string& tokenizer_path,
                          const std::vector<std::string>& files, const std::string& dir, const PrepareOptions& o);

struct Dataset {
  std::unique_ptr<TokenShard> train, val;
  // Supervised fine-tuning data (train/sft.h): loss masks and example offsets per split.
  bool sft = false;
  bool preference = false;  // examples in (chosen, rejected) pairs (train/dpo.h)
  std::unique_ptr<TokenShard> train_mask, val_mask, train_idx, val_idx;
  std::string tokenizer_path;  // DIR/<tokenizer file> ("" when absent)
  int64_t vocab_size = 0;
};
Dataset open_dataset(const std::string& dir);

// Copies the tokenizer file into DIR (unless it is already there); its file name ("" for none).
std::string copy_tokenizer(const std::string& tokenizer_path, const std::string& dir);
// DIR/meta.json, atomically.
void write_meta(const std::string& dir, const nlohmann::json& meta);

// Fills x(B, T) and y(B, T) (next tokens) with the training windows of
// (seed, step, micro): B random windows of T + 1 tokens.
void train_batch(const TokenShard& s, uint64_t seed, int64_t step, int64_t micro, int64_t B, int64_t T, int32_t* x,
                 int32_t* y);
// Evaluation window i: consecutive non-overlapping windows from the start of
// the shard (wrapping when the shard is shorter). x, y: (T).
void eval_window(const TokenShard& s, int64_t i, int64_t T, int32_t* x, int32_t* y);

}  // namespace tessera::train
