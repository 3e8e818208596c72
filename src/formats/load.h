// Opens a model in any supported format, detected from the path and its magic:
// a directory (Hugging Face config.json + safetensors), GGUF, llama2.c (.bin,
// legacy fp32 or "ak42" int8), or "synthetic:NAME[:TYPE]": random weights of a
// named shape (see model/synthetic.h) whose vocabulary follows the tokenizer if
// one is given.
#pragma once
#include <memory>
#include <optional>
#include <string>

#include "model/weights.h"
#include "tokenizer/tokenizer.h"

namespace tessera {

struct LoadedModel {
  Weights weights;
  std::optional<Tokenizer> tokenizer;  // when the file carries one or --tokenizer named one
  std::string format;                  // "gguf", "safetensors", "llama2c", "llama2c-ak42"
  std::string path;
  std::string chat_template;  // Jinja source: GGUF tokenizer.chat_template or tokenizer_config.json's; "" when none
};

// The chat_template of DIR/tokenizer_config.json ("" when the file or field is absent).
std::string hf_chat_template(const std::string& dir);

// tokenizer_path: explicit tokenizer file ("" = the model's own, if it has one).
LoadedModel load_model(const std::string& path, const std::string& tokenizer_path = "");

// The model's tokenizer, or an Error naming the file and saying how to supply one.
const Tokenizer& require_tokenizer(const LoadedModel& m);

}  // namespace tessera
