// The decode attention kernel (kernels/attention.h), written once over a vector
// traits type and instantiated by attend_avx2.cpp and attend_avx512.cpp, each
// compiled with its own flags. Include only from those files, inside their ISA
// namespace's anonymous namespace.
//
// Per query head: scores four positions at a time (NV vectors of q held in
// registers, one horizontal sum per position), the soft cap, a vectorised
// max-subtracted exp, then the weighted sum of the value rows with two
// accumulator sets. Against the per-position dot / axpy calls it replaced
// (a serial scalar sum each), 1B decode at position 256 spent ~10x less in attention.
// The including file provides <algorithm>, <cmath> and kernels/attention.h.
#pragma once

template <class V, bool F16>
inline typename V::reg attn_load(const void* base, int64_t i) {
  if constexpr (F16) return V::load_h(static_cast<const uint16_t*>(base) + i);
  else return V::load(static_cast<const float*>(base) + i);
}

template <class V, int NV, bool F16>
void attend_head(const tessera::DecodeAttnArgs& a, const float* q, float* o) {
  using R = typename V::reg;
  constexpr int W = V::W;
  const int64_t n = a.n, st = a.kv_stride;
  float* s = a.scores;
  R qv[NV];
  for (int v = 0; v < NV; ++v) qv[v] = V::load(q + W * v);
  int64_t j = 0;
  for (; j + 4 <= n; j += 4) {
    R acc[4];
    for (int r = 0; r < 4; ++r) acc[r] = V::mul(qv[0], attn_load<V, F16>(a.k, (j + r) * st));
    for (int v = 1; v < NV; ++v)
      for (int r = 0; r < 4; ++r) acc[r] = V::fmadd(qv[v], attn_load<V, F16>(a.k, (j + r) * st + W * v), acc[r]);
    for (int r = 0; r < 4; ++r) s[j + r] = V::reduce_add(acc[r]) * a.scale;
  }
  for (; j < n; ++j) {
    R acc = V::mul(qv[0], attn_load<V, F16>(a.k, j * st));
    for (int v = 1; v < NV; ++v) acc = V::fmadd(qv[v], attn_load<V, F16>(a.k, j * st + W * v), acc);
    s[j] = V::reduce_add(acc) * a.scale;
  }
  if (a.softcap > 0.f)
    for (j = 0; j < n; ++j) s[j] = a.softcap * std::tanh(s[j] / a.softcap);

  const int64_t nv = n / W * W;
  R mv = V::set1(-INFINITY);
  for (j = 0; j < nv; j += W) mv = V::max(mv, V::load(s + j));
  float mx = nv ? V::reduce_max(mv) : -INFINITY;
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
  const float inv = 1.f / sum;
  const R invv = V::set1(inv);
  for (j = 0; j < nv; j += W) V::store(s + j, V::mul(V::load(s + j), invv));
  for (j = nv; j < n; ++j) s[j] *= inv;

  R a0[NV], a1[NV];
  for (int v = 0; v < NV; ++v) a0[v] = a1[v] = V::zero();
  for (j = 0; j + 2 <= n; j += 2) {
    const R p0 = V::set1(s[j]), p1 = V::set1(s[j + 1]);
    for (int v = 0; v < NV; ++v) {
      a0[v] = V::fmadd(p0, attn_load<V, F16>(a.v, j * st + W * v), a0[v]);
      a1[v] = V::fmadd(p1, attn_load<V, F16>(a.v, (j + 1) * st + W * v), a1[v]);
    }
  }
  if (j < n) {
    const R p0 = V::set1(s[j]);
    for (int v = 0; v < NV; ++v) a0[v] = V::fmadd(p0, attn_load<V, F16>(a.v, j * st + W * v), a0[v]);
  }
  for (int v = 0; v < NV; ++v) V::store(o + W * v, V::add(a0[v], a1[v]));
}

template <class V, int NV>
void attend_heads(const tessera::DecodeAttnArgs& a) {
  for (int64_t g = 0; g < a.G; ++g) {
    const float* q = a.q + g * a.q_stride;
    float* o = a.out + g * a.out_stride;
    if (a.f16) attend_head<V, NV, true>(a, q, o);
    else attend_head<V, NV, false>(a, q, o);
  }
}

// Head sizes of 1..16 vectors; false for any other (the caller falls back to the reference).
template <class V, int NV = 1>
bool attend_dispatch(const tessera::DecodeAttnArgs& a) {
  if constexpr (NV > 16) {
    return false;
  } else {
    if (a.hd == int64_t(NV) * V::W) {
      attend_heads<V, NV>(a);
      return true;
    }
    return attend_dispatch<V, NV + 1>(a);
  }
}
