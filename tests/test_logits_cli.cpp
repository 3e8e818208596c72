// tessera logits against llama.cpp's logits (../shared/reference/quant): the
// reference files' layout, one batch and token by token, and bad id files.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <tuple>

#include "cli_util.h"
#include "core/dtype.h"
#include "formats/gguf.h"

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

// Per position, the largest |a - b| over the largest |b| of the whole file; sorted.
std::vector<double> rel_diffs(const LogitsFile& a, const LogitsFile& b) {
  double m = 0;
  for (double v : b.v) m = std::max(m, std::fabs(v));
  std::vector<double> out;
  for (int64_t i = 0; i < b.n; ++i) {
    double d = 0;
    for (int64_t j = 0; j < b.vocab; ++j) d = std::max(d, std::fabs(a.v[size_t(i * b.vocab + j)] - b.v[size_t(i * b.vocab + j)]));
    out.push_back(d / m);
  }
  std::sort(out.begin(), out.end());
  return out;
}

// Every file of ../shared/reference/quant, as llama.cpp's llama-quantize wrote it, against
// llama.cpp's logits. f32 computes what llama.cpp computes. The quantized types compute with
// llama.cpp's 8-bit activations (Q8_0 with f16 scales, Q8_K for the K-quants), so the integer
// products are the same and most positions agree to ~1e-6; but a float difference far upstream
// (attention summation order) can move one activation across a rounding boundary, which changes
// a position by ~1e-3 and, through the KV cache, the ones after it. Hence two bounds: the median
// position (tight where the semantics match) and the worst. Q4_1 / Q5_1 match once their min
// term takes llama.cpp's Q8_1 block value, the half f16(amax / 127 * sum).
struct Expect {
  std::string type;
  double median, max;
};
const std::vector<Expect> kExpect{
    {"f32", 1e-5, 1e-4},    {"q8_0", 1e-5, 2e-3},   {"q4_0", 1e-5, 2e-3},   {"q4_1", 1e-5, 2e-3},
    {"q5_0", 1e-5, 1e-2},   {"q5_1", 1e-5, 1e-2},   {"iq4_nl", 1e-5, 2e-3}, {"q2_k", 5e-3, 1e-2},
    {"q3_k_s", 1e-5, 5e-3}, {"q3_k_m", 1e-5, 5e-3}, {"q3_k_l", 1e-5, 5e-3}, {"q4_k_s", 3e-3, 1e-2},
    {"q4_k_m", 1e-5, 5e-3}, {"q5_k_s", 1e-5, 5e-3}, {"q5_k_m", 1e-5, 5e-3}, {"q6_k", 1e-5, 5e-3}};

TEST(LogitsCli, MatchesLlamaCppReference) {
  TESSERA_REQUIRE_SHARED("reference/quant/tinystories-f32.gguf");
  const std::string ids = test::shared_path("reference/quant/tinystories.tokens.txt");
  for (const Expect& e : kExpect) {
    const std::string& type = e.type;
    const std::string model = test::shared_path("reference/quant/tinystories-" + type + ".gguf");
    const LogitsFile ref = parse(test::slurp(test::shared_path("reference/quant/tinystories-" + type + ".logits.txt")));
    const std::string out = test::temp_path("logits_" + type + ".txt");
    auto r = run_cli("logits -m " + q(model) + " --ids " + q(ids) + " -o " + q(out) + " -t 2");
    ASSERT_EQ(r.code, 0) << type << ": " << r.err;
    const std::string text = test::slurp(out);
    EXPECT_EQ(text.substr(0, text.find('\n')), "37 512");
    // One batch (prefill kernels) and token by token (decode kernels, to stdout).
    r = run_cli("logits -m " + q(model) + " --ids " + q(ids) + " --sequential -t 2");
    ASSERT_EQ(r.code, 0) << type << ": " << r.err;
    for (const auto& [got, how] : {std::pair{parse(text), "batch"}, std::pair{parse(r.out), "sequential"}}) {
      ASSERT_EQ(got.n, ref.n);
      ASSERT_EQ(got.vocab, ref.vocab);
      ASSERT_EQ(got.v.size(), ref.v.size()) << type;
      const std::vector<double> d = rel_diffs(got, ref);
      EXPECT_LE(d[d.size() / 2], e.median) << type << " " << how << " (median position)";
      EXPECT_LE(d.back(), e.max) << type << " " << how << " (worst position)";
    }
    fs::remove(out);
  }
}

// tessera convert --type MIX on the f32 reference model writes the tensor types llama.cpp's
// llama-quantize wrote for that mix (the reference files), with its general.file_type, and
// quantizes about as well: perplexity on held-out text within a bound of the llama.cpp file's.
TEST(LogitsCli, ConvertWritesLlamaCppMixes) {
  TESSERA_REQUIRE_SHARED("reference/quant/tinystories-f32.gguf");
  TESSERA_REQUIRE_SHARED("data/tinystories_val.txt");
  const std::string f32 = test::shared_path("reference/quant/tinystories-f32.gguf");
  const std::string ids = test::shared_path("reference/quant/tinystories.tokens.txt");
  const std::string text = test::temp_path("mix_text.txt");
  std::ofstream(text) << test::slurp(test::shared_path("data/tinystories_val.txt")).substr(0, 20000);
  const LogitsFile base = parse(test::slurp(test::shared_path("reference/quant/tinystories-f32.logits.txt")));
  auto ppl = [&](const std::string& model) {
    const auto r = run_cli("perplexity -m " + q(model) + " -f " + q(text) + " -t 2 --json");
    EXPECT_EQ(r.code, 0) << r.err;
    const size_t at = r.out.find("\"perplexity\":");
    return at == std::string::npos ? 0.0 : std::stod(r.out.substr(at + 13));
  };
  // Our quantizers fit scales as llama.cpp's do, not bit for bit: measured ratios to llama.cpp's
  // perplexity are within 0.1% except Q3_K (+0.3%) and Q2_K (-0.4%).
  for (const auto& [mix, ppl_tol] : std::vector<std::pair<std::string, double>>{
           {"q4_0", 0.003}, {"q4_1", 0.003}, {"q5_0", 0.003}, {"q5_1", 0.003}, {"q8_0", 0.003},
           {"q2_k", 0.01}, {"q3_k_s", 0.006}, {"q3_k_m", 0.006}, {"q3_k_l", 0.006}, {"q4_k_s", 0.003},
           {"q4_k_m", 0.003}, {"q5_k_s", 0.003}, {"q5_k_m", 0.003}, {"q6_k", 0.003}, {"iq4_nl", 0.003}}) {
    const std::string theirs = test::shared_path("reference/quant/tinystories-" + mix + ".gguf");
    const std::string out = test::temp_path("conv_" + mix + ".gguf");
    auto r = run_cli("convert " + q(f32) + " " + q(out) + " --type " + mix);
    ASSERT_EQ(r.code, 0) << r.err;
    {
      const auto a = gguf::File::open(theirs), b = gguf::File::open(out);
      ASSERT_EQ(a->tensors().size(), b->tensors().size()) << mix;
      for (const gguf::TensorInfo& t : a->tensors()) {
        const gguf::TensorInfo* u = b->find_tensor(t.name);
        ASSERT_NE(u, nullptr) << mix << ": " << t.name;
        EXPECT_EQ(u->ggml_type, t.ggml_type) << mix << ": " << t.name << " is " << dtype_name(u->dtype) << ", llama.cpp "
                                             << dtype_name(t.dtype);
      }
      EXPECT_EQ(b->get_int("general.file_type"), a->get_int("general.file_type")) << mix;
    }
    r = run_cli("info -m " + q(out));
    ASSERT_EQ(r.code, 0) << r.err;
    EXPECT_NE(r.out.find("file type:      " + mix + " "), std::string::npos) << r.out;
    EXPECT_NE(r.out.find("bits per weight: "), std::string::npos) << r.out;
    r = run_cli("logits -m " + q(out) + " --ids " + q(ids) + " -t 2");
    ASSERT_EQ(r.code, 0) << r.err;
    const std::vector<double> d = rel_diffs(parse(r.out), base);
    EXPECT_LE(d.back(), mix == "q2_k" ? 0.3 : 0.15) << mix;
    EXPECT_GT(d.back(), 1e-4) << mix << ": quantized logits equal to f32's";
    const double mine = ppl(out), ref = ppl(theirs);
    EXPECT_LT(std::fabs(mine / ref - 1), ppl_tol) << mix << ": perplexity " << mine << ", llama.cpp's file " << ref;
    fs::remove(out);
  }
  fs::remove(text);
  const auto r = run_cli("convert " + q(f32) + " " + q(test::temp_path("x.gguf")) + " --type q4_k_x");
  EXPECT_NE(r.code, 0);
  EXPECT_NE(r.err.find("q4_k_x"), std::string::npos) << r.err;
  EXPECT_NE(r.err.find("q5_k_m"), std::string::npos) << r.err;  // the list of types
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
