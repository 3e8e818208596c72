#include "model/config.h"

#include <cmath>

#include "core/error.h"

namespace tessera {

const char* arch_name(Arch a) {
  switch (a) {
    case Arch::Llama: return "llama";
    case Arch::GPT2: return "gpt2";
  }
  return "?";
}

void ModelConfig::validate(const std::string& where) const {
  auto pos = [&](const char* field, int64_t v) {
    if (v <= 0) fail(where, ": ", field, " must be positive, got ", v);
  };
  pos("dim", dim);
  pos("n_layers", n_layers);
  pos("n_heads", n_heads);
  pos("n_kv_heads", n_kv_heads);
  pos("head_dim", head_dim);
  pos("hidden_dim", hidden_dim);
  pos("vocab_size", vocab_size);
  pos("max_seq_len", max_seq_len);
  if (n_heads % n_kv_heads != 0)
    fail(where, ": n_heads (", n_heads, ") is not a multiple of n_kv_heads (", n_kv_heads, ")");
  if (head_dim % 2 != 0 && arch == Arch::Llama) fail(where, ": head_dim (", head_dim, ") must be even for RoPE");
  if (!(norm_eps > 0.f)) fail(where, ": norm_eps must be positive, got ", norm_eps);
  if (arch == Arch::Llama && !(rope_theta > 0.f)) fail(where, ": rope_theta must be positive, got ", rope_theta);
  if (!rope_freq_factors.empty()) {
    if (arch != Arch::Llama) fail(where, ": RoPE frequency scaling is supported for the llama family only");
    if (int64_t(rope_freq_factors.size()) != head_dim / 2)
      fail(where, ": RoPE frequency scaling has ", rope_freq_factors.size(), " divisors, head_dim / 2 = ", head_dim / 2);
    for (size_t i = 0; i < rope_freq_factors.size(); ++i)
      if (!(rope_freq_factors[i] > 0.f) || !std::isfinite(rope_freq_factors[i]))
        fail(where, ": RoPE frequency divisor ", i, " must be positive and finite, got ", rope_freq_factors[i]);
  }
  if (attn_softcap < 0.f || final_softcap < 0.f) fail(where, ": soft-caps must be >= 0");
  if (qk_norm && arch != Arch::Llama) fail(where, ": qk_norm is supported for the llama family only");
  if (arch == Arch::GPT2 && n_kv_heads != n_heads)
    fail(where, ": gpt2 has n_kv_heads == n_heads, got ", n_kv_heads, " vs ", n_heads);
}

}  // namespace tessera
