// Model weights: non-owning views into mapped files or converted buffers,
// kept alive by `owners`. Names follow the Llama block; GPT-2 uses the same
// slots (wqkv fused, biases, LayerNorm gains/biases, learned positions).
#pragma once
#include <array>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "core/tensor.h"
#include "kernels/kernels.h"
#include "model/config.h"

namespace tessera {

struct LayerWeights {
  TensorView attn_norm, attn_norm_b;  // (C)
  TensorView wq, wk, wv;              // (q_dim, C), (kv_dim, C), (kv_dim, C)
  TensorView bq, bk, bv;              // optional biases
  TensorView wqkv, bqkv;              // GPT-2 fused (3C, C), (3C)
  TensorView wo, bo;                  // (C, q_dim), (C)
  TensorView ffn_norm, ffn_norm_b;    // (C)
  TensorView w_gate, w_up, w_down;    // Llama: (H, C), (H, C), (C, H); GPT-2 uses w_up / w_down
  TensorView b_up, b_down;            // GPT-2 MLP biases (H), (C)
  TensorView q_norm, k_norm;          // QK-norm gains (head_dim), when cfg.qk_norm
  // Mixture-of-experts layers (E experts of width He, shared expert of width Hs):
  TensorView router, router_bias;     // (E, C) f32, (E) selection bias (DeepSeek-V3)
  TensorView gate_exps, up_exps;      // (E, He, C)
  TensorView down_exps;               // (E, C, He)
  TensorView gate_sh, up_sh, down_sh; // (Hs, C), (Hs, C), (C, Hs)
  TensorView sh_gate;                 // (C): shared output times sigmoid(sh_gate . x) (Qwen2-MoE)
  // Latent attention (cfg.mla(); r = q LoRA rank, ckv = kv LoRA rank, nope = head_dim - rope):
  TensorView wq_a, q_a_norm, wq_b;    // (r, C), (r), (n_heads head_dim, r); wq instead without a q LoRA
  TensorView wkv_a, kv_a_norm, wkv_b; // (ckv + rope, C), (ckv), (n_heads (nope + v), ckv)

  TensorView post_attn_norm, post_ffn_norm;  // (C) sandwich norms (Gemma 2), when cfg.post_norms
  // A multi-token prediction module's own tensors (blocks n_layers.. of cfg.mtp_depth):
  TensorView mtp_enorm, mtp_hnorm;    // (C) norms of the embedding and of the previous hidden state
  TensorView mtp_eh_proj;             // (C, 2C) of [enorm(emb); hnorm(h)]
  TensorView mtp_head_norm;           // (C) before the shared output head

  static constexpr size_t kSlots = 42;
  // Every slot, for code that visits all tensors of a layer (absent ones are empty views).
  std::array<TensorView*, kSlots> slots() {
    return {&attn_norm, &attn_norm_b, &wq, &wk, &wv, &bq, &bk, &bv, &wqkv, &bqkv, &wo, &bo, &ffn_norm, &ffn_norm_b,
            &w_gate, &w_up, &w_down, &b_up, &b_down, &q_norm, &k_norm, &router, &router_bias, &gate_exps, &up_exps,
            &down_exps, &gate_sh, &up_sh, &down_sh, &sh_gate, &wq_a, &q_a_norm, &wq_b, &wkv_a, &kv_a_norm, &wkv_b,
            &post_attn_norm, &post_ffn_norm, &mtp_enorm, &mtp_hnorm, &mtp_eh_proj, &mtp_head_norm};
  }
  std::array<const TensorView*, kSlots> slots() const {
    auto s = const_cast<LayerWeights*>(this)->slots();
    std::array<const TensorView*, kSlots> r;
    for (size_t i = 0; i < s.size(); ++i) r[i] = s[i];
    return r;
  }
};

using TensorNamer = std::function<std::string(const std::string& role, int64_t layer)>;

struct Weights {
  ModelConfig cfg;
  TensorView tok_embd;              // (V, C)
  TensorView pos_embd;              // (T, C) GPT-2 only
  TensorView out_norm, out_norm_b;  // (C)
  TensorView output;                // (V, C); == tok_embd when tied
  std::vector<LayerWeights> layers;
  std::vector<std::shared_ptr<const void>> owners;  // mapped files / converted buffers
  // llama.cpp's general.file_type (core/quant_mix.h) when known: read from
  // GGUF, set by convert_weights; -1: derived from the matrices' type on save.
  int64_t file_type = -1;

  // Checks every present tensor's shape against cfg; throws Error naming the
  // tensor, by namer(role, layer) when given (roles are GGUF's names, e.g.
  // "attn_q.weight" with layer 0 -> default "blk.0.attn_q.weight"; layer -1 for globals).
  void validate_shapes(const std::string& where, const TensorNamer& namer = {}) const;
  size_t weight_bytes() const;   // bytes of all distinct weight tensors
  std::vector<TensorView> tensors() const;  // every distinct tensor once
  int64_t n_params() const;
};

// Expert e of a (E, N, K) experts tensor as an (N, K) matrix (any DType,
// R4 layouts included: each expert is repacked on its own).
TensorView expert_matrix(const TensorView& W, int64_t e);

// Keep a converted buffer alive with the weights and return a view over it.
TensorView own_buffer(Weights& w, std::vector<uint8_t> bytes, DType t, std::initializer_list<int64_t> shape);

}  // namespace tessera

namespace tessera {
// Norm gains and biases are used as f32 by the blocks: convert any 1-D tensor
// stored as F16/BF16 into an owned f32 copy.
void norms_to_f32(Weights& w);

// Rearranges the matrices that `isa`'s kernels read faster in another layout
// (kernels/repack.h: Q4_0 / Q8_0 / Q4_1 / Q5_0 / Q5_1 / IQ4_NL / Q4_K / Q5_K / Q6_K -> their R4 layouts on AVX-512, r4_applies), each into
// an owned 64-byte-aligned buffer (huge pages from 8 MiB), and returns how many
// were repacked. For inference only: the result cannot be written to a file.
// The embedding table (rows looked up by token) and a tied output stay as they are.
int repack_weights(Weights& w, Isa isa, int threads);

// LLM.int8() (kernels/int8.h): every block matrix (q, k, v, qkv, o, gate, up,
// down) of f32 / f16 / bf16 weights into int8 rows with absmax scales, their
// activation columns above `threshold` multiplied in f32 at run time (0:
// plain int8, no decomposition). The embedding and the output matrix stay as
// they are. Returns how many matrices were converted; throws Error naming a
// tensor of another type.
int to_llm_int8(Weights& w, float threshold);

// Every F16 matrix (block matrices, the output; not the embedding table,
// which is looked up by row) rounded to BF16 at load (nearest even), so
// prefill takes the bf16 GEMM (vdpbf16ps / AMX) at BF16's rate instead of
// dequantizing to f32 for sgemm; decode reads the same bytes. Costs the
// three low mantissa bits of each weight (--f16-as-bf16; docs/kernels.md has
// the measured perplexity change). Returns how many were converted.
int f16_to_bf16(Weights& w, int threads);
}  // namespace tessera
