// Whole-model checks on stories260K against an independent float64 reference
// written here from the llama2.c format description (not reusing production code).
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <fstream>
#include <vector>

#include "core/error.h"
#include "core/fp16.h"
#include "formats/llama2c.h"
#include "formats/load.h"
#include "model/model.h"
#include "kernels/repack.h"
#include "model/synthetic.h"
#include "ref_llama.h"
#include "test_util.h"

using namespace tessera;

using test::RefLlama;

namespace {

const std::vector<int32_t> kTokens = {1, 403, 407, 261, 378, 395, 342, 263, 289, 260, 381, 500, 301, 282, 265, 30};

// max |a - b| over V logits, relative to max(1, max |b|).
template <class R>
double rel_logit_diff(const float* a, const R* b, int64_t V) {
  double err = 0, mag = 0;
  for (int64_t i = 0; i < V; ++i) {
    err = std::max(err, std::fabs(double(a[i]) - double(b[i])));
    mag = std::max(mag, std::fabs(double(b[i])));
  }
  return err / std::max(1.0, mag);
}

}  // namespace

TEST(Model, Stories260KMatchesFloat64Reference) {
  TESSERA_REQUIRE_SHARED("models/stories260K.bin");
  const std::string path = test::shared_path("models/stories260K.bin");
  Weights w = load_llama2c(path);
  EXPECT_EQ(w.cfg.dim, 64);
  EXPECT_EQ(w.cfg.n_kv_heads, 4);
  RefLlama ref(path);
  for (int threads : {1, 2}) {
    Model m(w, RunOptions{});
    KernelContext ctx(threads);
    for (size_t p = 0; p < kTokens.size(); ++p) {
      const float* lg = m.forward(ctx, &kTokens[p], 1, int64_t(p));
      std::vector<double> want = ref.step(kTokens[p], int(p));
      double err = 0, mag = 0;
      for (size_t i = 0; i < want.size(); ++i) {
        err = std::max(err, std::fabs(double(lg[i]) - want[i]));
        mag = std::max(mag, std::fabs(want[i]));
      }
      EXPECT_LT(err, 1e-4 * std::max(1.0, mag)) << "position " << p << " threads " << threads;
    }
  }
}

TEST(Model, PrefillEqualsTokenByTokenDecode) {
  TESSERA_REQUIRE_SHARED("models/stories260K.bin");
  Weights w = load_llama2c(test::shared_path("models/stories260K.bin"));
  const int64_t V = w.cfg.vocab_size, n = int64_t(kTokens.size());
  KernelContext ctx(2);
  RunOptions ro;
  ro.max_batch = 5;  // forces several chunks
  Model batched(w, ro);
  std::vector<float> all(size_t(n * V));
  batched.forward_all(ctx, kTokens.data(), n, 0, all.data());
  Model step(w, RunOptions{});
  for (int64_t p = 0; p < n; ++p) {
    const float* lg = step.forward(ctx, &kTokens[size_t(p)], 1, p);
    for (int64_t i = 0; i < V; ++i) ASSERT_NEAR(lg[i], all[size_t(p * V + i)], 1e-4) << "pos " << p << " id " << i;
  }
}

// An 8-bit KV cache (llama.cpp's Q8_0 blocks, read directly by the attention
// kernels): the reference model's logits stay close to the f32 cache's, and a
// model whose heads are not whole blocks is refused by name.
TEST(Model, Q8KvCacheStaysClose) {
  TESSERA_REQUIRE_SHARED("reference/quant/tinystories-f32.gguf");
  LoadedModel lm = load_model(test::shared_path("reference/quant/tinystories-f32.gguf"));
  const Weights& w = lm.weights;
  KernelContext ctx(2);
  RunOptions a, b;
  b.kv_type = DType::Q8_0;
  Model m32(w, a), m8(w, b);
  const int64_t n = int64_t(kTokens.size()), V = w.cfg.vocab_size;
  std::vector<float> l32(size_t(n * V)), l8(size_t(n * V));
  m32.forward_all(ctx, kTokens.data(), n, 0, l32.data());  // prefill: keys read back through dequantization
  m8.forward_all(ctx, kTokens.data(), n, 0, l8.data());
  double worst = 0, mag = 0;
  for (size_t i = 0; i < l32.size(); ++i) worst = std::max(worst, double(std::fabs(l32[i] - l8[i]))), mag = std::max(mag, double(std::fabs(l32[i])));
  EXPECT_LT(worst, 0.02 * mag);
  EXPECT_GT(worst, 0.0);  // it is quantized
  const int32_t next = 7;  // decode: the attention kernel on the Q8_0 cache
  const float* d32 = m32.forward(ctx, &next, 1, n);
  const std::vector<float> keep(d32, d32 + V);
  const float* d8 = m8.forward(ctx, &next, 1, n);
  for (int64_t i = 0; i < V; ++i) EXPECT_NEAR(d8[i], keep[size_t(i)], 0.02 * mag) << "decode logit " << i;
  Weights small = load_llama2c(test::shared_path("models/stories260K.bin"));  // head size 8
  try {
    Model bad(small, b);
    ADD_FAILURE() << "no error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("head size is 8"), std::string::npos) << e.what();
  }
}

// --f16-as-bf16: F16 matrices become BF16 rounded from their f16 values (the
// embedding table stays), and the model computes about the same logits.
TEST(Model, F16AsBf16RoundsMatricesAndKeepsLogitsClose) {
  ModelConfig c = synthetic_config("260k");
  c.dim = 128, c.n_heads = 4, c.n_kv_heads = 2, c.head_dim = 32, c.hidden_dim = 256, c.n_layers = 2;
  c.tied_embeddings = false;
  const Weights w = make_random_weights(c, DType::F16, 5, 2);
  Weights b = w;
  EXPECT_EQ(f16_to_bf16(b, 2), 2 * 7 + 1);  // 7 matrices a layer and the output
  EXPECT_EQ(b.tok_embd.dtype, DType::F16);
  ASSERT_EQ(b.layers[1].w_down.dtype, DType::BF16);
  const auto* h = static_cast<const uint16_t*>(w.layers[1].w_down.data);
  const auto* r = static_cast<const uint16_t*>(b.layers[1].w_down.data);
  for (int64_t i = 0; i < w.layers[1].w_down.numel(); ++i) ASSERT_EQ(r[i], f32_to_bf16(f16_to_f32(h[i]))) << i;
  KernelContext ctx(2);
  Model ma(w, RunOptions{}), mb(b, RunOptions{});
  const int64_t n = int64_t(kTokens.size()), V = c.vocab_size;
  std::vector<float> la(size_t(n * V)), lb(size_t(n * V));
  ma.forward_all(ctx, kTokens.data(), n, 0, la.data());
  mb.forward_all(ctx, kTokens.data(), n, 0, lb.data());
  double worst = 0, mag = 0;
  for (size_t i = 0; i < la.size(); ++i) worst = std::max(worst, double(std::fabs(la[i] - lb[i]))), mag = std::max(mag, double(std::fabs(la[i])));
  EXPECT_LT(worst, 0.02 * mag);
}

TEST(Model, F16KvCacheStaysClose) {
  TESSERA_REQUIRE_SHARED("models/stories260K.bin");
  Weights w = load_llama2c(test::shared_path("models/stories260K.bin"));
  KernelContext ctx(1);
  RunOptions a, b;
  b.kv_type = DType::F16;
  Model m32(w, a), m16(w, b);
  const float* l32 = m32.forward(ctx, kTokens.data(), int64_t(kTokens.size()), 0);
  std::vector<float> keep(l32, l32 + w.cfg.vocab_size);
  const float* l16 = m16.forward(ctx, kTokens.data(), int64_t(kTokens.size()), 0);
  for (int64_t i = 0; i < w.cfg.vocab_size; ++i) EXPECT_NEAR(keep[size_t(i)], l16[i], 2e-2);
}

TEST(Model, Ak42Int8LoadsAndTracksFp32) {
  TESSERA_REQUIRE_SHARED("models/stories260K_q8.bin");
  Weights w8 = load_llama2c(test::shared_path("models/stories260K_q8.bin"));
  Weights w32 = load_llama2c(test::shared_path("models/stories260K.bin"));
  EXPECT_EQ(w8.tok_embd.dtype, DType::Q8_G);
  EXPECT_EQ(w8.tok_embd.group, 4);
  KernelContext ctx(1);
  Model m8(w8, RunOptions{}), m32(w32, RunOptions{});
  const float* a = m32.forward(ctx, kTokens.data(), int64_t(kTokens.size()), 0);
  std::vector<float> keep(a, a + w32.cfg.vocab_size);
  const float* b = m8.forward(ctx, kTokens.data(), int64_t(kTokens.size()), 0);
  EXPECT_EQ(std::max_element(keep.begin(), keep.end()) - keep.begin(), std::max_element(b, b + 512) - b);
  for (int64_t i = 0; i < w32.cfg.vocab_size; ++i) EXPECT_NEAR(keep[size_t(i)], b[i], 0.5);
}

TEST(Model, ContextOverflowAndBadTokensAreErrors) {
  TESSERA_REQUIRE_SHARED("models/stories260K.bin");
  Weights w = load_llama2c(test::shared_path("models/stories260K.bin"));
  RunOptions ro;
  ro.n_ctx = 8;
  Model m(w, ro);
  KernelContext ctx(1);
  EXPECT_THROW(m.forward(ctx, kTokens.data(), 9, 0), Error);
  const int32_t bad = 512;
  EXPECT_THROW(m.forward(ctx, &bad, 1, 0), Error);
  // A context whose KV cache cannot fit in memory (2^40 positions: 40 TiB) is an Error naming -c, not bad_alloc.
  ro.n_ctx = int64_t(1) << 40;
  try {
    Model huge(w, ro);
    ADD_FAILURE() << "a 2^40-position context was accepted";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("lower -c"), std::string::npos) << e.what();
  }
}

#include "infer/perplexity.h"
#include "tokenizer/tokenizer.h"

namespace {
const char* kGolden = "One day, a clever fox found a shiny key under the old oak tree.";
}

TEST(Model, GoldenSentenceNllMatchesReference) {
  TESSERA_REQUIRE_SHARED("models/stories260K.bin");
  Tokenizer tok = load_llama2c_tokenizer(test::shared_path("models/tok512.bin"), 512);
  const std::vector<int32_t> ids = tok.encode(kGolden);
  ASSERT_EQ(ids.size(), 35u);
  ASSERT_EQ(ids[0], 1);
  KernelContext ctx(2);
  Weights w = load_llama2c(test::shared_path("models/stories260K.bin"));
  Model m(w, RunOptions{});
  const double nll = sequence_nll(m, ctx, ids);
  EXPECT_NEAR(nll, 54.40412, 0.005);                  // 4 significant digits: 54.40
  EXPECT_NEAR(std::exp(nll / 34), 4.95363, 0.0005);  // 4.954
  Weights w8 = load_llama2c(test::shared_path("models/stories260K_q8.bin"));
  Model m8(w8, RunOptions{});
  const double nll8 = sequence_nll(m8, ctx, ids);
  // The int8 export quantizes activations in groups of 4 (llama2.c's runq), so
  // float differences in summation order (prefill attention runs on OpenBLAS,
  // whose kernels differ per CPU core type) flip roundings: 54.311 with
  // OpenBLAS's Haswell kernels, 54.353 with its SkylakeX ones. 0.1% here.
  EXPECT_NEAR(nll8, 54.311, 0.06);
  EXPECT_NEAR(std::exp(nll8 / 34), 4.9401, 0.009);
}

// Q4_0 / Q8_0 / Q4_K / Q6_K matrices repacked at load (kernels/repack.h) give the logits of the file layout.
TEST(Model, RepackedQuantsMatchFileLayout) {
  if (detect_isa() != Isa::AVX512) GTEST_SKIP() << "the R4 layouts are used on AVX-512 only";
  for (DType type : {DType::Q4_0, DType::Q8_0, DType::Q4_K, DType::Q6_K, DType::IQ4_NL, DType::Q4_1, DType::Q5_0,
                     DType::Q5_1})
  for (const char* base : {"260k", "gpt2-tiny"}) {
    ModelConfig c = synthetic_config(base);
    c.dim = 512, c.n_heads = 8, c.n_kv_heads = c.arch == Arch::GPT2 ? 8 : 4, c.head_dim = 64;
    c.hidden_dim = 1024, c.n_layers = 2, c.tied_embeddings = false;
    const Weights file = make_random_weights(c, type, 5, 2);
    Weights packed = make_random_weights(c, type, 5, 2);
    const size_t bytes = packed.weight_bytes();
    // Llama: 7 matrices a layer; GPT-2: qkv, o, up, down; plus the untied output.
    EXPECT_EQ(repack_weights(packed, Isa::AVX512, 2), c.arch == Arch::GPT2 ? 9 : 15) << base;
    EXPECT_EQ(packed.layers[0].w_down.dtype, r4_type_of(type)) << base;
    EXPECT_EQ(packed.tok_embd.dtype, type) << base;  // looked up by row: left alone
    if (type == DType::Q4_K)  // its scales unpacked to a byte each: 8 more bytes per 512 weights
      EXPECT_GT(packed.weight_bytes(), bytes) << base;
    else
      EXPECT_EQ(packed.weight_bytes(), bytes) << base;
    KernelContext ctx(2);
    Model a(file, RunOptions{}), b(packed, RunOptions{});
    const int64_t V = c.vocab_size, n = int64_t(kTokens.size());
    std::vector<float> la(size_t(n * V)), lb(size_t(n * V));
    a.forward_all(ctx, kTokens.data(), n, 0, la.data());  // prefill: M = 16 rows through the kernels
    b.forward_all(ctx, kTokens.data(), n, 0, lb.data());
    // Both run the int8 kernels on the same quantized activations, and each matrix
    // product agrees to float rounding (KernelsMatmul.Q4_0_R4 / Q8_0_R4). But a last-bit
    // difference can flip one activation's int8 rounding in the next product, and
    // a flip moves the logits by ~1e-3: random models spread those flips into
    // differences of ~1% of the largest logit (the int8 path itself is ~1.5% from
    // f32 activations here). So: per row within 4% of the largest logit, on
    // average within 0.5% (K-quants 1%), and the same most likely token in most rows.
    // K-quants take Q8_K activations, one scale per 256 (Q8_0: per 32): each flip is larger.
    const double mean_tol = dtype_is_k_quant(type) ? 0.01 : 0.005;
    auto expect_close = [&](const float* x, const float* y, int64_t rows, const char* what) {
      int same_top = 0;
      for (int64_t r = 0; r < rows; ++r) {
        double diff = 0, sum = 0, mag = 0;
        for (int64_t i = 0; i < V; ++i) {
          const double d = std::fabs(x[r * V + i] - y[r * V + i]);
          diff = std::max(diff, d), sum += d;
          mag = std::max(mag, double(std::fabs(x[r * V + i])));
        }
        EXPECT_LT(diff, 0.04 * mag) << dtype_name(type) << " " << base << " " << what << " row " << r;
        EXPECT_LT(sum / double(V), mean_tol * mag) << dtype_name(type) << " " << base << " " << what << " row " << r;
        same_top += std::max_element(x + r * V, x + (r + 1) * V) - (x + r * V) ==
                    std::max_element(y + r * V, y + (r + 1) * V) - (y + r * V);
      }
      EXPECT_GE(same_top, rows - rows / 4) << base << " " << what;
    };
    expect_close(la.data(), lb.data(), n, "prefill");
    const int32_t next = 7;
    const float* da = a.forward(ctx, &next, 1, n);  // decode: M = 1
    std::vector<float> keep(da, da + V);
    expect_close(keep.data(), b.forward(ctx, &next, 1, n), 1, "decode");
  }
}

// Decode attention (the kernels/attention.h kernel, per KV-head group; MQA splits
// its one group across threads) against the prefill path (blocks of queries as
// GEMMs) on head size 64: GQA groups of 4, MQA, f32, f16 and q8_0 caches.
TEST(Model, DecodeAttentionMatchesPrefill) {
  for (int64_t kv_heads : {2, 1})
    for (DType kvt : {DType::F32, DType::F16, DType::Q8_0}) {
      ModelConfig c = synthetic_config("260k");
      c.dim = 512, c.n_heads = 8, c.n_kv_heads = kv_heads, c.head_dim = 64;
      c.hidden_dim = 256, c.n_layers = 2;
      const Weights w = make_random_weights(c, DType::F32, 11, 2);
      const int64_t V = c.vocab_size, n = 40;
      std::vector<int32_t> toks(static_cast<size_t>(n));
      for (int64_t i = 0; i < n; ++i) toks[size_t(i)] = int32_t((i * 37 + 5) % V);
      KernelContext ctx(2);
      RunOptions ro;
      ro.kv_type = kvt;
      Model batched(w, ro), step(w, ro);
      std::vector<float> all(size_t(n * V));
      batched.forward_all(ctx, toks.data(), n, 0, all.data());
      for (int64_t p = 0; p < n; ++p) {
        const float* lg = step.forward(ctx, &toks[size_t(p)], 1, p);
        // f16 / q8_0 caches: prefill attends to the rounded keys too (stored before use), so
        // the two paths differ only by summation order either way.
        ASSERT_LT(rel_logit_diff(lg, all.data() + p * V, V), 1e-4)
            << "kv heads " << kv_heads << " " << dtype_name(kvt) << " pos " << p;
      }
    }
}

// The tiled prefill (online softmax over key tiles of 256) against decode
// attention, token by token: 700 positions (three tiles and a partial one),
// chunks of 300 rows starting mid-tile, a sliding window of 300 on layer 0
// (whole tiles skipped) and a soft-cap; f32 keys read in place and Q8_0 keys
// gathered (and widened).
TEST(Model, TiledPrefillMatchesDecodeAtLongContext) {
  for (DType kvt : {DType::F32, DType::Q8_0}) {
    ModelConfig c = synthetic_config("260k");
    c.dim = 256, c.n_heads = 4, c.n_kv_heads = 2, c.head_dim = 64;
    c.hidden_dim = 128, c.n_layers = 2, c.max_seq_len = 704;
    c.layer_cfg = sliding_window_layers(c.n_layers, 300, "0");
    c.attn_softcap = 20.f;
    const Weights w = make_random_weights(c, DType::F32, 12, 2);
    const int64_t V = c.vocab_size, n = 700;
    std::vector<int32_t> toks(static_cast<size_t>(n));
    for (int64_t i = 0; i < n; ++i) toks[size_t(i)] = int32_t((i * 37 + 5) % V);
    KernelContext ctx(2);
    RunOptions ro;
    ro.kv_type = kvt;
    ro.max_batch = 300;
    Model batched(w, ro), step(w, ro);
    std::vector<float> all(size_t(n * V));
    batched.forward_all(ctx, toks.data(), n, 0, all.data());
    double worst = 0;
    for (int64_t p = 0; p < n; ++p) {
      const float* lg = step.forward(ctx, &toks[size_t(p)], 1, p);
      worst = std::max(worst, rel_logit_diff(lg, all.data() + p * V, V));
    }
    // Q8_0: the two paths' k / v rows differ in the last bit (GEMM vs matrix-vector products), which
    // can move one cache value across a rounding boundary of its 8-bit block (~1e-3 from there on).
    EXPECT_LT(worst, kvt == DType::F32 ? 2e-5 : 3e-3) << dtype_name(kvt);
  }
}

// Sliding-window attention far past the window against the float64 reference
// with a band mask: stories260K with a window of 24 positions on its even
// layers, 300 positions (12 windows), token by token (decode kernel) and as
// one prefill in chunks of 100 (tiled GEMM path), f32 and f16 caches; those
// layers keep a ring of blocks (KVCache's window pool), not every position.
TEST(Model, SlidingWindowFarPastTheWindowMatchesFloat64BandMask) {
  TESSERA_REQUIRE_SHARED("models/stories260K.bin");
  const std::string path = test::shared_path("models/stories260K.bin");
  Weights w = load_llama2c(path);
  w.cfg.layer_cfg = sliding_window_layers(w.cfg.n_layers, 24, "even");
  RefLlama ref(path);
  for (int64_t l = 0; l < w.cfg.n_layers; ++l) ref.window.push_back(l % 2 == 0 ? 24 : 0);
  const int64_t n = 300, V = w.cfg.vocab_size;
  std::vector<int32_t> toks(static_cast<size_t>(n));
  for (int64_t i = 0; i < n; ++i) toks[size_t(i)] = int32_t((i * 131 + 7) % V);
  std::vector<std::vector<double>> want;
  for (int64_t p = 0; p < n; ++p) want.push_back(ref.step(toks[size_t(p)], int(p)));
  KernelContext ctx(2);
  // f32 cache: within 1e-4 of the float64 logits' scale; f16: keys and values rounded to 11 bits, 1e-2.
  auto check = [&](const float* lg, int64_t p, double tol, const std::string& how) {
    const double rel = rel_logit_diff(lg, want[size_t(p)].data(), V);
    return rel < tol ? ::testing::AssertionSuccess()
                     : ::testing::AssertionFailure() << how << " position " << p << " relative error " << rel;
  };
  for (DType kvt : {DType::F32, DType::F16}) {
    RunOptions ro;
    ro.kv_type = kvt;
    ro.max_batch = 100;
    ro.kv_block_size = 8;  // the window's layers keep a ring of 29 blocks (232 positions), not the whole context
    Model step(w, ro), batched(w, ro);
    EXPECT_LT(double(step.kv_bytes()), 0.75 * double(step.n_ctx()) * w.cfg.kv_bytes_per_token(kvt));
    const double tol = kvt == DType::F32 ? 1e-4 : 1e-2;
    std::vector<float> all(size_t(n * V));
    batched.forward_all(ctx, toks.data(), n, 0, all.data());
    for (int64_t p = 0; p < n; ++p) {
      ASSERT_TRUE(check(step.forward(ctx, &toks[size_t(p)], 1, p), p, tol, std::string("decode ") + dtype_name(kvt)));
      ASSERT_TRUE(check(all.data() + p * V, p, tol, std::string("prefill ") + dtype_name(kvt)));
    }
  }
  // The window matters: full attention differs past position 24.
  Weights full = load_llama2c(path);
  Model m(full, RunOptions{});
  std::vector<float> lf(size_t(n * V));
  m.forward_all(ctx, toks.data(), n, 0, lf.data());
  double d = 0;
  for (int64_t i = 0; i < V; ++i) d = std::max(d, std::fabs(double(lf[size_t((n - 1) * V + i)]) - want[size_t(n - 1)][size_t(i)]));
  EXPECT_GT(d, 1e-2);
}
