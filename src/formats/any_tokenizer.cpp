#include "formats/any_tokenizer.h"

#include <filesystem>

#include "core/error.h"
#include "core/mmap.h"
#ifdef TESSERA_HAVE_GGUF
#include "formats/gguf.h"
#include "formats/gguf_tokenizer.h"
#endif

namespace tessera {

Tokenizer load_any_tokenizer(const std::string& path) {
  const std::string ext = std::filesystem::path(path).extension().string();
  if (ext == ".gguf") {
#ifdef TESSERA_HAVE_GGUF
    auto f = gguf::File::open(path);
    return load_gguf_tokenizer(*f);
#else
    fail(path, ": this build has no GGUF reader (formats/gguf.cpp)");
#endif
  }
  if (ext == ".bin") {
    // A llama2.c tokenizer has <unk>, <s>, </s> first; a model file starts with its config.
    MappedFile f(path);
    VocabData v;
    try {
      v = parse_llama2c_tokenizer(f.data(), f.size(), path);
    } catch (const Error&) {
      fail(path, ": not a llama2.c tokenizer (a llama2.c model file? pass its tokenizer.bin with --tokenizer)");
    }
    if (v.tokens[1] != "<s>" || v.tokens[2] != "</s>")
      fail(path, ": not a llama2.c tokenizer: ids 1, 2 are not <s>, </s> (a model file? pass --tokenizer)");
    try {
      return Tokenizer(std::move(v));
    } catch (const Error& e) {
      fail(path, ": ", e.what());
    }
  }
  return load_tokenizer_file(path);
}

}  // namespace tessera
