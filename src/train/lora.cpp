#include "train/lora.h"

#include <cmath>
#include <sstream>

#include "core/error.h"
#include "core/rng.h"

namespace tessera::train {

namespace {
constexpr const char* kNames[kLoraSites] = {"q", "k", "v", "qkv", "o", "gate", "up", "down"};
constexpr const char* kRoles[kLoraSites] = {"attn_q",      "attn_k",   "attn_v", "attn_qkv",
                                            "attn_output", "ffn_gate", "ffn_up", "ffn_down"};
uint32_t bit(LoraSite s) { return 1u << int(s); }
}  // namespace

const char* lora_site_name(LoraSite s) { return kNames[int(s)]; }

uint32_t parse_lora_targets(const std::string& list) {
  uint32_t t = 0;
  std::stringstream ss(list);
  for (std::string name; std::getline(ss, name, ',');) {
    if (name.empty()) continue;
    if (name == "all") {
      t |= bit(LoraSite::Q) | bit(LoraSite::K) | bit(LoraSite::V) | bit(LoraSite::O) | bit(LoraSite::Gate) |
           bit(LoraSite::Up) | bit(LoraSite::Down);
    } else if (name == "attn") {
      t |= bit(LoraSite::Q) | bit(LoraSite::K) | bit(LoraSite::V) | bit(LoraSite::O);
    } else if (name == "mlp") {
      t |= bit(LoraSite::Gate) | bit(LoraSite::Up) | bit(LoraSite::Down);
    } else {
      bool found = false;
      for (int s = 0; s < kLoraSites; ++s)
        if (name == kNames[s]) t |= 1u << s, found = true;
      if (!found)
        fail("--lora-targets: unknown target '", name, "' (choose from q, k, v, qkv, o, gate, up, down, attn, mlp, all)");
    }
  }
  if (t == 0) fail("--lora-targets: no target given");
  return t;
}

std::string lora_targets_string(uint32_t targets) {
  std::string s;
  for (int i = 0; i < kLoraSites; ++i)
    if ((targets >> i) & 1u) s += (s.empty() ? "" : ",") + std::string(kNames[i]);
  return s;
}

uint32_t parse_adapter_sites(const std::string& list) {
  uint32_t t = 0;
  std::stringstream ss(list);
  for (std::string name; std::getline(ss, name, ',');) {
    if (name == "attn") t |= 1u;
    else if (name == "ffn") t |= 2u;
    else if (!name.empty()) fail("--adapter-sites: unknown site '", name, "' (choose from attn, ffn)");
  }
  if (t == 0) fail("--adapter-sites: no site given");
  return t;
}

std::string adapter_sites_string(uint32_t sites) {
  return sites == 3 ? "attn,ffn" : sites == 1 ? "attn" : sites == 2 ? "ffn" : "";
}

nlohmann::json lora_to_json(const LoraConfig& c) {
  nlohmann::json j;
  if (c.prefix()) {
    j = {{"prefix_len", c.prefix_len}};
  } else if (c.bottleneck()) {
    j = {{"adapter_dim", c.adapter_dim},
         {"adapter_act", c.adapter_gelu ? "gelu" : "relu"},
         {"adapter_sites", adapter_sites_string(c.adapter_sites)}};
  } else {
    j = {{"rank", c.rank}, {"alpha", c.alpha}, {"dropout", c.dropout}, {"targets", lora_targets_string(c.targets)}};
  }
  if (c.quantized_base) j["quantized_base"] = true;
  return j;
}

LoraConfig lora_from_json(const nlohmann::json& j, const std::string& where) {
  LoraConfig c;
  try {
    c.quantized_base = j.value("quantized_base", false);
    if (j.contains("adapter_dim")) {
      c.adapter_dim = j.at("adapter_dim");
      c.adapter_gelu = j.at("adapter_act").get<std::string>() == "gelu";
      c.adapter_sites = parse_adapter_sites(j.at("adapter_sites").get<std::string>());
      if (c.adapter_dim <= 0) fail(where, ": adapter_dim must be positive, got ", c.adapter_dim);
      return c;
    }
    if (j.contains("prefix_len")) {
      c.prefix_len = j.at("prefix_len");
      if (c.prefix_len <= 0) fail(where, ": prefix_len must be positive, got ", c.prefix_len);
      return c;
    }
    c.rank = j.at("rank"), c.alpha = j.at("alpha"), c.dropout = j.value("dropout", 0.f);
    c.targets = parse_lora_targets(j.at("targets").get<std::string>());
  } catch (const nlohmann::json::exception& e) {
    fail(where, ": bad LoRA settings: ", e.what());
  }
  if (c.rank <= 0) fail(where, ": LoRA rank must be positive, got ", c.rank);
  return c;
}

size_t LoraLayout::add_tensor(const std::string& name, std::vector<int64_t> shape) {
  ParamInfo p;
  p.name = name, p.shape = shape, p.matrix = shape.size() > 1;
  p.numel = size_t(shape[0] * (shape.size() > 1 ? shape[1] : 1));
  p.offset = (total + Layout::kAlign - 1) / Layout::kAlign * Layout::kAlign;
  total = p.offset + p.numel, n_params += p.numel;
  tensors.push_back(p);
  return p.offset;
}

LoraLayout::LoraLayout(const Layout& base, const LoraConfig& lc) : cfg(base.cfg), lora(lc) {
  const ModelConfig& c = cfg;
  if (lc.bottleneck()) {
    if (lc.rank > 0 || lc.prefix()) fail("--adapter-dim: bottleneck adapters, LoRA and prefix tuning are separate adapters; choose one per run");
    if (c.mtp_depth > 0) fail("--adapter-dim: multi-token prediction modules are not supported with adapters");
    if (c.post_norms) fail("--adapter-dim: models with sandwich norms (Gemma 2) are not supported");
    const int64_t m = lc.adapter_dim, C = c.dim;
    bottleneck.resize(size_t(c.n_layers));
    for (int64_t l = 0; l < c.n_layers; ++l)
      for (int s = 0; s < 2; ++s) {
        if (!((lc.adapter_sites >> s) & 1u)) continue;
        if (s == 1 && c.moe_layer(l)) continue;  // mixture-of-experts layers: the attention site only
        if (s == 0 && c.mla()) fail("--adapter-dim: latent attention (MLA) is not supported");
        const std::string b = "blk." + std::to_string(l) + (s == 0 ? ".attn_adapter_" : ".ffn_adapter_");
        Bottleneck& bn = bottleneck[size_t(l)][size_t(s)];
        bn.down = add_tensor(b + "down.weight", {m, C}), bn.down_b = add_tensor(b + "down.bias", {m});
        bn.up = add_tensor(b + "up.weight", {C, m}), bn.up_b = add_tensor(b + "up.bias", {C});
      }
    layers.resize(size_t(c.n_layers));
    if (tensors.empty()) fail("--adapter-sites: no site given");
    return;
  }
  if (lc.prefix()) {
    if (lc.rank > 0) fail("--prefix-len: prefix tuning and LoRA are separate adapters; choose one per run");
    if (c.mla()) fail("--prefix-len: latent attention (MLA) caches no per-head keys; not supported");
    if (c.moe_hashed()) fail("--prefix-len: hash routing keys on positions and previous tokens; not supported");
    if (c.has_sparse_attention()) fail("--prefix-len: sparse attention patterns are not supported with a prefix");
    if (c.mtp_depth > 0) fail("--prefix-len: multi-token prediction modules are not supported with a prefix");
    prefix_dim = c.arch == Arch::GPT2 ? c.dim : c.kv_dim();
    const int64_t P = lc.prefix_len;
    layers.resize(size_t(c.n_layers));
    for (int64_t l = 0; l < c.n_layers; ++l) {
      const std::string b = "blk." + std::to_string(l) + ".attn_";
      const size_t k = add_tensor(b + "k_prefix", {P, prefix_dim});
      prefix.emplace_back(k, add_tensor(b + "v_prefix", {P, prefix_dim}));
    }
    return;
  }
  if (lc.rank <= 0) fail("--lora-rank must be positive, got ", lc.rank);
  if (!(lc.alpha >= 0.f)) fail("--lora-alpha must be >= 0, got ", lc.alpha);
  if (!(lc.dropout >= 0.f && lc.dropout < 1.f)) fail("--lora-dropout must be in [0, 1), got ", lc.dropout);
  const bool gpt2 = c.arch == Arch::GPT2;
  uint32_t t = lc.targets;
  if (gpt2) {  // one fused projection holds q, k and v
    if (t & (bit(LoraSite::Q) | bit(LoraSite::K) | bit(LoraSite::V))) t |= bit(LoraSite::Qkv);
    t &= ~(bit(LoraSite::Q) | bit(LoraSite::K) | bit(LoraSite::V));
    if (lc.targets & bit(LoraSite::Gate)) {
      // "all" / "mlp" name the gate too; only an explicit request for a gate on GPT-2 is an error.
      if (!(lc.targets & bit(LoraSite::Up))) fail("--lora-targets: gate: GPT-2-family models have no gate projection");
      t &= ~bit(LoraSite::Gate);
    }
  } else if (t & bit(LoraSite::Qkv)) {
    fail("--lora-targets: qkv: this model has separate q, k and v projections (name them instead)");
  }
  if (c.mla()) t &= ~(bit(LoraSite::Q) | bit(LoraSite::K) | bit(LoraSite::V));  // latent attention: no such matrices
  lora.targets = t;
  const int64_t r = lc.rank;
  layers.resize(size_t(c.n_layers));
  for (int64_t l = 0; l < c.n_layers; ++l) {
    const int64_t C = c.dim, H = c.hidden_dim;
    const int64_t qd = gpt2 ? C : c.q_dim(), kvd = gpt2 ? C : c.kv_dim();
    const bool dense = !c.moe_layer(l);
    // Latent attention: the output projection (its input is n_heads x v) and the feed-forward only.
    const bool plain_q = !c.mla(), plain_kv = !c.mla();
    struct Shape {
      LoraSite s;
      int64_t in, out;
      bool exists;
    };
    const Shape shapes[] = {{LoraSite::Q, C, qd, !gpt2 && plain_q},      {LoraSite::K, C, kvd, !gpt2 && plain_kv},
                            {LoraSite::V, C, kvd, !gpt2 && plain_kv},    {LoraSite::Qkv, C, 3 * C, gpt2},
                            {LoraSite::O, c.attn_out_dim(), C, true},    {LoraSite::Gate, C, H, !gpt2 && dense},
                            {LoraSite::Up, C, H, dense},         {LoraSite::Down, H, C, dense}};
    for (const auto& sh : shapes) {
      if (!sh.exists || !(t & bit(sh.s))) continue;
      Site& st = layers[size_t(l)][size_t(sh.s)];
      st.in = sh.in, st.out = sh.out;
      st.base = "blk." + std::to_string(l) + "." + kRoles[int(sh.s)] + ".weight";
      st.a = add_tensor(st.base + ".lora_a", {r, sh.in});
      st.b = add_tensor(st.base + ".lora_b", {sh.out, r});
    }
  }
  if (tensors.empty()) fail("--lora-targets ", lora_targets_string(lc.targets), ": no such layer in this model");
}

void init_lora(const LoraLayout& LL, float* a, uint64_t seed) {
  uint64_t s = splitmix64(seed ^ 0x10a10a10a10aull);
  auto u01 = [&] { return (double((s = splitmix64(s)) >> 11) + 0.5) * (1.0 / 9007199254740992.0); };
  for (size_t i = 0; i < LL.total; ++i) a[i] = 0.f;
  for (const auto& t : LL.tensors) {
    const bool down = t.name.size() > 19 && t.name.compare(t.name.size() - 19, 19, "adapter_down.weight") == 0;
    if (t.name.back() != 'a' && !down) continue;  // ".lora_b", prefix rows, adapters' up and biases stay zero
    const double sd = down ? 1.0 / std::sqrt(double(LL.cfg.dim)) : 1.0 / double(LL.lora.rank);
    float* d = a + t.offset;
    for (size_t i = 0; i < t.numel; i += 2) {  // Box-Muller
      const double r = std::sqrt(-2.0 * std::log(u01())), th = 2 * M_PI * u01();
      d[i] = float(sd * r * std::cos(th));
      if (i + 1 < t.numel) d[i + 1] = float(sd * r * std::sin(th));
    }
  }
}

void merge_lora(const Layout& L, const LoraLayout& LL, const float* a, float* p, float mult) {
  const double s = double(mult) * double(LL.lora.scale());
  const int64_t r = LL.lora.rank;
  for (const auto& layer : LL.layers)
    for (const auto& st : layer) {
      if (st.a == kAbsent) continue;
      const ParamInfo* w = L.find(st.base);
      if (!w) fail("internal: LoRA base tensor ", st.base, " missing");
      const float* A = a + st.a;  // (r, in)
      const float* B = a + st.b;  // (out, r)
      float* W = p + w->offset;   // (out, in)
#pragma omp parallel for schedule(static)
      for (int64_t o = 0; o < st.out; ++o)
        for (int64_t i = 0; i < st.in; ++i) {
          double acc = 0;
          for (int64_t k = 0; k < r; ++k) acc += double(B[o * r + k]) * double(A[k * st.in + i]);
          W[o * st.in + i] += float(s * acc);
        }
    }
}

LoraAdapter to_adapter(const LoraLayout& LL, const float* a) {
  LoraAdapter ad;
  ad.rank = LL.lora.rank;
  ad.alpha = LL.lora.alpha > 0.f ? LL.lora.alpha : float(LL.lora.rank);
  for (int64_t l = 0; l < int64_t(LL.layers.size()); ++l)
    for (int s = 0; s < kLoraSites; ++s) {
      const auto& st = LL.layers[size_t(l)][size_t(s)];
      if (st.a == kAbsent) continue;
      LoraAdapter::Pair p;
      p.base = st.base, p.layer = l, p.in = st.in, p.out = st.out, p.role = kRoles[s];
      p.a.assign(a + st.a, a + st.a + ad.rank * st.in);
      p.b.assign(a + st.b, a + st.b + st.out * ad.rank);
      ad.pairs.push_back(std::move(p));
    }
  return ad;
}

KvPrefix to_prefix(const LoraLayout& LL, const float* a) {
  KvPrefix px;
  px.len = LL.lora.prefix_len, px.kv_dim = LL.prefix_dim, px.n_layers = int64_t(LL.prefix.size());
  const size_t n = size_t(px.len * px.kv_dim);
  px.kv.resize(2 * n * LL.prefix.size());
  for (size_t l = 0; l < LL.prefix.size(); ++l) {
    std::copy(a + LL.prefix[l].first, a + LL.prefix[l].first + n, px.kv.begin() + long(2 * l * n));
    std::copy(a + LL.prefix[l].second, a + LL.prefix[l].second + n, px.kv.begin() + long((2 * l + 1) * n));
  }
  return px;
}

BottleneckAdapter to_bottleneck(const LoraLayout& LL, const float* a) {
  BottleneckAdapter ad;
  ad.dim = LL.lora.adapter_dim, ad.gelu = LL.lora.adapter_gelu;
  const int64_t m = ad.dim, C = LL.cfg.dim;
  ad.layers.resize(LL.bottleneck.size());
  for (size_t l = 0; l < LL.bottleneck.size(); ++l)
    for (size_t s = 0; s < 2; ++s) {
      const auto& b = LL.bottleneck[l][s];
      if (b.down == kAbsent) continue;
      auto& d = ad.layers[l][s];
      d.down.assign(a + b.down, a + b.down + m * C), d.down_b.assign(a + b.down_b, a + b.down_b + m);
      d.up.assign(a + b.up, a + b.up + C * m), d.up_b.assign(a + b.up_b, a + b.up_b + C);
    }
  return ad;
}

}  // namespace tessera::train
