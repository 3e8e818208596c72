// Trainable parameters: every tensor of a model laid out in one flat buffer,
// so parameters, gradients and optimizer moments share one layout and the
// optimizer runs over plain arrays. Tensor roles use GGUF's names
// ("attn_q.weight" in layer l is blk.l.attn_q.weight).
#pragma once
#include <array>
#include <cstdint>
#include <limits>
#include <string>
#include <vector>

#include "core/aligned.h"
#include "model/weights.h"

namespace tessera::train {

constexpr size_t kAbsent = std::numeric_limits<size_t>::max();

struct ParamInfo {
  std::string name;            // GGUF tensor name, e.g. "blk.0.attn_q.weight"
  std::vector<int64_t> shape;  // outermost first
  size_t offset = 0, numel = 0;
  bool matrix = false;         // 2-D weight (decayed by default); else norm gain / bias
  bool embedding = false;      // token / position embedding
};

struct LayerOffsets {
  size_t attn_norm = kAbsent, attn_norm_b = kAbsent;
  size_t wq = kAbsent, wk = kAbsent, wv = kAbsent, bq = kAbsent, bk = kAbsent, bv = kAbsent;
  size_t wqkv = kAbsent, bqkv = kAbsent;  // GPT-2
  size_t wo = kAbsent, bo = kAbsent;
  size_t ffn_norm = kAbsent, ffn_norm_b = kAbsent;
  size_t w_gate = kAbsent, w_up = kAbsent, w_down = kAbsent, b_up = kAbsent, b_down = kAbsent;
  size_t q_norm = kAbsent, k_norm = kAbsent;  // QK-norm gains (head_dim)
  // Mixture-of-experts layers: router (E, C), experts (E, He, C) / (E, C, He), shared expert.
  size_t router = kAbsent, router_bias = kAbsent, gate_exps = kAbsent, up_exps = kAbsent, down_exps = kAbsent;
  size_t gate_sh = kAbsent, up_sh = kAbsent, down_sh = kAbsent, sh_gate = kAbsent;
  // Not trained (Layout refuses these configs): latent attention, sandwich norms.
  size_t wq_a = kAbsent, q_a_norm = kAbsent, wq_b = kAbsent, wkv_a = kAbsent, kv_a_norm = kAbsent, wkv_b = kAbsent;
  size_t post_attn_norm = kAbsent, post_ffn_norm = kAbsent;
  // Multi-token prediction modules (layers n_layers..): norms (C), projection (C, 2C), head norm (C).
  size_t mtp_enorm = kAbsent, mtp_hnorm = kAbsent, mtp_eh_proj = kAbsent, mtp_head_norm = kAbsent;

  // Every slot, in LayerWeights::slots() order (model/arch.h's Slot enum).
  std::array<size_t*, LayerWeights::kSlots> slots() {
    return {&attn_norm, &attn_norm_b, &wq, &wk, &wv, &bq, &bk, &bv, &wqkv, &bqkv, &wo, &bo, &ffn_norm, &ffn_norm_b,
            &w_gate, &w_up, &w_down, &b_up, &b_down, &q_norm, &k_norm, &router, &router_bias, &gate_exps, &up_exps,
            &down_exps, &gate_sh, &up_sh, &down_sh, &sh_gate, &wq_a, &q_a_norm, &wq_b, &wkv_a, &kv_a_norm, &wkv_b,
            &post_attn_norm, &post_ffn_norm, &mtp_enorm, &mtp_hnorm, &mtp_eh_proj, &mtp_head_norm};
  }
};

struct Layout {
  ModelConfig cfg;
  size_t tok_embd = kAbsent, pos_embd = kAbsent, out_norm = kAbsent, out_norm_b = kAbsent;
  size_t output = kAbsent;  // == tok_embd when tied
  std::vector<LayerOffsets> layers;
  std::vector<ParamInfo> tensors;
  // Every tensor starts on a 64-byte boundary (offsets are multiples of
  // kAlign elements), so the rows of the GEMMs' f32 outputs do not split
  // cache lines; total includes that padding (zeros, never read by the model).
  static constexpr size_t kAlign = 16;
  size_t total = 0;     // elements of a parameter / gradient / moment buffer
  size_t n_params = 0;  // parameters (sum of the tensors' numel), no padding

  explicit Layout(const ModelConfig& cfg);  // validates cfg (Error naming the field)
  const ParamInfo* find(const std::string& name) const;
  // Rank r's contiguous share [begin, end) of the flat buffer of `total`
  // elements split over n ranks: near-equal, boundaries on kAlign elements,
  // together covering [0, total) in rank order (what ZeRO shards).
  struct Shard {
    size_t begin = 0, end = 0;
  };
  Shard shard(int r, int n) const;
};

// Rank r's contiguous share [begin, end) of a flat buffer of `total` elements over n
// ranks: near-equal, boundaries on Layout::kAlign elements (Layout::shard for its total).
Layout::Shard shard_range(size_t total, int r, int n);

// A parameter-shaped buffer (params, gradients, moments): 64-byte aligned.
using ParamVec = aligned_vector<float>;

// Deterministic initialisation from a seed: matrices and embeddings normal(0,
// 0.02), the residual projections (attn_output, ffn_down) scaled by
// 1/sqrt(2 * n_layers) (GPT-2's scheme), norm gains 1, biases 0.
void init_params(const Layout& L, float* p, uint64_t seed);

// Copies (dequantizing) every tensor of w into p; w's config must give L.
// Throws Error naming the tensor on a shape mismatch.
// skip_frozen_matrices: the matrices a frozen quantized base reads from w itself
// (Transformer::set_frozen_weights: every matrix but GPT-2's position table) are checked
// but not written, so p's pages there are never touched.
void params_from_weights(const Layout& L, const Weights& w, float* p, bool skip_frozen_matrices = false);
// The loaded tensor of w that parameter t of L comes from (null: none).
const TensorView* tensor_of(const Weights& w, const Layout& L, const ParamInfo& t);
// Whether a frozen quantized base reads tensor t from the loaded weights (see above).
inline bool frozen_matrix(const Layout& L, const ParamInfo& t) {
  return (t.matrix || t.offset == L.tok_embd) && t.offset != L.pos_embd;
}

// Sparse upcycling (Komatsuzaki et al.): the dense Llama-family model w with each
// layer's feed-forward copied into E experts (f32; each copy plus noise x N(0, 1) x
// that matrix's RMS), a router N(0, 0.02) choosing k of them, renormalised (Mixtral's
// router). Without noise the result computes the dense model exactly: the selected
// weights sum to 1 and every expert is the same FFN. Error naming what is not dense.
// routing: a hash rule (model/moe_hash.h) instead of a fresh router; hash_table: hash-balanced's.
Weights upcycle_weights(const Weights& w, int64_t E, int64_t k, float noise, uint64_t seed,
                        MoeRouting routing = MoeRouting::Learned, const std::vector<int32_t>& hash_table = {});

// f32 Weights viewing p (no copy): feeds the inference Model and the GGUF /
// safetensors writers. p must outlive the result.
Weights weights_view(const Layout& L, const float* p);

}  // namespace tessera::train
