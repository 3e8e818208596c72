// Decode attention: the query heads that share one KV head, against the cached
// keys and values of n positions (f32, f16 or Q8_0 cache). Used by Model::attention
// for decode steps and short prefills; longer prefills run as GEMMs there,
// with attend_softmax_row between them.
#pragma once
#include <algorithm>
#include <cstdint>

#include "kernels/kernels.h"

namespace tessera {

struct DecodeAttnArgs {
  int64_t row(int64_t j) const { return blocks ? int64_t(blocks[j / block_size]) * block_size + j % block_size : j; }
  // End of the run of positions from j0 (< j1) whose rows are consecutive (all of them without a block table).
  int64_t run_end(int64_t j0, int64_t j1) const {
    if (!blocks) return j1;
    int64_t b = j0 / block_size, e = (b + 1) * block_size;
    while (e < j1 && blocks[b + 1] == blocks[b] + 1) ++b, e += block_size;
    return std::min(e, j1);
  }

  const float* q = nullptr;  // (G, hd), row stride q_stride
  int64_t q_stride = 0;
  int64_t G = 1, hd = 0;
  // Value elements per head (0: hd). MLA's absorbed form reads its values as the
  // first vd elements of the key rows (v == k, vd < hd).
  int64_t vd = 0;
  int64_t v_dim() const { return vd > 0 ? vd : hd; }
  const void* k = nullptr;   // position j of this KV head at k + j * kv_stride elements (bytes: kv_bytes), (n, hd)
  const void* v = nullptr;   // the same for values, (n, v_dim())
  DType kv = DType::F32;     // cache elements: F32, F16, or Q8_0 blocks of 32 (hd a multiple of 32)
  int64_t kv_stride = 0;     // elements between consecutive rows (Q8_0: a multiple of 32)
  // Paged cache (model/kv_cache.h): position j is row blocks[j / block_size] *
  // block_size + j % block_size; null: position j is row j.
  const int32_t* blocks = nullptr;
  int64_t block_size = 0;
  int64_t n = 0;             // positions (>= 1)
  // Bytes of `elems` elements of the cache (Q8_0: whole blocks of 34 bytes).
  int64_t kv_bytes(int64_t elems) const { return int64_t(dtype_row_bytes(kv, elems)); }
  int64_t start = 0;         // first position attended (a sliding window); keys [start, n)
  float scale = 1.f;         // applied to q . k before the soft cap and the softmax
  float softcap = 0.f;       // > 0: s = softcap * tanh(s / softcap)
  float* scores = nullptr;   // scratch, G * n floats
  float* lse = nullptr;      // optional (G): each head's log-sum-exp of its capped scores (split-K merging)
  float* out = nullptr;      // (G, v_dim()), row stride out_stride
  int64_t out_stride = 0;
};

// out[g] = sum_j softmax_j(cap(scale q[g] . k_j)) v_j over j in [start, n), for each of the G heads.
// SIMD where the ISA has a kernel for these head sizes (hd == vd, a multiple of
// the vector width up to 16 vectors; or both multiples of 4 vectors, taken in
// slices of 4: MLA's 576 / 512), else the scalar reference.
void attend_decode(Isa isa, const DecodeAttnArgs& a);

// One causal row of a prefill's score matrix, in place: s[0, n) =
// softmax(cap(s[0, n))) (n >= 1; softcap > 0 applies cap(x) = softcap tanh(x / softcap)),
// s[n, n_zero) = 0. SIMD with a polynomial exp where the ISA has one.
void attend_softmax_row(Isa isa, float* s, int64_t n, int64_t n_zero, float softcap);

// One key tile of an online (FlashAttention) softmax row: with m the running
// max of the row's earlier tiles (-inf before the first), s[0, n) =
// exp(cap(s) - m') in place where m' = max(m, max cap(s[0, n))); m = m';
// s[n, n_zero) = 0. Returns sum s[0, n). The caller rescales what it
// accumulated before by exp(m - m').
float attend_online_row(Isa isa, float* s, int64_t n, int64_t n_zero, float softcap, float& m);

// Merges two attentions of one query over disjoint key sets: (v1, s1) and (v2, s2)
// with s = log sum exp of the scores and v the softmax-weighted values (hd).
// v1 = exp(s1 - s) v1 + exp(s2 - s) v2, s1 = s = logaddexp(s1, s2). An empty set
// has s = -inf (two empty sets leave v1 as it is).
void merge_attention(float* v1, float& s1, const float* v2, float s2, int64_t hd);

namespace ref {
// The specification: scores in order, max-subtracted softmax normalised before
// the weighted sum of the values in order.
void attend_decode(const DecodeAttnArgs& a);
// The same softmax as attend_decode's, on one row; returns its log-sum-exp.
float attend_softmax_row(float* s, int64_t n, int64_t n_zero, float softcap);
float attend_online_row(float* s, int64_t n, int64_t n_zero, float softcap, float& m);
}  // namespace ref

}  // namespace tessera
