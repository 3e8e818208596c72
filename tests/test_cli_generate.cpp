// Acceptance tests of the CLI on the real stories260K model (../shared).
#include <gtest/gtest.h>

#include <cmath>
#include <cstdlib>
#include <filesystem>
#include <fstream>

#include "cli_util.h"
#include "formats/llama2c.h"
#include "kernels/kernels.h"
#include "formats/model_io.h"

using namespace tessera::test;

namespace {
const char* kModel = "models/stories260K.bin";
const char* kTok = "models/tok512.bin";
std::string model_args() { return "-m " + q(shared_path(kModel)) + " --tokenizer " + q(shared_path(kTok)); }
}  // namespace

TEST(CliGenerate, GreedyFromBosReproducesPublishedOutput) {
  TESSERA_REQUIRE_SHARED(kModel);
  TESSERA_REQUIRE_SHARED("reference/stories260K_greedy_256.txt");
  // 256 positions: BOS at position 0, then up to 256 sampled tokens as llama2.c's run -n 256 does, stopping at BOS.
  CliResult r = run_cli("generate " + model_args() + " -p '' --temp 0 -n 256 -t 2");
  ASSERT_EQ(r.code, 0) << r.err;
  EXPECT_EQ(r.out, slurp(shared_path("reference/stories260K_greedy_256.txt")));
}

TEST(CliGenerate, SameSeedSameTextAndStopStrings) {
  TESSERA_REQUIRE_SHARED(kModel);
  const std::string base = "generate " + model_args() + " -p 'Once upon a time' -n 60 --temp 1 --top-p 0.9 ";
  CliResult a = run_cli(base + "--seed 42");
  CliResult b = run_cli(base + "--seed 42");
  CliResult c = run_cli(base + "--seed 43");
  ASSERT_EQ(a.code, 0) << a.err;
  EXPECT_EQ(a.out, b.out);
  EXPECT_NE(a.out, c.out);
  EXPECT_FALSE(a.out.empty());
  // A stop string cuts the output before it (and is not printed).
  CliResult s = run_cli("generate " + model_args() + " -p 'Once upon a time' -n 100 --temp 0 --stop Lily");
  ASSERT_EQ(s.code, 0) << s.err;
  EXPECT_EQ(s.out.find("Lily"), std::string::npos);
  EXPECT_NE(s.err.find("stop: stop"), std::string::npos) << s.err;
  // --echo prints the prompt first.
  CliResult e = run_cli("generate " + model_args() + " -p 'Once upon a time' -n 5 --temp 0 --echo");
  EXPECT_EQ(e.out.rfind("Once upon a time", 0), 0u) << e.out;
}

TEST(CliPerplexity, EightWindowsMatchReference) {
  TESSERA_REQUIRE_SHARED(kModel);
  TESSERA_REQUIRE_SHARED("data/tinystories_val.txt");
  const std::string text = slurp(shared_path("data/tinystories_val.txt")).substr(0, 12000);
  const std::string path = temp_path("ppl12000.txt");
  std::ofstream(path, std::ios::binary) << text;
  CliResult r = run_cli("perplexity " + model_args() + " -f " + q(path) + " -c 256 --chunks 8 --json");
  std::remove(path.c_str());
  ASSERT_EQ(r.code, 0) << r.err;
  const auto nll_at = r.out.find("\"nll\": ");
  ASSERT_NE(nll_at, std::string::npos) << r.out;
  const double nll = std::stod(r.out.substr(nll_at + 7));
  EXPECT_NEAR(nll, 1.4717, 0.00005) << r.out;  // 4 significant digits
  EXPECT_NE(r.out.find("\"windows\": 8"), std::string::npos) << r.out;
}

TEST(CliErrors, BadInputsGiveClearErrorsAndNonZeroExit) {
  TESSERA_REQUIRE_SHARED(kModel);
  // Missing tokenizer for a llama2.c model.
  CliResult r = run_cli("generate -m " + q(shared_path(kModel)) + " -p hi -n 2");
  EXPECT_EQ(r.code, 1);
  EXPECT_NE(r.err.find("--tokenizer"), std::string::npos) << r.err;
  // Missing file.
  r = run_cli("generate -m /nonexistent/model.bin -p hi");
  EXPECT_EQ(r.code, 1);
  EXPECT_NE(r.err.find("/nonexistent/model.bin"), std::string::npos) << r.err;
  // Truncated llama2.c file.
  const std::string full = slurp(shared_path(kModel));
  const std::string trunc = temp_path("trunc.bin");
  std::ofstream(trunc, std::ios::binary) << full.substr(0, full.size() / 2);
  r = run_cli("info -m " + q(trunc));
  EXPECT_EQ(r.code, 1);
  EXPECT_NE(r.err.find("trunc.bin"), std::string::npos) << r.err;
  // Garbage header.
  std::ofstream(trunc, std::ios::binary) << std::string(1000, '\x7f');
  r = run_cli("info -m " + q(trunc));
  EXPECT_EQ(r.code, 1);
  EXPECT_NE(r.err.find("out of range"), std::string::npos) << r.err;
  std::remove(trunc.c_str());
  // Prompt longer than the context.
  r = run_cli("generate " + model_args() + " -c 8 -p 'Once upon a time there was a little girl named Lily' -n 2");
  EXPECT_EQ(r.code, 1);
  EXPECT_NE(r.err.find("context"), std::string::npos) << r.err;
  // Bad flag values.
  r = run_cli("generate " + model_args() + " -p hi --top-p 0");
  EXPECT_EQ(r.code, 1);
  EXPECT_NE(r.err.find("--top-p"), std::string::npos) << r.err;
  // nan and inf pass comparisons like top_p <= 0: every floating-point flag must be finite.
  for (const char* flag : {"--top-p nan", "--temp inf", "--presence-penalty nan", "--min-p -inf"}) {
    r = run_cli("generate " + model_args() + " -p hi -n 2 " + flag);
    EXPECT_EQ(r.code, 1) << flag;
    EXPECT_NE(r.err.find("must be a finite number"), std::string::npos) << flag << ": " << r.err;
  }
  // Strings that read as numbers stay strings.
  r = run_cli("generate " + model_args() + " -p nan -n 2 --stop inf");
  EXPECT_EQ(r.code, 0) << r.err;
  // A flag CLI11 cannot parse is bad input too: an "error:" line and exit code 1.
  r = run_cli("generate " + model_args() + " -p hi -n two");
  EXPECT_EQ(r.code, 1);
  EXPECT_NE(r.err.find("error: "), std::string::npos) << r.err;
  EXPECT_NE(r.err.find("--n-predict"), std::string::npos) << r.err;
  // convert's OUT names a GGUF file or a directory; a .bin or .safetensors name is refused, nothing written.
  for (const char* name : {"out.bin", "out.safetensors"}) {
    const std::string out = temp_path(name);
    r = run_cli("convert " + q(shared_path(kModel)) + " " + q(out));
    EXPECT_EQ(r.code, 1) << name;
    EXPECT_NE(r.err.find(out), std::string::npos) << r.err;
    EXPECT_FALSE(std::filesystem::exists(out)) << name;
  }
  r = run_cli("frobnicate");
  EXPECT_EQ(r.code, 2);
}

TEST(CliInfo, DescribesStories260K) {
  TESSERA_REQUIRE_SHARED(kModel);
  CliResult r = run_cli("info -m " + q(shared_path(kModel)));
  ASSERT_EQ(r.code, 0) << r.err;
  EXPECT_NE(r.out.find("llama"), std::string::npos);
  EXPECT_NE(r.out.find("GQA"), std::string::npos);
  EXPECT_NE(r.out.find("dim:            64"), std::string::npos) << r.out;
}

TEST(CliGpt2, SyntheticGpt2RunsEndToEndThroughGgufAndSafetensors) {
  TESSERA_REQUIRE_SHARED("tokenizers/gpt2/vocab.json");
  const std::string dir = temp_path("gpt2e2e");
  const std::string gguf = dir + ".gguf";
  const std::string vocab = q(shared_path("tokenizers/gpt2/vocab.json"));
  // A random GPT-2-architecture model with the real GPT-2 vocabulary (50257 tokens).
  CliResult r = run_cli("convert synthetic:gpt2-tiny " + q(gguf) + " --tokenizer " + vocab);
  ASSERT_EQ(r.code, 0) << r.err;
  r = run_cli("convert " + q(gguf) + " " + q(dir));  // GGUF -> HF directory (tokenizer.json written)
  ASSERT_EQ(r.code, 0) << r.err;
  CliResult a = run_cli("generate -m " + q(gguf) + " -p 'Hello, world' -n 12 --temp 0.8 --seed 5");
  CliResult b = run_cli("generate -m " + q(dir) + " -p 'Hello, world' -n 12 --temp 0.8 --seed 5");
  ASSERT_EQ(a.code, 0) << a.err;
  ASSERT_EQ(b.code, 0) << b.err;
  EXPECT_FALSE(a.out.empty());
  EXPECT_EQ(a.out, b.out);  // identical logits -> identical sampled text
  CliResult info = run_cli("info -m " + q(dir));
  EXPECT_NE(info.out.find("gpt2"), std::string::npos) << info.out;
  EXPECT_NE(info.out.find("LayerNorm"), std::string::npos) << info.out;
  const std::string text = temp_path("gpt2text.txt");
  std::ofstream(text) << slurp(shared_path("tokenizers/bpe-training/tinystories_sample.txt"));
  CliResult p = run_cli("perplexity -m " + q(gguf) + " -f " + q(text) + " -c 64 --json");
  EXPECT_EQ(p.code, 0) << p.err;
  EXPECT_NE(p.out.find("\"perplexity\""), std::string::npos) << p.out;
  std::remove(text.c_str());
  std::remove(gguf.c_str());
  std::filesystem::remove_all(dir);
}

namespace {
// The number after "key": in a one-line JSON object, NAN if absent.
double json_number(const std::string& json, const std::string& key) {
  const size_t p = json.find("\"" + key + "\":");
  return p == std::string::npos ? NAN : std::strtod(json.c_str() + p + key.size() + 3, nullptr);
}
}  // namespace

TEST(CliBench, SyntheticDecodeAndPrefillReportLimitsAndRatios) {
  CliResult r = run_cli("bench --synthetic 260k -p 32 -n 24 -r 1 -t 2 --json");
  ASSERT_EQ(r.code, 0) << r.err;
  for (const char* key : {"prefill_tok_s", "decode_tok_s", "bandwidth_gbs", "decode_bw_fraction",
                          "decode_window_bandwidth_gbs", "decode_bw_fraction_best_probe", "gemm_peak_gflops",
                          "prefill_peak_fraction", "prefill_peak_fraction_best_probe"}) {
    const double v = json_number(r.out, key);
    EXPECT_TRUE(v > 0 && std::isfinite(v)) << key << " in " << r.out;
  }
  // The paired fraction is decode's speed against a plain read of the same weights:
  // a sane run is within a small factor of 1 either way (tiny weights sit in cache).
  EXPECT_LT(json_number(r.out, "decode_bw_fraction"), 20.0) << r.out;
  // The run's highest GEMM probe is at least each repetition's: the conservative
  // fraction can only be lower (one repetition here, so both use the same prefill).
  EXPECT_LE(json_number(r.out, "prefill_peak_fraction_best_probe"),
            json_number(r.out, "prefill_peak_fraction") * 1.0001) << r.out;
  // stories260K's 64 x 64 layers are too small to split: a parallel region per matrix.
  EXPECT_NE(r.out.find("\"decode_path\": \"regions\""), std::string::npos) << r.out;
  EXPECT_EQ(json_number(r.out, "sequences"), 0) << r.out;  // no batched decode asked for
  EXPECT_NE(r.out.find("\"kv_type\": \"f32\""), std::string::npos) << r.out;  // generate's default
  // Decode at a depth over an f16 cache: the type is the run's, and a bad one is refused naming the flag.
  CliResult h = run_cli("bench --synthetic 260k -p 0 -n 8 -d 40 -r 1 -t 2 --kv-type f16 --json");
  ASSERT_EQ(h.code, 0) << h.err;
  EXPECT_NE(h.out.find("\"kv_type\": \"f16\""), std::string::npos) << h.out;
  EXPECT_GT(json_number(h.out, "decode_tok_s"), 0) << h.out;
  CliResult bad_kv = run_cli("bench --synthetic 260k -p 0 -n 8 --kv-type q4_0");
  EXPECT_NE(bad_kv.code, 0);
  EXPECT_NE(bad_kv.err.find("--kv-type"), std::string::npos) << bad_kv.err;
  // Several sequences decoded one batch per step: an aggregate rate and its ratio to one sequence's.
  CliResult s = run_cli("bench --synthetic 260k -p 0 -n 16 -r 1 -t 2 --sequences 4 --json");
  ASSERT_EQ(s.code, 0) << s.err;
  EXPECT_EQ(json_number(s.out, "sequences"), 4) << s.out;
  EXPECT_GT(json_number(s.out, "batched_decode_tok_s"), 0) << s.out;
  // (The rates are printed with 2 decimals, the ratio from the unrounded ones: a relative tolerance.)
  const double ratio = json_number(s.out, "batched_decode_tok_s") / json_number(s.out, "decode_tok_s");
  EXPECT_NEAR(json_number(s.out, "batched_speedup"), ratio, 1e-3 * ratio + 1e-3) << s.out;
  CliResult t = run_cli("bench --train --synthetic 260k --batch 2 --seq 32 --steps 1 --json");
  ASSERT_EQ(t.code, 0) << t.err;
  EXPECT_GT(json_number(t.out, "train_tok_s"), 0) << t.out;
  EXPECT_GT(json_number(t.out, "peak_fraction"), 0) << t.out;
  // The multiply-add ceiling is measured wherever the build has SIMD loops (null
  // otherwise), and no step's 6 N T rate can pass it.
  if (tessera::detect_isa() != tessera::Isa::Scalar) {
    EXPECT_GT(json_number(t.out, "fma_peak_gflops"), 0) << t.out;
    const double f = json_number(t.out, "fma_peak_fraction");
    EXPECT_TRUE(f > 0 && f < 1) << t.out;
  }
  CliResult bad = run_cli("bench --synthetic 260k -n -3");
  EXPECT_NE(bad.code, 0);
  EXPECT_NE(bad.err.find("-n"), std::string::npos) << bad.err;
  // Decode at depth: positions 300.. after a 300-token fill (past the model's 256 positions of context:
  // RoPE has no learned table), with and without a prefill test first.
  for (const char* pp : {"0", "16"}) {
    CliResult d = run_cli(std::string("bench --synthetic 260k -p ") + pp + " -n 8 -d 300 -r 2 -t 2 --json");
    ASSERT_EQ(d.code, 0) << d.err;
    EXPECT_EQ(json_number(d.out, "depth"), 300) << d.out;
    EXPECT_GT(json_number(d.out, "decode_tok_s"), 0) << d.out;
  }
  EXPECT_NE(run_cli("bench --synthetic 260k -n 4 -d -1").code, 0);
}

TEST(CliGenerate, ContextDefaultIsCappedAndLongerContextsWarn) {
  TESSERA_REQUIRE_SHARED(kModel);
  TESSERA_REQUIRE_SHARED("data/tinystories_val.txt");
  // A model trained for 65536 positions (Llama 3 says 131072): the KV cache defaults to 4096.
  tessera::Weights w = tessera::load_llama2c(shared_path(kModel));
  w.cfg.max_seq_len = 65536;
  const std::string gguf = temp_path("longctx.gguf");
  tessera::save_gguf(w, nullptr, gguf);
  const std::string args = "generate -m " + q(gguf) + " --tokenizer " + q(shared_path(kTok)) + " -p hi -n 2 ";
  CliResult r = run_cli(args);
  ASSERT_EQ(r.code, 0) << r.err;
  EXPECT_NE(r.err.find(", ctx 4096,"), std::string::npos) << r.err;
  r = run_cli(args + "-c 0");  // the model's whole context
  ASSERT_EQ(r.code, 0) << r.err;
  EXPECT_NE(r.err.find(", ctx 65536,"), std::string::npos) << r.err;
  std::remove(gguf.c_str());
  // stories260K was trained for 512: a longer context runs, with a warning.
  r = run_cli("generate " + model_args() + " -p hi -n 2 -c 1000");
  ASSERT_EQ(r.code, 0) << r.err;
  EXPECT_NE(r.err.find("warning: context 1000 exceeds the model's trained context 512"), std::string::npos) << r.err;
  r = run_cli("generate " + model_args() + " -p hi -n 2");
  EXPECT_EQ(r.err.find("warning"), std::string::npos) << r.err;
  // Perplexity windows are capped at the trained context instead.
  r = run_cli("perplexity " + model_args() + " -f " + q(shared_path("data/tinystories_val.txt")) +
              " -c 1000 --chunks 1 --json");
  ASSERT_EQ(r.code, 0) << r.err;
  EXPECT_NE(r.err.find("-c 1000 capped at the model's trained context 512"), std::string::npos) << r.err;
  EXPECT_NE(r.out.find("\"ctx\": 512"), std::string::npos) << r.out;
  r = run_cli("generate " + model_args() + " -p hi -n 2 -c -5");
  EXPECT_EQ(r.code, 1);
  EXPECT_NE(r.err.find("-c/--ctx-size must be >= 0, got -5"), std::string::npos) << r.err;
}
