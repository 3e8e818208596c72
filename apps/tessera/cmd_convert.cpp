// tessera convert IN OUT: between llama2.c, GGUF and Hugging Face safetensors.
// OUT ending in .gguf writes GGUF (llama.cpp's names and keys, tokenizer
// included when known); any other OUT is a Hugging Face directory
// (config.json + model.safetensors).
#include <cstdio>

#include "commands.h"
#include "common.h"
#include "core/error.h"

namespace tessera::cli {

int cmd_convert(int argc, char** argv) {
  CLI::App app{"Convert a model between GGUF, Hugging Face safetensors and llama2.c formats.", "tessera convert"};
  std::string in, out, type_name, tokenizer;
  app.add_option("IN", in, "input model (GGUF, HF directory, llama2.c .bin)")->required();
  app.add_option("OUT", out, "output: FILE.gguf, or a directory for Hugging Face safetensors")->required();
  app.add_option("--type", type_name, "weight type: f32, f16, bf16, or a llama.cpp file type (q8_0, q4_0, q4_1, q5_0, q5_1, iq4_nl, q2_k, "
                 "q3_k_s/m/l, q4_k_s/m, q5_k_s/m, q6_k) with llama-quantize's per-tensor choices (default: keep; "
                 "llama2.c int8 -> f32)")
      ->check(weight_type_validator());
  app.add_option("--tokenizer", tokenizer, "tokenizer to embed (GGUF output) for inputs that carry none");
  if (int rc = parse(app, argc, argv); rc >= 0) return rc;

  LoadedModel m = load_model(in, tokenizer);
  write_model(m.weights, m.tokenizer ? &*m.tokenizer : nullptr, out, type_name, "convert", m.chat_template);
  std::fprintf(stderr, "convert: %s (%s) -> %s\n", in.c_str(), m.format.c_str(), out.c_str());
  return 0;
}

}  // namespace tessera::cli
