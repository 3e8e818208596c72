// tessera logits against llama.cpp's logits (../shared/reference/quant): the
// reference files' layout, one batch and token by token, and bad id files.
#include <gtest/gtest.h>

#include <cmath>
#include <filesystem>
#include <fstream>
#include <sstream>

#include "cli_util.h"

using namespace tessera;
using tessera::test::q;
using tessera::test::run_cli;
namespace fs = std::filesystem;

namespace {

struct LogitsFile {
  int64_t n = 0, vocab = 0;
  std::vector<double> v;
};

LogitsFile parse(const std::string& text) {
  std::istringstream in(text);
  LogitsFile f;
  in >> f.n >> f.vocab;
  double x;
  while (in >> x) f.v.push_back(x);
  return f;
}

// Largest |a - b| over the largest |b|.
double rel_diff(const LogitsFile& a, const LogitsFile& b) {
  double d = 0, m = 0;
  for (size_t i = 0; i < b.v.size(); ++i) {
    d = std::max(d, std::fabs(a.v[i] - b.v[i]));
    m = std::max(m, std::fabs(b.v[i]));
  }
  return d / m;
}

TEST(LogitsCli, MatchesLlamaCppReference) {
  TESSERA_REQUIRE_SHARED("reference/quant/tinystories-f32.gguf");
  const std::string ids = test::shared_path("reference/quant/tinystories.tokens.txt");
  // f32 computes what llama.cpp computes; the quantized types differ by llama.cpp's
  // 8-bit activations (the README's "small differences of that order"). The q4_0 file keeps its
  // embedding in Q6_K, which the engine does not read yet (the quantization issue).
  for (const auto& [type, tol] : std::vector<std::pair<std::string, double>>{{"f32", 1e-4}, {"q8_0", 1e-2}}) {
    const std::string model = test::shared_path("reference/quant/tinystories-" + type + ".gguf");
    const LogitsFile ref = parse(test::slurp(test::shared_path("reference/quant/tinystories-" + type + ".logits.txt")));
    const std::string out = test::temp_path("logits_" + type + ".txt");
    auto r = run_cli("logits -m " + q(model) + " --ids " + q(ids) + " -o " + q(out) + " -t 2");
    ASSERT_EQ(r.code, 0) << r.err;
    const std::string text = test::slurp(out);
    EXPECT_EQ(text.substr(0, text.find('\n')), "37 512");
    const LogitsFile got = parse(text);
    ASSERT_EQ(got.n, ref.n);
    ASSERT_EQ(got.vocab, ref.vocab);
    ASSERT_EQ(got.v.size(), ref.v.size()) << type;
    EXPECT_LE(rel_diff(got, ref), tol) << type;
    // Token by token (decode path), to stdout.
    r = run_cli("logits -m " + q(model) + " --ids " + q(ids) + " --sequential -t 2");
    ASSERT_EQ(r.code, 0) << r.err;
    const LogitsFile seq = parse(r.out);
    ASSERT_EQ(seq.v.size(), ref.v.size()) << type;
    EXPECT_LE(rel_diff(seq, ref), tol) << type << " --sequential";
    fs::remove(out);
  }
}

TEST(LogitsCli, BadIdFilesAreErrors) {
  TESSERA_REQUIRE_SHARED("reference/quant/tinystories-f32.gguf");
  const std::string model = test::shared_path("reference/quant/tinystories-f32.gguf");
  const std::string bad = test::temp_path("bad_ids.txt");
  for (const auto& [text, what] : std::vector<std::pair<std::string, std::string>>{
           {"1 2 x3\n", "token 3 is not an integer id"},
           {"1 512\n", "token 2 is id 512, outside the vocabulary (512)"},
           {"  \n", "no token ids"}}) {
    std::ofstream(bad) << text;
    const auto r = run_cli("logits -m " + q(model) + " --ids " + q(bad));
    EXPECT_EQ(r.code, 1) << text;
    EXPECT_NE(r.err.find(what), std::string::npos) << r.err;
  }
  const auto r = run_cli("logits -m " + q(model) + " --ids " + q(bad + ".missing"));
  EXPECT_EQ(r.code, 1);
  EXPECT_NE(r.err.find("bad_ids.txt.missing"), std::string::npos) << r.err;
  fs::remove(bad);
}

}  // namespace
