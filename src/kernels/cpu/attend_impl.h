// The decode attention kernel (kernels/attention.h), written once over a vector
// traits type and instantiated by attend_avx2.cpp and attend_avx512.cpp, each
// compiled with its own flags. Include only from those files, inside their ISA
// namespace's anonymous namespace.
//
// Scores four positions at a time (the queries of up to four heads held in
// registers, each key vector loaded once for all of them, transposing add
// trees), the soft cap, a vectorised max-subtracted exp, then the weighted
// sum of the value rows, each value vector loaded once for up to four heads'
// accumulators. Loads, not FMAs, bounded the one-head-at-a-time kernel this
// replaced (docs/attention.md, Decode): sharing them made it 2.7-4.2x faster.
// The including file provides <algorithm>, <cmath> and kernels/attention.h.
#pragma once

// Cache element kinds: f32, f16, or Q8_0 blocks (34 bytes per 32 values: f16 d, int8 q).
enum KvKind { kF32, kF16, kQ8 };

// W elements from element i of a row run at base (i a multiple of W; a Q8_0 load stays in one block).
template <class V, int KV>
inline typename V::reg attn_load(const void* base, int64_t i) {
  if constexpr (KV == kF16) {
    return V::load_h(static_cast<const uint16_t*>(base) + i);
  } else if constexpr (KV == kQ8) {
    const auto* b = static_cast<const tessera::BlockQ8_0*>(base) + i / tessera::kQK;
    return V::mul(V::load_i8(b->qs + i % tessera::kQK), V::set1(_cvtsh_ss(b->d)));
  } else {
    return V::load(static_cast<const float*>(base) + i);
  }
}

// Positions per block: a block's keys (then values) are read from memory once
// and stay in L1 while every head of the group uses them (16 KiB at head size 64, f32).
constexpr int64_t kAttnBlock = 64;

// Element offset of position j's row from k / v, for positions in one run.
inline const void* attn_row(const tessera::DecodeAttnArgs& a, const void* base, int64_t elems) {
  return static_cast<const uint8_t*>(base) + a.kv_bytes(elems);
}

// One tile of an online softmax: s[0, n) = exp(cap(s) - m') in place with
// m' = max(m, max cap(s)); m = m'; returns the sum of the new s.
template <class V>
float attend_online(float* s, int64_t n, float softcap, float& m) {
  using R = typename V::reg;
  constexpr int W = V::W;
  const int64_t nv = n / W * W;
  int64_t j;
  if (softcap > 0.f)
    for (j = 0; j < n; ++j) s[j] = softcap * std::tanh(s[j] / softcap);
  R mv = V::set1(m);
  for (j = 0; j < nv; j += W) mv = V::max(mv, V::load(s + j));
  float mx = nv ? std::max(m, V::reduce_max(mv)) : m;
  for (j = nv; j < n; ++j) mx = std::max(mx, s[j]);
  const R mxv = V::set1(mx);
  R sv = V::zero();
  for (j = 0; j < nv; j += W) {
    const R e = V::exp(V::sub(V::load(s + j), mxv));
    V::store(s + j, e);
    sv = V::add(sv, e);
  }
  float sum = V::reduce_add(sv);
  for (j = nv; j < n; ++j) sum += (s[j] = std::exp(s[j] - mx));
  m = mx;
  return sum;
}

// s[0, n) = softmax(cap(s)) in place; returns the log-sum-exp of cap(s).
template <class V>
float attend_softmax(float* s, int64_t n, float softcap) {
  using R = typename V::reg;
  constexpr int W = V::W;
  const int64_t nv = n / W * W;
  float mx = -INFINITY;
  const float sum = attend_online<V>(s, n, softcap, mx);
  const float inv = 1.f / sum;
  const R invv = V::set1(inv);
  int64_t j;
  for (j = 0; j < nv; j += W) V::store(s + j, V::mul(V::load(s + j), invv));
  for (j = nv; j < n; ++j) s[j] *= inv;
  return mx + std::log(sum);
}

// Heads the fused kernels take per pass: GB x NV registers of queries (scores)
// or accumulators (values), at most half the register file (32 vector
// registers at 16 lanes, 16 at 8).
template <class V, int NV>
constexpr int fuse_heads() {
  constexpr int half = V::W == 16 ? 16 : 8;
  return 4 * NV <= half ? 4 : 2 * NV <= half ? 2 : 1;
}

// Scores of GB heads (head g's query at q + g * q_stride, its scores at
// s + g * sn, indexed by position) for positions [j0, j1) of one run (position
// j0's row at kb). Each key vector is loaded once for the GB heads: a key
// is read from cache once per group instead of once per head, the loads
// being what bounds the per-head kernel. Four positions per step: 4 x GB dot
// products, reduced by GB transposing add trees (4 / GB positions each), then
// transposed to four scores per head. A head's scores are bit-identical
// whatever GB is (the same products and add tree per position). ADD: added
// to s (a later slice of a head scored in slices of NV vectors).
template <class V, int NV, int KV, int GB, bool ADD>
void attend_scores_fused(const tessera::DecodeAttnArgs& a, const void* kb, const float* q, int64_t j0, int64_t j1,
                         float* s, int64_t sn) {
  using R = typename V::reg;
  constexpr int W = V::W, PP = 4 / GB;  // PP: positions per add tree
  const int64_t st = a.kv_stride;
  R qv[GB][NV];
#pragma GCC unroll 16
  for (int g = 0; g < GB; ++g)
#pragma GCC unroll 16
    for (int v = 0; v < NV; ++v) qv[g][v] = V::load(q + g * a.q_stride + W * v);
  const __m128 sc = _mm_set1_ps(a.scale);
  int64_t j = j0;
  for (; j + 4 <= j1; j += 4) {
    __m128 h[GB];  // tree t: lanes (position t * PP + r, head g) at r * GB + g
#pragma GCC unroll 4
    for (int t = 0; t < GB; ++t) {
      R acc[4];
#pragma GCC unroll 4
      for (int r = 0; r < PP; ++r) {
        const int64_t row = (j - j0 + t * PP + r) * st;
        const R k0 = attn_load<V, KV>(kb, row);
#pragma GCC unroll 4
        for (int g = 0; g < GB; ++g) acc[r * GB + g] = V::mul(qv[g][0], k0);
#pragma GCC unroll 16
        for (int v = 1; v < NV; ++v) {
          const R kv = attn_load<V, KV>(kb, row + W * v);
#pragma GCC unroll 4
          for (int g = 0; g < GB; ++g) acc[r * GB + g] = V::fmadd(qv[g][v], kv, acc[r * GB + g]);
        }
      }
      h[t] = _mm_mul_ps(V::hsum4(acc[0], acc[1], acc[2], acc[3]), sc);
    }
    const auto put = [&](float* d, __m128 x) { _mm_storeu_ps(d, ADD ? _mm_add_ps(_mm_loadu_ps(d), x) : x); };
    if constexpr (GB == 4) {  // h[r]: position r's four heads
      _MM_TRANSPOSE4_PS(h[0], h[1], h[2], h[3]);
#pragma GCC unroll 4
      for (int g = 0; g < 4; ++g) put(s + g * sn + j, h[g]);
    } else if constexpr (GB == 2) {  // h[t]: positions 2t, 2t + 1, heads 0, 1 each
      put(s + j, _mm_shuffle_ps(h[0], h[1], _MM_SHUFFLE(2, 0, 2, 0)));
      put(s + sn + j, _mm_shuffle_ps(h[0], h[1], _MM_SHUFFLE(3, 1, 3, 1)));
    } else {
      put(s + j, h[0]);
    }
  }
  for (; j < j1; ++j) {
    R acc[GB];
    const int64_t row = (j - j0) * st;
#pragma GCC unroll 4
    for (int g = 0; g < GB; ++g) acc[g] = V::mul(qv[g][0], attn_load<V, KV>(kb, row));
#pragma GCC unroll 16
    for (int v = 1; v < NV; ++v) {
      const R kv = attn_load<V, KV>(kb, row + W * v);
#pragma GCC unroll 4
      for (int g = 0; g < GB; ++g) acc[g] = V::fmadd(qv[g][v], kv, acc[g]);
    }
#pragma GCC unroll 4
    for (int g = 0; g < GB; ++g) {
      const float x = V::reduce_add(acc[g]) * a.scale;
      s[g * sn + j] = ADD ? s[g * sn + j] + x : x;
    }
  }
}

// o_g += sum over positions [j0, j1) of p_g[j] v_j for GB heads (head g's
// probabilities at p + g * pn, its output at o + g * os); the value rows of one
// run, position j0's at vb, each loaded once for the GB heads. One accumulator
// per head and vector, positions in order: a head's output is bit-identical
// whatever GB is.
template <class V, int NV, int KV, int GB>
void attend_values_fused(const tessera::DecodeAttnArgs& a, const void* vb, const float* p, int64_t pn, int64_t j0,
                         int64_t j1, float* o, int64_t os) {
  using R = typename V::reg;
  constexpr int W = V::W;
  const int64_t st = a.kv_stride;
  R acc[GB][NV];
#pragma GCC unroll 4
  for (int g = 0; g < GB; ++g)
#pragma GCC unroll 16
    for (int v = 0; v < NV; ++v) acc[g][v] = V::load(o + g * os + W * v);
  for (int64_t j = j0; j < j1; ++j) {
    R vv[NV];
#pragma GCC unroll 16
    for (int v = 0; v < NV; ++v) vv[v] = attn_load<V, KV>(vb, (j - j0) * st + W * v);
#pragma GCC unroll 4
    for (int g = 0; g < GB; ++g) {
      const R pg = V::set1(p[g * pn + j]);
#pragma GCC unroll 16
      for (int v = 0; v < NV; ++v) acc[g][v] = V::fmadd(pg, vv[v], acc[g][v]);
    }
  }
#pragma GCC unroll 4
  for (int g = 0; g < GB; ++g)
#pragma GCC unroll 16
    for (int v = 0; v < NV; ++v) V::store(o + g * os + W * v, acc[g][v]);
}

// The G heads, run by run of at most kAttnBlock positions (in a paged cache a
// run ends where the rows stop being consecutive): every head's scores
// (head g's in scores[g n, (g + 1) n), positions [start, n) only), the
// softmax, then the values. The heads go in passes of 4, 2 and 1 (as many as
// fuse_heads allows) that share each load; keys are scored in slices of NK
// vectors and values summed in slices of NV (one slice each when the head is
// at most 16 vectors).
template <class V, int NK, int NV, int KV>
void attend_group(const tessera::DecodeAttnArgs& a) {
  constexpr int GK = fuse_heads<V, NK>(), GV = fuse_heads<V, NV>();
  const int64_t n = a.n, vd = a.v_dim(), sk = int64_t(NK) * V::W, sv = int64_t(NV) * V::W;  // slice widths
  // Calls f.template operator()<c>(g) for each pass of c heads from head g.
  const auto passes = [&]<int GB>(auto&& f) {
    for (int64_t g = 0; g < a.G;) {
      const int64_t left = a.G - g;
      if constexpr (GB >= 4)
        if (left >= 4) {
          f.template operator()<4>(g);
          g += 4;
          continue;
        }
      if constexpr (GB >= 2)
        if (left >= 2) {
          f.template operator()<2>(g);
          g += 2;
          continue;
        }
      f.template operator()<1>(g);
      g += 1;
    }
  };
  for (int64_t j0 = a.start, j1; j0 < n; j0 = j1) {
    j1 = a.run_end(j0, std::min(n, j0 + kAttnBlock));
    const void* k = attn_row(a, a.k, a.row(j0) * a.kv_stride);
    passes.template operator()<GK>([&]<int C>(int64_t g) {
      const float* q = a.q + g * a.q_stride;
      attend_scores_fused<V, NK, KV, C, false>(a, k, q, j0, j1, a.scores + g * n, n);
      for (int64_t i = sk; i < a.hd; i += sk)
        attend_scores_fused<V, NK, KV, C, true>(a, attn_row(a, k, i), q + i, j0, j1, a.scores + g * n, n);
    });
  }
  for (int64_t g = 0; g < a.G; ++g) {
    const float lse = attend_softmax<V>(a.scores + g * n + a.start, n - a.start, a.softcap);
    if (a.lse) a.lse[g] = lse;
    std::fill(a.out + g * a.out_stride, a.out + g * a.out_stride + vd, 0.f);
  }
  for (int64_t j0 = a.start, j1; j0 < n; j0 = j1) {
    j1 = a.run_end(j0, std::min(n, j0 + kAttnBlock));
    const void* v = attn_row(a, a.v, a.row(j0) * a.kv_stride);
    passes.template operator()<GV>([&]<int C>(int64_t g) {
      for (int64_t i = 0; i < vd; i += sv)
        attend_values_fused<V, NV, KV, C>(a, attn_row(a, v, i), a.scores + g * n, n, j0, j1,
                                          a.out + g * a.out_stride + i, a.out_stride);
    });
  }
}

template <class V, int NK, int NV = NK>
void attend_heads(const tessera::DecodeAttnArgs& a) {
  if (a.kv == tessera::DType::F16) attend_group<V, NK, NV, kF16>(a);
  else if (a.kv == tessera::DType::Q8_0) attend_group<V, NK, NV, kQ8>(a);
  else attend_group<V, NK, NV, kF32>(a);
}

// Head sizes (hd == vd) of 1..16 vectors; or wider / unequal ones that are
// multiples of 4 vectors, in slices of 4 (all whole Q8_0 blocks; MLA's latent:
// keys 576 = 36 x 16, values 512), so that four heads share each load as at
// head size 64. False for any other (the caller falls back to the reference).
template <class V, int NV = 1>
bool attend_dispatch(const tessera::DecodeAttnArgs& a) {
  if constexpr (NV > 16) {
    constexpr int64_t sw = 4 * V::W;
    if (a.hd % sw != 0 || a.v_dim() % sw != 0) return false;
    attend_heads<V, 4>(a);
    return true;
  } else {
    if (a.hd == int64_t(NV) * V::W && a.v_dim() == a.hd) {
      attend_heads<V, NV>(a);
      return true;
    }
    return attend_dispatch<V, NV + 1>(a);
  }
}
