#include "model/synthetic.h"

#include <algorithm>
#include <functional>
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
  } else if (name == "moe-1b") {  // Mixtral-shaped: 8 experts of 2560 (5 x 512: R4 layouts), top-2: about "1b"'s active parameters
    c.dim = 2048, c.n_layers = 16, c.n_heads = 32, c.n_kv_heads = 8, c.hidden_dim = 2560, c.vocab_size = 32000;
    c.max_seq_len = 2048;
    c.moe_experts = 8, c.moe_used = 2, c.moe_hidden = 2560, c.moe_norm_topk = true;
  } else if (name == "moe-15m") {  // "15m" with 8 experts of half its width, top-2: the same active FLOPs
    c.dim = 288, c.n_layers = 6, c.n_heads = 6, c.n_kv_heads = 6, c.hidden_dim = 384, c.vocab_size = 32000;
    c.max_seq_len = 256;
    c.tied_embeddings = true;
    c.moe_experts = 8, c.moe_used = 2, c.moe_hidden = 384, c.moe_norm_topk = true;
  } else if (name == "moe-tiny") {  // Mixtral-shaped, small: 4 experts, top-2
    c.dim = 256, c.n_layers = 2, c.n_heads = 8, c.n_kv_heads = 4, c.hidden_dim = 384, c.vocab_size = 512;
    c.max_seq_len = 256;
    c.moe_experts = 4, c.moe_used = 2, c.moe_hidden = 384, c.moe_norm_topk = true;
  } else if (name == "moe-tiny-shared") {
    // DeepSeek-V3's router (sigmoid, selection bias, renormalised, x2.5) with a leading
    // dense layer and Qwen2-MoE's gated shared expert: 8 fine-grained experts, top-3.
    c.dim = 256, c.n_layers = 3, c.n_heads = 8, c.n_kv_heads = 2, c.hidden_dim = 512, c.vocab_size = 512;
    c.max_seq_len = 256;
    c.moe_experts = 8, c.moe_used = 3, c.moe_hidden = 128, c.moe_shared_hidden = 256, c.moe_first_dense = 1;
    c.moe_gate = MoeGate::Sigmoid, c.moe_norm_topk = true, c.moe_scale = 2.5f;
    c.moe_shared_gate = c.moe_score_bias = true;
  } else if (name == "mla-tiny") {  // DeepSeek-V3-shaped: latent attention, a dense layer, then MoE
    c.dim = 256, c.n_layers = 3, c.n_heads = 4, c.n_kv_heads = 4, c.hidden_dim = 512, c.vocab_size = 512;
    c.max_seq_len = 256;
    c.mla_q_lora = 192, c.mla_kv_lora = 128, c.mla_rope = 32, c.mla_v_dim = 64;
    c.moe_experts = 8, c.moe_used = 2, c.moe_hidden = 128, c.moe_shared_hidden = 128, c.moe_first_dense = 1;
    c.moe_gate = MoeGate::Sigmoid, c.moe_norm_topk = true, c.moe_scale = 2.5f;
    c.head_dim = 96;  // key length: 64 nope + 32 rope
  } else if (name == "mla-1b") {  // "1b" with DeepSeek-V2-Lite's latent attention (no q LoRA, d_c 512, heads 128 + 64 RoPE)
    c.dim = 2048, c.n_layers = 16, c.n_heads = 16, c.n_kv_heads = 16, c.hidden_dim = 5632, c.vocab_size = 32000;
    c.max_seq_len = 2048;
    c.mla_kv_lora = 512, c.mla_rope = 64, c.mla_v_dim = 128;
    c.head_dim = 192;
  } else {
    fail("unknown synthetic model '", name,
         "' (known: 1b, 15m, 260k, gpt2-tiny, gpt2-124m, moe-1b, moe-15m, moe-tiny, moe-tiny-shared, mla-tiny, mla-1b)");
  }
  c.set_moe_layers();
  if (c.head_dim == 0) c.head_dim = c.dim / c.n_heads;
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

// The type of a matrix from its GGUF name (without "blk.N."), layer (-1 for globals) and row length.
using TypeOf = std::function<DType(const char* name, int64_t layer, int64_t cols)>;

// Every matrix of the model, in a fixed order (each draws the next seed):
// once to size the arena, once to fill it.
void random_matrices(Weights& w, MatrixArena& arena, const TypeOf& type_of, uint64_t seed, int threads) {
  const auto& c = w.cfg;
  const int64_t C = c.dim, H = c.hidden_dim;
  uint64_t s = seed;
  auto next = [&] { return s = mix(s); };
  int64_t layer = -1;
  auto matrix = [&](const char* name, int64_t rows, int64_t cols) {
    return random_matrix(arena, rows, cols, type_of(name, layer, cols), next(), threads);
  };
  w.tok_embd = matrix("token_embd.weight", c.vocab_size, C);
  w.output = c.tied_embeddings ? w.tok_embd : matrix("output.weight", c.vocab_size, C);
  if (c.arch == Arch::GPT2) w.pos_embd = random_matrix(arena, c.max_seq_len, C, DType::F32, next(), threads);
  // (E, N, K) experts: E matrices of (N, K) back to back.
  auto experts = [&](const char* name, int64_t N, int64_t K) {
    TensorView t = matrix(name, c.moe_experts * N, K);
    t.ndim = 3, t.shape = {c.moe_experts, N, K, 1};
    return t;
  };
  w.layers.resize(size_t(c.n_layers));
  for (auto& L : w.layers) {
    ++layer;
    L.wo = matrix("attn_output.weight", C, c.attn_out_dim());
    if (c.moe_layer(layer)) {
      const int64_t He = c.moe_hidden, Hs = c.moe_shared_hidden;
      // Routers stay f32 (llama.cpp does not quantize them).
      if (!c.moe_hashed()) L.router = random_matrix(arena, c.moe_experts, C, DType::F32, next(), threads);
      L.gate_exps = experts("ffn_gate_exps.weight", He, C);
      L.up_exps = experts("ffn_up_exps.weight", He, C);
      L.down_exps = experts("ffn_down_exps.weight", C, He);
      if (Hs > 0) {
        L.gate_sh = matrix("ffn_gate_shexp.weight", Hs, C);
        L.up_sh = matrix("ffn_up_shexp.weight", Hs, C);
        L.down_sh = matrix("ffn_down_shexp.weight", C, Hs);
      }
    } else {
      L.w_up = matrix("ffn_up.weight", H, C);
      L.w_down = matrix("ffn_down.weight", C, H);
    }
    if (c.mla()) {
      const int64_t r = c.mla_q_lora;
      if (r > 0) {
        L.wq_a = matrix("attn_q_a.weight", r, C);
        L.wq_b = matrix("attn_q_b.weight", c.q_dim(), r);
      } else {
        L.wq = matrix("attn_q.weight", c.q_dim(), C);
      }
      L.wkv_a = matrix("attn_kv_a_mqa.weight", c.mla_kv_lora + c.mla_rope, C);
      L.wkv_b = matrix("attn_kv_b.weight", c.n_heads * (c.head_dim - c.mla_rope + c.mla_v_dim), c.mla_kv_lora);
      if (!c.moe_layer(layer)) L.w_gate = matrix("ffn_gate.weight", H, C);
    } else if (c.arch == Arch::Llama) {
      L.wq = matrix("attn_q.weight", c.q_dim(), C);
      L.wk = matrix("attn_k.weight", c.kv_dim(), C);
      L.wv = matrix("attn_v.weight", c.kv_dim(), C);
      if (!c.moe_layer(layer)) L.w_gate = matrix("ffn_gate.weight", H, C);
    } else {
      L.wqkv = matrix("attn_qkv.weight", 3 * C, C);
    }
  }
}

Weights random_weights(const ModelConfig& cfg, const TypeOf& type_of, uint64_t seed, int threads);

}  // namespace

Weights make_random_weights(const ModelConfig& cfg, DType type, uint64_t seed, int threads) {
  return random_weights(cfg, [type](const char*, int64_t, int64_t) { return type; }, seed, threads);
}

Weights make_random_weights(const ModelConfig& cfg, const QuantMix& m, uint64_t seed, int threads) {
  const bool has_output = !cfg.tied_embeddings;
  const int64_t gqa = cfg.n_heads / std::max<int64_t>(cfg.n_kv_heads, 1);
  Weights w = random_weights(
      cfg,
      [&](const char* name, int64_t layer, int64_t cols) {
        return quant_mix_tensor_type(m, name, layer, cfg.n_layers, cols, gqa, has_output, nullptr,
                                     moe_mix_info(cfg));
      },
      seed, threads);
  w.file_type = m.ftype;
  return w;
}

namespace {

Weights random_weights(const ModelConfig& cfg, const TypeOf& type, uint64_t seed, int threads) {
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

}  // namespace

}  // namespace tessera
