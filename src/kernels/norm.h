// RMSNorm and LayerNorm rows of the training blocks, AVX-512. The scalar
// specification is the float instantiation of train::blk::rmsnorm_* /
// layernorm_* (the KernelsNorm test compares them); the scalar loops do not
// vectorise (their sums would need reassociation), these keep 16 partial sums.
#pragma once
#include <cstdint>

namespace tessera::cpu::avx512 {
// y(C) = x r w with r = (mean(x^2) + eps)^-1/2; returns r.
float rmsnorm_row(float* y, const float* x, const float* w, int64_t C, float eps);
// dx(C) (= or += when accumulate) r (dy w) - x r^3 / C sum(dy w x). dx may alias dy.
void rmsnorm_bwd_row(float* dx, const float* dy, const float* x, const float* w, float r, int64_t C, bool accumulate);
// dw[c] += sum over rows n of dy[n, c] x[n, c] rstd[n], for c in [c0, c1), rows in order.
void rmsnorm_dw(float* dw, const float* dy, const float* x, const float* rstd, int64_t N, int64_t C, int64_t c0,
                int64_t c1);
// LayerNorm: y(C) = (x - m) r w + b with m = mean(x), r = (var(x) + eps)^-1/2;
// returns r and writes m.
float layernorm_row(float* y, const float* x, const float* w, const float* b, int64_t C, float eps, float* mean);
// dx(C) (= or +=) r (dy w - mean(dy w) - xh mean(dy w xh)), xh = (x - m) r.
void layernorm_bwd_row(float* dx, const float* dy, const float* x, const float* w, float m, float r, int64_t C,
                       bool accumulate);
// dw[c] += sum_n dy[n, c] (x[n, c] - mean[n]) rstd[n] and db[c] += sum_n dy[n, c], c in [c0, c1), rows in order.
void layernorm_dwdb(float* dw, float* db, const float* dy, const float* x, const float* mean, const float* rstd,
                    int64_t N, int64_t C, int64_t c0, int64_t c1);
}  // namespace tessera::cpu::avx512
