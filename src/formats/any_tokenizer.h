// One entry point that opens a tokenizer from whatever file the user names:
// the single place to extend when new model formats learn to carry a vocabulary.
#pragma once
#include <string>

#include "tokenizer/tokenizer.h"

namespace tessera {

// .gguf: the file's tokenizer.ggml.* metadata; tokenizer files via
// load_tokenizer_file (tokenizer.json, vocab.json/merges.txt, tokenizer.model,
// tiktoken ranks, llama2.c tokenizer .bin). A llama2.c *model* .bin carries no
// vocabulary: that is reported as an error asking for a tokenizer file.
Tokenizer load_any_tokenizer(const std::string& path);

}  // namespace tessera
