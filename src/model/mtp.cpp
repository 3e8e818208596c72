// Drafting with the multi-token prediction modules (RunOptions::mtp_draft; the modules
// are trained by train/mtp.cpp, DeepSeek-V3's sequential MTP). Module k at position i:
// u = W_k [enorm_k(E[t_{i+k}]); hnorm_k(h^{k-1}_i)], h^k_i = block_k(u) (causal over the
// module's own K/V at positions <= i), logits of t_{i+k+1} = output(headnorm_k(h^k_i)),
// with h^0 the model's final hidden state. The cache keeps, per position, the states
// h^0 .. h^{D-1} (planes of C floats) and each module block's K/V (extra layers); each
// forward runs module k for its rows (the row of token t at position p is module k at
// p - k, which reads E[t] and h^{k-1}_{p-k}). A module key at position j is right while
// the cache holds position j + k with the token it used; a rewind that drops it leaves it
// stale, and the forward of the new token there writes it again before any read.
#include "core/error.h"
#include "kernels/ops.h"
#include "model/exec.h"

namespace tessera {

void Model::mtp_rows(KernelContext& ctx, const int32_t* tokens, const int64_t* pos, const int32_t* seq, int64_t n) {
  // Module k at position p - k for the row at p, in module order: module k's input state at
  // p - k is module k - 1's output there, which this pass (the row at p - 1) or an earlier
  // one wrote.
  for (int k = 1; k <= drafts_mtp(); ++k) mtp_module(ctx, k, tokens, pos, seq, -n);
}

// n < 0: the rows of a forward (-n rows, positions pos - k); n > 0: draft rows at the given positions.
int64_t Model::mtp_module(KernelContext& ctx, int k, const int32_t* tokens, const int64_t* at, const int32_t* seq,
                          int64_t n) {
  const auto& c = w_.cfg;
  const int64_t C = c.dim, nL = c.n_layers, D = c.mtp_depth;
  const int64_t l = nL + k - 1;  // the module's block (and cache layer)
  const LayerWeights& L = w_.layers[size_t(l)];
  const int64_t lag = n < 0 ? k : 0, rows = n < 0 ? -n : n;
  int64_t m = 0;  // the rows with a module position
  for (int64_t t = 0; t < rows; ++t)
    if (at[t] - lag >= 0)
      mtp_pos_[size_t(m)] = at[t] - lag, mtp_seq_[size_t(m)] = seq[t], mtp_tok_[size_t(m)] = tokens[t], ++m;
  if (m == 0) return 0;
  per_token(ctx, m, [&](int64_t i) {
    float* e = a_.xb + i * C;
    dequantize_row(w_.tok_embd, mtp_tok_[size_t(i)], e);
    float* cat = a_.mtp_cat + i * 2 * C;
    ops::rmsnorm(cat, e, L.mtp_enorm.f32(), C, c.norm_eps);
    const float* h = kv_->hidden(mtp_seq_[size_t(i)], mtp_pos_[size_t(i)]) + (k - 1) * C;  // state plane k - 1
    ops::rmsnorm(cat + C, h, L.mtp_hnorm.f32(), C, c.norm_eps);
  });
  matmul(ctx, L.mtp_eh_proj, a_.mtp_cat, m, a_.x);  // (m, C)
  const int64_t* p0 = cpos_;
  const int32_t *s0 = cseq_, *t0 = ctok_;
  cpos_ = mtp_pos_.data(), cseq_ = mtp_seq_.data(), ctok_ = mtp_tok_.data();
  RegionExec ex{*this, ctx, m};
  llama_layer(ex, l);  // a plain dense block (ModelConfig::layer past layer_cfg)
  cpos_ = p0, cseq_ = s0, ctok_ = t0;
  if (k < D)  // the next module's input state at these positions
    per_token(ctx, m, [&](int64_t i) {
      std::copy(a_.x + i * C, a_.x + (i + 1) * C, kv_->hidden(mtp_seq_[size_t(i)], mtp_pos_[size_t(i)]) + k * C);
    });
  return m;
}

const float* Model::mtp_draft(KernelContext& ctx, int32_t token, int64_t pos, int k) {
  if (!mtp_) fail("mtp_draft: the model was not set up for drafting with its MTP modules (RunOptions::mtp_draft)");
  if (!own_) fail("mtp_draft: the model has no own cache");
  if (k < 1 || k > drafts_mtp()) fail("mtp_draft: module ", k, " of ", drafts_mtp());
  check_token(token, pos);
  if (pos < 1 || pos > own_->length(0))
    fail("mtp_draft: position ", pos, " needs the hidden state of ", pos - 1, "; the cache holds ", own_->length(0),
         " positions");
  const auto& c = w_.cfg;
  const int64_t C = c.dim;
  kv_ = own_.get();
  const int32_t s = 0;
  const int64_t q = pos - 1;
  mtp_module(ctx, k, &token, &q, &s, 1);  // a_.x row 0: module k's output at pos - 1
  ops::rmsnorm(a_.xb, a_.x, w_.layers[size_t(c.n_layers + k - 1)].mtp_head_norm.f32(), C, c.norm_eps);
  matmul(ctx, w_.output, a_.xb, 1, a_.logits);
  if (c.final_softcap > 0.f) ops::softcap(a_.logits, c.vocab_size, c.final_softcap);
  return a_.logits;
}

}  // namespace tessera
