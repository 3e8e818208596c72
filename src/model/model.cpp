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

namespace tessera {

namespace {
constexpr int64_t kQBlock = 64;  // query rows per prefill attention task
constexpr int64_t kPrefillGemmRows = 8;  // new tokens from which attention runs as GEMMs
}  // namespace

Model::Model(const Weights& w, const RunOptions& opt)
    : w_(w), kv_f16_(opt.kv_f16), persistent_team_(opt.persistent_team) {
  const auto& c = w.cfg;
  n_ctx_ = opt.n_ctx > 0 ? opt.n_ctx : c.max_seq_len;
  if (c.arch == Arch::GPT2 && n_ctx_ > c.max_seq_len)
    fail("context size ", n_ctx_, " exceeds the ", c.max_seq_len, " learned positions of this GPT-2 model");
  max_batch_ = std::max<int64_t>(1, std::min(opt.max_batch, n_ctx_));
  max_threads_ = opt.max_threads > 0 ? opt.max_threads : int(std::max(1u, std::thread::hardware_concurrency()));
  const int64_t B = max_batch_, C = c.dim, H = c.hidden_dim, V = c.vocab_size;
  const int64_t qw = c.arch == Arch::GPT2 ? 3 * C : c.q_dim();
  const int64_t sizes[] = {B * C, B * C, B * qw, B * c.kv_dim(), B * c.kv_dim(), B * c.q_dim(), B * H, B * H,
                           int64_t(max_threads_) * score_rows() * n_ctx_, B * V,
                           kv_f16_ && max_batch_ >= kPrefillGemmRows ? 2 * n_ctx_ * c.kv_dim() : 0};
  size_t total = 0;
  for (int64_t s : sizes) total += size_t(s + 15) / 16 * 16;  // keep each buffer 64-byte aligned
  const double kv = 2.0 * double(c.n_layers) * double(n_ctx_) * double(c.kv_dim()) * (kv_f16_ ? 2 : 4);
  require_memory(kv + 4.0 * double(total), "context " + std::to_string(n_ctx_) + ": the KV cache and buffers need",
                 "lower -c");
  arena_.assign(total, 0.f);  // zero-filled: pages are touched now
  float* p = arena_.data();
  float** slots[] = {&a_.x, &a_.xb, &a_.q, &a_.k, &a_.v, &a_.att, &a_.hb, &a_.hb2, &a_.scores, &a_.logits, &a_.kv32};
  for (size_t i = 0; i < std::size(slots); ++i) {
    *slots[i] = p;
    p += size_t(sizes[i] + 15) / 16 * 16;
  }
  if (c.arch == Arch::Llama) {
    rope_cos_.resize(size_t(n_ctx_ * c.head_dim / 2));
    rope_sin_.resize(rope_cos_.size());
    ops::rope_tables(rope_cos_.data(), rope_sin_.data(), n_ctx_, c.head_dim, c.rope_theta, c.rope_freq_div());
  }
  if (persistent_team_ && max_threads_ > 1) {
    team_act_stride_ = size_t(2 * C + H + 47) / 16 * 16;  // three 64-byte-aligned pieces
    team_act_.assign(size_t(max_threads_) * team_act_stride_, 0.f);
    team_scratch_stride_ = team_scratch_bytes(std::max({C, H, c.q_dim()}));
    team_scratch_.assign(size_t(max_threads_) * team_scratch_stride_, 0);
  }
  kv_bytes_ = size_t(2 * c.n_layers * n_ctx_ * c.kv_dim()) * (kv_f16_ ? 2 : 4);
  kv_.assign(kv_bytes_, 0);
}

int64_t Model::score_rows() const {
  return std::max(std::min(kQBlock, max_batch_), w_.cfg.n_heads / w_.cfg.n_kv_heads);
}

void Model::check(const int32_t* tokens, int64_t n, int64_t pos) const {
  if (n <= 0) fail("forward: no tokens");
  if (pos < 0 || pos + n > n_ctx_)
    fail("sequence of ", pos + n, " tokens exceeds the context size ", n_ctx_, " (-c)");
  for (int64_t i = 0; i < n; ++i)
    if (tokens[i] < 0 || tokens[i] >= w_.cfg.vocab_size)
      fail("token id ", tokens[i], " at position ", pos + i, " is outside the vocabulary (", w_.cfg.vocab_size, ")");
}

const float* Model::forward(KernelContext& ctx, const int32_t* tokens, int64_t n, int64_t pos) {
  check(tokens, n, pos);
  for (int64_t i = 0; i < n; i += max_batch_) {
    const int64_t m = std::min(max_batch_, n - i);
    chunk(ctx, tokens + i, m, pos + i, false, a_.logits);
  }
  return a_.logits;
}

void Model::forward_all(KernelContext& ctx, const int32_t* tokens, int64_t n, int64_t pos, float* out) {
  check(tokens, n, pos);
  for (int64_t i = 0; i < n; i += max_batch_) {
    const int64_t m = std::min(max_batch_, n - i);
    chunk(ctx, tokens + i, m, pos + i, true, out + i * w_.cfg.vocab_size);
  }
}

void Model::chunk(KernelContext& ctx, const int32_t* tokens, int64_t n, int64_t pos, bool all, float* out) {
  if (n == 1 && decodes_as_team(ctx)) return decode_team(ctx, tokens[0], pos, out);
  const auto& c = w_.cfg;
  const int64_t C = c.dim;
  // Embedding lookup: x(t) = E[token] (+ P[pos] for GPT-2).
  per_token(ctx, n, [&](int64_t t) {
    dequantize_row(w_.tok_embd, tokens[t], a_.x + t * C);
    if (c.arch == Arch::GPT2) {
      dequantize_row(w_.pos_embd, pos + t, a_.xb + t * C);
      ops::add(a_.x + t * C, a_.xb + t * C, C);
    }
  });
  for (int64_t l = 0; l < c.n_layers; ++l) {
    if (c.arch == Arch::Llama)
      llama_layer(ctx, l, n, pos);
    else
      gpt2_layer(ctx, l, n, pos);
  }
  // Final norm and classifier, for all rows or only the last.
  const int64_t first = all ? 0 : n - 1;
  per_token(ctx, n - first, [&](int64_t i) {
    const int64_t t = first + i;
    if (c.arch == Arch::Llama)
      ops::rmsnorm(a_.xb + t * C, a_.x + t * C, w_.out_norm.f32(), C, c.norm_eps);
    else
      ops::layernorm(a_.xb + t * C, a_.x + t * C, w_.out_norm.f32(), w_.out_norm_b.f32(), C, c.norm_eps);
  });
  matmul(ctx, w_.output, a_.xb + first * C, n - first, out);
  if (c.final_softcap > 0.f) ops::softcap(out, (n - first) * c.vocab_size, c.final_softcap);
}

void Model::add_bias(KernelContext& ctx, float* y, const TensorView& b, int64_t n, int64_t width) {
  if (b.empty()) return;
  per_token(ctx, n, [&](int64_t t) { ops::add(y + t * width, b.f32(), width); });
}

void Model::prep_heads(int64_t l, int64_t pos, float* q, float* k, float* v, int64_t h0, int64_t h1) {
  const auto& c = w_.cfg;
  const auto& L = w_.layers[size_t(l)];
  const int64_t hd = c.head_dim, group = c.n_heads / c.n_kv_heads, kvd = c.kv_dim();
  const bool llama = c.arch == Arch::Llama;  // GPT-2: one fused bias (q | k | v), no RoPE
  const float* cr = llama ? rope_cos_.data() + pos * (hd / 2) : nullptr;
  const float* sr = llama ? rope_sin_.data() + pos * (hd / 2) : nullptr;
  const auto bias = [&](const TensorView& b, int64_t part) -> const float* {
    if (llama) return b.empty() ? nullptr : b.f32();
    return L.bqkv.empty() ? nullptr : L.bqkv.f32() + part * c.dim;
  };
  const float *bq = bias(L.bq, 0), *bk = bias(L.bk, 1), *bv = bias(L.bv, 2);
  const auto head = [&](float* x, const float* b, const TensorView* norm, int64_t h) {
    if (b) ops::add(x, b + h * hd, hd);
    if (!norm || !llama) return;                                    // values, GPT-2: bias only
    if (c.qk_norm) ops::rmsnorm(x, x, norm->f32(), hd, c.norm_eps);  // RMSNorm over the head
    ops::rope_apply(x, cr, sr, hd, c.rope_style);
  };
  for (int64_t h = h0 * group; h < h1 * group; ++h) head(q + h * hd, bq, &L.q_norm, h);
  for (int64_t h = h0; h < h1; ++h) {
    head(k + h * hd, bk, &L.k_norm, h);
    head(v + h * hd, bv, nullptr, h);
  }
  const size_t es = kv_f16_ ? 2 : 4, at = (size_t(l) * size_t(n_ctx_) + size_t(pos)) * size_t(kvd) + size_t(h0 * hd);
  const int64_t cnt = (h1 - h0) * hd;
  uint8_t* kc = kv_.data() + at * es;
  uint8_t* vc = kc + kv_bytes_ / 2;
  const float* kt = k + h0 * hd;
  const float* vt = v + h0 * hd;
  if (kv_f16_) {
    auto* kd = reinterpret_cast<uint16_t*>(kc);
    auto* vd = reinterpret_cast<uint16_t*>(vc);
    for (int64_t i = 0; i < cnt; ++i) {
      kd[i] = f32_to_f16(kt[i]);
      vd[i] = f32_to_f16(vt[i]);
    }
  } else {
    std::copy(kt, kt + cnt, reinterpret_cast<float*>(kc));
    std::copy(vt, vt + cnt, reinterpret_cast<float*>(vc));
  }
}

DecodeAttnArgs Model::decode_attn_args(int64_t l, int64_t pos, int64_t kvh, int64_t g0, int64_t G, const float* q,
                                       float* out, int rank) const {
  const auto& c = w_.cfg;
  const int64_t hd = c.head_dim, kvd = c.kv_dim(), h = kvh * (c.n_heads / c.n_kv_heads) + g0;
  const size_t es = kv_f16_ ? 2 : 4;
  const uint8_t* kc = kv_.data() + size_t(l) * size_t(n_ctx_) * size_t(kvd) * es;
  DecodeAttnArgs a;
  a.q = q + h * hd;
  a.q_stride = hd;
  a.G = G;
  a.hd = hd;
  a.k = kc + size_t(kvh * hd) * es;
  a.v = kc + kv_bytes_ / 2 + size_t(kvh * hd) * es;
  a.f16 = kv_f16_;
  a.kv_stride = kvd;
  a.n = pos + 1;  // causal: keys 0..pos
  a.scale = 1.f / std::sqrt(float(hd));
  a.softcap = c.attn_softcap;
  a.scores = a_.scores + int64_t(rank) * score_rows() * n_ctx_;
  a.out = out + h * hd;
  a.out_stride = hd;
  return a;
}

// Causal attention of n new tokens (at positions pos..pos+n-1) against the cache,
// which already holds their keys/values. q rows have stride q_stride; output into a_.att (n, q_dim).
void Model::attention(KernelContext& ctx, int64_t l, int64_t n, int64_t pos, const float* q, int64_t q_stride) {
  const auto& c = w_.cfg;
  const int64_t hd = c.head_dim, kvd = c.kv_dim(), group = c.n_heads / c.n_kv_heads;
  const float scale = 1.f / std::sqrt(float(hd));
  const size_t es = kv_f16_ ? 2 : 4;
  const uint8_t* kc = kv_.data() + size_t(l) * size_t(n_ctx_) * size_t(kvd) * es;
  const uint8_t* vc = kc + kv_bytes_ / 2;
  const int nt = std::min(ctx.n_threads, max_threads_);
  if (n >= kPrefillGemmRows) {
    // Prefill: blocks of up to kQBlock query rows of one head against all the keys
    // they may see, as two single-threaded sgemm calls per task: S = Q K^T (the
    // causal mask applied row by row in the softmax), O = S V. An f16 cache's
    // visible keys and values are first widened to f32 (a_.kv32), once per layer.
    const auto* K = reinterpret_cast<const float*>(kc);
    const auto* Vv = reinterpret_cast<const float*>(vc);
    if (kv_f16_) {
      const TensorView kh = make_view(DType::F16, {n_ctx_, kvd}, kc), vh = make_view(DType::F16, {n_ctx_, kvd}, vc);
      float* k32 = a_.kv32;
      float* v32 = a_.kv32 + n_ctx_ * kvd;
      per_token(ctx, pos + n, [&](int64_t p) {
        dequantize_row(kh, p, k32 + p * kvd);
        dequantize_row(vh, p, v32 + p * kvd);
      });
      K = k32, Vv = v32;
    }
    const int64_t nb = (n + kQBlock - 1) / kQBlock;
#pragma omp parallel for num_threads(nt) schedule(dynamic)
    for (int64_t it = 0; it < nb * c.n_heads; ++it) {
      const int64_t b = it / c.n_heads, h = it % c.n_heads, kvh = h / group;
      const int64_t t0 = b * kQBlock, rows = std::min(kQBlock, n - t0), n_keys = pos + t0 + rows;
      float* S = a_.scores + int64_t(omp_get_thread_num()) * score_rows() * n_ctx_;  // (rows, n_keys)
      sgemm(false, true, rows, n_keys, hd, scale, q + t0 * q_stride + h * hd, q_stride, K + kvh * hd, kvd, 0.f, S,
            n_keys);
      for (int64_t r = 0; r < rows; ++r)
        attend_softmax_row(ctx.isa, S + r * n_keys, pos + t0 + r + 1, n_keys, c.attn_softcap);
      sgemm(false, false, rows, hd, n_keys, 1.f, S, n_keys, Vv + kvh * hd, kvd, 0.f, a_.att + t0 * c.q_dim() + h * hd,
            c.q_dim());
    }
    return;
  }
  // Decode and short prefills: per token and KV head, its group of query heads
  // in one kernel call (the keys and values are read once per group). With
  // fewer (token, KV head) pairs than threads (MQA decode) the groups are split.
  const int64_t pairs = n * c.n_kv_heads;
  const int64_t split = std::min<int64_t>(group, (nt + pairs - 1) / pairs);
  const int64_t sub = (group + split - 1) / split;  // query heads per item
  const int64_t items = pairs * split;
#pragma omp parallel for num_threads(nt) schedule(static)
  for (int64_t it = 0; it < items; ++it) {
    const int64_t t = it / (c.n_kv_heads * split), kvh = it / split % c.n_kv_heads, g0 = it % split * sub;
    const DecodeAttnArgs a = decode_attn_args(l, pos + t, kvh, g0, std::min(sub, group - g0), q + t * q_stride,
                                              a_.att + t * c.q_dim(), omp_get_thread_num());
    attend_decode(ctx.isa, a);
  }
}

}  // namespace tessera
