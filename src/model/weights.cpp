#include "model/weights.h"

#include <set>

#include "core/error.h"

namespace tessera {

namespace {

std::string default_name(const char* role, int64_t layer) {
  return layer >= 0 ? "blk." + std::to_string(layer) + "." + role : std::string(role);
}

void expect_shape(const std::string& where, const TensorNamer& namer, const char* role, int64_t layer,
                  const TensorView& t, std::initializer_list<int64_t> want, bool required) {
  const std::string name = namer ? namer(role, layer) : default_name(role, layer);
  if (t.empty()) {
    if (required) fail(where, ": missing tensor ", name);
    return;
  }
  bool ok = t.ndim == int(want.size());
  int i = 0;
  for (int64_t w : want) ok = ok && t.shape[i++] == w;
  if (!ok) {
    std::string ws = "[";
    i = 0;
    for (int64_t w : want) ws += (i++ ? ", " : "") + std::to_string(w);
    ws += "]";
    fail(where, ": tensor ", name, " has shape ", shape_str(t), ", config needs ", ws);
  }
  if (t.cols() % dtype_block_elems(t.dtype) != 0)
    fail(where, ": tensor ", name, " row length ", t.cols(), " is not a multiple of the ", dtype_name(t.dtype),
         " block size");
}

}  // namespace

void Weights::validate_shapes(const std::string& where, const TensorNamer& namer) const {
  const auto& c = cfg;
  const int64_t C = c.dim, V = c.vocab_size, H = c.hidden_dim;
  expect_shape(where, namer, "token_embd.weight", -1, tok_embd, {V, C}, true);
  expect_shape(where, namer, "output_norm.weight", -1, out_norm, {C}, true);
  expect_shape(where, namer, "output.weight", -1, output, {V, C}, true);
  if (c.arch == Arch::GPT2) {
    expect_shape(where, namer, "position_embd.weight", -1, pos_embd, {c.max_seq_len, C}, true);
    expect_shape(where, namer, "output_norm.bias", -1, out_norm_b, {C}, true);
  }
  if (int64_t(layers.size()) != c.n_layers)
    fail(where, ": has ", layers.size(), " layers of tensors, config says n_layers = ", c.n_layers);
  for (int64_t l = 0; l < c.n_layers; ++l) {
    const auto& L = layers[size_t(l)];
    expect_shape(where, namer, "attn_norm.weight", l, L.attn_norm, {C}, true);
    expect_shape(where, namer, "ffn_norm.weight", l, L.ffn_norm, {C}, true);
    expect_shape(where, namer, "attn_output.weight", l, L.wo, {C, c.q_dim()}, true);
    expect_shape(where, namer, "ffn_up.weight", l, L.w_up, {H, C}, true);
    expect_shape(where, namer, "ffn_down.weight", l, L.w_down, {C, H}, true);
    if (c.arch == Arch::Llama) {
      expect_shape(where, namer, "attn_q.weight", l, L.wq, {c.q_dim(), C}, true);
      expect_shape(where, namer, "attn_k.weight", l, L.wk, {c.kv_dim(), C}, true);
      expect_shape(where, namer, "attn_v.weight", l, L.wv, {c.kv_dim(), C}, true);
      expect_shape(where, namer, "ffn_gate.weight", l, L.w_gate, {H, C}, true);
      expect_shape(where, namer, "attn_q.bias", l, L.bq, {c.q_dim()}, c.qkv_bias);
      expect_shape(where, namer, "attn_k.bias", l, L.bk, {c.kv_dim()}, c.qkv_bias);
      expect_shape(where, namer, "attn_v.bias", l, L.bv, {c.kv_dim()}, c.qkv_bias);
      expect_shape(where, namer, "attn_q_norm.weight", l, L.q_norm, {c.head_dim}, c.qk_norm);
      expect_shape(where, namer, "attn_k_norm.weight", l, L.k_norm, {c.head_dim}, c.qk_norm);
    } else {
      expect_shape(where, namer, "attn_qkv.weight", l, L.wqkv, {3 * C, C}, true);
      expect_shape(where, namer, "attn_qkv.bias", l, L.bqkv, {3 * C}, true);
      expect_shape(where, namer, "attn_output.bias", l, L.bo, {C}, true);
      expect_shape(where, namer, "attn_norm.bias", l, L.attn_norm_b, {C}, true);
      expect_shape(where, namer, "ffn_norm.bias", l, L.ffn_norm_b, {C}, true);
      expect_shape(where, namer, "ffn_up.bias", l, L.b_up, {H}, true);
      expect_shape(where, namer, "ffn_down.bias", l, L.b_down, {C}, true);
    }
  }
}

template <typename F>
static void for_each_tensor(const Weights& w, F&& f) {
  std::set<const void*> seen;
  auto visit = [&](const TensorView& t) {
    if (!t.empty() && seen.insert(t.data).second) f(t);
  };
  visit(w.tok_embd);
  visit(w.pos_embd);
  visit(w.out_norm);
  visit(w.out_norm_b);
  visit(w.output);
  for (const auto& L : w.layers)
    for (const TensorView* t : L.slots()) visit(*t);
}

size_t Weights::weight_bytes() const {
  size_t n = 0;
  for_each_tensor(*this, [&](const TensorView& t) {
    n += t.nbytes();
    if (t.dtype == DType::Q8_G) n += size_t(t.numel() / t.group) * sizeof(float);
  });
  return n;
}

std::vector<TensorView> Weights::tensors() const {
  std::vector<TensorView> v;
  for_each_tensor(*this, [&](const TensorView& t) { v.push_back(t); });
  return v;
}

int64_t Weights::n_params() const {
  int64_t n = 0;
  for_each_tensor(*this, [&](const TensorView& t) { n += t.numel(); });
  return n;
}

TensorView own_buffer(Weights& w, std::vector<uint8_t> bytes, DType t, std::initializer_list<int64_t> shape) {
  auto buf = std::make_shared<std::vector<uint8_t>>(std::move(bytes));
  TensorView v = make_view(t, shape, buf->data());
  w.owners.push_back(buf);
  return v;
}

}  // namespace tessera

#include "core/aligned.h"
#include "kernels/kernels.h"
#include "kernels/repack.h"

namespace tessera {

int repack_weights(Weights& w, Isa isa, int threads) {
  int n = 0;
  auto repack = [&](TensorView& t) {
    if (t.empty() || !r4_applies(t, isa)) return;
    auto buf = std::make_shared<aligned_vector<uint8_t>>(r4_bytes(t.dtype, t.rows(), t.cols()));
    repack_r4(t, buf->data(), threads);
    TensorView r = make_view(r4_type_of(t.dtype), {t.rows(), t.cols()}, buf->data());
    w.owners.push_back(buf);
    t = r;
    ++n;
  };
  for (auto& L : w.layers)
    for (TensorView* t : {&L.wq, &L.wk, &L.wv, &L.wqkv, &L.wo, &L.w_gate, &L.w_up, &L.w_down}) repack(*t);
  if (w.output.data != w.tok_embd.data) repack(w.output);
  return n;
}

void norms_to_f32(Weights& w) {
  auto fix = [&](TensorView& t) {
    if (t.empty() || t.ndim != 1 || t.dtype == DType::F32) return;
    std::vector<uint8_t> buf(size_t(t.numel()) * 4);
    dequantize_row(t, 0, reinterpret_cast<float*>(buf.data()));
    t = own_buffer(w, std::move(buf), DType::F32, {t.shape[0]});
  };
  fix(w.out_norm);
  fix(w.out_norm_b);
  for (auto& L : w.layers)
    for (TensorView* t : L.slots()) fix(*t);  // only 1-D tensors are touched
}

}  // namespace tessera
