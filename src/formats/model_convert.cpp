// Weight transformations used by `tessera convert`: dtype conversion and the
// RoPE row permutation between half-split (HF) and interleaved (GGUF) layouts.
#include <cstring>
#include <vector>

#include "core/error.h"
#include "formats/model_io.h"
#include "model/arch.h"
#include "kernels/kernels.h"

namespace tessera {

namespace {

// t converted to dst (a copy owned by out; t itself when already dst).
TensorView convert_view(Weights& out, const TensorView& t, DType dst) {
  if (t.empty() || dst == t.dtype) return t;
  const int64_t rows = t.ndim == 1 ? 1 : t.rows(), K = t.ndim == 1 ? t.numel() : t.cols();
  std::vector<uint8_t> buf(dtype_row_bytes(dst, K) * size_t(rows));
#pragma omp parallel
  {
    std::vector<float> row(static_cast<size_t>(K));
#pragma omp for schedule(dynamic, 16)
    for (int64_t r = 0; r < rows; ++r) {
      dequantize_row(t, r, row.data());
      quantize_row(dst, row.data(), buf.data() + size_t(r) * dtype_row_bytes(dst, K), K);
    }
  }
  TensorView v = own_buffer(out, std::move(buf), dst, {1});
  v.ndim = t.ndim;
  v.shape = t.shape;
  return v;
}

// Interleaved row (h, i, s) <-> half-split row (h, s, i), for i < hd/2, s in {0, 1}.
TensorView permute_rows(Weights& out, const TensorView& t, int64_t n_heads, int64_t hd, bool to_interleaved) {
  if (t.empty()) return t;
  if (t.dtype == DType::Q8_G) fail("RoPE permutation of llama2.c int8 tensors is not supported; convert to f32 first");
  const bool vec = t.ndim == 1;
  const size_t rb = vec ? dtype_block_bytes(t.dtype) : t.row_bytes();
  const int64_t rows = vec ? t.numel() : t.rows();
  if (rows != n_heads * hd) fail("internal: permute_rows got ", rows, " rows for ", n_heads, " heads of ", hd);
  std::vector<uint8_t> buf(rb * size_t(rows));
  const auto* src = static_cast<const uint8_t*>(t.data);
  const int64_t half = hd / 2;
  for (int64_t h = 0; h < n_heads; ++h)
    for (int64_t i = 0; i < half; ++i)
      for (int64_t s = 0; s < 2; ++s) {
        const int64_t inter = h * hd + 2 * i + s, split = h * hd + s * half + i;
        const int64_t dst_row = to_interleaved ? inter : split, src_row = to_interleaved ? split : inter;
        std::memcpy(buf.data() + size_t(dst_row) * rb, src + size_t(src_row) * rb, rb);
      }
  TensorView v = own_buffer(out, std::move(buf), t.dtype, {1});
  v.ndim = t.ndim;
  v.shape = t.shape;
  return v;
}

}  // namespace

Weights convert_weights(const Weights& w, const QuantMix& mix, int* fallbacks) {
  Weights out = w;
  const ModelConfig& c = w.cfg;
  const bool has_output = !w.output.empty() && w.output.data != w.tok_embd.data;
  const bool quantizing = quant_mix_quantizes(mix);
  const MoeMixInfo moe = moe_mix_info(c);
  for_each_tensor_spec(arch_desc(c.arch), c, [&](const TensorSpec& s, int64_t layer) {
    TensorView& t = slot_ref(out, s.slot, layer);
    if (t.empty()) return;
    DType dst = DType::F32;
    if (s.kind == TensorKind::Vector || t.ndim == 1) {
      dst = DType::F32;
    } else if (s.slot == Slot::PosEmbd && quantizing) {  // llama.cpp leaves position embeddings unquantized
      dst = t.dtype == DType::F16 || t.dtype == DType::BF16 ? t.dtype : DType::F32;
    } else {
      bool fell_back = false;
      dst = quant_mix_tensor_type(mix, s.gguf, layer, c.n_blocks(), t.cols(), c.n_heads / std::max<int64_t>(c.n_kv_heads, 1),
                                  has_output, &fell_back, moe);
      if (fell_back && fallbacks) ++*fallbacks;
    }
    t = convert_view(out, t, dst);
  });
  if (!has_output) out.output = out.tok_embd;
  out.file_type = mix.ftype;
  return out;
}

Weights with_rope_style(const Weights& w, ops::RopeStyle style) {
  Weights out = w;
  if (w.cfg.arch != Arch::Llama || w.cfg.rope_style == style) return out;
  if (w.cfg.mla()) fail("latent-attention models keep interleaved RoPE pairs; their layout cannot be changed");
  const bool to_inter = style == ops::RopeStyle::Interleaved;
  const auto& c = w.cfg;
  for (auto& L : out.layers) {
    L.wq = permute_rows(out, L.wq, c.n_heads, c.head_dim, to_inter);
    L.wk = permute_rows(out, L.wk, c.n_kv_heads, c.head_dim, to_inter);
    L.bq = permute_rows(out, L.bq, c.n_heads, c.head_dim, to_inter);
    L.bk = permute_rows(out, L.bk, c.n_kv_heads, c.head_dim, to_inter);
    L.q_norm = permute_rows(out, L.q_norm, 1, c.head_dim, to_inter);  // QK-norm gains follow the head's dims
    L.k_norm = permute_rows(out, L.k_norm, 1, c.head_dim, to_inter);
  }
  out.cfg.rope_style = style;
  return out;
}

}  // namespace tessera
