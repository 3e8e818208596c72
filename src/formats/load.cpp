#include "formats/load.h"

#include <cstring>
#include <filesystem>

#include "core/error.h"
#include "core/mmap.h"
#if __has_include("formats/gguf_tokenizer.h")  // interim until the tokenizer branch lands it
#include "formats/gguf_tokenizer.h"
#define TESSERA_HAVE_GGUF_TOK 1
#endif
#include "formats/llama2c.h"
#include "formats/model_io.h"

namespace tessera {

namespace {

enum class Kind { Directory, Gguf, Llama2c };

Kind sniff(const std::string& path) {
  namespace fs = std::filesystem;
  std::error_code ec;
  if (!fs::exists(path, ec)) fail(path, ": no such file or directory");
  if (fs::is_directory(path, ec)) return Kind::Directory;
  MappedFile f(path);
  if (f.size() >= 4 && std::memcmp(f.data(), "GGUF", 4) == 0) return Kind::Gguf;
  return Kind::Llama2c;
}

}  // namespace

LoadedModel load_model(const std::string& path, const std::string& tokenizer_path) {
  LoadedModel m;
  m.path = path;
  switch (sniff(path)) {
    case Kind::Directory: {
      m.weights = load_hf_weights(path);
      m.format = "safetensors";
      const std::string tj = (std::filesystem::path(path) / "tokenizer.json").string();
      if (tokenizer_path.empty() && std::filesystem::exists(tj)) m.tokenizer = load_tokenizer_file(tj);
      break;
    }
    case Kind::Gguf: {
      std::shared_ptr<gguf::File> f = gguf::File::open(path);
      m.weights = load_gguf_weights(f);
      m.format = "gguf";
#ifdef TESSERA_HAVE_GGUF_TOK
      if (tokenizer_path.empty() && f->find("tokenizer.ggml.model")) m.tokenizer = load_gguf_tokenizer(*f);
#endif
      break;
    }
    case Kind::Llama2c: {
      m.weights = load_llama2c(path);
      m.format = m.weights.tok_embd.dtype == DType::Q8_G ? "llama2c-ak42" : "llama2c";
      break;
    }
  }
  if (!tokenizer_path.empty()) {
    // llama2.c tokenizer.bin has no count: read as many pieces as the model's vocabulary.
    const bool bin = tokenizer_path.size() > 4 && tokenizer_path.compare(tokenizer_path.size() - 4, 4, ".bin") == 0;
    m.tokenizer = bin ? load_llama2c_tokenizer(tokenizer_path, int32_t(m.weights.cfg.vocab_size))
                      : load_tokenizer_file(tokenizer_path);
  }
  if (m.tokenizer && m.tokenizer->n_vocab() != m.weights.cfg.vocab_size)
    fail(tokenizer_path, ": tokenizer has ", m.tokenizer->n_vocab(), " tokens but the model ", path, " has vocab_size ",
         m.weights.cfg.vocab_size);
  return m;
}

const Tokenizer& require_tokenizer(const LoadedModel& m) {
  if (!m.tokenizer)
    fail(m.path, ": the model file carries no tokenizer (", m.format, " format); pass one with --tokenizer FILE");
  return *m.tokenizer;
}

}  // namespace tessera
