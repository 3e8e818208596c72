#include "model/synthetic.h"

#include <cmath>
#include <vector>

#include "core/aligned.h"
#include "core/error.h"
#include "core/rng.h"
#include "kernels/kernels.h"

namespace tessera {

ModelConfig synthetic_config(const std::string& name) {
  ModelConfig c;
  c.arch = Arch::Llama;
  c.rope_style = ops::RopeStyle::Interleaved;
  c.tied_embeddings = false;
  if (name == "1b") {
    c.dim = 2048, c.n_layers = 16, c.n_heads = 32, c.n_kv_heads = 8, c.hidden_dim = 5632, c.vocab_size = 32000;
    c.max_seq_len = 2048;
  } else if (name == "15m") {
    c.dim = 288, c.n_layers = 6, c.n_heads = 6, c.n_kv_heads = 6, c.hidden_dim = 768, c.vocab_size = 32000;
    c.max_seq_len = 256;
    c.tied_embeddings = true;
  } else if (name == "260k") {
    c.dim = 64, c.n_layers = 5, c.n_heads = 8, c.n_kv_heads = 4, c.hidden_dim = 172, c.vocab_size = 512;
    c.max_seq_len = 512;
    c.tied_embeddings = true;
  } else if (name == "gpt2-tiny") {
    c.arch = Arch::GPT2;
    c.dim = 64, c.n_layers = 2, c.n_heads = 4, c.n_kv_heads = 4, c.hidden_dim = 256, c.vocab_size = 512;
    c.max_seq_len = 128;
    c.tied_embeddings = true;
  } else if (name == "gpt2-124m") {
    c.arch = Arch::GPT2;
    c.dim = 768, c.n_layers = 12, c.n_heads = 12, c.n_kv_heads = 12, c.hidden_dim = 3072, c.vocab_size = 50257;
    c.max_seq_len = 1024;
    c.tied_embeddings = true;
  } else {
    fail("unknown synthetic model '", name, "' (known: 1b, 15m, 260k, gpt2-tiny, gpt2-124m)");
  }
  c.head_dim = c.dim / c.n_heads;
  c.name = "synthetic-" + name;
  c.validate("synthetic " + name);
  return c;
}

namespace {

// SplitMix64: a counter-based generator, so rows can be filled in parallel deterministically.
inline uint64_t mix(uint64_t z) { return splitmix64(z); }

TensorView random_matrix(Weights& w, int64_t rows, int64_t cols, DType type, uint64_t seed, int threads) {
  DType t = cols % dtype_block_elems(type) == 0 ? type : DType::F16;
  const size_t rb = dtype_row_bytes(t, cols);
  // Huge pages where THP allows (aligned_vector), as the file-backed weights of a
  // GGUF on ext4 get (large folios, PMD-mapped): decode speed would otherwise pay
  // for 4 KiB page walks that a loaded model does not.
  auto own = std::make_shared<aligned_vector<uint8_t>>(rb * size_t(rows));
  auto& buf = *own;
  const float a = std::sqrt(3.f / float(cols));
#pragma omp parallel num_threads(threads)
  {
    std::vector<float> row(static_cast<size_t>(cols));
#pragma omp for schedule(static)
    for (int64_t r = 0; r < rows; ++r) {
      uint64_t s = mix(seed ^ (uint64_t(r) * 0x100000001b3ull));
      for (int64_t k = 0; k < cols; ++k) {
        s = mix(s);
        row[size_t(k)] = a * (float(s >> 40) * (2.f / 16777216.f) - 1.f);
      }
      quantize_row(t, row.data(), buf.data() + size_t(r) * rb, cols);
    }
  }
  w.owners.push_back(own);
  return make_view(t, {rows, cols}, buf.data());
}

TensorView constant_vector(Weights& w, int64_t n, float v) {
  std::vector<uint8_t> buf(size_t(n) * 4);
  auto* f = reinterpret_cast<float*>(buf.data());
  for (int64_t i = 0; i < n; ++i) f[i] = v;
  return own_buffer(w, std::move(buf), DType::F32, {n});
}

}  // namespace

Weights make_random_weights(const ModelConfig& cfg, DType type, uint64_t seed, int threads) {
  Weights w;
  w.cfg = cfg;
  const auto& c = cfg;
  const int64_t C = c.dim, H = c.hidden_dim;
  uint64_t s = seed;
  auto next = [&] { return s = mix(s); };
  w.tok_embd = random_matrix(w, c.vocab_size, C, type, next(), threads);
  w.out_norm = constant_vector(w, C, 1.f);
  w.output = c.tied_embeddings ? w.tok_embd : random_matrix(w, c.vocab_size, C, type, next(), threads);
  if (c.arch == Arch::GPT2) {
    w.pos_embd = random_matrix(w, c.max_seq_len, C, DType::F32, next(), threads);
    w.out_norm_b = constant_vector(w, C, 0.01f);
  }
  w.layers.resize(size_t(c.n_layers));
  for (auto& L : w.layers) {
    L.attn_norm = constant_vector(w, C, 1.f);
    L.ffn_norm = constant_vector(w, C, 1.f);
    L.wo = random_matrix(w, C, c.q_dim(), type, next(), threads);
    L.w_up = random_matrix(w, H, C, type, next(), threads);
    L.w_down = random_matrix(w, C, H, type, next(), threads);
    if (c.arch == Arch::Llama) {
      L.wq = random_matrix(w, c.q_dim(), C, type, next(), threads);
      L.wk = random_matrix(w, c.kv_dim(), C, type, next(), threads);
      L.wv = random_matrix(w, c.kv_dim(), C, type, next(), threads);
      L.w_gate = random_matrix(w, H, C, type, next(), threads);
    } else {
      L.wqkv = random_matrix(w, 3 * C, C, type, next(), threads);
      L.bqkv = constant_vector(w, 3 * C, 0.01f);
      L.bo = constant_vector(w, C, 0.01f);
      L.attn_norm_b = constant_vector(w, C, 0.f);
      L.ffn_norm_b = constant_vector(w, C, 0.f);
      L.b_up = constant_vector(w, H, 0.01f);
      L.b_down = constant_vector(w, C, 0.01f);
    }
  }
  w.validate_shapes(c.name);
  return w;
}

}  // namespace tessera
