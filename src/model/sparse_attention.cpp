// Sparse attention patterns in the engine (AttnKind::Sparse: a dilated window,
// global positions, random keys; LayerConfig::sees). A query's visible keys are
// not one range, so each row gathers them from the paged cache (widened from
// f16 / Q8_0) and attends over that list: O(visible keys) per row and head,
// however long the context. Prefill rows and decode steps take the same path,
// so a prompt's logits do not depend on how it was chunked.
#include "kernels/attention.h"
#include "kernels/kernels.h"
#include "model/model.h"

namespace tessera {

void Model::attend_sparse(Isa isa, int64_t l, int32_t seq, int64_t pos, const float* q, float* out, int rank,
                          int64_t h0, int64_t hstep) const {
  const auto& c = w_.cfg;
  const LayerConfig& lc = c.layer(l);
  const int64_t hd = c.cache_k_dim(), vd = c.cache_v_dim(), kvd = c.cache_kv_dim();
  const int64_t group = c.n_heads / c.cache_kv_heads();
  int64_t* keys = sparse_keys_.data() + int64_t(rank) * sparse_bound_;
  float* K = sparse_scratch_.data() + int64_t(rank) * sparse_stride_;  // (n, kvd)
  float* V = K + sparse_bound_ * kvd;                                  // (n, kvd)
  float* s = V + sparse_bound_ * kvd;                                  // (group, n) scores
  DecodeAttnArgs map;  // the sequence's block table, for its row mapping
  map.blocks = kv_->block_table(seq, l);
  map.block_size = kv_->block_size();
  const int64_t rows_all = kv_->rows(l);
  const TensorView kh = make_view(kv_type_, {rows_all, kvd}, kv_->k(l)), vh = make_view(kv_type_, {rows_all, kvd}, kv_->v(l));
  const auto gather = [&](int64_t h) {  // the keys head h sees (h < 0: every head's), ascending, the query's own last
    const int64_t n = lc.visible_keys(pos, keys, h);
    for (int64_t i = 0; i < n; ++i) {
      dequantize_row(kh, map.row(keys[i]), K + i * kvd);
      dequantize_row(vh, map.row(keys[i]), V + i * kvd);
    }
    return n;
  };
  // Each KV head's query group over the gathered rows: the decode kernel (positions 0..n-1 of
  // these f32 rows, no block table), with its SIMD paths and scalar reference. Per-head
  // dilations: each query head over its own keys, gathered again when its dilation differs.
  const bool per_head = !lc.head_dilation.empty();
  int64_t n = per_head ? 0 : gather(-1), have = -1;  // have: the dilation gathered
  for (int64_t kvh = h0; kvh < c.cache_kv_heads(); kvh += hstep)
    for (int64_t g0 = 0; g0 < group; g0 += per_head ? 1 : group) {
      const int64_t h = kvh * group + g0;
      if (per_head && lc.dilation_of(h) != have) n = gather(h), have = lc.dilation_of(h);
      DecodeAttnArgs a;
      a.q = q + h * hd, a.q_stride = hd, a.G = per_head ? 1 : group, a.hd = hd, a.vd = vd;
      a.k = K + kvh * hd, a.v = V + kvh * vd, a.kv = DType::F32, a.kv_stride = kvd;
      a.n = n, a.scale = c.attention_scale(), a.softcap = c.attn_softcap;
      a.scores = s, a.out = out + h * vd, a.out_stride = vd;
      attend_decode(isa, a);
    }
}

}  // namespace tessera
