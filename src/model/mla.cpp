// Multi-head latent attention (DeepSeek-V2/V3) in its absorbed form: the KV
// cache holds only the normalised latent c and the shared RoPE key k_pe of
// each token, (d_c + d_h^R) elements per token and layer. With
//   q = q_b(rms(q_a h, q_a_norm)) (or attn_q h)             (n_heads, nope + rope)
//   [c | k_pe] = kv_a h;  c = rms(c, kv_a_norm);  [k_nope | v]_h = [Wk_h; Wv_h] c  (rows of kv_b)
//   k_h = [k_nope_h | k_pe], RoPE on the last `rope` dims of q_h and on k_pe,
// the score q_h . k_h = (Wk_h^T q_nope_h) . c + q_pe_h . k_pe, and the output
// sum_j p_j v_hj = Wv_h (sum_j p_j c_j). So each head's query is absorbed,
// qa_h = [Wk_h^T q_nope_h | q_pe_h] (d_c + rope), and attends, like MQA with
// one shared head, over the cached rows [c_j | k_pe_j] as keys and their c_j as
// values (ModelConfig::cache_v_in_k); its output o_h (d_c) goes through Wv_h.
// The scale stays 1 / sqrt(nope + rope), the key length the model was trained
// with. That is how decode steps and short chunks run; a long run of one
// sequence's positions expands instead (mla_prefill_expanded: per head, the
// visible keys' [k_nope | v] from the cached latents). Written once over both executors (model/exec.h):
// rows(f) runs per-row work, items(n, f) per-head work; prepare_mla() builds the
// per-head matrices once.
#include <omp.h>

#include <algorithm>
#include <type_traits>

#include "core/dtype.h"
#include "kernels/kernels.h"
#include "kernels/repack.h"
#include "kernels/ops.h"
#include "model/exec.h"

namespace tessera {

template <class Ex>
void Model::mla_attention(Ex& ex, int64_t l, const float* in) {
  const auto& c = w_.cfg;
  const auto& L = w_.layers[size_t(l)];
  const int64_t hd = c.head_dim, rope = c.mla_rope, nope = hd - rope, vd = c.mla_v_dim, nh = c.n_heads;
  const int64_t r = c.mla_q_lora, ckv = c.mla_kv_lora, kd = c.cache_k_dim();  // kd = ckv + rope
  const int64_t n = ex.n_rows();
  if (r > 0)
    ex.matmul(in, {{&L.wq_a, a_.mla_q}, {&L.wkv_a, a_.mla_kva}});  // (r), (ckv + rope)
  else
    ex.matmul(in, {{&L.wq, a_.q}, {&L.wkv_a, a_.mla_kva}});  // (nh hd), (ckv + rope)
  ex.rows([&](int64_t t) {  // the cached row [rms(c) | k_pe] (RoPE on k_pe in prep_heads)
    if (r > 0) ops::rmsnorm(a_.mla_q + t * r, a_.mla_q + t * r, L.q_a_norm.f32(), r, c.norm_eps);
    const float* kva = a_.mla_kva + t * (ckv + rope);
    ops::rmsnorm(a_.k + t * kd, kva, L.kv_a_norm.f32(), ckv, c.norm_eps);
    std::copy(kva + ckv, kva + ckv + rope, a_.k + t * kd + ckv);
  });
  if (r > 0) ex.matmul(a_.mla_q, {{&L.wq_b, a_.q}});  // (nh hd)
  if constexpr (std::is_same_v<Ex, RegionExec>) {
    if (mla_expands(n)) {  // a long run of one sequence: expanded keys and values (mla_prefill_expanded)
      ex.rows([&](int64_t t) {
        prep_heads(l, cseq_[t], cpos_[t], nullptr, a_.k + t * kd, a_.k + t * kd, 0, 1);  // RoPE on k_pe, cache store
        const float* cr = rope_cos_.data() + cpos_[t] * (rope / 2);
        const float* sr = rope_sin_.data() + cpos_[t] * (rope / 2);
        for (int64_t h = 0; h < nh; ++h) ops::rope_apply(a_.q + (t * nh + h) * hd + nope, cr, sr, rope, c.rope_style);
      });
      mla_prefill_expanded(ex.ctx, l, n);
      ex.matmul(a_.mla_att, {{&L.wo, a_.xb}});
      ex.residual(a_.xb);
      return;
    }
  }
  const TensorView* wk = &mla_wk_[size_t(l * nh)];     // per head (ckv, nope)
  const TensorView* wv = &mla_wv_[size_t(l * nh)];     // per head (vd, ckv)
  // One product per head, Y_h = X_h W_h^T: X_h (W_h.cols()) starts at X + h xh in each
  // row (rows xs apart), Y_h (W_h.rows()) at Y + h yh (rows ys apart). A decode
  // step's row goes to the matrix-vector kernels; a chunk's rows, per head over
  // the threads, to sgemm against W_h widened to f32 in the thread's mla_w32 scratch.
  const auto per_head = [&](const TensorView* W, const float* X, int64_t xs, int64_t xh, float* Y, int64_t ys,
                            int64_t yh) {
    if (n == 1) {
      for (int64_t h = 0; h < nh; ++h) ex.matmul(X + h * xh, {{&W[h], Y + h * yh}});
      return;
    }
    ex.items(nh, [&](int64_t h, int rank) {
      const int64_t ni = W[h].cols(), no = W[h].rows();
      float* w32 = a_.mla_w32 + int64_t(rank) * mla_w32_floats_;
      for (int64_t r = 0; r < no; ++r) dequantize_row(W[h], r, w32 + r * ni);
      sgemm(false, true, n, no, ni, 1.f, X + h * xh, xs, w32, ni, 0.f, Y + h * yh, ys);
    });
  };
  per_head(wk, a_.q, nh * hd, hd, a_.mla_qa, nh * kd, kd);  // qa_h[:ckv] = Wk_h^T q_nope_h
  ex.rows([&](int64_t t) {                                // qa_h[ckv:] = q_pe_h
    for (int64_t h = 0; h < nh; ++h)
      std::copy(a_.q + t * nh * hd + h * hd + nope, a_.q + t * nh * hd + (h + 1) * hd, a_.mla_qa + t * nh * kd + h * kd + ckv);
  });
  ex.attention(l, a_.mla_qa, a_.k, a_.k, nh * kd, kd);  // -> a_.att (nh ckv); no value rows
  per_head(wv, a_.att, nh * ckv, ckv, a_.mla_att, nh * vd, vd);  // out_h = Wv_h o_h
  ex.matmul(a_.mla_att, {{&L.wo, a_.xb}});  // (C)
  ex.residual(a_.xb);
}

namespace {
// Rows [r0, r0 + m) of W as a matrix (R4 layouts: r0 and m whole tiles).
TensorView rows_view(const TensorView& W, int64_t r0, int64_t m) {
  const DType file = r4_file_type(W.dtype);
  const size_t off = file != W.dtype ? size_t(r0 / kR4Rows) * r4_bytes(file, kR4Rows, W.cols())
                                     : size_t(r0) * W.row_bytes();
  return make_view(W.dtype, {m, W.cols()}, static_cast<const uint8_t*>(W.data) + off);
}
}  // namespace

bool Model::mla_expands(int64_t n) const {
  if (n < kMlaExpandRows || !mla_expandable_ || max_batch_ < kMlaExpandRows) return false;
  for (int64_t t = 1; t < n; ++t)
    if (cseq_[t] != cseq_[0] || cpos_[t] != cpos_[0] + t) return false;
  return true;
}

void Model::mla_prefill_expanded(KernelContext& ctx, int64_t l, int64_t n) {
  const auto& c = w_.cfg;
  const auto& L = w_.layers[size_t(l)];
  const int64_t nh = c.n_heads, hd = c.head_dim, rope = c.mla_rope, nope = hd - rope, vd = c.mla_v_dim;
  const int64_t ckv = c.mla_kv_lora, kd = c.cache_k_dim(), kvb_w = nope + vd;
  const int32_t seq = cseq_[0];
  const int64_t pos = cpos_[0], n_vis = pos + n;  // keys [k0, n_vis) of seq
  const LayerConfig& lc = c.layer(l);
  const int64_t k0 = lc.first_key(pos), nk = n_vis - k0;
  float* lat = a_.kv32;                  // (n_vis, kd) the cached rows [c | k_pe] as f32
  float* C = a_.mla_exp;                 // (n_vis, ckv) their latents, contiguous for the product
  float* KV = C + n_ctx_ * ckv;          // (n_vis, nope + vd) one head's [k_nope | v]
  float* K = KV + n_ctx_ * kvb_w;        // (n_vis, hd) its keys [k_nope | k_pe]
  DecodeAttnArgs map;  // the sequence's block table, for its row mapping
  map.blocks = kv_->block_table(seq, l);
  map.block_size = kv_->block_size();
  const TensorView cache = make_view(kv_type_, {kv_->rows(l), kd}, kv_->k(l));
  per_token(ctx, nk, [&](int64_t i) {
    const int64_t p = k0 + i;
    dequantize_row(cache, map.row(p), lat + p * kd);
    std::copy(lat + p * kd, lat + p * kd + ckv, C + p * ckv);
  });
  const int nt = std::min(ctx.n_threads, max_threads_);
  const int64_t nb = (n + kQBlock - 1) / kQBlock;
  for (int64_t h = 0; h < nh; ++h) {
    matmul(ctx, rows_view(L.wkv_b, h * kvb_w, kvb_w), C + k0 * ckv, nk, KV + k0 * kvb_w);
    per_token(ctx, nk, [&](int64_t i) {
      const int64_t p = k0 + i;
      std::copy(KV + p * kvb_w, KV + p * kvb_w + nope, K + p * hd);
      std::copy(lat + p * kd + ckv, lat + (p + 1) * kd, K + p * hd + nope);
    });
#pragma omp parallel for num_threads(nt) schedule(dynamic)
    for (int64_t b = 0; b < nb; ++b) {
      const int64_t r0 = b * kQBlock, nr = std::min(kQBlock, n - r0);
      attend_tiles(ctx.isa, lc, pos + r0, nr, a_.q + r0 * nh * hd + h * hd, nh * hd, K, hd, KV + nope, kvb_w, hd, vd,
                   c.attention_scale(), a_.mla_att + r0 * nh * vd + h * vd, nh * vd,
                   a_.scores + int64_t(omp_get_thread_num()) * score_floats());
    }
  }
}

void Model::prepare_mla() {
  const auto& c = w_.cfg;
  const int64_t nh = c.n_heads, nope = c.head_dim - c.mla_rope, vd = c.mla_v_dim, ckv = c.mla_kv_lora;
  const int64_t kvb_w = nope + vd;
  const DType src = w_.layers.empty() ? DType::F32 : w_.layers[0].wkv_b.dtype;
  const auto pick = [&](int64_t cols) {
    DType t = src == DType::F32 || src == DType::F16 || src == DType::BF16 || src == DType::Q8_0 ? src : DType::Q8_0;
    return cols % dtype_block_elems(t) == 0 ? t : DType::F32;
  };
  const DType tk = pick(nope), tv = pick(ckv);
  const size_t kb = dtype_row_bytes(tk, nope) * size_t(ckv), vb = dtype_row_bytes(tv, ckv) * size_t(vd);  // per head
  const size_t kb64 = (kb + 63) / 64 * 64, vb64 = (vb + 63) / 64 * 64;
  mla_mats_.assign((kb64 + vb64) * size_t(nh * c.n_layers), 0);
  mla_expandable_ = true;  // kv_b's per-head rows as views (mla_prefill_expanded)
  for (const auto& L : w_.layers)
    if (L.wkv_b.dtype == DType::Q8_G || (r4_file_type(L.wkv_b.dtype) != L.wkv_b.dtype && kvb_w % kR4Rows != 0))
      mla_expandable_ = false;
  mla_wk_.clear(), mla_wv_.clear();
  std::vector<float> kvb(static_cast<size_t>(nh * kvb_w * ckv)), col(static_cast<size_t>(nope));
  uint8_t* p = mla_mats_.data();
  for (const auto& L : w_.layers) {
    for (int64_t r = 0; r < nh * kvb_w; ++r) dequantize_row(L.wkv_b, r, kvb.data() + r * ckv);
    for (int64_t h = 0; h < nh; ++h) {
      const float* wk = kvb.data() + h * kvb_w * ckv;  // (nope, ckv): row i is Wk_h's row i
      for (int64_t j = 0; j < ckv; ++j) {              // Wk_h^T row j = column j of Wk_h
        for (int64_t i = 0; i < nope; ++i) col[size_t(i)] = wk[i * ckv + j];
        quantize_row(tk, col.data(), p + size_t(j) * dtype_row_bytes(tk, nope), nope);
      }
      mla_wk_.push_back(make_view(tk, {ckv, nope}, p));
      p += kb64;
      for (int64_t v = 0; v < vd; ++v) quantize_row(tv, wk + (nope + v) * ckv, p + size_t(v) * dtype_row_bytes(tv, ckv), ckv);
      mla_wv_.push_back(make_view(tv, {vd, ckv}, p));
      p += vb64;
    }
  }
}

template void Model::mla_attention<Model::RegionExec>(RegionExec&, int64_t, const float*);
template void Model::mla_attention<Model::TeamExec>(TeamExec&, int64_t, const float*);

}  // namespace tessera
