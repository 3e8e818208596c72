// linear(): the weight's product plus its bias, whichever path the product
// takes (matrix-vector kernels adding the bias per range of rows, the GEMM
// path, the scalar reference), and matmul_multi() with biases, equal to
// matmul() followed by the bias added row by row.
#include <gtest/gtest.h>

#include <cstring>
#include <random>
#include <vector>

#include "kernels/kernels.h"
#include "model/synthetic.h"

using namespace tessera;

namespace {

TEST(Linear, BiasOnEveryPathEqualsMatmulThenBias) {
  ModelConfig c = synthetic_config("260k");
  c.dim = 128, c.hidden_dim = 96, c.n_heads = 4, c.n_kv_heads = 4, c.head_dim = 32, c.n_layers = 1;
  std::mt19937 rng(4);
  std::normal_distribution<float> nd;
  for (DType t : {DType::F32, DType::F16, DType::BF16, DType::Q8_0, DType::Q4_0}) {
    const Weights w = make_random_weights(c, t, 9, 1);
    const TensorView& W = w.layers[0].w_up;  // (96, 128)
    const int64_t N = W.rows(), K = W.cols();
    std::vector<float> bias(static_cast<size_t>(N));
    for (auto& x : bias) x = nd(rng);
    const TensorView b = make_view(DType::F32, {N}, bias.data());
    for (Isa isa : {Isa::Scalar, detect_isa()})
      for (int threads : {1, 2})
        for (int64_t M : {int64_t(1), int64_t(5), int64_t(64)}) {
          KernelContext ctx(threads, isa);
          std::vector<float> X(static_cast<size_t>(M * K));
          for (auto& x : X) x = nd(rng);
          std::vector<float> want(static_cast<size_t>(M * N)), got(want.size()), multi(want.size()), other(want.size());
          matmul(ctx, W, X.data(), M, want.data());
          for (int64_t m = 0; m < M; ++m)
            for (int64_t n = 0; n < N; ++n) want[size_t(m * N + n)] += bias[size_t(n)];
          linear(ctx, Linear{&W, &b}, X.data(), M, got.data());
          const std::string what = std::string(dtype_name(t)) + " M=" + std::to_string(M) + " threads " +
                                   std::to_string(threads) + (isa == Isa::Scalar ? " scalar" : " simd");
          EXPECT_EQ(0, std::memcmp(want.data(), got.data(), want.size() * 4)) << what;
          matmul_multi(ctx, X.data(), M, {{&W, multi.data(), &b}, {&w.layers[0].w_gate, other.data()}});
          EXPECT_EQ(0, std::memcmp(want.data(), multi.data(), want.size() * 4)) << what << " (matmul_multi)";
          linear(ctx, Linear{&W, nullptr}, X.data(), M, got.data());  // no bias: matmul() itself
          matmul(ctx, W, X.data(), M, want.data());
          EXPECT_EQ(0, std::memcmp(want.data(), got.data(), want.size() * 4)) << what << " (no bias)";
        }
  }
}

}  // namespace
