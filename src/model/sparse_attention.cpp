// Sparse attention patterns in the engine (AttnKind::Sparse: a dilated window,
// global positions, random keys; LayerConfig::sees). A query's visible keys are
// not one range, so each row gathers them from the paged cache (widened from
// f16 / Q8_0) and attends over that list: O(visible keys) per row and head,
// however long the context. Prefill rows and decode steps take the same path,
// so a prompt's logits do not depend on how it was chunked.
#include <cmath>

#include "kernels/attention.h"
#include "kernels/kernels.h"
#include "model/model.h"

namespace tessera {

void Model::attend_sparse(int64_t l, int32_t seq, int64_t pos, const float* q, float* out, int rank, int64_t h0,
                          int64_t hstep) const {
  const auto& c = w_.cfg;
  const LayerConfig& lc = c.layer(l);
  const int64_t hd = c.cache_k_dim(), vd = c.cache_v_dim(), kvd = c.cache_kv_dim();
  const int64_t group = c.n_heads / c.cache_kv_heads();
  int64_t* keys = sparse_keys_.data() + int64_t(rank) * sparse_bound_;
  const int64_t n = lc.visible_keys(pos, keys);  // ascending, the query's own position last
  float* K = sparse_scratch_.data() + int64_t(rank) * sparse_stride_;  // (n, kvd)
  float* V = K + sparse_bound_ * kvd;                                  // (n, kvd)
  float* s = V + sparse_bound_ * kvd;                                  // (n) one head's scores
  DecodeAttnArgs map;  // the sequence's block table, for its row mapping
  map.blocks = kv_->block_table(seq);
  map.block_size = kv_->block_size();
  const int64_t rows_all = kv_->n_blocks() * kv_->block_size();
  const TensorView kh = make_view(kv_type_, {rows_all, kvd}, kv_->k(l)), vh = make_view(kv_type_, {rows_all, kvd}, kv_->v(l));
  for (int64_t i = 0; i < n; ++i) {
    dequantize_row(kh, map.row(keys[i]), K + i * kvd);
    dequantize_row(vh, map.row(keys[i]), V + i * kvd);
  }
  const float scale = c.attention_scale(), cap = c.attn_softcap;
  for (int64_t h = h0; h < c.n_heads; h += hstep) {
    const float* qh = q + h * hd;
    const int64_t off = h / group * hd;
    float mx = -INFINITY;
    for (int64_t i = 0; i < n; ++i) {
      float d = 0.f;
      for (int64_t e = 0; e < hd; ++e) d += qh[e] * K[i * kvd + off + e];
      d *= scale;
      if (cap > 0.f) d = cap * std::tanh(d / cap);
      s[i] = d;
      mx = std::max(mx, d);
    }
    float sum = 0.f;
    for (int64_t i = 0; i < n; ++i) sum += (s[i] = std::exp(s[i] - mx));
    const float inv = 1.f / sum;
    float* o = out + h * vd;
    std::fill(o, o + vd, 0.f);
    for (int64_t i = 0; i < n; ++i) {
      const float p = s[i] * inv;
      const float* v = V + i * kvd + h / group * vd;
      for (int64_t e = 0; e < vd; ++e) o[e] += p * v[e];
    }
  }
}

}  // namespace tessera
