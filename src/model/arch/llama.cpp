// The Llama family: RMSNorm, RoPE, GQA/MQA attention, gated feed-forward (SwiGLU / GeGLU).
// Variants by tensors present: Qwen2 (q/k/v biases), Qwen3 (QK-norm gains),
// untied output, mixture-of-experts layers (Mixtral, Qwen2-MoE). GGUF "llama" /
// "qwen2" / "qwen3" / "qwen2moe"; Hugging Face LlamaForCausalLM,
// MistralForCausalLM, Qwen2ForCausalLM, Qwen3ForCausalLM, MixtralForCausalLM,
// Qwen2MoeForCausalLM. The MoE keys are read in formats/ (moe_keys.cpp).
// The block: model/llama.cpp (inference), train/blocks.cpp (training).
#include "model/arch/shapes.h"

namespace tessera {

namespace {
using namespace arch_shapes;
bool biased(const ModelConfig& c, int64_t) { return c.qkv_bias; }
bool sandwich(const ModelConfig& c, int64_t) { return c.post_norms; }
bool plain_kv(const ModelConfig& c, int64_t) { return !c.mla(); }
bool plain_q(const ModelConfig& c, int64_t) { return !c.mla() || c.mla_q_lora == 0; }
bool mla(const ModelConfig& c, int64_t) { return c.mla(); }
bool mla_q(const ModelConfig& c, int64_t) { return c.mla() && c.mla_q_lora > 0; }
Shape qa(const ModelConfig& c, int64_t) { return {c.mla_q_lora, c.dim}; }
Shape qa1(const ModelConfig& c, int64_t) { return {c.mla_q_lora}; }
Shape qb(const ModelConfig& c, int64_t) { return {c.q_dim(), c.mla_q_lora}; }
Shape kva(const ModelConfig& c, int64_t) { return {c.mla_kv_lora + c.mla_rope, c.dim}; }
Shape kva1(const ModelConfig& c, int64_t) { return {c.mla_kv_lora}; }
Shape kvb(const ModelConfig& c, int64_t) {
  return {c.n_heads * (c.head_dim - c.mla_rope + c.mla_v_dim), c.mla_kv_lora};
}
bool normed(const ModelConfig& c, int64_t) { return c.qk_norm; }
Shape qc(const ModelConfig& c, int64_t) { return {c.q_dim(), c.dim}; }
Shape kvc(const ModelConfig& c, int64_t) { return {c.kv_dim(), c.dim}; }
Shape q1(const ModelConfig& c, int64_t) { return {c.q_dim()}; }
Shape kv1(const ModelConfig& c, int64_t) { return {c.kv_dim()}; }
Shape hd1(const ModelConfig& c, int64_t) { return {c.head_dim}; }
Shape cq(const ModelConfig& c, int64_t) { return {c.dim, c.attn_out_dim()}; }
// Mixture-of-experts layers (model/moe.cpp) and the dense ones around them.
bool dense(const ModelConfig& c, int64_t l) { return !c.moe_layer(l); }
bool moe(const ModelConfig& c, int64_t l) { return c.moe_layer(l); }
bool routed(const ModelConfig& c, int64_t l) { return c.moe_layer(l) && !c.moe_hashed(); }  // a learned router
bool shared(const ModelConfig& c, int64_t l) { return c.moe_layer(l) && c.moe_shared_hidden > 0; }
bool shared_gated(const ModelConfig& c, int64_t l) { return c.moe_layer(l) && c.moe_shared_gate; }
bool score_bias(const ModelConfig& c, int64_t l) { return c.moe_layer(l) && c.moe_score_bias; }
Shape ec(const ModelConfig& c, int64_t) { return {c.moe_experts, c.dim}; }
Shape e1(const ModelConfig& c, int64_t) { return {c.moe_experts}; }
Shape ehc(const ModelConfig& c, int64_t) { return {c.moe_experts, c.moe_hidden, c.dim}; }
Shape ech(const ModelConfig& c, int64_t) { return {c.moe_experts, c.dim, c.moe_hidden}; }
Shape sc(const ModelConfig& c, int64_t) { return {c.moe_shared_hidden, c.dim}; }
// Multi-token prediction modules (blocks n_layers..; train/mtp.cpp): llama.cpp's "nextn" names.
bool mtp(const ModelConfig& c, int64_t l) { return c.mtp_block(l); }
Shape c2c(const ModelConfig& c, int64_t) { return {c.dim, 2 * c.dim}; }
Shape cs(const ModelConfig& c, int64_t) { return {c.dim, c.moe_shared_hidden}; }
}  // namespace

extern const ArchDesc kLlamaArch;
const ArchDesc kLlamaArch{
    Arch::Llama,
    "llama",
    {"llama", "qwen2", "qwen3", "qwen2moe", "deepseek2", "gemma2"},
    {"LlamaForCausalLM", "MistralForCausalLM", "Qwen2ForCausalLM", "Qwen3ForCausalLM", "MixtralForCausalLM",
     "Qwen2MoeForCausalLM", "DeepseekV2ForCausalLM", "DeepseekV3ForCausalLM", "Gemma2ForCausalLM"},
    // head
    {{Slot::TokEmbd, "token_embd.weight", "model.embed_tokens.weight", E, vc}},
    // layer
    {{Slot::AttnNorm, "attn_norm.weight", "input_layernorm.weight", V, c1},
     {Slot::Wq, "attn_q.weight", "self_attn.q_proj.weight", M, qc, plain_q},
     {Slot::Wk, "attn_k.weight", "self_attn.k_proj.weight", M, kvc, plain_kv},
     {Slot::Wv, "attn_v.weight", "self_attn.v_proj.weight", M, kvc, plain_kv},
     // Latent attention (DeepSeek-V2/V3).
     {Slot::WqA, "attn_q_a.weight", "self_attn.q_a_proj.weight", M, qa, mla_q},
     {Slot::QANorm, "attn_q_a_norm.weight", "self_attn.q_a_layernorm.weight", V, qa1, mla_q},
     {Slot::WqB, "attn_q_b.weight", "self_attn.q_b_proj.weight", M, qb, mla_q},
     {Slot::WkvA, "attn_kv_a_mqa.weight", "self_attn.kv_a_proj_with_mqa.weight", M, kva, mla},
     {Slot::KvANorm, "attn_kv_a_norm.weight", "self_attn.kv_a_layernorm.weight", V, kva1, mla},
     {Slot::WkvB, "attn_kv_b.weight", "self_attn.kv_b_proj.weight", M, kvb, mla},
     {Slot::QNorm, "attn_q_norm.weight", "self_attn.q_norm.weight", V, hd1, normed, &ModelConfig::qk_norm},
     {Slot::KNorm, "attn_k_norm.weight", "self_attn.k_norm.weight", V, hd1, normed, &ModelConfig::qk_norm},
     {Slot::Bq, "attn_q.bias", "self_attn.q_proj.bias", V, q1, biased, &ModelConfig::qkv_bias},
     {Slot::Bk, "attn_k.bias", "self_attn.k_proj.bias", V, kv1, biased, &ModelConfig::qkv_bias},
     {Slot::Bv, "attn_v.bias", "self_attn.v_proj.bias", V, kv1, biased, &ModelConfig::qkv_bias},
     {Slot::Wo, "attn_output.weight", "self_attn.o_proj.weight", M, cq},
     {Slot::PostAttnNorm, "post_attention_norm.weight", "post_attention_norm.weight", V, c1, sandwich,
      &ModelConfig::post_norms},
     {Slot::FfnNorm, "ffn_norm.weight", "post_attention_layernorm.weight", V, c1},
     {Slot::WGate, "ffn_gate.weight", "mlp.gate_proj.weight", M, hc, dense},
     {Slot::WUp, "ffn_up.weight", "mlp.up_proj.weight", M, hc, dense},
     {Slot::WDown, "ffn_down.weight", "mlp.down_proj.weight", M, ch, dense},
     {Slot::PostFfnNorm, "post_ffw_norm.weight", "post_feedforward_layernorm.weight", V, c1, sandwich,
      &ModelConfig::post_norms},
     // Mixture-of-experts layers: router, routed experts, shared expert (Qwen2-MoE's gated one,
     // DeepSeek's ungated ones as one matrix of their summed width).
     {Slot::Router, "ffn_gate_inp.weight", "mlp.gate.weight", M, ec, routed, nullptr, false,
      "block_sparse_moe.gate.weight"},
     {Slot::RouterBias, "exp_probs_b.bias", "mlp.gate.e_score_correction_bias", V, e1, score_bias,
      &ModelConfig::moe_score_bias},
     {Slot::WGateExps, "ffn_gate_exps.weight", "mlp.experts.{e}.gate_proj.weight", M, ehc, moe, nullptr, false,
      "block_sparse_moe.experts.{e}.w1.weight"},
     {Slot::WUpExps, "ffn_up_exps.weight", "mlp.experts.{e}.up_proj.weight", M, ehc, moe, nullptr, false,
      "block_sparse_moe.experts.{e}.w3.weight"},
     {Slot::WDownExps, "ffn_down_exps.weight", "mlp.experts.{e}.down_proj.weight", M, ech, moe, nullptr, false,
      "block_sparse_moe.experts.{e}.w2.weight"},
     {Slot::ShGate, "ffn_gate_inp_shexp.weight", "mlp.shared_expert_gate.weight", V, c1, shared_gated,
      &ModelConfig::moe_shared_gate},
     {Slot::WGateSh, "ffn_gate_shexp.weight", "mlp.shared_expert.gate_proj.weight", M, sc, shared, nullptr, false,
      "mlp.shared_experts.gate_proj.weight"},
     {Slot::WUpSh, "ffn_up_shexp.weight", "mlp.shared_expert.up_proj.weight", M, sc, shared, nullptr, false,
      "mlp.shared_experts.up_proj.weight"},
     {Slot::WDownSh, "ffn_down_shexp.weight", "mlp.shared_expert.down_proj.weight", M, cs, shared, nullptr, false,
      "mlp.shared_experts.down_proj.weight"},
     {Slot::MtpENorm, "nextn.enorm.weight", "enorm.weight", V, c1, mtp},
     {Slot::MtpHNorm, "nextn.hnorm.weight", "hnorm.weight", V, c1, mtp},
     {Slot::MtpEhProj, "nextn.eh_proj.weight", "eh_proj.weight", M, c2c, mtp},
     {Slot::MtpHeadNorm, "nextn.shared_head_norm.weight", "shared_head.norm.weight", V, c1, mtp}},
    // tail
    {{Slot::OutNorm, "output_norm.weight", "model.norm.weight", V, c1},
     {Slot::Output, "output.weight", "lm_head.weight", M, vc, untied}},
    "model.layers.",
    "",
    {{"embedding_length", "hidden_size", &ModelConfig::dim, nullptr, true, true},
     {"block_count", "num_hidden_layers", &ModelConfig::n_layers, nullptr, true, true},
     {"feed_forward_length", "intermediate_size", &ModelConfig::hidden_dim, nullptr, true, true},
     {"attention.head_count", "num_attention_heads", &ModelConfig::n_heads, nullptr, true, true},
     {"attention.head_count_kv", "num_key_value_heads", &ModelConfig::n_kv_heads},
     {"context_length", "max_position_embeddings", &ModelConfig::max_seq_len, nullptr, true, false},
     {"attention.layer_norm_rms_epsilon", "rms_norm_eps", nullptr, &ModelConfig::norm_eps},
     {"rope.freq_base", "rope_theta", nullptr, &ModelConfig::rope_theta},
     // Gemma-2's soft-capping keys (llama.cpp's and transformers' names).
     {"attn_logit_softcapping", "attn_logit_softcapping", nullptr, &ModelConfig::attn_softcap, false, false, false},
     {"final_logit_softcapping", "final_logit_softcapping", nullptr, &ModelConfig::final_softcap, false, false, false}},
};

}  // namespace tessera
