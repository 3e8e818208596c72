// GPT-2: learned positions, LayerNorm (gain + bias), fused q/k/v projection
// with bias, multi-head attention, GELU MLP with biases, tied output. GGUF
// "gpt2"; Hugging Face GPT2LMHeadModel (Conv1D weights stored (in, out)).
// The block: model/gpt2.cpp (inference), train/blocks.cpp (training).
#include "model/arch/shapes.h"

namespace tessera {

namespace {
using namespace arch_shapes;
Shape tc(const ModelConfig& c, int64_t) { return {c.max_seq_len, c.dim}; }
Shape qkv(const ModelConfig& c, int64_t) { return {3 * c.dim, c.dim}; }
Shape qkv1(const ModelConfig& c, int64_t) { return {3 * c.dim}; }
Shape cc(const ModelConfig& c, int64_t) { return {c.dim, c.dim}; }
Shape h1(const ModelConfig& c, int64_t) { return {c.hidden_dim}; }
}  // namespace

extern const ArchDesc kGpt2Arch;
const ArchDesc kGpt2Arch{
    Arch::GPT2,
    "gpt2",
    {"gpt2"},
    {"GPT2LMHeadModel"},
    // head
    {{Slot::TokEmbd, "token_embd.weight", "transformer.wte.weight", E, vc},
     {Slot::PosEmbd, "position_embd.weight", "transformer.wpe.weight", E, tc}},
    // layer
    {{Slot::AttnNorm, "attn_norm.weight", "ln_1.weight", V, c1},
     {Slot::AttnNormB, "attn_norm.bias", "ln_1.bias", V, c1},
     {Slot::Wqkv, "attn_qkv.weight", "attn.c_attn.weight", M, qkv, nullptr, nullptr, true},
     {Slot::Bqkv, "attn_qkv.bias", "attn.c_attn.bias", V, qkv1},
     {Slot::Wo, "attn_output.weight", "attn.c_proj.weight", M, cc, nullptr, nullptr, true},
     {Slot::Bo, "attn_output.bias", "attn.c_proj.bias", V, c1},
     {Slot::FfnNorm, "ffn_norm.weight", "ln_2.weight", V, c1},
     {Slot::FfnNormB, "ffn_norm.bias", "ln_2.bias", V, c1},
     {Slot::WUp, "ffn_up.weight", "mlp.c_fc.weight", M, hc, nullptr, nullptr, true},
     {Slot::BUp, "ffn_up.bias", "mlp.c_fc.bias", V, h1},
     {Slot::WDown, "ffn_down.weight", "mlp.c_proj.weight", M, ch, nullptr, nullptr, true},
     {Slot::BDown, "ffn_down.bias", "mlp.c_proj.bias", V, c1}},
    // tail
    {{Slot::OutNorm, "output_norm.weight", "transformer.ln_f.weight", V, c1},
     {Slot::OutNormB, "output_norm.bias", "transformer.ln_f.bias", V, c1},
     {Slot::Output, "output.weight", "lm_head.weight", M, vc, untied}},
    "transformer.h.",
    "transformer.",
    {{"embedding_length", "n_embd", &ModelConfig::dim, nullptr, true, true},
     {"block_count", "n_layer", &ModelConfig::n_layers, nullptr, true, true},
     {"feed_forward_length", "n_inner", &ModelConfig::hidden_dim, nullptr, true, false},
     {"attention.head_count", "n_head", &ModelConfig::n_heads, nullptr, true, true},
     {"context_length", "n_positions", &ModelConfig::max_seq_len, nullptr, true, true},
     {"attention.layer_norm_epsilon", "layer_norm_epsilon", nullptr, &ModelConfig::norm_eps}},
};

}  // namespace tessera
