// Encode throughput (MB/s, one thread) of the tokenizers on a text file,
// printed as JSON. Usage: bench_tokenizer [TEXT] [SHARED_DIR] [gpt2|llama3|llama2-spm]
#include <chrono>
#include <cstdio>
#include <fstream>
#include <functional>
#include <sstream>
#include <string>

#include "core/error.h"
#include "tokenizer/tokenizer.h"

using namespace tessera;

namespace {

std::string read_all(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  if (!f) fail(path, ": cannot open");
  std::ostringstream ss;
  ss << f.rdbuf();
  return ss.str();
}

// Best of `reps` runs of one whole-text encode.
void bench(const char* name, const std::function<Tokenizer()>& load, const std::string& text, bool& first,
           const std::string& only) {
  if (!only.empty() && only != name) return;
  Tokenizer tok = load();
  double best = 1e30;
  size_t n = 0;
  for (int r = 0; r < 5; ++r) {
    auto t0 = std::chrono::steady_clock::now();
    n = tok.encode(text).size();
    double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    best = std::min(best, s);
  }
  std::printf("%s    {\"tokenizer\": \"%s\", \"bytes\": %zu, \"tokens\": %zu, \"seconds\": %.4f, \"mb_per_s\": %.2f}",
              first ? "" : ",\n", name, text.size(), n, best, double(text.size()) / best / 1e6);
  first = false;
}

}  // namespace

int main(int argc, char** argv) {
  try {
    const std::string shared = argc > 2 ? argv[2] : "../shared";
    const std::string path = argc > 1 ? argv[1] : shared + "/data/tinyshakespeare.txt";
    const std::string text = read_all(path);
    bool first = true;
    const std::string only = argc > 3 ? argv[3] : "";
    std::printf("{\"file\": \"%s\", \"threads\": 1, \"results\": [\n", path.c_str());
    bench("gpt2", [&] { return load_tokenizer_file(shared + "/tokenizers/gpt2/vocab.json"); }, text, first, only);
    bench("llama3", [&] { return load_tokenizer_file(shared + "/tokenizers/llama3/tokenizer.model"); }, text, first, only);
    bench("llama2-spm", [&] { return load_tokenizer_file(shared + "/models/tokenizer.model"); }, text, first, only);
    std::printf("\n]}\n");
  } catch (const std::exception& e) {
    std::fprintf(stderr, "error: %s\n", e.what());
    return 1;
  }
  return 0;
}
