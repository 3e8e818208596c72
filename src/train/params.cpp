#include "train/params.h"

#include <algorithm>
#include <cmath>
#include <set>

#include "core/error.h"
#include "core/rng.h"
#include "kernels/kernels.h"
#include "model/arch.h"

namespace tessera::train {

Layout::Layout(const ModelConfig& c) : cfg(c) {
  c.validate("model config");
  if (c.arch == Arch::Llama && c.head_dim * c.n_heads != c.q_dim()) fail("model config: bad head_dim");
  auto add = [&](const std::string& name, std::vector<int64_t> shape, bool emb) {
    ParamInfo p;
    p.name = name;
    p.shape = std::move(shape);
    p.numel = 1;
    for (int64_t s : p.shape) p.numel *= size_t(s);
    p.offset = (total + kAlign - 1) / kAlign * kAlign;
    p.matrix = p.shape.size() >= 2 && !emb;  // (E, N, K) experts too
    p.embedding = emb;
    total = p.offset + p.numel;
    n_params += p.numel;
    tensors.push_back(p);
    return p.offset;
  };
  // The architecture's tensors in its table's order (the checkpoint layout).
  // What the training blocks do not compute yet: refused rather than trained as another model.
  if (c.mla() && (c.qk_norm || c.qkv_bias))
    fail("training latent attention (MLA) with QK-norm or q/k/v biases is not supported (no DeepSeek model has them)");
  if (c.post_norms || c.embed_scale > 0.f || c.attn_scale > 0.f)
    fail("training Gemma 2's block (sandwich norms, embedding / attention scales) is not supported yet");
  layers.resize(size_t(c.n_blocks()));
  for_each_tensor_spec(arch_desc(c.arch), c, [&](const TensorSpec& s, int64_t l) {
    const size_t off = add(gguf_tensor_name(s, l), s.shape(c, l), s.kind == TensorKind::Embedding);
    switch (s.slot) {
      case Slot::TokEmbd: tok_embd = off; break;
      case Slot::PosEmbd: pos_embd = off; break;
      case Slot::OutNorm: out_norm = off; break;
      case Slot::OutNormB: out_norm_b = off; break;
      case Slot::Output: output = off; break;
      default: *layers[size_t(l)].slots()[size_t(int(s.slot) - kGlobalSlots)] = off;
    }
  });
  if (c.tied_embeddings) output = tok_embd;
  total = (total + kAlign - 1) / kAlign * kAlign;
}

Layout::Shard Layout::shard(int r, int n) const { return shard_range(total, r, n); }

Layout::Shard shard_range(size_t total, int r, int n) {
  constexpr size_t kAlign = Layout::kAlign;
  if (n <= 0 || r < 0 || r >= n) fail("parameter shard ", r, " of ", n, " does not exist");
  const size_t blocks = (total + kAlign - 1) / kAlign;  // kAlign-element units
  const auto edge = [&](int k) { return std::min(total, blocks * size_t(k) / size_t(n) * kAlign); };
  return {edge(r), edge(r + 1)};
}

const ParamInfo* Layout::find(const std::string& name) const {
  for (const auto& t : tensors)
    if (t.name == name) return &t;
  return nullptr;
}

namespace {
inline uint64_t mix(uint64_t z) { return splitmix64(z); }
inline double uniform01(uint64_t& s) { return (double((s = mix(s)) >> 11) + 0.5) * (1.0 / 9007199254740992.0); }
bool ends_with(const std::string& s, const char* suf) {
  const std::string t(suf);
  return s.size() >= t.size() && s.compare(s.size() - t.size(), t.size(), t) == 0;
}
}  // namespace

void init_params(const Layout& L, float* p, uint64_t seed) {
  const double resid = 0.02 / std::sqrt(2.0 * double(L.cfg.n_layers));
  uint64_t tensor_seed = mix(seed);
  for (const auto& t : L.tensors) {
    tensor_seed = mix(tensor_seed);
    float* d = p + t.offset;
    if (!t.matrix && !t.embedding) {
      const float v = ends_with(t.name, ".bias") ? 0.f : 1.f;
      for (size_t i = 0; i < t.numel; ++i) d[i] = v;
      continue;
    }
    const bool is_resid = ends_with(t.name, "attn_output.weight") || ends_with(t.name, "ffn_down.weight") ||
                          ends_with(t.name, "ffn_down_exps.weight") || ends_with(t.name, "ffn_down_shexp.weight");
    const double sd = is_resid ? resid : 0.02;
    uint64_t s = tensor_seed;
    for (size_t i = 0; i < t.numel; i += 2) {  // Box-Muller: two normals per pair of uniforms
      const double u1 = uniform01(s), u2 = uniform01(s);
      const double r = std::sqrt(-2.0 * std::log(u1));
      d[i] = float(sd * r * std::cos(2 * M_PI * u2));
      if (i + 1 < t.numel) d[i + 1] = float(sd * r * std::sin(2 * M_PI * u2));
    }
  }
}

const TensorView* tensor_of(const Weights& w, const Layout& L, const ParamInfo& t) {
  if (t.offset == L.tok_embd) return &w.tok_embd;
  if (t.offset == L.pos_embd) return &w.pos_embd;
  if (t.offset == L.out_norm) return &w.out_norm;
  if (t.offset == L.out_norm_b) return &w.out_norm_b;
  if (t.offset == L.output) return &w.output;
  for (size_t l = 0; l < std::min(L.layers.size(), w.layers.size()); ++l) {
    auto offs = const_cast<LayerOffsets&>(L.layers[l]).slots();
    const auto views = w.layers[l].slots();
    for (size_t i = 0; i < offs.size(); ++i)
      if (*offs[i] == t.offset) return views[i];
  }
  return nullptr;
}

void params_from_weights(const Layout& L, const Weights& w, float* p, bool skip_frozen_matrices) {
  // The model's layers must all be there; multi-token prediction modules it lacks keep p's values.
  const bool new_mtp = w.cfg.n_layers == L.cfg.n_layers && w.cfg.mtp_depth == 0 && w.layers.size() == size_t(w.cfg.n_layers);
  if (w.layers.size() != L.layers.size() && !new_mtp)
    fail("initial model has ", w.layers.size(), " blocks of tensors, config says ", L.layers.size());
  std::set<size_t> fresh;  // offsets of the new modules' tensors
  for (size_t l = w.layers.size(); l < L.layers.size(); ++l)
    for (size_t* off : const_cast<LayerOffsets&>(L.layers[l]).slots())
      if (*off != kAbsent) fresh.insert(*off);
  for (const auto& t : L.tensors) {
    if (fresh.count(t.offset)) continue;
    const TensorView* v = tensor_of(w, L, t);
    if (!v || v->empty()) fail("initial model has no tensor ", t.name);
    if (size_t(v->numel()) != t.numel || v->cols() != t.shape.back())
      fail("initial model tensor ", t.name, " has shape ", shape_str(*v), ", training layout needs ", t.numel,
           " elements in rows of ", t.shape.back());
    if (skip_frozen_matrices && frozen_matrix(L, t)) continue;
    const int64_t cols = v->cols();
    for (int64_t r = 0; r < v->rows(); ++r) dequantize_row(*v, r, p + t.offset + size_t(r * cols));
  }
}

Weights weights_view(const Layout& L, const float* p) {
  Weights w;
  w.cfg = L.cfg;
  auto view = [&](size_t off) {
    TensorView v;
    if (off == kAbsent) return v;
    for (const auto& t : L.tensors)
      if (t.offset == off) {
        v.dtype = DType::F32;
        v.data = p + off;
        v.ndim = int(t.shape.size());
        for (size_t i = 0; i < t.shape.size(); ++i) v.shape[i] = t.shape[i];
      }
    return v;
  };
  w.tok_embd = view(L.tok_embd);
  w.pos_embd = view(L.pos_embd);
  w.out_norm = view(L.out_norm);
  w.out_norm_b = view(L.out_norm_b);
  w.output = view(L.output);
  w.layers.resize(L.layers.size());
  for (size_t l = 0; l < L.layers.size(); ++l) {
    auto offs = const_cast<LayerOffsets&>(L.layers[l]).slots();
    auto views = w.layers[l].slots();
    for (size_t i = 0; i < offs.size(); ++i) *views[i] = view(*offs[i]);
  }
  w.validate_shapes("training parameters");
  return w;
}

Weights upcycle_weights(const Weights& w, int64_t E, int64_t k, float noise, uint64_t seed, MoeRouting routing,
                        const std::vector<int32_t>& hash_table) {
  const ModelConfig& c0 = w.cfg;
  if (c0.arch != Arch::Llama || c0.is_moe() || c0.mla())
    fail("--upcycle-experts needs a dense llama-family model (this one is ", c0.is_moe() ? "already MoE" : arch_name(c0.arch), ")");
  if (k < 1 || k > E) fail("--moe-top-k must be in [1, ", E, "] to upcycle into ", E, " experts, got ", k);
  Weights out = w;
  ModelConfig& c = out.cfg;
  c.moe_experts = E, c.moe_used = k, c.moe_hidden = c.hidden_dim, c.moe_norm_topk = true;
  c.moe_gate = MoeGate::Softmax, c.moe_scale = 1.f;
  c.moe_routing = routing, c.moe_hash_table = hash_table;
  c.set_moe_layers();
  uint64_t s = mix(seed ^ 0x75706379636c65ull);  // "upcycle"
  auto normal = [&] {
    const double u1 = uniform01(s), u2 = uniform01(s);
    return std::sqrt(-2.0 * std::log(u1)) * std::cos(2 * M_PI * u2);
  };
  // (E, N, K) f32: E noisy copies of the (N, K) matrix m.
  auto stack = [&](const TensorView& m) {
    const int64_t N = m.rows(), K = m.cols();
    std::vector<float> one(size_t(N * K));
    for (int64_t r = 0; r < N; ++r) dequantize_row(m, r, one.data() + r * K);
    double ss = 0;
    for (float x : one) ss += double(x) * x;
    const double rms = std::sqrt(ss / double(one.size()));
    std::vector<uint8_t> buf(size_t(E * N * K) * 4);
    auto* d = reinterpret_cast<float*>(buf.data());
    for (int64_t e = 0; e < E; ++e)
      for (int64_t i = 0; i < N * K; ++i)
        d[e * N * K + i] = one[size_t(i)] + (noise > 0.f ? float(double(noise) * rms * normal()) : 0.f);
    return own_buffer(out, std::move(buf), DType::F32, {E, N, K});
  };
  for (auto& L : out.layers) {
    L.gate_exps = stack(L.w_gate), L.up_exps = stack(L.w_up), L.down_exps = stack(L.w_down);
    if (!c.moe_hashed()) {
      std::vector<uint8_t> r(size_t(E * c.dim) * 4);
      for (int64_t i = 0; i < E * c.dim; ++i) reinterpret_cast<float*>(r.data())[i] = float(0.02 * normal());
      L.router = own_buffer(out, std::move(r), DType::F32, {E, c.dim});
    }
    L.w_gate = L.w_up = L.w_down = TensorView{};
  }
  c.validate("upcycled model");
  out.validate_shapes("upcycled model");
  return out;
}

}  // namespace tessera::train
