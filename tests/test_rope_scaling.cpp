// RoPE frequency scaling (Llama 3.x "llama3", linear): the divisors against
// Hugging Face's formula and values computed outside this code, the model
// against the independent float64 reference, conversions between GGUF
// (rope_freqs.weight, llama.cpp's linear keys) and config.json's rope_scaling,
// checkpoints, `tessera info`, and bad input.
#include <gtest/gtest.h>

#include <cmath>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>

#include "cli_util.h"
#include "core/error.h"
#include "formats/gguf.h"
#include "formats/llama2c.h"
#include "formats/load.h"
#include "formats/model_io.h"
#include "model/model.h"
#include "formats/rope_scaling.h"
#include "ref_llama.h"
#include "model_test_util.h"
#include "test_util.h"
#include "train/checkpoint.h"

using namespace tessera;
using test::all_logits;
using test::max_abs_diff;
namespace fs = std::filesystem;

namespace {

// Hugging Face's _compute_llama3_parameters, written from its description: the scaled
// inverse frequencies (not divisors), in double.
std::vector<double> hf_llama3_inv_freq(double theta, int hd, double factor, double lo, double hi, double L) {
  std::vector<double> out;
  for (int i = 0; i < hd; i += 2) {
    const double inv = 1.0 / std::pow(theta, double(i) / hd);
    const double wavelen = 2 * M_PI / inv;
    double v = wavelen > L / lo ? inv / factor : inv;
    if (!(wavelen < L / hi) && !(wavelen > L / lo)) {
      const double smooth = (L / wavelen - lo) / (hi - lo);
      v = (1 - smooth) * v / factor + smooth * v;
    }
    out.push_back(v);
  }
  return out;
}

Llama3RopeScaling params(double factor, double lo, double hi, int64_t L) {
  Llama3RopeScaling s;
  s.factor = factor, s.low_freq_factor = lo, s.high_freq_factor = hi, s.original_context = L;
  return s;
}

struct TempDir {
  std::string path = test::temp_path("rope");
  TempDir() { fs::create_directories(path); }
  ~TempDir() { fs::remove_all(path); }
};

nlohmann::json read_json(const std::string& path) {
  std::ifstream in(path);
  return nlohmann::json::parse(in);
}

void write_json(const std::string& path, const nlohmann::json& j) { std::ofstream(path) << j.dump(2); }

const std::vector<int32_t> kTokens = {1, 403, 407, 261, 378, 395, 342, 263, 289, 260, 381, 500, 301, 282, 265, 30};

}  // namespace

TEST(RopeScaling, Llama3DivisorsMatchHuggingFaceFormula) {
  // Llama 3.2 1B / 3B and Llama 3.1 8B parameters.
  for (auto [hd, factor] : {std::pair{64, 32.0}, {128, 8.0}, {128, 32.0}}) {
    const auto f = llama3_rope_factors(params(factor, 1, 4, 8192), 500000.0, hd);
    const auto want = hf_llama3_inv_freq(500000.0, hd, factor, 1, 4, 8192);
    ASSERT_EQ(f.size(), size_t(hd / 2));
    for (int i = 0; i < hd / 2; ++i) {
      const double base = 1.0 / std::pow(500000.0, 2.0 * i / hd);
      EXPECT_NEAR(base / f[size_t(i)], want[size_t(i)], 1e-6 * want[size_t(i)]) << "hd " << hd << " i " << i;
    }
  }
  // Values computed with Python from llama.cpp's convert_hf_to_gguf.py rope_freqs rule.
  const auto f32 = llama3_rope_factors(params(32, 1, 4, 8192), 500000.0, 64);
  EXPECT_EQ(f32[14], 1.f);
  EXPECT_NEAR(f32[15], 1.6513292457638984, 1e-6);
  EXPECT_NEAR(f32[16], 3.2922621029408843, 1e-6);
  EXPECT_NEAR(f32[17], 9.666728978753293, 1e-5);
  EXPECT_EQ(f32[18], 32.f);
  const auto f8 = llama3_rope_factors(params(8, 1, 4, 8192), 500000.0, 128);
  EXPECT_EQ(f8[28], 1.f);
  EXPECT_NEAR(f8[29], 1.207483871283662, 1e-6);
  EXPECT_NEAR(f8[32], 2.6945296878947333, 1e-6);
  EXPECT_NEAR(f8[34], 5.257326588708467, 1e-6);
  EXPECT_EQ(f8[35], 8.f);
}

TEST(RopeScaling, FitRecoversEquivalentParameters) {
  // Llama 3.1 / 3.2: the ramp fixes the parameters exactly.
  for (auto [hd, factor] : {std::pair{64, 32.0}, {128, 8.0}}) {
    auto s = fit_llama3_rope(llama3_rope_factors(params(factor, 1, 4, 8192), 500000.0, hd), 500000.0, hd);
    ASSERT_TRUE(s.has_value());
    EXPECT_EQ(s->factor, factor);
    EXPECT_EQ(s->low_freq_factor, 1.0);
    EXPECT_EQ(s->high_freq_factor, 4.0);
    EXPECT_EQ(s->original_context, 8192);
  }
  // Small heads with one ramp frequency or none: parameters that give the same divisors.
  for (auto p : {params(4, 2, 32, 8192), params(4, 1, 4, 1024), params(3, 1, 2, 64), params(6, 1, 8, 4096)}) {
    const auto f = llama3_rope_factors(p, 10000.0, 8);
    auto s = fit_llama3_rope(f, 10000.0, 8);
    ASSERT_TRUE(s.has_value()) << p.factor << " " << p.low_freq_factor << " " << p.high_freq_factor;
    const auto g = llama3_rope_factors(*s, 10000.0, 8);
    for (size_t i = 0; i < f.size(); ++i) EXPECT_NEAR(g[i], f[i], 1e-5 * f[i]) << i;
  }
  // Not of the llama3 form: a divisor below 1, divided frequencies shorter than kept ones,
  // a ramp that is not smooth = A / wavelength - B.
  EXPECT_FALSE(fit_llama3_rope({1, 3, 2, 5}, 10000.0, 8));
  EXPECT_FALSE(fit_llama3_rope({1, 0.5f, 1, 1}, 10000.0, 8));
  EXPECT_FALSE(fit_llama3_rope({4, 1, 1, 1}, 10000.0, 8));
  auto bent = llama3_rope_factors(params(8, 1, 4, 8192), 500000.0, 128);
  bent[31] *= 1.01f;
  EXPECT_FALSE(fit_llama3_rope(bent, 500000.0, 128));
  EXPECT_FALSE(fit_llama3_rope({1, 2}, 10000.0, 8));  // wrong count
  EXPECT_EQ(uniform_rope_factor({2, 2, 2, 2}), 2.f);
  EXPECT_FALSE(uniform_rope_factor({1, 2, 2, 2}));
  EXPECT_EQ(describe_rope_scaling({}, 10000.0, 8), "none");
  EXPECT_EQ(describe_rope_scaling({2, 2, 2, 2}, 10000.0, 8), "linear x2");
  EXPECT_EQ(describe_rope_scaling(llama3_rope_factors(params(32, 1, 4, 8192), 500000.0, 64), 500000.0, 64),
            "llama3 (factor 32, low_freq_factor 1, high_freq_factor 4, original context 8192)");
}

TEST(RopeScaling, ModelMatchesFloat64Reference) {
  TESSERA_REQUIRE_SHARED("models/stories260K.bin");
  const std::string path = test::shared_path("models/stories260K.bin");
  Weights w = load_llama2c(path);
  const std::vector<float> plain = all_logits(w, kTokens);
  // Head size 8, theta 10000: divisors {1, 1, 1.90, 4}, one frequency on the ramp.
  w.cfg.rope_freq_factors = llama3_rope_factors(params(4, 2, 32, 8192), 10000.0, 8);
  ASSERT_NEAR(w.cfg.rope_freq_factors[2], 1.9013238641248678, 1e-6);  // Python, as above
  test::RefLlama ref(path);
  ref.freq_div.assign(w.cfg.rope_freq_factors.begin(), w.cfg.rope_freq_factors.end());
  Model m(w, RunOptions{});
  KernelContext ctx(2);
  std::vector<float> scaled;
  for (size_t p = 0; p < kTokens.size(); ++p) {
    const float* lg = m.forward(ctx, &kTokens[p], 1, int64_t(p));
    scaled.insert(scaled.end(), lg, lg + w.cfg.vocab_size);
    const std::vector<double> want = ref.step(kTokens[p], int(p));
    double err = 0, mag = 0;
    for (size_t i = 0; i < want.size(); ++i) {
      err = std::max(err, std::fabs(double(lg[i]) - want[i]));
      mag = std::max(mag, std::fabs(want[i]));
    }
    EXPECT_LT(err, 1e-4 * std::max(1.0, mag)) << "position " << p;
  }
  // The scaling changes the model (a loader that dropped it would be caught).
  EXPECT_GT(max_abs_diff(plain, scaled), 1e-2);
  // Batched prefill uses the same tables.
  EXPECT_LT(max_abs_diff(scaled, all_logits(w, kTokens)), 1e-4);
}

TEST(RopeScaling, GgufAndSafetensorsRoundTrip) {
  TESSERA_REQUIRE_SHARED("models/stories260K.bin");
  TempDir dir;
  Weights src = load_llama2c(test::shared_path("models/stories260K.bin"));
  // Two frequencies on the ramp: the parameters are determined by the divisors.
  src.cfg.rope_freq_factors = llama3_rope_factors(params(4, 8, 256, 8192), 10000.0, 8);
  ASSERT_NEAR(src.cfg.rope_freq_factors[1], 1.6126431531622227, 1e-6);  // Python, as above
  ASSERT_NEAR(src.cfg.rope_freq_factors[2], 3.770230037508075, 1e-6);
  const auto ref = all_logits(src, kTokens);
  const std::string g = dir.path + "/m.gguf", hf = dir.path + "/hf";
  save_gguf(src, nullptr, g);
  save_hf(src, hf);
  {  // llama.cpp's form: the divisors as the F32 tensor rope_freqs.weight, no scaling keys.
    auto f = gguf::File::open(g);
    const auto& t = f->tensor("rope_freqs.weight");
    ASSERT_EQ(t.shape, std::vector<int64_t>{4});
    EXPECT_EQ(t.dtype, DType::F32);
    for (int i = 0; i < 4; ++i) EXPECT_EQ(t.view.f32()[i], src.cfg.rope_freq_factors[size_t(i)]);
    EXPECT_EQ(f->find("llama.rope.scaling.type"), nullptr);
  }
  const auto rs = read_json(hf + "/config.json")["rope_scaling"];
  EXPECT_EQ(rs["rope_type"], "llama3");
  EXPECT_EQ(rs["factor"], 4.0);
  EXPECT_EQ(rs["low_freq_factor"], 8.0);
  EXPECT_EQ(rs["high_freq_factor"], 256.0);
  EXPECT_EQ(rs["original_max_position_embeddings"], 8192);
  LoadedModel lg = load_model(g), lh = load_model(hf);
  EXPECT_EQ(lg.weights.cfg.rope_freq_factors, src.cfg.rope_freq_factors);
  for (size_t i = 0; i < 4; ++i)
    EXPECT_NEAR(lh.weights.cfg.rope_freq_factors[i], src.cfg.rope_freq_factors[i], 1e-6);
  EXPECT_EQ(max_abs_diff(ref, all_logits(lg.weights, kTokens)), 0.0);
  EXPECT_LT(max_abs_diff(ref, all_logits(lh.weights, kTokens)), 1e-4);
  // HF -> GGUF -> HF keeps the parameters.
  save_gguf(lh.weights, nullptr, dir.path + "/back.gguf");
  save_hf(load_model(dir.path + "/back.gguf").weights, dir.path + "/hf2");
  EXPECT_EQ(read_json(dir.path + "/hf2/config.json")["rope_scaling"], rs);

  // Linear scaling: llama.cpp's rope.scaling.type / rope.scaling.factor keys, HF's "linear".
  Weights lin = src;
  lin.cfg.rope_freq_factors.assign(4, 2.f);
  const auto lref = all_logits(lin, kTokens);
  EXPECT_GT(max_abs_diff(lref, ref), 1e-3);
  save_gguf(lin, nullptr, dir.path + "/lin.gguf");
  save_hf(lin, dir.path + "/lin");
  {
    auto f = gguf::File::open(dir.path + "/lin.gguf");
    EXPECT_EQ(f->get_string("llama.rope.scaling.type"), "linear");
    EXPECT_EQ(f->get_float("llama.rope.scaling.factor"), 2.0);
    EXPECT_EQ(f->find_tensor("rope_freqs.weight"), nullptr);
  }
  EXPECT_EQ(read_json(dir.path + "/lin/config.json")["rope_scaling"],
            (nlohmann::json{{"rope_type", "linear"}, {"factor", 2.0}}));
  EXPECT_EQ(max_abs_diff(lref, all_logits(load_model(dir.path + "/lin.gguf").weights, kTokens)), 0.0);
  EXPECT_LT(max_abs_diff(lref, all_logits(load_model(dir.path + "/lin").weights, kTokens)), 1e-4);

  // Newer transformers write "rope_parameters" (with rope_theta inside) instead.
  auto cfg = read_json(hf + "/config.json");
  cfg["rope_parameters"] = cfg["rope_scaling"];
  cfg["rope_parameters"]["rope_theta"] = cfg["rope_theta"];
  cfg.erase("rope_scaling");
  cfg.erase("rope_theta");
  write_json(hf + "/config.json", cfg);
  EXPECT_LT(max_abs_diff(ref, all_logits(load_model(hf).weights, kTokens)), 1e-4);

  // `tessera info` names the scaling.
  auto r = test::run_cli("info -m " + test::q(g));
  EXPECT_EQ(r.code, 0) << r.err;
  EXPECT_NE(r.out.find("rope scaling:   llama3 (factor 4, low_freq_factor 8, high_freq_factor 256"), std::string::npos)
      << r.out;
}

TEST(RopeScaling, CheckpointConfigKeepsDivisors) {
  ModelConfig c;
  c.dim = 32, c.n_layers = 1, c.n_heads = 4, c.n_kv_heads = 4, c.head_dim = 8, c.hidden_dim = 48;
  c.vocab_size = 40, c.max_seq_len = 16;
  c.rope_freq_factors = llama3_rope_factors(params(4, 2, 32, 8192), 10000.0, 8);
  EXPECT_EQ(train::config_from_json(train::config_to_json(c), "test").rope_freq_factors, c.rope_freq_factors);
  c.rope_freq_factors.clear();
  const auto j = train::config_to_json(c);
  EXPECT_FALSE(j.contains("rope_freq_factors"));
  EXPECT_TRUE(train::config_from_json(j, "test").rope_freq_factors.empty());
}

TEST(RopeScaling, BadInputIsAnError) {
  TESSERA_REQUIRE_SHARED("models/stories260K.bin");
  TempDir dir;
  Weights src = load_llama2c(test::shared_path("models/stories260K.bin"));
  const std::string hf = dir.path + "/hf";
  save_hf(src, hf);
  const auto base = read_json(hf + "/config.json");
  auto expect_error = [&](const std::string& path, std::initializer_list<const char*> words) {
    try {
      load_model(path);
      ADD_FAILURE() << "expected an error for " << path;
    } catch (const Error& e) {
      for (const char* w : words) EXPECT_NE(std::string(e.what()).find(w), std::string::npos) << e.what();
    }
  };
  auto with_scaling = [&](const nlohmann::json& rs) {
    auto cfg = base;
    cfg["rope_scaling"] = rs;
    write_json(hf + "/config.json", cfg);
  };
  with_scaling({{"rope_type", "yarn"}, {"factor", 4.0}, {"original_max_position_embeddings", 4096}});
  expect_error(hf, {"config.json", "rope_scaling", "yarn", "not supported"});
  with_scaling({{"type", "dynamic"}, {"factor", 2.0}});
  expect_error(hf, {"rope_scaling", "dynamic"});
  with_scaling({{"rope_type", "llama3"}, {"factor", 8.0}, {"low_freq_factor", 1.0},
                {"original_max_position_embeddings", 8192}});
  expect_error(hf, {"rope_scaling.high_freq_factor", "missing"});
  with_scaling({{"rope_type", "llama3"}, {"factor", 8.0}, {"low_freq_factor", 4.0}, {"high_freq_factor", 4.0},
                {"original_max_position_embeddings", 8192}});
  expect_error(hf, {"rope_scaling", "low_freq_factor < high_freq_factor"});
  with_scaling({{"rope_type", "linear"}, {"factor", -2.0}});
  expect_error(hf, {"rope_scaling.factor", "positive"});
  with_scaling("linear");
  expect_error(hf, {"rope_scaling", "object"});

  // GGUF: a divisor tensor of the wrong length, an unsupported scaling type.
  Weights bad = src;
  bad.cfg.rope_freq_factors = {1.f, 2.f, 3.f};  // head_dim / 2 is 4
  save_gguf(bad, nullptr, dir.path + "/short.gguf");
  expect_error(dir.path + "/short.gguf", {"short.gguf", "rope_freqs.weight", "[3]", "head_dim / 2"});
  bad.cfg.rope_freq_factors.assign(4, 2.f);
  save_gguf(bad, nullptr, dir.path + "/lin.gguf");
  std::string bytes = test::slurp(dir.path + "/lin.gguf");
  const size_t at = bytes.find("linear");
  ASSERT_NE(at, std::string::npos);
  bytes.replace(at, 6, "yarn__");
  std::ofstream(dir.path + "/yarn.gguf", std::ios::binary) << bytes;
  expect_error(dir.path + "/yarn.gguf", {"yarn.gguf", "rope.scaling.type 'yarn__'", "not supported"});

  // Divisors that config.json cannot express: an error, and nothing written.
  bad.cfg.rope_freq_factors = {1.f, 3.f, 2.f, 5.f};
  try {
    save_hf(bad, dir.path + "/odd");
    ADD_FAILURE() << "expected an error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("neither linear nor llama3"), std::string::npos) << e.what();
  }
  EXPECT_FALSE(fs::exists(dir.path + "/odd"));
  // A divisor of zero in a config is refused.
  bad.cfg.rope_freq_factors = {1.f, 0.f, 2.f, 2.f};
  EXPECT_THROW(bad.cfg.validate("cfg"), Error);
}

TEST(RopeScaling, CliConvertTrainExportKeepTheScaling) {
  TESSERA_REQUIRE_SHARED("models/stories260K.bin");
  TESSERA_REQUIRE_SHARED("data/tinystories_val.txt");
  TempDir dir;
  using test::q;
  Weights src = load_llama2c(test::shared_path("models/stories260K.bin"));
  src.cfg.rope_freq_factors = llama3_rope_factors(params(4, 8, 256, 8192), 10000.0, 8);
  save_hf(src, dir.path + "/hf");
  const std::string tok = test::shared_path("models/tok512.bin");
  auto r = test::run_cli("convert " + q(dir.path + "/hf") + " " + q(dir.path + "/m.gguf") + " --tokenizer " + q(tok));
  ASSERT_EQ(r.code, 0) << r.err;
  r = test::run_cli("data prepare --tokenizer " + q(tok) + " -o " + q(dir.path + "/data") + " " +
                    q(test::shared_path("data/tinystories_val.txt")));
  ASSERT_EQ(r.code, 0) << r.err;
  r = test::run_cli("train --init " + q(dir.path + "/m.gguf") + " --data " + q(dir.path + "/data") + " -o " +
                    q(dir.path + "/run") + " --batch 2 --seq 32 --steps 2 --ckpt-interval 2 --eval-interval 2" +
                    " --eval-batches 1 -t 2");
  ASSERT_EQ(r.code, 0) << r.err;
  r = test::run_cli("export " + q(dir.path + "/run") + " -o " + q(dir.path + "/out"));
  ASSERT_EQ(r.code, 0) << r.err;
  EXPECT_EQ(read_json(dir.path + "/out/config.json")["rope_scaling"],
            read_json(dir.path + "/hf/config.json")["rope_scaling"]);
  EXPECT_EQ(load_model(dir.path + "/out").weights.cfg.rope_freq_factors.size(), 4u);
}
