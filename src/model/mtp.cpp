// Drafting with the first multi-token prediction module (RunOptions::mtp_draft; the
// modules are trained by train/mtp.cpp, DeepSeek-V3's sequential MTP). Depth 1 at
// position i: u = W [enorm(E[t_{i+1}]); hnorm(h_i)], h' = block(u) (causal over the
// module's own K/V at positions <= i), logits of t_{i+2} = output(headnorm(h')).
// The cache keeps every position's final hidden state h_i and the module block's K/V
// (an extra layer); each forward runs the module for its rows (the row of token t at
// position p is the module at p - 1). A module key at position j is right while the
// cache holds position j + 1 with the token it used; a rewind that drops j + 1 leaves
// it stale, and the forward of the new token at j + 1 writes it again before any read.
#include "core/error.h"
#include "kernels/ops.h"
#include "model/exec.h"

namespace tessera {

int64_t Model::mtp_rows(KernelContext& ctx, const int32_t* tokens, const int64_t* pos, const int32_t* seq, int64_t n) {
  const auto& c = w_.cfg;
  const int64_t C = c.dim, nL = c.n_layers;
  const LayerWeights& L = w_.layers[size_t(nL)];
  int64_t m = 0;  // the rows with a previous position
  for (int64_t t = 0; t < n; ++t)
    if (pos[t] >= 1) mtp_pos_[size_t(m)] = pos[t] - 1, mtp_seq_[size_t(m)] = seq[t], mtp_tok_[size_t(m)] = tokens[t], ++m;
  if (m == 0) return 0;
  per_token(ctx, m, [&](int64_t i) {
    float* e = a_.xb + i * C;
    dequantize_row(w_.tok_embd, mtp_tok_[size_t(i)], e);
    float* cat = a_.mtp_cat + i * 2 * C;
    ops::rmsnorm(cat, e, L.mtp_enorm.f32(), C, c.norm_eps);
    ops::rmsnorm(cat + C, kv_->hidden(mtp_seq_[size_t(i)], mtp_pos_[size_t(i)]), L.mtp_hnorm.f32(), C, c.norm_eps);
  });
  matmul(ctx, L.mtp_eh_proj, a_.mtp_cat, m, a_.x);  // (m, C)
  const int64_t* p0 = cpos_;
  const int32_t *s0 = cseq_, *t0 = ctok_;
  cpos_ = mtp_pos_.data(), cseq_ = mtp_seq_.data(), ctok_ = mtp_tok_.data();
  RegionExec ex{*this, ctx, m};
  llama_layer(ex, nL);  // a plain dense block (ModelConfig::layer past layer_cfg)
  cpos_ = p0, cseq_ = s0, ctok_ = t0;
  return m;
}

const float* Model::mtp_draft(KernelContext& ctx, int32_t token, int64_t pos) {
  if (!mtp_) fail("mtp_draft: the model was not set up for drafting with its MTP module (RunOptions::mtp_draft)");
  if (!own_) fail("mtp_draft: the model has no own cache");
  check_token(token, pos);
  if (pos < 1 || pos > own_->length(0))
    fail("mtp_draft: position ", pos, " needs the hidden state of ", pos - 1, "; the cache holds ", own_->length(0),
         " positions");
  const auto& c = w_.cfg;
  const int64_t C = c.dim;
  kv_ = own_.get();
  const int32_t s = 0;
  mtp_rows(ctx, &token, &pos, &s, 1);  // a_.x row 0: the module's output at pos - 1
  ops::rmsnorm(a_.xb, a_.x, w_.layers[size_t(c.n_layers)].mtp_head_norm.f32(), C, c.norm_eps);
  matmul(ctx, w_.output, a_.xb, 1, a_.logits);
  if (c.final_softcap > 0.f) ops::softcap(a_.logits, c.vocab_size, c.final_softcap);
  return a_.logits;
}

}  // namespace tessera
