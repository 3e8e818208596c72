#include "model/weights.h"

#include <set>

#include "core/error.h"
#include "model/arch.h"

namespace tessera {

namespace {

void expect_shape(const std::string& where, const std::string& name, const TensorView& t, const std::vector<int64_t>& want) {
  if (t.empty()) fail(where, ": missing tensor ", name);
  bool ok = t.ndim == int(want.size());
  for (size_t i = 0; ok && i < want.size(); ++i) ok = t.shape[i] == want[i];
  if (!ok) {
    std::string ws = "[";
    for (size_t i = 0; i < want.size(); ++i) ws += (i ? ", " : "") + std::to_string(want[i]);
    ws += "]";
    fail(where, ": tensor ", name, " has shape ", shape_str(t), ", config needs ", ws);
  }
  if (t.cols() % dtype_block_elems(t.dtype) != 0)
    fail(where, ": tensor ", name, " row length ", t.cols(), " is not a multiple of the ", dtype_name(t.dtype),
         " block size");
}

}  // namespace

void Weights::validate_shapes(const std::string& where, const TensorNamer& namer) const {
  if (int64_t(layers.size()) != cfg.n_blocks())
    fail(where, ": has ", layers.size(), " layers of tensors, config says ", cfg.n_layers, " layers",
         cfg.mtp_depth > 0 ? " + " + std::to_string(cfg.mtp_depth) + " multi-token prediction modules" : std::string());
  // Every tensor the architecture's table says this config has (an untied
  // output is checked as the output; a tied one is the embedding).
  for_each_tensor_spec(arch_desc(cfg.arch), cfg, [&](const TensorSpec& s, int64_t l) {
    const std::string name = namer ? namer(s.gguf, s.is_layer() ? l : -1) : gguf_tensor_name(s, l);
    expect_shape(where, name, slot_ref(*this, s.slot, l), s.shape(cfg, l));
  });
  if (cfg.tied_embeddings && output.data != tok_embd.data)
    expect_shape(where, namer ? namer("output.weight", -1) : "output.weight", output, {cfg.vocab_size, cfg.dim});
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
#include "core/fp16.h"
#include "kernels/kernels.h"
#include "kernels/int8.h"
#include "kernels/repack.h"

namespace tessera {

namespace {
// f(view, spec, layer) for every matrix of a block the architecture table lists
// (q, k, v, qkv, o, gate, up, down: what the load-time conversions rewrite).
template <class F>
void for_each_block_matrix(Weights& w, F&& f) {
  for_each_tensor_spec(arch_desc(w.cfg.arch), w.cfg, [&](const TensorSpec& s, int64_t layer) {
    if (s.kind != TensorKind::Matrix || !s.is_layer()) return;
    TensorView& t = slot_ref(w, s.slot, layer);
    if (!t.empty()) f(t, s, layer);
  });
}
}  // namespace

TensorView expert_matrix(const TensorView& W, int64_t e) {
  const int64_t N = W.shape[1], K = W.shape[2];
  const DType file = r4_file_type(W.dtype);
  const size_t bytes = file != W.dtype ? r4_bytes(file, N, K) : dtype_row_bytes(W.dtype, K) * size_t(N);
  return make_view(W.dtype, {N, K}, static_cast<const uint8_t*>(W.data) + size_t(e) * bytes);
}

int repack_weights(Weights& w, Isa isa, int threads) {
  int n = 0;
  auto repack = [&](TensorView& t) {
    if (t.empty()) return;
    if (t.ndim == 3) {  // experts (E, N, K): each expert's (N, K) matrix on its own, back to back
      const int64_t E = t.shape[0], N = t.shape[1], K = t.shape[2];
      if (!r4_applies(expert_matrix(t, 0), isa)) return;
      const size_t per = r4_bytes(t.dtype, N, K);
      auto buf = std::make_shared<aligned_vector<uint8_t>>(per * size_t(E));
      for (int64_t e = 0; e < E; ++e) repack_r4(expert_matrix(t, e), buf->data() + size_t(e) * per, threads);
      TensorView r = make_view(r4_type_of(t.dtype), {E, N, K}, buf->data());
      w.owners.push_back(buf);
      t = r;
      ++n;
      return;
    }
    if (!r4_applies(t, isa)) return;
    auto buf = std::make_shared<aligned_vector<uint8_t>>(r4_bytes(t.dtype, t.rows(), t.cols()));
    repack_r4(t, buf->data(), threads);
    TensorView r = make_view(r4_type_of(t.dtype), {t.rows(), t.cols()}, buf->data());
    w.owners.push_back(buf);
    t = r;
    ++n;
  };
  for_each_block_matrix(w, [&](TensorView& t, const TensorSpec&, int64_t) { repack(t); });
  if (w.output.data != w.tok_embd.data) repack(w.output);
  return n;
}

int to_llm_int8(Weights& w, float threshold) {
  if (!(threshold >= 0.f)) fail("--int8-threshold must be >= 0, got ", threshold);
  int n = 0;
  for_each_block_matrix(w, [&](TensorView& t, const TensorSpec& s, int64_t layer) {
    if (s.slot == Slot::Router || is_expert_slot(s.slot)) return;  // routers and experts stay as they are
    if (t.dtype != DType::F32 && t.dtype != DType::F16 && t.dtype != DType::BF16)
      fail("--type int8 (LLM.int8()) needs f32, f16 or bf16 weights; ", gguf_tensor_name(s, layer), " is ",
           dtype_name(t.dtype));
    const int64_t N = t.rows(), K = t.cols();
    auto buf = std::make_shared<aligned_vector<uint8_t>>(size_t(N * K) + size_t(N) * sizeof(float) + 64);
    auto* q = reinterpret_cast<int8_t*>(buf->data());
    auto* scales = reinterpret_cast<float*>(buf->data() + ((size_t(N * K) + 63) & ~size_t(63)));
    quantize_int8_rows(t, q, scales);
    TensorView v = make_view(DType::Q8_G, {N, K}, q);
    v.scales = scales;
    v.group = int(K);
    v.outlier_threshold = threshold;
    w.owners.push_back(buf);
    t = v;
    ++n;
  });
  return n;
}

int f16_to_bf16(Weights& w, int threads) {
  int n = 0;
  auto convert = [&](TensorView& t) {
    if (t.empty() || t.dtype != DType::F16 || (t.ndim != 2 && t.ndim != 3)) return;
    const int64_t count = t.numel();
    auto buf = std::make_shared<aligned_vector<uint8_t>>(size_t(count) * 2);
    auto* dst = reinterpret_cast<uint16_t*>(buf->data());
    const auto* src = static_cast<const uint16_t*>(t.data);
#pragma omp parallel for schedule(static) num_threads(threads > 0 ? threads : 1)
    for (int64_t i = 0; i < count; ++i) dst[i] = f32_to_bf16(f16_to_f32(src[i]));
    TensorView v = t;
    v.dtype = DType::BF16, v.data = dst;
    w.owners.push_back(buf);
    t = v;
    ++n;
  };
  for_each_block_matrix(w, [&](TensorView& t, const TensorSpec&, int64_t) { convert(t); });
  if (w.output.data != w.tok_embd.data) convert(w.output);
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
