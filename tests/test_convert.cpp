// Round trips between llama2.c, GGUF and safetensors: identical logits for
// lossless conversions, bounded perplexity change for quantized ones.
#include <gtest/gtest.h>

#include <cmath>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>

#include "core/error.h"
#include "formats/gguf.h"
#include "formats/llama2c.h"
#include "formats/load.h"
#include "formats/model_io.h"
#include "formats/safetensors.h"
#include "infer/perplexity.h"
#include "model/model.h"
#include "model/synthetic.h"
#include "tokenizer/pretokenizer.h"
#include "tokenizer/tokenizer.h"
#include "model_test_util.h"
#include "test_util.h"

using namespace tessera;
namespace fs = std::filesystem;
using test::all_logits;
using test::max_abs_diff;

namespace {

const std::vector<int32_t> kTokens = {1, 403, 407, 261, 378, 395, 342, 263, 289, 260, 381, 500, 301, 282, 265, 30};

struct TempDir {
  std::string path = test::temp_path("convert");
  TempDir() { std::filesystem::create_directories(path); }
  ~TempDir() { std::filesystem::remove_all(path); }
};

// Token stream for perplexity: deterministic pseudo-text ids, or real text when a tokenizer is at hand.
std::vector<int32_t> ppl_tokens() {
  Tokenizer tok = load_llama2c_tokenizer(test::shared_path("models/tok512.bin"), 512);
  std::ifstream in(test::shared_path("data/tinystories_val.txt"));
  std::string text(12000, '\0');
  in.read(text.data(), 12000);
  text.resize(size_t(in.gcount()));
  EncodeOptions eo;
  eo.add_special = false;
  return tok.encode(text, eo);
}

double ppl(const Weights& w, const std::vector<int32_t>& ids) {
  RunOptions ro;
  ro.n_ctx = 256;
  Model m(w, ro);
  KernelContext ctx(2);
  return perplexity(m, ctx, ids, 256, 1, 8).perplexity;
}

}  // namespace

TEST(Convert, Stories260KToGgufAndSafetensorsGivesSameLogits) {
  TESSERA_REQUIRE_SHARED("models/stories260K.bin");
  TempDir dir;
  Weights src = load_llama2c(test::shared_path("models/stories260K.bin"));
  const auto ref = all_logits(src, kTokens);
  const std::string gguf = dir.path + "/m.gguf", hf = dir.path + "/hf";
  save_gguf(src, nullptr, gguf);
  save_hf(src, hf);
  LoadedModel g = load_model(gguf);
  LoadedModel h = load_model(hf);
  EXPECT_EQ(g.format, "gguf");
  EXPECT_EQ(h.format, "safetensors");
  EXPECT_EQ(h.weights.cfg.rope_style, ops::RopeStyle::HalfSplit);  // HF layout: rows permuted on the way out
  // GGUF keeps the interleaved layout: bit-identical. HF permutes q/k rows, which only
  // reorders the sums inside each q.k dot product.
  EXPECT_EQ(max_abs_diff(ref, all_logits(g.weights, kTokens)), 0.0);
  EXPECT_LT(max_abs_diff(ref, all_logits(h.weights, kTokens)), 1e-4);
  // And back from HF to GGUF: permuted back to interleaved, bit-identical to the original again.
  save_gguf(h.weights, nullptr, dir.path + "/back.gguf");
  EXPECT_EQ(max_abs_diff(ref, all_logits(load_model(dir.path + "/back.gguf").weights, kTokens)), 0.0);
}

TEST(Convert, QuantizedPerplexityStaysClose) {
  TESSERA_REQUIRE_SHARED("models/stories260K.bin");
  TESSERA_REQUIRE_SHARED("data/tinystories_val.txt");
  TempDir dir;
  Weights src = load_llama2c(test::shared_path("models/stories260K.bin"));
  const auto ids = ppl_tokens();
  const double p32 = ppl(src, ids);
  EXPECT_NEAR(p32, 4.357, 0.001);
  for (auto [type, tol] : {std::pair{DType::F16, 0.002}, {DType::BF16, 0.01}, {DType::Q8_0, 0.02}, {DType::Q4_0, 0.10}}) {
    const std::string path = dir.path + "/" + dtype_name(type) + ".gguf";
    save_gguf(convert_weights(src, *quant_mix_from_name(dtype_name(type))), nullptr, path);
    LoadedModel m = load_model(path);
    EXPECT_EQ(m.weights.layers[0].wq.dtype, type);
    // llama.cpp's rule: the (tied) output at Q6_K under Q4_0, Q8_0 since rows of 64 are not a multiple of 256
    EXPECT_EQ(m.weights.output.dtype, type == DType::Q4_0 ? DType::Q8_0 : type);
    const double p = ppl(m.weights, ids);
    EXPECT_LT(std::fabs(p / p32 - 1), tol) << dtype_name(type) << ": ppl " << p << " vs f32 " << p32;
  }
  Weights q8 = load_llama2c(test::shared_path("models/stories260K_q8.bin"));
  const double p8 = ppl(q8, ids);
  EXPECT_LT(std::fabs(p8 / p32 - 1), 0.02) << "ak42 ppl " << p8;
}

TEST(Convert, Gpt2RoundTripsThroughGgufAndSafetensors) {
  TempDir dir;
  Weights src = make_random_weights(synthetic_config("gpt2-tiny"), DType::F32, 7, 2);
  const std::vector<int32_t> toks = {5, 17, 300, 2, 511, 64, 9};
  const auto ref = all_logits(src, toks);
  save_gguf(src, nullptr, dir.path + "/g.gguf");
  save_hf(src, dir.path + "/hf");
  LoadedModel g = load_model(dir.path + "/g.gguf");
  LoadedModel h = load_model(dir.path + "/hf");
  EXPECT_EQ(g.weights.cfg.arch, Arch::GPT2);
  EXPECT_EQ(h.weights.cfg.arch, Arch::GPT2);
  EXPECT_EQ(max_abs_diff(ref, all_logits(g.weights, toks)), 0.0);
  EXPECT_EQ(max_abs_diff(ref, all_logits(h.weights, toks)), 0.0);
  // The GPT-2 block is not degenerate: different inputs give different logits.
  const auto other = all_logits(src, {6, 17, 300, 2, 511, 64, 9});
  EXPECT_GT(max_abs_diff(ref, other), 1e-3);
}

TEST(Convert, UnsupportedArchitectureAndShapeMismatchAreErrors) {
  TempDir dir;
  Weights src = make_random_weights(synthetic_config("260k"), DType::F32, 1, 1);
  save_hf(src, dir.path + "/hf");
  // Edit config.json: unknown architecture.
  const std::string cfg = dir.path + "/hf/config.json";
  std::string text;
  {
    std::ifstream in(cfg);
    text.assign(std::istreambuf_iterator<char>(in), {});
  }
  auto write = [&](const std::string& t) { std::ofstream(cfg) << t; };
  std::string bad = text;
  bad.replace(bad.find("LlamaForCausalLM"), 16, "MambaForCausalLM");
  write(bad);
  try {
    load_model(dir.path + "/hf");
    FAIL() << "expected an error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("MambaForCausalLM"), std::string::npos) << e.what();
  }
  // Config disagreeing with the tensors.
  bad = text;
  bad.replace(bad.find("\"intermediate_size\": 172"), 24, "\"intermediate_size\": 173");
  write(bad);
  try {
    load_model(dir.path + "/hf");
    FAIL() << "expected an error";
  } catch (const Error& e) {
    // The first tensor of the architecture's table whose shape uses intermediate_size.
    EXPECT_NE(std::string(e.what()).find("model.layers.0.mlp.gate_proj.weight has shape [172, 64], config needs [173, 64]"),
              std::string::npos) << e.what();
  }
}

// A tensor the model would not read (here an FFN bias, as Llama's mlp_bias adds) is an
// error naming it, not a silently different model; buffers some checkpoints carry are not.
TEST(Convert, TensorsTheModelDoesNotReadAreErrors) {
  TempDir dir;
  Weights src = make_random_weights(synthetic_config("260k"), DType::F32, 1, 1);
  std::vector<float> bias(size_t(src.cfg.hidden_dim), 0.5f);
  const TensorView extra = make_view(DType::F32, {src.cfg.hidden_dim}, bias.data());

  // GGUF: the file save_gguf writes, copied with one tensor more.
  save_gguf(src, nullptr, dir.path + "/m.gguf");
  {
    auto f = gguf::File::open(dir.path + "/m.gguf");
    gguf::Writer g;
    for (const auto& [k, v] : f->metadata()) {
      using VT = gguf::ValueType;
      switch (v.type) {
        case VT::STRING: g.set_string(k, v.s); break;
        case VT::UINT32: g.set_u32(k, uint32_t(v.u)); break;
        case VT::INT32: g.set_i32(k, int32_t(v.i)); break;
        case VT::FLOAT32: g.set_f32(k, float(v.f)); break;
        case VT::BOOL: g.set_bool(k, v.b); break;
        default: FAIL() << "metadata type of " << k << " not copied by this test";
      }
    }
    for (const auto& t : f->tensors()) g.add_tensor(t.name, t.view);
    g.add_tensor("blk.0.ffn_up.bias", extra);
    g.write(dir.path + "/extra.gguf");
  }
  auto expect_error = [](const std::string& path, const std::string& words) {
    try {
      load_model(path);
      ADD_FAILURE() << "expected an error for " << path;
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find(words), std::string::npos) << e.what();
    }
  };
  EXPECT_NO_THROW(load_model(dir.path + "/m.gguf"));
  expect_error(dir.path + "/extra.gguf", "extra.gguf: tensor blk.0.ffn_up.bias is not part of the llama model");

  // Hugging Face: the same, plus the rotary inverse-frequency buffer older checkpoints store.
  save_hf(src, dir.path + "/hf");
  fs::create_directories(dir.path + "/hf2");
  fs::copy_file(dir.path + "/hf/config.json", dir.path + "/hf2/config.json");
  auto st = safetensors::Collection::open(dir.path + "/hf");
  std::vector<float> inv(4, 1.f);
  auto write_with = [&](const std::string& name, const TensorView& t) {
    safetensors::Writer w;
    for (const std::string& n : st.names()) w.add_tensor(n, st.tensor(n).view);
    w.add_tensor(name, t);
    w.write(dir.path + "/hf2/model.safetensors");
  };
  write_with("model.layers.0.self_attn.rotary_emb.inv_freq", make_view(DType::F32, {4}, inv.data()));
  EXPECT_NO_THROW(load_model(dir.path + "/hf2"));
  write_with("model.layers.0.mlp.up_proj.bias", extra);
  expect_error(dir.path + "/hf2", "tensor model.layers.0.mlp.up_proj.bias is not part of the LlamaForCausalLM");
}

// GGUF names a byte-level BPE pre-tokenizer by family in llama.cpp's spelling
// ("gpt-2": llama.cpp refuses "gpt2"), recognises a family given as regexes
// (a Qwen2 tokenizer.json), and refuses regexes no GGUF reader knows.
TEST(Convert, GgufNamesThePreTokenizerAsLlamaCppDoes) {
  TESSERA_REQUIRE_SHARED("tokenizers/gpt2/vocab.json");
  TempDir dir;
  const Tokenizer gpt2 = load_gpt2_vocab(test::shared_path("tokenizers/gpt2/vocab.json"),
                                         test::shared_path("tokenizers/gpt2/merges.txt"));
  ModelConfig c = synthetic_config("260k");
  c.vocab_size = gpt2.n_vocab();
  const Weights w = make_random_weights(c, DType::F32, 1, 1);
  auto pre_of = [&](const Tokenizer& tok, const std::string& name) {
    save_gguf(w, &tok, dir.path + "/" + name);
    return gguf::File::open(dir.path + "/" + name)->get_string("tokenizer.ggml.pre");
  };
  EXPECT_EQ(gpt2.data().pre, "gpt2");  // our own name for it
  EXPECT_EQ(pre_of(gpt2, "gpt2.gguf"), "gpt-2");
  EXPECT_EQ(load_model(dir.path + "/gpt2.gguf").tokenizer->encode("Hello 12345 world"),
            gpt2.encode("Hello 12345 world"));

  // The same vocabulary with Qwen2's regex (single digits) given as patterns.
  VocabData d = gpt2.data();
  d.pre.clear();
  d.pre_patterns = pretokenizer_patterns("qwen2");
  const Tokenizer qwen(d);
  EXPECT_EQ(pre_of(qwen, "qwen.gguf"), "qwen2");
  const std::string text = "Hello 12345 world";
  EXPECT_NE(qwen.encode(text), gpt2.encode(text));
  EXPECT_EQ(load_model(dir.path + "/qwen.gguf").tokenizer->encode(text), qwen.encode(text));
  // As a tokenizer.json's Split pre-tokenizer gives it: recognised by name.
  const nlohmann::json tj = {
      {"pre_tokenizer",
       {{"type", "Sequence"},
        {"pretokenizers",
         {{{"type", "Split"}, {"pattern", {{"Regex", d.pre_patterns[0]}}}, {"behavior", "Isolated"}},
          {{"type", "ByteLevel"}, {"use_regex", false}}}}}},
      {"model", {{"type", "BPE"}, {"vocab", {{"a", 0}, {"b", 1}}}, {"merges", nlohmann::json::array()}}}};
  EXPECT_EQ(parse_hf_tokenizer_json(tj.dump(), "tokenizer.json").pre, "qwen2");

  // Regexes of no family: an error before anything is written.
  d.pre_patterns = {R"(\p{L}+|\p{N}+|[^\p{L}\p{N}]+)"};
  const Tokenizer custom(d);
  try {
    save_gguf(w, &custom, dir.path + "/custom.gguf");
    FAIL() << "expected an error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("custom.gguf: the tokenizer's pre-tokenizer regexes"), std::string::npos)
        << e.what();
  }
  EXPECT_FALSE(fs::exists(dir.path + "/custom.gguf"));
}
