// The architecture tables (model/arch.h): every registered architecture's
// parameter count, built weights, training layout and file round trips agree,
// for each variant its optional tensors give.
#include <gtest/gtest.h>

#include <filesystem>

#include "formats/load.h"
#include "formats/model_io.h"
#include "model/arch.h"
#include "model/synthetic.h"
#include "test_util.h"
#include "train/memory.h"
#include "train/params.h"

using namespace tessera;
namespace fs = std::filesystem;

namespace {

// The variants of an architecture: each optional feature on and off.
std::vector<ModelConfig> variants(const ArchDesc& d) {
  ModelConfig base = synthetic_config(d.arch == Arch::GPT2 ? "gpt2-tiny" : "260k");
  base.vocab_size = 96;
  std::vector<ModelConfig> v;
  for (int tied = 0; tied < 2; ++tied)
    for (int bias = 0; bias < 2; ++bias)
      for (int norm = 0; norm < 2; ++norm) {
        if (d.arch == Arch::GPT2 && (bias || norm)) continue;  // GPT-2 has neither
        ModelConfig c = base;
        c.tied_embeddings = tied, c.qkv_bias = bias, c.qk_norm = norm;
        v.push_back(c);
      }
  return v;
}

std::string what(const ArchDesc& d, const ModelConfig& c) {
  return std::string(d.name) + (c.tied_embeddings ? " tied" : " untied") + (c.qkv_bias ? " +bias" : "") +
         (c.qk_norm ? " +qk_norm" : "");
}

TEST(Arch, ParameterCountEqualsTheBuiltWeightsForEveryArchitecture) {
  ASSERT_GE(architectures().size(), 2u);
  for (const ArchDesc* d : architectures()) {
    EXPECT_EQ(&arch_desc(d->arch), d);
    for (const auto& n : d->gguf_archs) EXPECT_EQ(find_arch_gguf(n), d) << n;
    for (const auto& n : d->hf_archs) EXPECT_EQ(find_arch_hf(n), d) << n;
    for (const ModelConfig& c : variants(*d)) {
      const Weights w = make_random_weights(c, DType::F32, 1, 1);
      EXPECT_EQ(count_params(c), w.n_params()) << what(*d, c);
      EXPECT_EQ(train::count_params(c), w.n_params()) << what(*d, c);
      const train::Layout L(c);
      EXPECT_EQ(int64_t(L.n_params), w.n_params()) << what(*d, c);
      EXPECT_NO_THROW(w.validate_shapes("test")) << what(*d, c);
      // The layout holds exactly the table's tensors, by GGUF name, in its order.
      std::vector<std::string> names;
      for_each_tensor_spec(*d, c, [&](const TensorSpec& s, int64_t l) { names.push_back(gguf_tensor_name(s, l)); });
      ASSERT_EQ(names.size(), L.tensors.size()) << what(*d, c);
      for (size_t i = 0; i < names.size(); ++i) EXPECT_EQ(names[i], L.tensors[i].name) << what(*d, c);
    }
  }
}

TEST(Arch, EveryVariantRoundTripsThroughGgufAndSafetensors) {
  const std::string dir = test::temp_path("arch_roundtrip");
  for (const ArchDesc* d : architectures())
    for (const ModelConfig& c : variants(*d)) {
      const Weights w = make_random_weights(c, DType::F32, 2, 1);
      for (const std::string& out : {dir + ".gguf", dir + "_hf"}) {
        fs::remove_all(out);
        if (out.ends_with(".gguf")) save_gguf(w, nullptr, out);
        else save_hf(w, out);
        const LoadedModel back = load_model(out);
        const auto& b = back.weights.cfg;
        EXPECT_EQ(b.arch, c.arch) << what(*d, c) << " " << out;
        EXPECT_EQ(b.tied_embeddings, c.tied_embeddings) << what(*d, c) << " " << out;
        EXPECT_EQ(b.qkv_bias, c.qkv_bias) << what(*d, c) << " " << out;
        EXPECT_EQ(b.qk_norm, c.qk_norm) << what(*d, c) << " " << out;
        EXPECT_EQ(back.weights.n_params(), w.n_params()) << what(*d, c) << " " << out;
        fs::remove_all(out);
      }
    }
}

}  // namespace
