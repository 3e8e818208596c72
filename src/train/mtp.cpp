// Multi-token prediction modules of the training Transformer (DeepSeek-V3's sequential
// MTP; ModelConfig::mtp_depth D, blocks n_layers .. n_layers + D - 1). With h^0 the final
// hidden state of the main layers (before the output norm), depth k = 1..D at position i:
//   u = W_k [enorm_k(E[t_{i+k}]); hnorm_k(h^{k-1}_i)]        (N, 2C) -> (N, C)
//   h^k = block_k(u)                                          a plain dense block, causal
//   loss_k = CE(output(headnorm_k(h^k)), t_{i+k+1})           the shared output head
// Positions whose token k ahead is past the row have no target (their embedding is a
// filler: they influence only later positions, which have none either). The objective
// adds mtp_weight / D x sum_k loss_k, each summed over its targets and scaled like the
// main loss (grad_scale). The backward runs the depths in reverse: each depth's d h^k is
// its head's plus the next depth's hnorm input gradient; depth 1's goes into dx_, the
// main model's d h^0, before the main layers' backward.
#include "train/transformer.h"

namespace tessera::train {

template <class T>
void Transformer<T>::mtp_fwd(const T* p, const int32_t* tokens, const int32_t* targets) {
  const int64_t N = N_, C = c_.dim, nL = c_.n_layers, Tn = T_;
  const T eps = T(c_.norm_eps);
  for (int64_t k = 1; k <= c_.mtp_depth; ++k) {
    MtpActs& m = mtp_[size_t(k - 1)];
    const LayerOffsets& o = L_.layers[size_t(nL + k - 1)];
    for (int64_t i = 0; i < N; ++i) {
      const bool in_row = i % Tn + k < Tn;
      m.tok[i] = in_row ? tokens[i + k] : tokens[i];
      m.tgt[i] = in_row ? targets[i + k] : -1;
    }
    blk::embed_fwd(m.emb, p + L_.tok_embd, (const T*)nullptr, m.tok, N, Tn, C);
    const T* hp = k == 1 ? x_in_[size_t(nL)] : mtp_[size_t(k - 2)].h;
    blk::rmsnorm_fwd(mtp_t1_, m.r, m.emb, p + o.mtp_enorm, N, C, eps, isa_);
    blk::rmsnorm_fwd(mtp_t2_, m.r + N, hp, p + o.mtp_hnorm, N, C, eps, isa_);
#pragma omp parallel for schedule(static)
    for (int64_t i = 0; i < N; ++i) {
      std::copy(mtp_t1_ + i * C, mtp_t1_ + (i + 1) * C, m.cat + i * 2 * C);
      std::copy(mtp_t2_ + i * C, mtp_t2_ + (i + 1) * C, m.cat + i * 2 * C + C);
    }
    lin_fwd(m.u, m.cat, p + o.mtp_eh_proj, (const T*)nullptr, N, 2 * C, C);
    LayerActs& a = acts_for(nL + k - 1);
    a.x_in = m.u;
    layer_fwd(p, nL + k - 1, a, m.h);
  }
}

template <class T>
void Transformer<T>::mtp_head(const T* p, T* g, int64_t k, float scale, bool backward, blk::CeResult& r, T* dh) {
  const int64_t N = N_, C = c_.dim, V = c_.vocab_size;
  const MtpActs& m = mtp_[size_t(k - 1)];
  const LayerOffsets& o = L_.layers[size_t(c_.n_layers + k - 1)];
  blk::rmsnorm_fwd(xf_, rf_, m.h, p + o.mtp_head_norm, N, C, T(c_.norm_eps), isa_);
  blk::CeOptions ce;
  ce.softcap = c_.final_softcap, ce.scale = scale, ce.isa = isa_, ce.row_scratch = ce_rows_.data();
  for (int64_t r0 = 0; r0 < N; r0 += o_.logit_rows) {
    const int64_t n = std::min(o_.logit_rows, N - r0);
    head_fwd(logits_, xf_ + r0 * C, p + L_.output, n);
    const blk::CeResult cr = blk::cross_entropy(logits_, m.tgt + r0, n, V, ce);
    r.mtp_sum += cr.loss_sum, r.mtp_count += cr.count;
    if (backward) head_bwd(dxf_ + r0 * C, g + L_.output, logits_, xf_ + r0 * C, p + L_.output, n, true);
  }
  if (backward) blk::rmsnorm_bwd(dh, g + o.mtp_head_norm, dxf_, m.h, p + o.mtp_head_norm, rf_, N, C, false, isa_);
}

template <class T>
void Transformer<T>::mtp_bwd(const T* p, T* g, float scale, blk::CeResult& r) {
  const int64_t N = N_, C = c_.dim, nL = c_.n_layers, D = c_.mtp_depth;
  for (int64_t k = D; k >= 1; --k) {
    const MtpActs& m = mtp_[size_t(k - 1)];
    const LayerOffsets& o = L_.layers[size_t(nL + k - 1)];
    mtp_head(p, g, k, scale, true, r, mtp_dh_);  // d h^k from this depth's loss
    if (k < D)                                   // and from depth k + 1's input
#pragma omp parallel for schedule(static)
      for (int64_t i = 0; i < N * C; ++i) mtp_dh_[i] += mtp_dhp_[i];
    LayerActs& a = acts_for(nL + k - 1);
    if (o_.recompute) {
      a.x_in = m.u;
      layer_fwd(p, nL + k - 1, a, mtp_t1_);
    }
    layer_bwd(p, g, nL + k - 1, a, mtp_dh_);  // now d u
    lin_bwd(mtp_dcat_, g + o.mtp_eh_proj, (T*)nullptr, mtp_dh_, m.cat, p + o.mtp_eh_proj, N, 2 * C, C, false, true);
#pragma omp parallel for schedule(static)
    for (int64_t i = 0; i < N; ++i) {
      std::copy(mtp_dcat_ + i * 2 * C, mtp_dcat_ + i * 2 * C + C, mtp_t1_ + i * C);
      std::copy(mtp_dcat_ + i * 2 * C + C, mtp_dcat_ + (i + 1) * 2 * C, mtp_t2_ + i * C);
    }
    blk::rmsnorm_bwd(mtp_t1_, g + o.mtp_enorm, mtp_t1_, m.emb, p + o.mtp_enorm, m.r, N, C, false, isa_);
    blk::embed_bwd(g + L_.tok_embd, (T*)nullptr, mtp_t1_, m.tok, N, T_, C);
    const T* hp = k == 1 ? x_in_[size_t(nL)] : mtp_[size_t(k - 2)].h;
    // Depth 1's input is the main model's final state: its gradient adds to the head's in dx_.
    blk::rmsnorm_bwd(k == 1 ? dx_ : mtp_dhp_, g + o.mtp_hnorm, mtp_t2_, hp, p + o.mtp_hnorm, m.r + N, N, C, k == 1,
                     isa_);
  }
}

#define TESSERA_MTP_INSTANTIATE(T)                                                                         \
  template void Transformer<T>::mtp_fwd(const T*, const int32_t*, const int32_t*);                          \
  template void Transformer<T>::mtp_head(const T*, T*, int64_t, float, bool, blk::CeResult&, T*);          \
  template void Transformer<T>::mtp_bwd(const T*, T*, float, blk::CeResult&);
TESSERA_MTP_INSTANTIATE(float)
TESSERA_MTP_INSTANTIATE(double)
#undef TESSERA_MTP_INSTANTIATE

}  // namespace tessera::train
