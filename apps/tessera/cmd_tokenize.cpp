// tessera tokenize: show the tokens of a text.
// tessera tokenizer train: train a byte-level BPE tokenizer, write tokenizer.json.
#include <CLI/CLI.hpp>
#include <chrono>
#include <cstdio>
#include <string>
#include <vector>

#include "commands.h"
#include "common.h"
#include "core/error.h"
#include "core/mmap.h"
#include "formats/any_tokenizer.h"
#include "tokenizer/bpe_train.h"
#include "tokenizer/tokenizer.h"

namespace tessera::cli {

namespace {

// Bytes of a token for display: valid UTF-8 as is, control and stray bytes escaped.
std::string printable(const std::string& s) {
  std::string out;
  for (size_t i = 0; i < s.size();) {
    auto c = uint8_t(s[i]);
    size_t n = c < 0x80 ? 1 : (c & 0xE0) == 0xC0 ? 2 : (c & 0xF0) == 0xE0 ? 3 : (c & 0xF8) == 0xF0 ? 4 : 0;
    bool ok = n > 0 && i + n <= s.size();
    for (size_t k = 1; ok && k < n; ++k) ok = (uint8_t(s[i + k]) & 0xC0) == 0x80;
    if (ok && n > 1) {
      out.append(s, i, n);
      i += n;
      continue;
    }
    char buf[8];
    if (c == '\n') {
      out += "\\n";
    } else if (c == '\t') {
      out += "\\t";
    } else if (c == '\r') {
      out += "\\r";
    } else if (c == '\\' || c == '\'') {
      out.push_back('\\');
      out.push_back(char(c));
    } else if (c < 0x20 || c >= 0x7F) {
      std::snprintf(buf, sizeof buf, "\\x%02X", c);
      out += buf;
    } else {
      out.push_back(char(c));
    }
    ++i;
  }
  return out;
}

}  // namespace

int cmd_tokenize(int argc, char** argv) {
  CLI::App app{"Show the tokens of a text: one 'id<TAB>'piece'' line per token."};
  app.name("tessera tokenize");
  std::string model, tokenizer_path, text, file;
  bool ids_only = false, no_bos = false, count = false, no_parse_special = false;
  app.add_option("-m,--model", model, "tokenizer file (tokenizer.json, vocab.json, tokenizer.model, .bin) or .gguf")
      ->required();
  app.add_option("--tokenizer", tokenizer_path, "tokenizer file to use instead of the one inside -m");
  app.add_flag("--ids", ids_only, "print only the ids, space-separated on one line");
  app.add_flag("--no-bos", no_bos, "do not add BOS/EOS");
  app.add_flag("--count", count, "print only the number of tokens");
  app.add_flag("--no-parse-special", no_parse_special, "treat special-token text like <|endoftext|> as plain text");
  auto* file_opt = app.add_option("-f,--file", file, "read the text from FILE");
  app.add_option("text", text, "the text")->excludes(file_opt);
  if (int rc = parse(app, argc, argv); rc >= 0) return rc;

  Tokenizer tok = load_any_tokenizer(tokenizer_path.empty() ? model : tokenizer_path);
  std::string input;
  if (!file.empty()) {
    MappedFile f(file);
    input.assign(reinterpret_cast<const char*>(f.data()), f.size());
  } else if (app.count("text")) {
    input = text;
  } else {
    fail("tokenize: give the text as an argument or with -f FILE");
  }
  EncodeOptions opt;
  opt.add_special = !no_bos;
  opt.parse_special = !no_parse_special;
  const std::vector<int32_t> ids = tok.encode(input, opt);
  if (count) {
    std::printf("%zu\n", ids.size());
  } else if (ids_only) {
    std::string line;
    for (int32_t id : ids) line += (line.empty() ? "" : " ") + std::to_string(id);
    std::printf("%s\n", line.c_str());
  } else {
    for (int32_t id : ids) {
      const TokenType t = tok.type(id);
      const std::string shown = (t == TokenType::Control && tok.token_bytes(id).empty()) ? tok.piece(id) : tok.token_bytes(id);
      std::printf("%d\t'%s'\n", id, printable(shown).c_str());
    }
  }
  return 0;
}

int cmd_tokenizer(int argc, char** argv) {
  CLI::App app{"Tokenizer tools."};
  app.name("tessera tokenizer");
  app.require_subcommand(1);
  auto* train = app.add_subcommand("train", "train a byte-level BPE tokenizer and write tokenizer.json");
  int32_t vocab_size = 0;
  std::vector<std::string> specials, files;
  std::string out;
  train->add_option("--vocab-size", vocab_size, "total vocabulary size (specials + 256 bytes + merges)")->required();
  train->add_option("--special", specials, "a special token (repeatable), e.g. <|endoftext|>");
  train->add_option("-o,--output", out, "output tokenizer.json")->required();
  train->add_option("files", files, "training text files")->required();
  if (int rc = parse(app, argc, argv); rc >= 0) return rc;

  using clock = std::chrono::steady_clock;
  const auto t0 = clock::now();
  const MappedTexts in = map_texts(files);
  const auto& texts = in.texts;
  const size_t total = in.bytes;
  if (total == 0)
    fail("tokenizer train: ", files.front(), files.size() > 1 ? " and the others" : "", ": no text to train on");
  std::fprintf(stderr, "training on %zu file(s), %.2f MB, vocab size %d, %zu special token(s)\n", files.size(),
               double(total) / 1e6, vocab_size, specials.size());
  BpeTrainOptions opt;
  opt.vocab_size = vocab_size;
  opt.special_tokens = specials;
  opt.progress = [&](int32_t done, int32_t want) {
    if (done % 1000 == 0 || done == want) {
      double s = std::chrono::duration<double>(clock::now() - t0).count();
      std::fprintf(stderr, "  %d / %d merges (%.1f s)\n", done, want, s);
    }
  };
  BpeTrainResult r = train_bpe(texts, opt);
  save_hf_tokenizer_json(r.to_vocab_data(), out);
  double s = std::chrono::duration<double>(clock::now() - t0).count();
  std::fprintf(stderr, "wrote %s: %zu tokens, %zu merges in %.2f s\n", out.c_str(), r.vocab.size(), r.merges.size(), s);
  if (int64_t(r.vocab.size()) < vocab_size)
    std::fprintf(stderr,
                 "note: the text has no pair of tokens left to merge (within its pre-tokenized words): "
                 "%zu tokens, fewer than --vocab-size %d\n",
                 r.vocab.size(), vocab_size);
  return 0;
}

}  // namespace tessera::cli
