#include "formats/load.h"

#include <cstring>
#include <filesystem>
#include <nlohmann/json.hpp>

#include "core/error.h"
#include "core/mmap.h"
#include "formats/any_tokenizer.h"
#include "formats/gguf_tokenizer.h"
#include "formats/llama2c.h"
#include "formats/model_io.h"
#include "model/synthetic.h"

namespace tessera {

namespace {

enum class Kind { Synthetic, Directory, Gguf, Llama2c };

constexpr const char* kSynthetic = "synthetic:";

Kind sniff(const std::string& path) {
  namespace fs = std::filesystem;
  if (path.rfind(kSynthetic, 0) == 0) return Kind::Synthetic;
  std::error_code ec;
  if (!fs::exists(path, ec)) fail(path, ": no such file or directory");
  if (fs::is_directory(path, ec)) return Kind::Directory;
  MappedFile f(path);
  if (f.size() >= 4 && std::memcmp(f.data(), "GGUF", 4) == 0) return Kind::Gguf;
  return Kind::Llama2c;
}

bool ends_with(const std::string& s, const char* suffix) {
  const size_t n = std::strlen(suffix);
  return s.size() >= n && s.compare(s.size() - n, n, suffix) == 0;
}

}  // namespace

LoadedModel load_model(const std::string& path, const std::string& tokenizer_path) {
  LoadedModel m;
  m.path = path;
  switch (sniff(path)) {
    case Kind::Synthetic: {
      // synthetic:NAME[:TYPE] -- random weights of a named shape; a tokenizer sets the vocabulary size.
      std::string spec = path.substr(std::strlen(kSynthetic)), type = "f32";
      if (const size_t colon = spec.find(':'); colon != std::string::npos) {
        type = spec.substr(colon + 1);
        spec.resize(colon);
      }
      // A weight type puts every matrix in it; a llama.cpp mix name (q4_k_m, ...) applies its per-tensor types.
      const auto dt = dtype_from_name(type);
      const auto mix = quant_mix_from_name(type);
      if ((!dt || !dtype_can_quantize(*dt)) && !mix)
        fail(path, ": unknown weight type '", type, "' (a type: f32, f16, bf16, q8_0, q4_0, q4_1, q5_0, q5_1, iq4_nl, ",
             "q2_k, q3_k, q4_k, q5_k, q6_k; or a llama.cpp mix: ", quant_mix_names(), ")");
      ModelConfig cfg = synthetic_config(spec);
      if (!tokenizer_path.empty()) {
        m.tokenizer = load_any_tokenizer(tokenizer_path);
        cfg.vocab_size = m.tokenizer->n_vocab();
      }
      m.weights = dt && dtype_can_quantize(*dt) ? make_random_weights(cfg, *dt, 1234, 2)
                                               : make_random_weights(cfg, *mix, 1234, 2);
      m.format = "synthetic";
      return m;
    }
    case Kind::Directory: {
      m.weights = load_hf_weights(path);
      m.format = "safetensors";
      const std::string tj = (std::filesystem::path(path) / "tokenizer.json").string();
      if (tokenizer_path.empty() && std::filesystem::exists(tj)) m.tokenizer = load_tokenizer_file(tj);
      m.chat_template = hf_chat_template(path);
      break;
    }
    case Kind::Gguf: {
      std::shared_ptr<gguf::File> f = gguf::File::open(path);
      m.weights = load_gguf_weights(f);
      m.format = "gguf";
      if (tokenizer_path.empty() && f->find("tokenizer.ggml.model")) m.tokenizer = load_gguf_tokenizer(*f);
      m.chat_template = f->get_string_or("tokenizer.chat_template", "");
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
    m.tokenizer = ends_with(tokenizer_path, ".bin")
                      ? load_llama2c_tokenizer(tokenizer_path, int32_t(m.weights.cfg.vocab_size))
                      : load_any_tokenizer(tokenizer_path);
  }
  if (m.tokenizer && m.tokenizer->n_vocab() > m.weights.cfg.vocab_size)
    fail(tokenizer_path.empty() ? path : tokenizer_path, ": tokenizer has ", m.tokenizer->n_vocab(),
         " tokens but the model ", path, " has vocab_size ", m.weights.cfg.vocab_size);
  return m;
}

std::string hf_chat_template(const std::string& dir) {
  const auto path = std::filesystem::path(dir) / "tokenizer_config.json";
  if (!std::filesystem::exists(path)) return {};
  nlohmann::json j;
  try {
    j = nlohmann::json::parse(read_file(path.string()));
  } catch (const nlohmann::json::exception& e) {
    fail(path.string(), ": not valid JSON: ", e.what());
  }
  if (!j.is_object() || !j.contains("chat_template") || j["chat_template"].is_null()) return {};
  const auto& t = j["chat_template"];
  if (t.is_string()) return t.get<std::string>();
  // A list of named templates: the one named "default".
  if (t.is_array())
    for (const auto& e : t)
      if (e.is_object() && e.value("name", "") == "default" && e.contains("template") && e["template"].is_string())
        return e["template"].get<std::string>();
  fail(path.string(), ": field 'chat_template' is neither a string nor a list with a \"default\" template");
}

const Tokenizer& require_tokenizer(const LoadedModel& m) {
  if (!m.tokenizer)
    fail(m.path, ": the model file carries no tokenizer (", m.format, " format); pass one with --tokenizer FILE");
  return *m.tokenizer;
}

}  // namespace tessera
