#include "formats/llama2c.h"

#include <cstring>

#include "core/error.h"

namespace tessera {

namespace {

constexpr uint32_t kAk42Magic = 0x616b3432;

// Sequential reader of views over a mapped file, with bounds checks that name the tensor.
struct Cursor {
  const MappedFile& f;
  size_t off;

  const uint8_t* take(size_t n, const char* what) {
    if (off + n > f.size() || off + n < off)
      fail(f.path(), ": truncated: tensor ", what, " needs bytes ", off, "..", off + n, " but the file has ", f.size());
    const uint8_t* p = f.data() + off;
    off += n;
    return p;
  }
  TensorView f32(const char* what, std::initializer_list<int64_t> shape) {
    TensorView v = make_view(DType::F32, shape, nullptr);
    v.data = take(size_t(v.numel()) * 4, what);
    return v;
  }
  // ak42: int8 values then one f32 scale per group.
  TensorView q8(const char* what, std::initializer_list<int64_t> shape, int group) {
    TensorView v = make_view(DType::Q8_G, shape, nullptr);
    if (v.numel() % group != 0) fail(f.path(), ": tensor ", what, " size ", v.numel(), " is not a multiple of group_size ", group);
    v.data = take(size_t(v.numel()), what);
    v.scales = reinterpret_cast<const float*>(take(size_t(v.numel() / group) * 4, what));
    v.group = group;
    return v;
  }
};

struct Header {
  int32_t dim, hidden_dim, n_layers, n_heads, n_kv_heads, vocab_size, seq_len;
};

ModelConfig config_from(const Header& h, const std::string& path) {
  ModelConfig c;
  c.arch = Arch::Llama;
  c.dim = h.dim;
  c.hidden_dim = h.hidden_dim;
  c.n_layers = h.n_layers;
  c.n_heads = h.n_heads;
  c.n_kv_heads = h.n_kv_heads;
  c.vocab_size = h.vocab_size < 0 ? -int64_t(h.vocab_size) : h.vocab_size;
  c.max_seq_len = h.seq_len;
  c.tied_embeddings = h.vocab_size > 0;
  c.norm_eps = 1e-5f;
  c.rope_theta = 10000.f;
  c.rope_style = ops::RopeStyle::Interleaved;
  // Sanity limits so a corrupt header gives a clear error instead of huge sizes.
  auto lim = [&](const char* field, int64_t v, int64_t max) {
    if (v <= 0 || v > max) fail(path, ": header field ", field, " = ", v, " is out of range (1..", max, ")");
  };
  lim("dim", c.dim, 1 << 16);
  lim("hidden_dim", c.hidden_dim, 1 << 18);
  lim("n_layers", c.n_layers, 1024);
  lim("n_heads", c.n_heads, 1024);
  lim("n_kv_heads", c.n_kv_heads, 1024);
  lim("vocab_size", c.vocab_size, 1 << 22);
  lim("seq_len", c.max_seq_len, 1 << 22);
  if (c.dim % c.n_heads != 0) fail(path, ": dim (", c.dim, ") is not divisible by n_heads (", c.n_heads, ")");
  c.head_dim = c.dim / c.n_heads;
  c.validate(path);
  return c;
}

Weights load_legacy(MappedFile&& map, const std::string& path) {
  if (map.size() < sizeof(Header)) fail(path, ": too small for a llama2.c header (", map.size(), " bytes)");
  Header h;
  std::memcpy(&h, map.data(), sizeof h);
  Weights w;
  w.cfg = config_from(h, path);
  const auto& c = w.cfg;
  const int64_t C = c.dim, H = c.hidden_dim, V = c.vocab_size, KV = c.kv_dim(), hd = c.head_dim;
  // Exact size check first: catches truncation and files that are not llama2.c at all.
  const int64_t L = c.n_layers;
  int64_t floats = V * C + L * C * 2 + L * C * c.q_dim() * 2 + L * C * KV * 2 + L * C * H * 3 + C +
                   c.max_seq_len * hd;  // two RoPE tables of seq_len * hd / 2
  if (!c.tied_embeddings) floats += V * C;
  const size_t want = sizeof(Header) + size_t(floats) * 4;
  if (map.size() != want)
    fail(path, ": size ", map.size(), " bytes does not match the llama2.c header (dim ", C, ", hidden ", H,
         ", layers ", L, ", heads ", c.n_heads, "/", c.n_kv_heads, ", vocab ", V, ", seq_len ", c.max_seq_len,
         ") which needs ", want, " bytes");
  Cursor cur{map, sizeof(Header)};
  w.tok_embd = cur.f32("token_embedding", {V, C});
  w.layers.resize(size_t(L));
  auto per_layer = [&](TensorView LayerWeights::*field, const char* what, std::initializer_list<int64_t> shape) {
    for (auto& lw : w.layers) lw.*field = cur.f32(what, shape);
  };
  per_layer(&LayerWeights::attn_norm, "rms_att_weight", {C});
  per_layer(&LayerWeights::wq, "wq", {c.q_dim(), C});
  per_layer(&LayerWeights::wk, "wk", {KV, C});
  per_layer(&LayerWeights::wv, "wv", {KV, C});
  per_layer(&LayerWeights::wo, "wo", {C, c.q_dim()});
  per_layer(&LayerWeights::ffn_norm, "rms_ffn_weight", {C});
  per_layer(&LayerWeights::w_gate, "w1", {H, C});
  per_layer(&LayerWeights::w_down, "w2", {C, H});
  per_layer(&LayerWeights::w_up, "w3", {H, C});
  w.out_norm = cur.f32("rms_final_weight", {C});
  cur.take(size_t(c.max_seq_len * hd) * 4, "freq_cis");  // unused RoPE tables
  w.output = c.tied_embeddings ? w.tok_embd : cur.f32("wcls", {V, C});
  w.owners.push_back(std::make_shared<MappedFile>(std::move(map)));
  w.validate_shapes(path);
  return w;
}

Weights load_ak42(MappedFile&& map, const std::string& path) {
  if (map.size() < 256) fail(path, ": too small for a llama2.c ak42 header (", map.size(), " bytes)");
  int32_t version;
  std::memcpy(&version, map.data() + 4, 4);
  if (version != 2)
    fail(path, ": llama2.c ak42 version ", version, " is not supported (only version 2, the int8 export)");
  Header h;
  std::memcpy(&h, map.data() + 8, sizeof h);
  const uint8_t shared = map.data()[8 + sizeof h];
  int32_t group;
  std::memcpy(&group, map.data() + 9 + sizeof h, 4);
  Weights w;
  w.cfg = config_from(h, path);
  w.cfg.tied_embeddings = shared != 0;
  const auto& c = w.cfg;
  if (group <= 0 || c.dim % group != 0 || c.hidden_dim % group != 0)
    fail(path, ": group_size ", group, " must be positive and divide dim (", c.dim, ") and hidden_dim (",
         c.hidden_dim, ")");
  const int64_t C = c.dim, H = c.hidden_dim, V = c.vocab_size, KV = c.kv_dim(), L = c.n_layers;
  Cursor cur{map, 256};
  w.layers.resize(size_t(L));
  for (auto& lw : w.layers) lw.attn_norm = cur.f32("attention_norm", {C});
  for (auto& lw : w.layers) lw.ffn_norm = cur.f32("ffn_norm", {C});
  w.out_norm = cur.f32("norm", {C});
  w.tok_embd = cur.q8("tok_embeddings", {V, C}, group);
  auto per_layer = [&](TensorView LayerWeights::*field, const char* what, std::initializer_list<int64_t> shape) {
    for (auto& lw : w.layers) lw.*field = cur.q8(what, shape, group);
  };
  per_layer(&LayerWeights::wq, "wq", {c.q_dim(), C});
  per_layer(&LayerWeights::wk, "wk", {KV, C});
  per_layer(&LayerWeights::wv, "wv", {KV, C});
  per_layer(&LayerWeights::wo, "wo", {C, c.q_dim()});
  per_layer(&LayerWeights::w_gate, "w1", {H, C});
  per_layer(&LayerWeights::w_down, "w2", {C, H});
  per_layer(&LayerWeights::w_up, "w3", {H, C});
  w.output = c.tied_embeddings ? w.tok_embd : cur.q8("output", {V, C}, group);
  if (cur.off != map.size())
    fail(path, ": ", map.size() - cur.off, " unexpected trailing bytes after the last tensor (offset ", cur.off, ")");
  w.owners.push_back(std::make_shared<MappedFile>(std::move(map)));
  w.validate_shapes(path);
  return w;
}

}  // namespace

bool is_llama2c_ak42(const MappedFile& f) {
  uint32_t magic = 0;
  if (f.size() >= 4) std::memcpy(&magic, f.data(), 4);
  return magic == kAk42Magic;
}

Weights load_llama2c(const std::string& path) {
  MappedFile map(path);
  if (is_llama2c_ak42(map)) return load_ak42(std::move(map), path);
  return load_legacy(std::move(map), path);
}

}  // namespace tessera
