// Model: buffer planning, chunking, the KV cache and the shared attention block.
// The per-architecture layers are in llama.cpp and gpt2.cpp.
#include "model/model.h"

#include <omp.h>

#include <algorithm>
#include <cmath>
#include <thread>

#include "core/aligned.h"
#include "core/error.h"
#include "core/fp16.h"
#include "kernels/attention.h"
#include "kernels/ops.h"
#include "model/exec.h"

namespace tessera {

namespace {
constexpr int64_t kPrefillGemmRows = 8;  // new tokens from which attention runs as GEMMs
}  // namespace

Model::Model(const Weights& w, const RunOptions& opt)
    : w_(w),
      kv_type_(opt.kv_type),
      kv_block_size_(opt.kv_block_size),
      persistent_team_(opt.persistent_team && !opt.tp),
      tp_(opt.tp) {
  const auto& c = w.cfg;
  mtp_ = opt.mtp_draft;
  if (tp_ && (mtp_ || opt.prefix || opt.bottleneck))
    fail("--tp: tensor parallelism does not run prefix or bottleneck adapters or MTP drafting");
  if (mtp_ && c.mtp_depth < 1)
    fail("drafting with multi-token prediction needs a model with MTP modules (train one with 'tessera train --mtp "
         "N'); this one has none");
  n_ctx_ = opt.n_ctx > 0 ? opt.n_ctx : c.max_seq_len;
  if (opt.prefix) {  // prefix tuning: positions [0, P) hold the prefix, the tokens follow
    const KvPrefix& px = *opt.prefix;
    if (px.n_layers != c.n_layers || px.kv_dim != c.cache_kv_dim() || px.len <= 0 ||
        px.kv.size() != size_t(2 * px.n_layers * px.len * px.kv_dim))
      fail("prefix adapter: ", px.n_layers, " layers of ", px.len, " x ", px.kv_dim, " keys and values; this model has ",
           c.n_layers, " layers of K/V width ", c.cache_kv_dim());
    if (c.mla() || mtp_ || c.moe_hashed() || c.has_sparse_attention())
      fail("prefix adapter: not supported with latent attention, sparse attention patterns, --draft-mtp or hash routing");
    prefix_len_ = px.len, prefix_ = opt.prefix;
    n_ctx_ += prefix_len_;
    if (c.arch == Arch::GPT2) n_ctx_ = std::min(n_ctx_, c.max_seq_len);  // the learned positions end there
    if (n_ctx_ <= prefix_len_) fail("prefix adapter: its ", prefix_len_, " positions fill the context");
  }
  if (c.arch == Arch::GPT2 && n_ctx_ > c.max_seq_len)
    fail("context size ", n_ctx_, " exceeds the ", c.max_seq_len, " learned positions of this GPT-2 model");
  max_batch_ = std::max<int64_t>(1, std::min(opt.max_batch, n_ctx_));
  if (kv_type_ == DType::Q8_0 && c.cache_k_dim() % kQK != 0)
    fail("--kv-type q8_0 stores each head in blocks of ", kQK, " values; this model's cached head size is ",
         c.cache_k_dim());
  max_threads_ = opt.max_threads > 0 ? opt.max_threads : int(std::max(1u, std::thread::hardware_concurrency()));
  if (c.moe_used > kMaxMoeUsed)
    fail("this model selects ", c.moe_used, " experts per token; Tessera runs at most ", kMaxMoeUsed);
  // H: the widest feed-forward activation (dense, shared expert); the MoE
  // buffers hold B k gathered rows of the expert width He.
  const int64_t B = max_batch_, C = c.dim, H = std::max(c.hidden_dim, c.moe_shared_hidden), V = c.vocab_size;
  const int64_t E = c.moe_experts, Bk = B * c.moe_used, He = c.moe_hidden;
  const int64_t qw = c.arch == Arch::GPT2 ? 3 * C : c.q_dim();
  if (c.mla() && max_batch_ > 1)
    mla_w32_floats_ = (c.mla_kv_lora * std::max(c.head_dim - c.mla_rope, c.mla_v_dim) + 15) / 16 * 16;
  const int64_t kv_arrays = c.cache_v_in_k() ? 1 : 2;  // K and V, or K alone (MLA's latent)
  const int64_t sizes[] = {B * C, B * C, B * qw, B * std::max(c.kv_dim(), c.cache_kv_dim()),
                           c.mla() ? 0 : B * c.kv_dim(), B * std::max(c.q_dim(), c.cache_out_dim()), B * H, B * H,
                           int64_t(max_threads_) * score_floats(), B * V,
                           max_batch_ >= kPrefillGemmRows ? kv_arrays * n_ctx_ * c.cache_kv_dim() : 0,
                           B * E, Bk, Bk * C, Bk * He, Bk * He, Bk * C, E > 0 ? B * C : 0,
                           B * c.mla_q_lora, B * (c.mla_kv_lora + c.mla_rope),
                           c.mla() ? B * c.cache_q_dim() : 0,
                           int64_t(max_threads_) * mla_w32_floats_, B * c.n_heads * c.mla_v_dim,
                           c.mla() && max_batch_ >= kMlaExpandRows
                               ? n_ctx_ * (c.mla_kv_lora + c.head_dim - c.mla_rope + c.mla_v_dim + c.head_dim)
                               : 0,
                           mtp_ ? 2 * B * C : 0, opt.bottleneck ? B * opt.bottleneck->dim : 0,
                           opt.bottleneck ? B * C : 0};
  size_t total = 0;
  for (int64_t s : sizes) total += size_t(s + 15) / 16 * 16;  // keep each buffer 64-byte aligned
  if (kv_block_size_ <= 0) fail("KV block size must be > 0, got ", kv_block_size_);
  const int64_t own_blocks = (n_ctx_ + kv_block_size_ - 1) / kv_block_size_;
  const double kv = opt.own_cache ? KVCache::planned_bytes(c, cache_options(own_blocks, 1, 0)) : 0.0;
  require_memory(kv + 4.0 * double(total), "context " + std::to_string(n_ctx_) + ": the KV cache and buffers need",
                 "lower -c");
  arena_.assign(total, 0.f);  // zero-filled: pages are touched now
  float* p = arena_.data();
  float** slots[] = {&a_.x,      &a_.xb,     &a_.q,     &a_.k,     &a_.v,     &a_.att,    &a_.hb,
                     &a_.hb2,    &a_.scores, &a_.logits, &a_.kv32, &a_.router, &a_.moe_w, &a_.moe_x,
                     &a_.moe_g,  &a_.moe_u,  &a_.moe_d, &a_.moe_s, &a_.mla_q, &a_.mla_kva,
                     &a_.mla_qa, &a_.mla_w32, &a_.mla_att, &a_.mla_exp, &a_.mtp_cat, &a_.bn_h,
                     &a_.bn_o};
  for (size_t i = 0; i < std::size(slots); ++i) {
    *slots[i] = p;
    p += size_t(sizes[i] + 15) / 16 * 16;
  }
  if (mtp_) mtp_pos_.assign(size_t(B), 0), mtp_seq_.assign(size_t(B), 0), mtp_tok_.assign(size_t(B), 0);
  if (E > 0) {
    moe_sel_.assign(size_t(Bk), 0);
    moe_inv_.assign(size_t(Bk), 0);
    moe_off_.assign(size_t(E + 1), 0);
  }
  if (c.arch == Arch::Llama) {
    rope_cos_.resize(size_t(n_ctx_ * c.rope_dims() / 2));
    rope_sin_.resize(rope_cos_.size());
    ops::rope_tables(rope_cos_.data(), rope_sin_.data(), n_ctx_, c.rope_dims(), c.rope_theta, c.rope_freq_div());
  }
  if (persistent_team_ && max_threads_ > 1) {
    const int64_t Ht = std::max(H, He);  // a thread's activation copy
    const int64_t tr = std::min(kTeamRows, max_batch_);  // rows a team step may have
    team_act_stride_ = size_t(tr * (2 * C + Ht) + 47) / 16 * 16;  // three 64-byte-aligned pieces
    team_act_.assign(size_t(max_threads_) * team_act_stride_, 0.f);
    // The widest activation a team product reads (MLA's LoRA inputs and compact attention output too).
    team_scratch_stride_ =
        team_scratch_bytes(std::max({C, Ht, c.q_dim(), c.mla_q_lora, c.mla_kv_lora, c.attn_out_dim()}), tr);
    team_route_stride_ = size_t(E + 2 * c.moe_used + 15) / 16 * 16;
    team_route_.assign(size_t(max_threads_) * team_route_stride_, 0.f);
    team_scratch_.assign(size_t(max_threads_) * team_scratch_stride_, 0);
    // Split-K partial outputs and log-sum-exps: at most 2 n_heads (KV head, query sub-group) rows per key chunk.
    team_part_.assign(size_t(2 * c.n_heads * max_threads_ * (c.cache_v_dim() + 1)), 0.f);
  }
  if (c.mla()) prepare_mla();  // the absorbed products' matrices (model/mla.cpp)
  for (int64_t l = 0; l < c.n_layers; ++l)  // sparse attention patterns' per-thread scratch (model/sparse_attention.cpp)
    if (c.layer(l).attn == AttnKind::Sparse) sparse_bound_ = std::max(sparse_bound_, c.layer(l).visible_bound(n_ctx_) + 1);
  if (sparse_bound_ > 0) {
    sparse_stride_ = (sparse_bound_ * (2 * c.cache_kv_dim() + c.n_heads / c.cache_kv_heads()) + 15) / 16 * 16;
    require_memory(4.0 * double(max_threads_) * double(sparse_stride_), "the sparse attention pattern's scratch", "lower -c");
    sparse_scratch_.assign(size_t(max_threads_) * size_t(sparse_stride_), 0.f);
    sparse_keys_.assign(size_t(max_threads_) * size_t(sparse_bound_), 0);
  }
  if (opt.bottleneck) set_bottleneck(opt.bottleneck);
  if (opt.own_cache) {
    own_ = std::make_unique<KVCache>(make_cache(own_blocks, 1));
    own_->add_seq();
    own_pos_.resize(size_t(max_batch_));
    own_seq_.assign(size_t(max_batch_), 0);
  }
}

void Model::set_bottleneck(std::shared_ptr<const BottleneckAdapter> ad) {
  const auto& c = w_.cfg;
  const int64_t m = ad->dim, C = c.dim;
  if (m <= 0 || int64_t(ad->layers.size()) != c.n_layers)
    fail("bottleneck adapter: ", ad->layers.size(), " layers of width ", m, "; this model has ", c.n_layers, " layers");
  bn_views_.resize(size_t(c.n_layers));
  for (int64_t l = 0; l < c.n_layers; ++l)
    for (int s = 0; s < 2; ++s) {
      const auto& a = ad->layers[size_t(l)][size_t(s)];
      if (a.down.empty()) continue;
      if (int64_t(a.down.size()) != m * C || int64_t(a.down_b.size()) != m || int64_t(a.up.size()) != C * m ||
          int64_t(a.up_b.size()) != C)
        fail("bottleneck adapter: layer ", l, " ", s ? "ffn" : "attn", ": shapes do not fit width ", m, " and dim ", C);
      if (s == 0 ? c.mla() : c.moe_layer(l))
        fail("bottleneck adapter: layer ", l, ": no adapter on ", s ? "a mixture-of-experts feed-forward" : "latent attention");
      if (c.post_norms) fail("bottleneck adapter: models with sandwich norms (Gemma 2) are not supported");
      BnViews& v = bn_views_[size_t(l)][size_t(s)];
      v.down = make_view(DType::F32, {m, C}, a.down.data()), v.down_b = make_view(DType::F32, {m}, a.down_b.data());
      v.up = make_view(DType::F32, {C, m}, a.up.data()), v.up_b = make_view(DType::F32, {C}, a.up_b.data());
    }
  bn_ = std::move(ad);
}

KVCacheOptions Model::cache_options(int64_t n_blocks, int64_t window_seqs, int64_t window_rows) const {
  KVCacheOptions o;
  o.n_blocks = n_blocks, o.block_size = kv_block_size_, o.type = kv_type_;
  o.window_seqs = window_seqs, o.window_rows = window_rows > 0 ? window_rows : max_batch_, o.rewind = max_batch_;
  if (mtp_) o.extra_layers = w_.cfg.mtp_depth, o.hidden = w_.cfg.mtp_depth * w_.cfg.dim;
  return o;
}

KVCache Model::make_cache(int64_t n_blocks, int64_t window_seqs, int64_t window_rows) const {
  KVCacheOptions o = cache_options(n_blocks, window_seqs, window_rows);
  if (!prefix_) return KVCache(w_.cfg, o);
  // A prefix adapter: its rows in blocks of their own, plus one for a sequence's copy of a partial last one.
  o.prefix_len = prefix_len_;
  o.n_blocks += (prefix_len_ + kv_block_size_ - 1) / kv_block_size_ + 1;
  KVCache cache(w_.cfg, o);
  write_prefix(*prefix_, cache);
  return cache;
}

int64_t Model::score_rows() const {
  return std::max(std::min(kQBlock, max_batch_), w_.cfg.n_heads / w_.cfg.cache_kv_heads());
}

int64_t Model::score_floats() const {
  const int64_t decode = score_rows() * n_ctx_;  // G heads x n positions (attend_decode)
  const int64_t tile =
      max_batch_ >= kPrefillGemmRows
          ? kQBlock * (std::min(kKTile, n_ctx_) + std::max(w_.cfg.cache_v_dim(), w_.cfg.mla_v_dim) + 2)
          : 0;
  return (std::max(decode, tile) + 15) / 16 * 16;
}

void Model::check_token(int32_t id, int64_t pos) const {
  if (id < 0 || id >= w_.cfg.vocab_size)
    fail("token id ", id, " at position ", pos, " is outside the vocabulary (", w_.cfg.vocab_size, ")");
}

void Model::place_rows(const int32_t* tokens, const int64_t* pos, const int32_t* seq, int64_t n, KVCache& cache) {
  const auto& c = w_.cfg;
  if (n <= 0) fail("forward: no tokens");
  if (cache.kv_dim() != c.cache_kv_dim() || cache.v_in_k() != c.cache_v_in_k() || cache.type() != kv_type_ ||
      cache.k(0) == nullptr || (mtp_ && (!cache.has_hidden() || cache.n_layers() < c.n_layers + c.mtp_depth)))
    fail("forward: the KV cache was made for another model (kv_dim ", cache.kv_dim(), ", ", dtype_name(cache.type()),
         "; this model: ", c.cache_kv_dim(), ", ", dtype_name(kv_type_), ")");
  // First position and row count of each sequence in the batch (-1: absent).
  seq_first_.assign(seq_first_.size(), -1);
  for (int64_t i = 0; i < n; ++i) {
    check_token(tokens[i], pos[i]);
    const int32_t s = seq[i];
    if (!cache.live(s)) fail("forward: row ", i, " names sequence ", s, ", which the KV cache does not hold");
    if (pos[i] < 0 || pos[i] >= n_ctx())
      fail("sequence of ", pos[i] + 1, " tokens exceeds the context size ", n_ctx(), " (-c)");
    if (size_t(s) >= seq_first_.size()) seq_first_.resize(size_t(s) + 1, -1), seq_count_.resize(size_t(s) + 1, 0);
    int64_t& first = seq_first_[size_t(s)];
    if (first < 0) {
      if (pos[i] > cache.length(s))
        fail("forward: sequence ", s, " starts at position ", pos[i], " but holds only ", cache.length(s),
             " positions (a gap)");
      first = pos[i], seq_count_[size_t(s)] = 1;
    } else if (pos[i] != first + seq_count_[size_t(s)]) {
      fail("forward: row ", i, " of sequence ", s, " is at position ", pos[i], ", expected ",
           first + seq_count_[size_t(s)], " (a sequence's rows must be at consecutive positions)");
    } else {
      ++seq_count_[size_t(s)];
    }
  }
  // Room in the pool for every sequence's new positions, before anything changes.
  int64_t need = 0, wneed = 0;
  for (size_t s = 0; s < seq_first_.size(); ++s)
    if (seq_first_[s] >= 0) {
      need += cache.rewind_need(int32_t(s), seq_first_[s], seq_count_[s]);
      wneed += cache.window_need(int32_t(s), seq_first_[s], seq_count_[s]);  // Error past a window's rewind
    }
  if (need > cache.free_blocks())
    fail("KV cache full: the batch needs ", need, " more blocks of ", cache.block_size(), " positions, ",
         cache.free_blocks(), " of ", cache.n_blocks(), " are free (raise the context size or the number of KV blocks)");
  if (wneed > cache.window_free_blocks())
    fail("KV cache full: the batch needs ", wneed, " more blocks of ", cache.block_size(),
         " positions for its sliding-window layers, ", cache.window_free_blocks(), " of ", cache.window_blocks(),
         " are free (more sequences or rows per forward than the cache was made for)");
  // Every rewind first (they only hand blocks back), then every extension (the sums above).
  for (size_t s = 0; s < seq_first_.size(); ++s)
    if (seq_first_[s] >= 0) cache.truncate(int32_t(s), seq_first_[s]);
  for (size_t s = 0; s < seq_first_.size(); ++s)
    if (seq_first_[s] >= 0) cache.extend(int32_t(s), seq_count_[s]);
}

const float* Model::forward(KernelContext& ctx, const int32_t* tokens, int64_t n, int64_t pos) {
  forward_own(ctx, tokens, n, pos, false, a_.logits);
  return a_.logits;
}

void Model::forward_all(KernelContext& ctx, const int32_t* tokens, int64_t n, int64_t pos, float* out) {
  forward_own(ctx, tokens, n, pos, true, out);
}

void Model::write_prefix(const KvPrefix& px, KVCache& cache) const {
  const auto& c = w_.cfg;
  const int64_t kvd = c.cache_kv_dim();
  for (int64_t l = 0; l < c.n_layers; ++l)
    for (int64_t p = 0; p < px.len; ++p) {
      const size_t at = size_t(cache.prefix_row(p)) * cache.row_bytes();
      const float* src[2] = {px.k(l) + p * kvd, px.v(l) + p * kvd};
      uint8_t* dst[2] = {cache.k(l) + at, cache.v(l) + at};
      for (int i = 0; i < 2; ++i) {
        if (kv_type_ == DType::F32) std::copy(src[i], src[i] + kvd, reinterpret_cast<float*>(dst[i]));
        else quantize_row(kv_type_, src[i], dst[i], kvd);
      }
    }
}

void Model::forward_own(KernelContext& ctx, const int32_t* tokens, int64_t n, int64_t pos, bool all, float* out) {
  if (!own_) fail("forward: this model was built without its own KV cache (RunOptions::own_cache); pass a batch and a cache");
  if (n <= 0) fail("forward: no tokens");
  if (pos < 0 || pos + n > n_ctx()) fail("sequence of ", pos + n, " tokens exceeds the context size ", n_ctx(), " (-c)");
  for (int64_t i = 0; i < n; ++i) check_token(tokens[i], pos + i);
  if (pos > own_->length(0))
    fail("forward: position ", pos, " is past the ", own_->length(0), " cached positions (a gap)");
  own_->truncate(0, pos);
  kv_ = own_.get();
  for (int64_t i = 0; i < n; i += max_batch_) {
    const int64_t m = std::min(max_batch_, n - i);
    own_->extend(0, m);  // the own cache holds n_ctx positions (a sliding layer's window per chunk): always room
    for (int64_t t = 0; t < m; ++t) own_pos_[size_t(t)] = prefix_len_ + pos + i + t;  // cache positions
    if (all) {
      chunk(ctx, tokens + i, own_pos_.data(), own_seq_.data(), m, nullptr, out + i * w_.cfg.vocab_size);
    } else {
      // Only the last row's logits, of the last chunk (earlier chunks' go to a_.logits, unread).
      own_want_.assign(size_t(m), 0);
      own_want_[size_t(m - 1)] = 1;
      chunk(ctx, tokens + i, own_pos_.data(), own_seq_.data(), m, own_want_.data(), out);
    }
  }
}

void Model::forward(KernelContext& ctx, const Batch& b, KVCache& cache, float* out) {
  const int64_t n = b.size();
  if (int64_t(b.pos.size()) != n || int64_t(b.seq.size()) != n || int64_t(b.want_logits.size()) != n)
    fail("forward: the batch's token, pos, seq and want_logits lists differ in length");
  if (cache.prefix_len() != prefix_len_)
    fail("forward: the KV cache holds a prefix of ", cache.prefix_len(), " positions, this model's adapter ",
         prefix_len_, " (make the cache with this model's make_cache)");
  place_rows(b.token.data(), b.pos.data(), b.seq.data(), n, cache);
  kv_ = &cache;
  const int64_t* pos = b.pos.data();
  if (prefix_len_ > 0) {  // the rows' cache positions: after the prefix
    batch_pos_.resize(size_t(n));
    for (int64_t i = 0; i < n; ++i) batch_pos_[size_t(i)] = b.pos[size_t(i)] + prefix_len_;
    pos = batch_pos_.data();
  }
  int64_t done = 0;  // logits rows written
  for (int64_t i = 0; i < n; i += max_batch_) {
    const int64_t m = std::min(max_batch_, n - i);
    chunk(ctx, b.token.data() + i, pos + i, b.seq.data() + i, m, b.want_logits.data() + i,
          out ? out + done * w_.cfg.vocab_size : nullptr);
    for (int64_t t = i; t < i + m; ++t) done += b.want_logits[size_t(t)];
  }
}

void Model::chunk(KernelContext& ctx, const int32_t* tokens, const int64_t* pos, const int32_t* seq, int64_t n,
                  const uint8_t* want, float* out) {
  cpos_ = pos, cseq_ = seq, ctok_ = tokens;
  for (int64_t t = 0; t < n; ++t) kv_->set_token(seq[t], pos[t], tokens[t]);
  if (n <= kTeamRows && decodes_as_team(ctx) && team_rows_ok(ctx, n)) {
    decode_team(ctx, tokens, pos, seq, n, want, n == 1 && want && !want[0] ? a_.logits : out);
    if (mtp_) mtp_rows(ctx, tokens, pos, seq, n);
    return;
  }
  const auto& c = w_.cfg;
  const int64_t C = c.dim;
  // Embedding lookup: x(t) = E[token] (+ P[pos] for GPT-2).
  per_token(ctx, n, [&](int64_t t) {
    dequantize_row(w_.tok_embd, tokens[t], a_.x + t * C);
    if (c.embed_scale > 0.f) ops::scale(a_.x + t * C, c.embed_scale, C);
    if (c.arch == Arch::GPT2) {
      dequantize_row(w_.pos_embd, pos[t], a_.xb + t * C);
      ops::add(a_.x + t * C, a_.xb + t * C, C);
    }
  });
  RegionExec ex{*this, ctx, n};
  for (int64_t l = 0; l < c.n_layers; ++l) {
    if (c.arch == Arch::Llama)
      llama_layer(ex, l);
    else
      gpt2_layer(ex, l);
  }
  if (mtp_)  // each position's final state, for the MTP module (mtp_rows, mtp_draft)
    per_token(ctx, n, [&](int64_t t) { std::copy(a_.x + t * C, a_.x + (t + 1) * C, kv_->hidden(seq[t], pos[t])); });
  // Final norm and classifier, for the wanted rows (packed into the first rows of xb).
  int64_t n_out = 0;
  out_rows_.resize(size_t(max_batch_));
  for (int64_t t = 0; t < n; ++t)
    if (!want || want[t]) out_rows_[size_t(n_out++)] = t;
  if (n_out > 0 && !out) fail("forward: rows want logits but no output buffer was given");
  if (n_out > 0) logits_rows(ctx, n_out, out);
  if (mtp_) mtp_rows(ctx, tokens, pos, seq, n);
}

void Model::logits_rows(KernelContext& ctx, int64_t n_out, float* out) {
  const auto& c = w_.cfg;
  const int64_t C = c.dim;
  per_token(ctx, n_out, [&](int64_t i) {
    const int64_t t = out_rows_[size_t(i)];
    if (c.arch == Arch::Llama)
      ops::rmsnorm(ctx.isa, a_.xb + i * C, a_.x + t * C, w_.out_norm.f32(), C, c.norm_eps);
    else
      ops::layernorm(a_.xb + i * C, a_.x + t * C, w_.out_norm.f32(), w_.out_norm_b.f32(), C, c.norm_eps);
  });
  matmul(ctx, w_.output, a_.xb, n_out, out);
  if (c.final_softcap > 0.f) ops::softcap(out, n_out * c.vocab_size, c.final_softcap);
}

void Model::prep_heads(int64_t l, int32_t seq, int64_t pos, float* q, float* k, float* v, int64_t h0, int64_t h1) {
  const auto& c = w_.cfg;
  const auto& L = w_.layers[size_t(l)];
  const int64_t hd = c.cache_k_dim(), group = c.n_heads / c.cache_kv_heads();
  const bool llama = c.arch == Arch::Llama;  // GPT-2: no QK-norm, no RoPE
  const int64_t nr = c.rope_dims();  // RoPE on each head's last nr dims (all of them but MLA's)
  const float* cr = llama ? rope_cos_.data() + pos * (nr / 2) : nullptr;
  const float* sr = llama ? rope_sin_.data() + pos * (nr / 2) : nullptr;
  // The projections' biases are in q / k / v already (linear()).
  const auto head = [&](float* x, const TensorView* norm) {
    if (!llama) return;
    if (c.qk_norm) ops::rmsnorm(x, x, norm->f32(), hd, c.norm_eps);  // RMSNorm over the head
    ops::rope_apply(x + (hd - nr), cr, sr, nr, c.rope_style);
  };
  if (q)
    for (int64_t h = h0 * group; h < h1 * group; ++h) head(q + h * hd, &L.q_norm);
  for (int64_t h = h0; h < h1; ++h) head(k + h * hd, &L.k_norm);
  const size_t at = size_t(kv_->row(seq, pos, l)) * kv_->row_bytes() + dtype_row_bytes(kv_type_, h0 * hd);
  const int64_t cnt = (h1 - h0) * hd;
  const auto store = [&](const float* x, uint8_t* dst) {
    if (kv_type_ == DType::F32) std::copy(x, x + cnt, reinterpret_cast<float*>(dst));
    else quantize_row(kv_type_, x, dst, cnt);  // f16, or Q8_0 blocks (heads are whole blocks)
  };
  store(k + h0 * hd, kv_->k(l) + at);
  if (!c.cache_v_in_k()) store(v + h0 * hd, kv_->v(l) + at);  // MLA: the values are the keys' latent
}

DecodeAttnArgs Model::decode_attn_args(int64_t l, int32_t seq, int64_t pos, int64_t kvh, int64_t g0, int64_t G,
                                       const float* q, float* out, int rank) const {
  const auto& c = w_.cfg;
  const int64_t hd = c.cache_k_dim(), vd = c.cache_v_dim(), kvd = c.cache_kv_dim();
  const int64_t h = kvh * (c.n_heads / c.cache_kv_heads()) + g0;
  DecodeAttnArgs a;
  a.q = q + h * hd;
  a.q_stride = hd;
  a.G = G;
  a.hd = hd;
  a.vd = vd;
  a.k = kv_->k(l) + dtype_row_bytes(kv_type_, kvh * hd);
  a.v = kv_->v(l) + dtype_row_bytes(kv_type_, kvh * hd);  // MLA: the key rows (their first vd elements)
  a.kv = kv_type_;
  a.kv_stride = kvd;
  a.blocks = kv_->block_table(seq, l);
  a.block_size = kv_->block_size();
  a.n = pos + 1;  // causal: keys 0..pos
  a.start = c.layer(l).first_key(pos);  // a sliding window: only the last `window` of them
  a.scale = c.attention_scale();
  a.softcap = c.attn_softcap;
  a.scores = a_.scores + int64_t(rank) * score_floats();
  a.out = out + h * vd;
  a.out_stride = vd;
  return a;
}

// Causal attention of the chunk's n rows against the cache, which already holds
// their keys/values. q rows have stride q_stride; output into a_.att (n, q_dim).
// A run of kPrefillGemmRows or more rows of one sequence at consecutive
// positions (a prefill) runs as GEMMs; the other rows one at a time.
void Model::attention(KernelContext& ctx, int64_t l, int64_t n, const float* q, int64_t q_stride) {
  const auto& c = w_.cfg;
  if (c.layer(l).attn == AttnKind::Sparse) {  // a sparse pattern: each row over its visible keys
    const int nt = std::min(ctx.n_threads, max_threads_);
#pragma omp parallel for num_threads(nt) schedule(dynamic) if (n > 1)
    for (int64_t t = 0; t < n; ++t)
      attend_sparse(ctx.isa, l, cseq_[t], cpos_[t], q + t * q_stride, a_.att + t * c.cache_out_dim(), omp_get_thread_num(),
                    0, 1);
    return;
  }
  int64_t n_short = 0;
  short_rows_.resize(size_t(max_batch_));
  for (int64_t t0 = 0, t1; t0 < n; t0 = t1) {
    for (t1 = t0 + 1; t1 < n && cseq_[t1] == cseq_[t0] && cpos_[t1] == cpos_[t1 - 1] + 1;) ++t1;
    if (t1 - t0 >= kPrefillGemmRows) {
      prefill_attention(ctx, l, t0, t1 - t0, q, q_stride);
    } else {
      for (int64_t t = t0; t < t1; ++t) short_rows_[size_t(n_short++)] = t;
    }
  }
  if (n_short == 0) return;
  // Decode and short runs: per row and KV head, its group of query heads in one
  // kernel call (the keys and values are read once per group). With fewer
  // (row, KV head) pairs than threads (MQA decode) the groups are split.
  const int nt = std::min(ctx.n_threads, max_threads_);
  const int64_t nkv = c.cache_kv_heads(), group = c.n_heads / nkv;
  const int64_t pairs = n_short * nkv;
  const int64_t split = std::min<int64_t>(group, (nt + pairs - 1) / pairs);
  const int64_t sub = (group + split - 1) / split;  // query heads per item
  const int64_t items = pairs * split;
#pragma omp parallel for num_threads(nt) schedule(static)
  for (int64_t it = 0; it < items; ++it) {
    const int64_t t = short_rows_[size_t(it / (nkv * split))], kvh = it / split % nkv, g0 = it % split * sub;
    const DecodeAttnArgs a = decode_attn_args(l, cseq_[t], cpos_[t], kvh, g0, std::min(sub, group - g0),
                                              q + t * q_stride, a_.att + t * c.cache_out_dim(), omp_get_thread_num());
    attend_decode(ctx.isa, a);
  }
}

void Model::prefill_attention(KernelContext& ctx, int64_t l, int64_t t0, int64_t rows, const float* q,
                              int64_t q_stride) {
  const auto& c = w_.cfg;
  const int64_t hd = c.cache_k_dim(), vd = c.cache_v_dim(), kvd = c.cache_kv_dim();
  const int64_t group = c.n_heads / c.cache_kv_heads();
  const bool v_in_k = c.cache_v_in_k();  // MLA: the values are the first vd elements of the key rows
  const float scale = c.attention_scale();
  const int nt = std::min(ctx.n_threads, max_threads_);
  const int32_t seq = cseq_[t0];
  const int64_t pos = cpos_[t0], n_vis = pos + rows;  // keys [0, n_vis) of seq
  const LayerConfig& lc = c.layer(l);
  // Blocks of up to kQBlock query rows of one head against all the keys they may
  // see, as two single-threaded sgemm calls per task: S = Q K^T (the causal mask
  // applied row by row in the softmax), O = S V. The keys and values are read in
  // place when they are f32 rows consecutive in the pool (a sequence grown
  // alone), else first gathered (and widened from f16 or Q8_0) into a_.kv32.
  const float* K;
  const float* Vv;
  DecodeAttnArgs map;  // the sequence's block table, for its row mapping
  map.blocks = kv_->block_table(seq, l);
  map.block_size = kv_->block_size();
  // (A windowed layer's table has handed-back entries before the window: always gathered.)
  if (kv_type_ == DType::F32 && !kv_->windowed(l) && map.run_end(0, n_vis) == n_vis) {
    K = reinterpret_cast<const float*>(kv_->k(l)) + map.row(0) * kvd;
    Vv = v_in_k ? K : reinterpret_cast<const float*>(kv_->v(l)) + map.row(0) * kvd;
  } else {
    const int64_t rows_all = kv_->rows(l);
    const TensorView kh = make_view(kv_type_, {rows_all, kvd}, kv_->k(l)),
                     vh = make_view(kv_type_, {rows_all, kvd}, kv_->v(l));
    float* k32 = a_.kv32;
    float* v32 = a_.kv32 + n_ctx_ * kvd;
    const int64_t k0 = lc.first_key(pos);  // keys before a sliding window's start are never read
    per_token(ctx, n_vis - k0, [&](int64_t p) {
      dequantize_row(kh, map.row(k0 + p), k32 + (k0 + p) * kvd);
      if (!v_in_k) dequantize_row(vh, map.row(k0 + p), v32 + (k0 + p) * kvd);
    });
    K = k32, Vv = v_in_k ? k32 : v32;
  }
  // Each (query block, head) is one task of attend_tiles.
  const int64_t nb = (rows + kQBlock - 1) / kQBlock;
#pragma omp parallel for num_threads(nt) schedule(dynamic)
  for (int64_t it = 0; it < nb * c.n_heads; ++it) {
    const int64_t b = it / c.n_heads, h = it % c.n_heads, kvh = h / group;
    const int64_t r0 = b * kQBlock, nr = std::min(kQBlock, rows - r0);
    attend_tiles(ctx.isa, lc, pos + r0, nr, q + (t0 + r0) * q_stride + h * hd, q_stride, K + kvh * hd, kvd,
                 Vv + kvh * hd, kvd, hd, vd, scale, a_.att + (t0 + r0) * c.cache_out_dim() + h * vd, c.cache_out_dim(),
                 a_.scores + int64_t(omp_get_thread_num()) * score_floats());
  }
}

// FlashAttention's forward: each block of query rows meets the keys in tiles
// of kKTile; a row keeps its running max M and sum L, and its unnormalised
// output O is rescaled by exp(M_old - M_new) whenever the max grows, so the
// scores never exceed one (kQBlock, kKTile) tile per thread. Tiles wholly
// before a sliding window's start are never visited (cost O(rows x window)).
void Model::attend_tiles(Isa isa, const LayerConfig& lc, int64_t p0, int64_t nr, const float* qb, int64_t q_stride,
                         const float* K, int64_t k_stride, const float* Vv, int64_t v_stride, int64_t hd, int64_t vd,
                         float scale, float* out, int64_t out_stride, float* scratch) const {
  const int64_t kt = std::min(kKTile, n_ctx_), n_keys = p0 + nr;
  const float softcap = w_.cfg.attn_softcap;
  float* S = scratch;            // (nr, <= kt) one tile
  float* O = S + kQBlock * kt;   // (nr, vd) unnormalised output
  float* M = O + kQBlock * vd;   // (nr) running max
  float* L = M + kQBlock;        // (nr) running sum
  std::fill(O, O + nr * vd, 0.f);
  std::fill(M, M + nr, -INFINITY);
  std::fill(L, L + nr, 0.f);
  for (int64_t j0 = lc.first_key(p0); j0 < n_keys; j0 += kt) {
    const int64_t j1 = std::min(n_keys, j0 + kt), w = j1 - j0;
    sgemm(false, true, nr, w, hd, scale, qb, q_stride, K + j0 * k_stride, k_stride, 0.f, S, w);
    for (int64_t r = 0; r < nr; ++r) {  // row p sees keys [lo, p]: causal, and a sliding window's start
      const int64_t p = p0 + r, a = std::max(lc.first_key(p), j0) - j0, e = std::min(p + 1, j1) - j0;
      float* row = S + r * w;
      if (a >= e) {  // no key of this tile (its own keys all came before)
        std::fill(row, row + w, 0.f);
        if (j1 == n_keys)
          for (int64_t i = 0; i < vd; ++i) O[r * vd + i] /= L[r];
        continue;
      }
      std::fill(row, row + a, 0.f);
      const float m_old = M[r];
      const float sum = attend_online_row(isa, row + a, e - a, w - a, softcap, M[r]);
      float alpha = std::exp(m_old - M[r]);  // 0 on the row's first tile
      L[r] = L[r] * alpha + sum;
      if (j1 == n_keys) {  // the last tile: normalise P and O now (one tile = the plain softmax's bits)
        const float inv = 1.f / L[r];
        for (int64_t j = a; j < e; ++j) row[j] *= inv;
        alpha *= inv;
      }
      if (alpha != 1.f)
        for (int64_t i = 0; i < vd; ++i) O[r * vd + i] *= alpha;
    }
    sgemm(false, false, nr, vd, w, 1.f, S, w, Vv + j0 * v_stride, v_stride, 1.f, O, vd);  // O += P V
  }
  for (int64_t r = 0; r < nr; ++r) std::copy(O + r * vd, O + (r + 1) * vd, out + r * out_stride);
}

}  // namespace tessera
