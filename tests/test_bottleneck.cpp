// Bottleneck adapters (train/lora.h LoraConfig::adapter_dim; Houlsby et al. 2019): their
// gradients by central differences on whole frozen models (Llama with both sites, dropout
// and recomputation; GPT-2 with GELU; mixture-of-experts layers, attention site only); a
// fresh adapter is the base model exactly; the engine (Model + RunOptions::bottleneck, read
// back from the GGUF file) computes what training computes; the persistent-team decode step
// gives the region path's logits bit for bit. (The command line: tests/test_lora.cpp.)
#include <gtest/gtest.h>
#include <omp.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <random>

#include "core/error.h"
#include "formats/lora_adapter.h"
#include "model/model.h"
#include "model/synthetic.h"
#include "adapter_grad_util.h"
#include "test_util.h"
#include "train/lora.h"
#include "train/params.h"
#include "train/transformer.h"

using namespace tessera;
using namespace tessera::train;
using Vec = std::vector<double>;
namespace fs = std::filesystem;

namespace {

ModelConfig tiny(Arch arch) { return test::tiny_adapter_model(arch); }

void check_grads(const ModelConfig& c, const LoraConfig& lc, const ModelOptions& mo, uint64_t key,
                 const std::string& what) {
  test::check_adapter_grads(c, lc, mo, key, what, 41, 0.4);
}

}  // namespace

TEST(Bottleneck, GradientsMatchFiniteDifferences) {
  LoraConfig lc;
  lc.adapter_dim = 3;
  check_grads(tiny(Arch::Llama), lc, ModelOptions{}, 0, "llama relu");
  ModelOptions drop;
  drop.dropout = 0.2f, drop.recompute = true;
  check_grads(tiny(Arch::Llama), lc, drop, 777, "llama relu, dropout, recompute");
  lc.adapter_gelu = true;
  check_grads(tiny(Arch::GPT2), lc, ModelOptions{}, 0, "gpt2 gelu");
  lc.adapter_sites = 2;
  ModelConfig post = tiny(Arch::Llama);
  post.norm_placement = NormPlacement::Post;
  check_grads(post, lc, ModelOptions{}, 0, "post-norm llama, ffn site");
  ModelConfig mix = tiny(Arch::Llama);
  mix.moe_experts = 4, mix.moe_used = 2, mix.moe_hidden = 6, mix.moe_first_dense = 1;
  mix.set_moe_layers();
  lc.adapter_sites = 3;
  const LoraLayout LL(Layout(mix), lc);
  EXPECT_EQ(LL.tensors.size(), size_t(4 * 3));  // layer 0: both sites; layer 1 (MoE): attention only
  check_grads(mix, lc, ModelOptions{}, 0, "moe");
}

// Fresh adapters (W_up = 0, biases 0) compute the base model exactly; trained ones, run by
// the engine from the exported GGUF file, compute what training computes (per-row NLL),
// and something else than the base.
TEST(Bottleneck, FreshIsTheBaseAndTheEngineMatchesTraining) {
  for (Arch arch : {Arch::Llama, Arch::GPT2}) {
    ModelConfig c = tiny(arch);
    c.dim = 32, c.head_dim = 8, c.n_heads = 4, c.n_kv_heads = arch == Arch::GPT2 ? 4 : 2, c.hidden_dim = 48;
    c.vocab_size = 37, c.max_seq_len = 16;
    const Layout L(c);
    LoraConfig lc;
    lc.adapter_dim = 6, lc.adapter_gelu = arch == Arch::GPT2;
    const LoraLayout LL(L, lc);
    ParamVec p(L.total), a(LL.total);
    init_params(L, p.data(), 5);
    init_lora(LL, a.data(), 6);
    const int64_t T = 9;
    const std::vector<int32_t> tok = {3, 14, 15, 9, 26, 5, 35, 8, 9};
    std::vector<int32_t> tgt(tok.begin() + 1, tok.end());
    tgt.push_back(-1);
    Transformer<float> base(L, 1, T, ModelOptions{}), ad(L, 1, T, ModelOptions{});
    ad.attach_lora(LL);
    ad.set_lora_params(a.data(), nullptr);
    EXPECT_EQ(base.forward(p.data(), tok.data(), tgt.data()).loss_sum, ad.forward(p.data(), tok.data(), tgt.data()).loss_sum);

    std::mt19937_64 rng(7);
    for (auto& x : a) x = float(std::normal_distribution<double>(0.0, 0.3)(rng));
    std::vector<double> nll(static_cast<size_t>(T));
    ad.set_row_nll(nll.data());
    ad.forward(p.data(), tok.data(), tgt.data());
    const std::string path = test::temp_path("bottleneck.gguf");
    write_bottleneck_gguf(to_bottleneck(LL, a.data()), c, path);
    auto back = std::make_shared<BottleneckAdapter>(read_bottleneck_adapter(path, c));
    EXPECT_EQ(back->layers[1][1].up, to_bottleneck(LL, a.data()).layers[1][1].up);
    EXPECT_TRUE(back->gelu == lc.adapter_gelu);
    const Weights w = weights_view(L, p.data());
    KernelContext ctx(1);
    RunOptions ro;
    ro.max_threads = 1, ro.n_ctx = 16;
    Model plain(w, ro);
    ro.bottleneck = back;
    Model m(w, ro);
    const int64_t V = c.vocab_size;
    std::vector<float> lg(size_t(T * V)), l0(size_t(T * V));
    m.forward_all(ctx, tok.data(), 4, 0, lg.data());  // a prefill, then decode steps
    for (int64_t i = 4; i < T; ++i) m.forward_all(ctx, &tok[size_t(i)], 1, i, lg.data() + i * V);
    plain.forward_all(ctx, tok.data(), T, 0, l0.data());
    double worst = 0, apart = 0;
    for (int64_t i = 0; i + 1 < T; ++i) {
      const float* r = lg.data() + i * V;
      const double mx = *std::max_element(r, r + V);
      double z = 0;
      for (int64_t v = 0; v < V; ++v) z += std::exp(double(r[v]) - mx);
      worst = std::max(worst, std::fabs(mx + std::log(z) - double(r[tgt[size_t(i)]]) - nll[size_t(i)]));
      for (int64_t v = 0; v < V; ++v) apart = std::max(apart, double(std::fabs(r[v] - l0[size_t(i * V + v)])));
    }
    EXPECT_LT(worst, 1e-4) << arch_name(arch);
    EXPECT_GT(apart, 1e-2) << arch_name(arch);
    c.dim = 16;
    EXPECT_THROW(read_bottleneck_adapter(path, c), Error);  // tensors of another width
    fs::remove(path);
  }
}

TEST(Bottleneck, TeamDecodeMatchesRegionPath) {
  if (detect_isa() == Isa::Scalar || omp_get_num_procs() < 2) GTEST_SKIP() << "the team needs SIMD and 2 CPUs";
  ModelConfig c = synthetic_config("260k");
  c.dim = 256, c.hidden_dim = 344, c.n_heads = 8, c.n_kv_heads = 4, c.head_dim = 32;
  c.n_layers = 2, c.vocab_size = 300, c.max_seq_len = 64;
  const Weights w = make_random_weights(c, DType::F32, 7, 2);
  auto ad = std::make_shared<BottleneckAdapter>();
  ad->dim = 32, ad->gelu = true;
  ad->layers.resize(2);
  std::mt19937_64 rng(3);
  std::normal_distribution<float> d(0.f, 0.05f);
  for (auto& layer : ad->layers)
    for (auto& s : layer) {
      s.down.resize(size_t(32 * 256)), s.down_b.resize(32), s.up.resize(size_t(256 * 32)), s.up_b.resize(256);
      for (auto* v : {&s.down, &s.down_b, &s.up, &s.up_b})
        for (float& x : *v) x = d(rng);
    }
  RunOptions team, plain;
  team.max_threads = plain.max_threads = 2;
  team.bottleneck = plain.bottleneck = ad;
  plain.persistent_team = false;
  Model a(w, team), b(w, plain);
  KernelContext ctx(2);
  ASSERT_TRUE(a.decodes_as_team(ctx));
  for (int64_t p = 0; p < 12; ++p) {
    const int32_t tok = int32_t((p * 37 + 11) % c.vocab_size);
    const float* la = a.forward(ctx, &tok, 1, p);
    std::vector<float> keep(la, la + c.vocab_size);
    const float* lb = b.forward(ctx, &tok, 1, p);
    ASSERT_EQ(0, std::memcmp(keep.data(), lb, size_t(c.vocab_size) * 4)) << "step " << p;
  }
}
