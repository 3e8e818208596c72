#include "model/synthetic.h"

#include <cmath>
#include <vector>

#include "core/aligned.h"
#include "core/error.h"
#include "core/rng.h"
#include "kernels/kernels.h"
#include "model/arch.h"

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

// The matrices of one model live in one buffer, as a mapped file's do, large
// enough for huge pages where THP allows (aligned_vector: 8 MiB and up). One
// allocation per matrix put every matrix under 8 MiB (all of a 15M model's
// layers) on 4 KiB pages; the whole 15M model on huge pages against all of it
// on 4 KiB pages decodes 3-5% faster (in-process alternation, 2 threads).
struct MatrixArena {
  uint8_t* base = nullptr;  // null: the sizing pass
  size_t used = 0;
};

TensorView random_matrix(MatrixArena& arena, int64_t rows, int64_t cols, DType type, uint64_t seed, int threads) {
  DType t = cols % dtype_block_elems(type) == 0 ? type : DType::F16;
  const size_t rb = dtype_row_bytes(t, cols);
  const size_t at = arena.used;
  arena.used += (rb * size_t(rows) + 63) & ~size_t(63);
  if (!arena.base) return {};
  uint8_t* out = arena.base + at;
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
      quantize_row(t, row.data(), out + size_t(r) * rb, cols);
    }
  }
  return make_view(t, {rows, cols}, out);
}

TensorView constant_vector(Weights& w, int64_t n, float v) {
  std::vector<uint8_t> buf(size_t(n) * 4);
  auto* f = reinterpret_cast<float*>(buf.data());
  for (int64_t i = 0; i < n; ++i) f[i] = v;
  return own_buffer(w, std::move(buf), DType::F32, {n});
}

// Every matrix of the model, in a fixed order (each draws the next seed):
// once to size the arena, once to fill it.
void random_matrices(Weights& w, MatrixArena& arena, DType type, uint64_t seed, int threads) {
  const auto& c = w.cfg;
  const int64_t C = c.dim, H = c.hidden_dim;
  uint64_t s = seed;
  auto next = [&] { return s = mix(s); };
  auto matrix = [&](int64_t rows, int64_t cols, DType t) { return random_matrix(arena, rows, cols, t, next(), threads); };
  w.tok_embd = matrix(c.vocab_size, C, type);
  w.output = c.tied_embeddings ? w.tok_embd : matrix(c.vocab_size, C, type);
  if (c.arch == Arch::GPT2) w.pos_embd = matrix(c.max_seq_len, C, DType::F32);
  w.layers.resize(size_t(c.n_layers));
  for (auto& L : w.layers) {
    L.wo = matrix(C, c.q_dim(), type);
    L.w_up = matrix(H, C, type);
    L.w_down = matrix(C, H, type);
    if (c.arch == Arch::Llama) {
      L.wq = matrix(c.q_dim(), C, type);
      L.wk = matrix(c.kv_dim(), C, type);
      L.wv = matrix(c.kv_dim(), C, type);
      L.w_gate = matrix(H, C, type);
    } else {
      L.wqkv = matrix(3 * C, C, type);
    }
  }
}

}  // namespace

Weights make_random_weights(const ModelConfig& cfg, DType type, uint64_t seed, int threads) {
  Weights w;
  w.cfg = cfg;
  const auto& c = cfg;
  MatrixArena arena;
  random_matrices(w, arena, type, seed, threads);  // sizing pass
  auto own = std::make_shared<aligned_vector<uint8_t>>(arena.used);
  w.owners.push_back(own);
  arena = MatrixArena{own->data(), 0};
  random_matrices(w, arena, type, seed, threads);
  // The vectors of the architecture's table: norm gains 1, a block's LayerNorm
  // biases 0, every other bias 0.01.
  for_each_tensor_spec(arch_desc(c.arch), c, [&](const TensorSpec& s, int64_t l) {
    if (s.kind != TensorKind::Vector) return;
    const std::string n = s.gguf;
    const bool gain = n.ends_with("norm.weight"), block_norm_bias = n == "attn_norm.bias" || n == "ffn_norm.bias";
    slot_ref(w, s.slot, l) = constant_vector(w, s.shape(c, l)[0], gain ? 1.f : block_norm_bias ? 0.f : 0.01f);
  });
  w.validate_shapes(c.name);
  return w;
}

}  // namespace tessera
