// tessera convert IN OUT: between llama2.c, GGUF and Hugging Face safetensors.
// OUT ending in .gguf writes GGUF (llama.cpp's names and keys, tokenizer
// included when known); any other OUT is a Hugging Face directory
// (config.json + model.safetensors).
#include <cstdio>

#include "commands.h"
#include "common.h"
#include "core/error.h"
#include "formats/model_io.h"
#include "tokenizer/bpe_train.h"

namespace tessera::cli {

int cmd_convert(int argc, char** argv) {
  CLI::App app{"Convert a model between GGUF, Hugging Face safetensors and llama2.c formats.", "tessera convert"};
  std::string in, out, type_name, tokenizer;
  app.add_option("IN", in, "input model (GGUF, HF directory, llama2.c .bin)")->required();
  app.add_option("OUT", out, "output: FILE.gguf, or a directory for Hugging Face safetensors")->required();
  app.add_option("--type", type_name, "weight type of the 2-D matrices (default: keep; llama2.c int8 -> f32)")
      ->check(CLI::IsMember({"f32", "f16", "bf16", "q8_0", "q4_0"}));
  app.add_option("--tokenizer", tokenizer, "tokenizer to embed (GGUF output) for inputs that carry none");
  if (int rc = parse(app, argc, argv); rc >= 0) return rc;

  LoadedModel m = load_model(in, tokenizer);
  const bool gguf_out = out.size() > 5 && out.compare(out.size() - 5, 5, ".gguf") == 0;
  Weights w = m.weights;
  const DType src = w.cfg.arch == Arch::GPT2 ? w.layers.at(0).wqkv.dtype : w.layers.at(0).wq.dtype;
  DType type = type_name.empty() ? (src == DType::Q8_G ? DType::F32 : src) : *dtype_from_name(type_name);
  if (!gguf_out && type != DType::F32 && type != DType::F16 && type != DType::BF16)
    fail(out, ": safetensors output supports f32, f16 and bf16; pass --type f32|f16|bf16 (source is ",
         dtype_name(src), ")");
  int fallbacks = 0;
  w = convert_weights(w, type, &fallbacks);
  if (fallbacks > 0)
    std::fprintf(stderr, "convert: %d matrices have rows that are not a multiple of %lld; stored as f16\n", fallbacks,
                 (long long)dtype_block_elems(type));
  if (gguf_out) {
    if (!m.tokenizer)
      std::fprintf(stderr, "convert: warning: %s carries no tokenizer; the GGUF will have none (use --tokenizer)\n",
                   in.c_str());
    save_gguf(w, m.tokenizer ? &*m.tokenizer : nullptr, out);
  } else {
    save_hf(w, out);
    if (m.tokenizer && m.tokenizer->kind() == TokenizerKind::ByteLevelBPE) {
      save_hf_tokenizer_json(m.tokenizer->data(), out + "/tokenizer.json");
    } else if (m.tokenizer) {
      std::fprintf(stderr,
                   "convert: note: SentencePiece tokenizers are not exported to tokenizer.json yet; "
                   "pass the original tokenizer with --tokenizer when loading %s\n",
                   out.c_str());
    }
  }
  std::fprintf(stderr, "convert: %s (%s) -> %s (%s, %s)\n", in.c_str(), m.format.c_str(), out.c_str(),
               gguf_out ? "gguf" : "safetensors", dtype_name(type));
  return 0;
}

}  // namespace tessera::cli
