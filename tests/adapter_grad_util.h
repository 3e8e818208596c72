// The adapters' whole-model gradient check (LoRA, prefix tuning, bottleneck adapters:
// test_train_grad.cpp, test_prefix.cpp, test_bottleneck.cpp): a frozen base in double
// precision, the adapter buffer's gradient from forward_backward against central differences.
#pragma once
#include <gtest/gtest.h>

#include <algorithm>
#include <random>
#include <string>

#include "grad_util.h"
#include "test_util.h"
#include "train/lora.h"
#include "train/transformer.h"

namespace tessera::test {

// A two-layer model small enough for central differences of every adapter parameter.
inline ModelConfig tiny_adapter_model(Arch arch) {
  ModelConfig c;
  c.arch = arch;
  c.dim = 8, c.n_layers = 2, c.hidden_dim = 12, c.vocab_size = 11, c.max_seq_len = 8;
  if (arch == Arch::Llama) c.n_heads = 4, c.n_kv_heads = 2, c.head_dim = 2;
  else c.n_heads = c.n_kv_heads = 2, c.head_dim = 4, c.tied_embeddings = true;
  return c;
}

// Every adapter tensor's gradient (batch 2 x 5, some targets ignored, dropout key `key`)
// within 1e-4 of central differences, and not zero. Bottleneck adapters' down biases are
// shifted by +1 so that their ReLU units are alive.
inline void check_adapter_grads(const ModelConfig& c, const train::LoraConfig& lc, const train::ModelOptions& mo,
                                uint64_t key, const std::string& what, uint64_t seed = 21, double sd = 0.3) {
  const OneThread one_thread;
  const train::Layout L(c);
  const train::LoraLayout LL(L, lc);
  std::mt19937_64 rng(seed);
  Vec p = randn(L.total, rng, 0.3), a = randn(LL.total, rng, sd);
  for (const auto& t : LL.tensors)
    if (t.name.find("down.bias") != std::string::npos)
      for (size_t i = 0; i < t.numel; ++i) a[t.offset + i] += 1.0;
  const int64_t B = 2, T = 5;
  std::vector<int32_t> tok(B * T), tgt(B * T);
  for (size_t i = 0; i < tok.size(); ++i) tok[i] = int32_t(rng() % uint64_t(c.vocab_size));
  for (size_t i = 0; i < tgt.size(); ++i) tgt[i] = i % 4 == 3 ? -1 : int32_t(rng() % uint64_t(c.vocab_size));
  train::Transformer<double> m(L, B, T, mo);
  m.attach_lora(LL);
  Vec ga(LL.total, 0.0);
  m.set_lora_params(a.data(), ga.data());
  auto f = [&] {
    const auto r = m.forward(p.data(), tok.data(), tgt.data(), key);
    return r.loss_sum / double(r.count);
  };
  const int64_t count = std::count_if(tgt.begin(), tgt.end(), [](int32_t t) { return t >= 0; });
  m.forward_backward(p.data(), nullptr, tok.data(), tgt.data(), 1.f / float(count), key, true);
  const Vec num = numgrad(a, f);
  for (const auto& t : LL.tensors) {
    const Vec x(ga.begin() + long(t.offset), ga.begin() + long(t.offset + t.numel));
    const Vec y(num.begin() + long(t.offset), num.begin() + long(t.offset + t.numel));
    EXPECT_LT(rel_err(x, y), 1e-4) << what << ": " << t.name;
    double big = 0;
    for (double v : y) big = std::max(big, std::abs(v));
    EXPECT_GT(big, 1e-8) << what << ": " << t.name << ": a gradient that cannot fail";
  }
}

}  // namespace tessera::test
