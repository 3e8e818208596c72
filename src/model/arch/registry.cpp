// The registered architectures and what every table user shares: slot
// access, iteration in layout order, tensor names, parameter counts.
#include "core/error.h"
#include "model/arch.h"

namespace tessera {

extern const ArchDesc kLlamaArch;
extern const ArchDesc kGpt2Arch;

const std::vector<const ArchDesc*>& architectures() {
  static const std::vector<const ArchDesc*> all = {&kLlamaArch, &kGpt2Arch};
  return all;
}

const ArchDesc& arch_desc(Arch a) {
  for (const ArchDesc* d : architectures())
    if (d->arch == a) return *d;
  fail("architecture ", int(a), " is not registered");
}

const ArchDesc* find_arch_gguf(const std::string& name) {
  for (const ArchDesc* d : architectures())
    for (const auto& n : d->gguf_archs)
      if (n == name) return d;
  return nullptr;
}

const ArchDesc* find_arch_hf(const std::string& name) {
  for (const ArchDesc* d : architectures())
    for (const auto& n : d->hf_archs)
      if (n == name) return d;
  return nullptr;
}

TensorView& slot_ref(Weights& w, Slot s, int64_t layer) {
  switch (s) {
    case Slot::TokEmbd: return w.tok_embd;
    case Slot::PosEmbd: return w.pos_embd;
    case Slot::OutNorm: return w.out_norm;
    case Slot::OutNormB: return w.out_norm_b;
    case Slot::Output: return w.output;
    default: break;
  }
  return *w.layers.at(size_t(layer)).slots()[size_t(int(s) - kGlobalSlots)];
}

const TensorView& slot_ref(const Weights& w, Slot s, int64_t layer) {
  return slot_ref(const_cast<Weights&>(w), s, layer);
}

void for_each_tensor_spec(const ArchDesc& d, const ModelConfig& c,
                          const std::function<void(const TensorSpec&, int64_t)>& f) {
  auto visit = [&](const TensorSpec& s, int64_t l) {
    if (!s.present || s.present(c, l)) f(s, l);
  };
  for (const auto& s : d.head) visit(s, -1);
  for (int64_t l = 0; l < c.n_blocks(); ++l)  // the layers, then the multi-token prediction modules
    for (const auto& s : d.layer) visit(s, l);
  for (const auto& s : d.tail) visit(s, -1);
}

std::string gguf_tensor_name(const TensorSpec& s, int64_t layer) {
  return s.is_layer() ? "blk." + std::to_string(layer) + "." + s.gguf : std::string(s.gguf);
}

std::string hf_tensor_name(const ArchDesc& d, const TensorSpec& s, int64_t layer, bool without_prefix) {
  std::string n = s.is_layer() ? std::string(d.hf_layer_prefix) + std::to_string(layer) + "." + s.hf : s.hf;
  const std::string p = d.hf_optional_prefix;
  if (without_prefix && !p.empty() && n.rfind(p, 0) == 0) n.erase(0, p.size());
  return n;
}

int64_t count_params(const ModelConfig& c) {
  int64_t n = 0;
  for_each_tensor_spec(arch_desc(c.arch), c, [&](const TensorSpec& s, int64_t l) {
    int64_t k = 1;
    for (int64_t d : s.shape(c, l)) k *= d;
    n += k;
  });
  return n;
}

int64_t count_active_params(const ModelConfig& c) {
  int64_t n = 0;
  for_each_tensor_spec(arch_desc(c.arch), c, [&](const TensorSpec& s, int64_t l) {
    int64_t k = 1;
    for (int64_t d : s.shape(c, l)) k *= d;
    n += is_expert_slot(s.slot) ? k / c.moe_experts * c.moe_used : k;
  });
  return n;
}

MoeMixInfo moe_mix_info(const ModelConfig& c) {
  MoeMixInfo m{c.moe_experts, 0};
  if (c.is_moe())
    for_each_tensor_spec(arch_desc(c.arch), c, [&](const TensorSpec& s, int64_t) {
      m.n_ffn_down += std::string_view(s.gguf).find("ffn_down") != std::string_view::npos;
    });
  return m;
}

int64_t ModelConfig::active_params() const { return count_active_params(*this); }

}  // namespace tessera
