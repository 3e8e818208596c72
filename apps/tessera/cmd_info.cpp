// tessera info: architecture, hyperparameters, parameter count, tensor types,
// and the memory needed for weights and the KV cache at a given context.
#include <cstdio>
#include <map>
#include <set>

#include "core/quant_mix.h"
#include "commands.h"
#include "common.h"
#include "core/error.h"
#include "formats/rope_scaling.h"
#include "model/arch.h"
#include "model/kv_cache.h"
#include "model/model.h"

namespace tessera::cli {

int cmd_info(int argc, char** argv) {
  CLI::App app{"Describe a model: architecture, sizes, tensor types, memory.", "tessera info"};
  std::string model, tokenizer;
  int64_t ctx = 0;
  app.add_option("-m,--model", model, "model file or directory")->required();
  app.add_option("--tokenizer", tokenizer, "tokenizer file for models that carry none");
  app.add_option("-c,--ctx-size", ctx, "context size for the KV-cache estimate (default: the model's)");
  if (int rc = parse(app, argc, argv); rc >= 0) return rc;

  LoadedModel lm = load_model(model, tokenizer);
  const auto& w = lm.weights;
  const auto& c = w.cfg;
  if (ctx <= 0) ctx = c.max_seq_len;
  std::printf("model:          %s\n", model.c_str());
  std::printf("format:         %s\n", lm.format.c_str());
  std::printf("architecture:   %s%s\n", arch_name(c.arch), c.name.empty() ? "" : (" (" + c.name + ")").c_str());
  std::printf("dim:            %lld\n", (long long)c.dim);
  std::printf("layers:         %lld\n", (long long)c.n_layers);
  if (c.mtp_depth > 0)
    std::printf("mtp modules:    %lld (multi-token prediction: blocks %lld..%lld, tokens up to %lld ahead; "
                "generation runs the %lld layers)\n",
                (long long)c.mtp_depth, (long long)c.n_layers, (long long)c.n_blocks() - 1, (long long)c.mtp_depth + 1,
                (long long)c.n_layers);
  std::printf("heads:          %lld query, %lld key/value (%s), head_dim %lld\n", (long long)c.n_heads,
              (long long)c.n_kv_heads,
              c.n_kv_heads == c.n_heads ? "MHA" : (c.n_kv_heads == 1 ? "MQA" : "GQA"), (long long)c.head_dim);
  static const char* kActs[] = {"", "SwiGLU", "GeGLU", "GELU", "ReLU"};
  if (c.mla())
    std::printf("attention:      latent (MLA): q LoRA rank %lld, kv LoRA rank %lld, key %lld (%lld + %lld RoPE), value %lld; "
                "the KV cache holds the latent (absorbed)\n",
                (long long)c.mla_q_lora, (long long)c.mla_kv_lora, (long long)c.head_dim,
                (long long)(c.head_dim - c.mla_rope), (long long)c.mla_rope, (long long)c.mla_v_dim);
  if (!c.is_moe() || c.moe_first_dense > 0)
    std::printf("ffn hidden:     %lld (%s)%s\n", (long long)c.hidden_dim, kActs[int(c.activation())],
                c.is_moe() ? " in the dense layers" : "");
  if (c.is_moe()) {
    std::string layers;
    for (int64_t l = 0; l < c.n_layers; ++l)
      if (c.moe_layer(l)) layers += (layers.empty() ? "" : ",") + std::to_string(l);
    if (c.moe_every == 1) layers = std::to_string(c.moe_first_dense) + ".." + std::to_string(c.n_layers - 1);
    std::printf("experts:        %lld routed, %lld active per token, width %lld (%s); MoE layers %s\n",
                (long long)c.moe_experts, (long long)c.moe_used, (long long)c.moe_hidden, kActs[int(c.activation())],
                layers.c_str());
    if (c.moe_shared_hidden > 0)
      std::printf("shared expert:  width %lld%s\n", (long long)c.moe_shared_hidden,
                  c.moe_shared_gate ? ", gated by sigmoid(g . x)" : ", ungated");
    std::printf("router:         %s\n", c.router_desc().c_str());
  }
  std::printf("vocab:          %lld\n", (long long)c.vocab_size);
  std::printf("trained ctx:    %lld\n", (long long)c.max_seq_len);
  std::printf("norm:           %s, eps %g, %s\n", c.arch == Arch::Llama ? "RMSNorm" : "LayerNorm", double(c.norm_eps),
              c.norm_placement == NormPlacement::Post ? "post-norm (norm(x + f(x)))" : "pre-norm");
  if (c.arch == Arch::Llama)
    std::printf("rope:           theta %g, %s\n", double(c.rope_theta),
                c.rope_style == ops::RopeStyle::Interleaved ? "interleaved pairs" : "half-split (NeoX)");
  if (!c.rope_freq_factors.empty())
    std::printf("rope scaling:   %s\n", describe_rope_scaling(c.rope_freq_factors, c.rope_theta, c.head_dim).c_str());
  std::printf("embeddings:     %s\n", c.tied_embeddings ? "tied" : "untied");
  std::printf("chat template:  %s\n", lm.chat_template.empty() ? "none (serve / chat use chatml)"
                                                               : ("Jinja, " + std::to_string(lm.chat_template.size()) + " bytes").c_str());
  if (c.qk_norm) std::printf("qk-norm:        yes (RMSNorm per query/key head)\n");
  if (c.has_sliding_window()) {
    std::string sl;
    for (int64_t l = 0; l < c.n_layers; ++l)
      if (c.layer(l).attn == AttnKind::SlidingWindow)
        sl += (sl.empty() ? "" : ",") + std::to_string(l) + "(" + std::to_string(c.layer(l).window) + ")";
    std::printf("attention:      sliding window on layers %s (window in positions); full on the others\n", sl.c_str());
  }
  for (int64_t l = 0; l < c.n_layers; ++l) {  // sparse patterns: one line per run of identical layers
    const LayerConfig& lc = c.layer(l);
    if (lc.attn != AttnKind::Sparse) continue;
    int64_t e = l;
    while (e + 1 < c.n_layers && c.layer(e + 1).attn == AttnKind::Sparse && c.layer(e + 1).window == lc.window &&
           c.layer(e + 1).dilation == lc.dilation && c.layer(e + 1).global == lc.global && c.layer(e + 1).random == lc.random &&
           c.layer(e + 1).head_dilation == lc.head_dilation)
      ++e;
    std::string layers = std::to_string(l) + (e > l ? ".." + std::to_string(e) : "");
    std::string more;
    if (lc.global > 0) more += ", global positions 0.." + std::to_string(lc.global - 1);
    if (lc.random > 0)
      more += ", " + std::to_string(lc.random) + " random keys per block of " + std::to_string(LayerConfig::kRandomBlock) +
              " queries";
    std::string dil = std::to_string(lc.dilation);
    if (!lc.head_dilation.empty()) {  // per query head; the receptive field is the largest's
      dil = "(per head ";
      for (size_t h = 0; h < lc.head_dilation.size(); ++h) dil += (h ? "," : "") + std::to_string(lc.head_dilation[h]);
      dil += ")";
    }
    std::printf("attention:      sparse on layers %s: window %lld x dilation %s (receptive field %lld positions)%s\n",
                layers.c_str(), (long long)lc.window, dil.c_str(), (long long)lc.receptive_field(), more.c_str());
    l = e;
  }
  if (c.post_norms) std::printf("sandwich norms: yes (RMSNorm of each sublayer's output before the residual add)\n");
  if (c.embed_scale > 0.f) std::printf("embed scale:    %g\n", double(c.embed_scale));
  if (c.attn_scale > 0.f) std::printf("attn scale:     %g (q . k)\n", double(c.attn_scale));
  if (c.attn_softcap > 0.f) std::printf("attn softcap:   %g\n", double(c.attn_softcap));
  if (c.final_softcap > 0.f) std::printf("logit softcap:  %g\n", double(c.final_softcap));
  std::printf("parameters:     %lld (%.2fM)\n", (long long)w.n_params(), double(w.n_params()) / 1e6);
  if (c.is_moe()) {
    // Less the unselected routed experts (a tied output counts once, as above).
    const int64_t inactive = count_params(c) - count_active_params(c), active = w.n_params() - inactive;
    std::printf("active params:  %lld (%.2fM) per token\n", (long long)active, double(active) / 1e6);
  }

  std::map<std::string, int> types;
  std::set<const void*> seen;
  double elems = 0, bits = 0;  // over the distinct tensors
  auto count = [&](const TensorView& t) {
    if (t.empty() || !seen.insert(t.data).second) return;
    types[dtype_name(t.dtype)]++;
    elems += double(t.numel());
    bits += double(t.numel()) * dtype_bits_per_weight(t.dtype);
  };
  count(w.tok_embd);
  count(w.pos_embd);
  count(w.out_norm);
  count(w.out_norm_b);
  count(w.output);
  for (const auto& L : w.layers)
    for (const TensorView* t : L.slots()) count(*t);
  std::printf("tensor types:  ");
  for (const auto& [name, n] : types) std::printf(" %s x%d", name.c_str(), n);
  std::printf("\n");
  if (elems > 0) std::printf("bits per weight: %.2f\n", bits / elems);
  if (w.file_type >= 0) {
    const auto mix = quant_mix_from_ftype(uint32_t(w.file_type));
    std::printf("file type:      %s (llama.cpp file type %lld)\n", mix ? mix->name : "unknown", (long long)w.file_type);
  }
  const double per_tok = c.kv_bytes_per_token(DType::F16);  // all layers, f16 elements
  std::printf("weights:        %s\n", human_bytes(double(w.weight_bytes())).c_str());
  // One sequence as generate runs it: sliding-window layers keep a ring of blocks (the
  // window, a rewind and a chunk of max_batch rows: model/kv_cache.h), the others every position.
  const RunOptions ro;
  KVCacheOptions ko;
  ko.block_size = ro.kv_block_size, ko.n_blocks = (ctx + ko.block_size - 1) / ko.block_size;
  ko.window_seqs = 1, ko.window_rows = ko.rewind = ro.max_batch;
  const auto cache_bytes = [&](DType t) {
    ko.type = t;
    return human_bytes(KVCache::planned_bytes(c, ko));
  };
  std::printf("kv cache @%lld:  %s (f32), %s (f16)", (long long)ctx, cache_bytes(DType::F32).c_str(),
              cache_bytes(DType::F16).c_str());
  int64_t window = 0;
  if (KVCache::window_pool_blocks(c, ko, &window) > 0)
    std::printf("; sliding-window layers keep a ring of their window + %lld positions, not all %lld",
                (long long)(2 * ro.max_batch), (long long)ctx);
  std::printf("\n");
  // What this engine caches per token, beside what the alternatives would (MLA: the
  // latent c plus the RoPE key, (d_c + d_rope) x layers, against per-head K and V).
  if (c.mla())
    std::printf("kv per token:   %s (f16, latent: (kv LoRA rank %lld + RoPE %lld) x %lld layers); "
                "MHA of these heads would need %s (%.1fx)\n",
                human_bytes(per_tok).c_str(), (long long)c.mla_kv_lora, (long long)c.mla_rope, (long long)c.n_layers,
                human_bytes(double(c.n_layers) * double(c.n_heads) * double(c.head_dim + c.mla_v_dim) * 2).c_str(),
                double(c.n_heads) * double(c.head_dim + c.mla_v_dim) / double(c.cache_kv_dim()));
  else
    std::printf("kv per token:   %s (f16)%s\n", human_bytes(per_tok).c_str(),
                c.n_kv_heads == c.n_heads ? ""
                                          : (", MHA of these heads would need " +
                                             human_bytes(2.0 * double(c.n_layers) * double(c.q_dim()) * 2))
                                                .c_str());
  if (lm.tokenizer) std::printf("tokenizer:      %d tokens\n", lm.tokenizer->n_vocab());
  return 0;
}

}  // namespace tessera::cli
