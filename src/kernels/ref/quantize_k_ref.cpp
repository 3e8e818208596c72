// Quantizers for the K-quants Q2_K .. Q6_K (tessera convert, synthetic
// weights, tests). The block layouts are llama.cpp's; the choice of scales
// follows the same idea as its reference quantizers (make_qkx2_quants /
// make_qx_quants): for each sub-block, try a small range of inverse scales,
// round, refit the scale (and min) by weighted least squares and keep the
// lowest weighted error; then quantize the sub-block scales against the
// super-block's f16 d (and dmin) and round the values again with the scales
// as stored. Not bit-identical to llama-quantize (its search differs in
// details), but the same kind of fit.
#include <algorithm>
#include <cmath>
#include <cstring>

#include "core/error.h"
#include "core/fp16.h"
#include "kernels/kernels.h"

namespace tessera::ref {

namespace {

// Round half away from zero, as lround, without the library call (|v| is small here).
int nearest(float v) { return int(v + (v >= 0.f ? 0.5f : -0.5f)); }
int clampi(float v, int lo, int hi) { return std::clamp(nearest(v), lo, hi); }
float f16_round(float v) { return f16_to_f32(f32_to_f16(v)); }

// x(n) ~= scale * q - mn with q in [0, nmax] and mn >= 0, weighted by w.
// Returns scale; sets *mn. (A min above 0 is clipped to 0, as llama.cpp's.)
float fit_asym(const float* x, const float* w, int n, int nmax, float* mn) {
  float lo = *std::min_element(x, x + n), hi = *std::max_element(x, x + n);
  lo = std::min(lo, 0.f);
  if (hi <= lo) {
    *mn = -lo;
    return 0.f;
  }
  float best_a = (hi - lo) / float(nmax), best_b = lo, best_err = INFINITY;
  for (int is = -1; is <= 20; ++is) {
    // is = -1: plain min / max; else inverse scales around nmax / range (llama.cpp: -1 + 0.1 is)
    const float iscale = is < 0 ? float(nmax) / (hi - lo) : (float(nmax) - 1.f + 0.1f * float(is)) / (hi - lo);
    double sw = 0, swl = 0, swl2 = 0, swx = 0, swlx = 0;
    for (int i = 0; i < n; ++i) {
      const double l = clampi(iscale * (x[i] - lo), 0, nmax);
      sw += w[i], swl += w[i] * l, swl2 += w[i] * l * l, swx += w[i] * x[i], swlx += w[i] * l * x[i];
    }
    const double D = sw * swl2 - swl * swl;
    if (D <= 0) continue;
    double a = (sw * swlx - swx * swl) / D, b = (swl2 * swx - swl * swlx) / D;
    if (b > 0) b = 0, a = swlx / swl2;  // the offset may only lower values
    if (a <= 0) continue;
    double err = 0;
    for (int i = 0; i < n; ++i) {
      const double l = clampi(float((x[i] - b) / a), 0, nmax), e = a * l + b - x[i];
      err += w[i] * e * e;
    }
    if (err < best_err) best_err = float(err), best_a = float(a), best_b = float(b);
  }
  *mn = -best_b;
  return best_a;
}

// x(n) ~= scale * q with q in [-nmax, nmax - 1], weighted by w (x^2). Returns
// scale (negative when the largest magnitude is positive, as llama.cpp's).
float fit_sym(const float* x, const float* w, int n, int nmax) {
  float big = 0.f;
  for (int i = 0; i < n; ++i)
    if (std::fabs(x[i]) > std::fabs(big)) big = x[i];
  if (big == 0.f) return 0.f;
  float best = -big / float(nmax), best_metric = -1.f;
  for (int is = -9; is <= 9; ++is) {
    const float iscale = -(float(nmax) + 0.1f * float(is)) / big;
    double sumlx = 0, suml2 = 0;
    for (int i = 0; i < n; ++i) {
      const int l = clampi(iscale * x[i], -nmax, nmax - 1);
      sumlx += w[i] * x[i] * l, suml2 += w[i] * double(l) * l;
    }
    if (suml2 > 0 && sumlx * sumlx / suml2 > best_metric) best_metric = float(sumlx * sumlx / suml2), best = float(sumlx / suml2);
  }
  return best;
}

// Weights of the asymmetric fits (llama.cpp: the mean magnitude plus |x|) and of the symmetric ones (x^2).
void weights_abs(const float* x, int n, float* w) {
  double s = 0;
  for (int i = 0; i < n; ++i) s += double(x[i]) * x[i];
  const float av = float(std::sqrt(s / n));
  for (int i = 0; i < n; ++i) w[i] = av + std::fabs(x[i]);
}
void weights_sq(const float* x, int n, float* w) {
  for (int i = 0; i < n; ++i) w[i] = x[i] * x[i];
}

// Sub-block scales (and mins) of one super-block as unsigned integers of
// `bits` bits times f16 d / dmin; q[256] the values rounded with them.
struct AsymBlock {
  float d, dmin;
  uint8_t sc[16], m[16], q[kQKK];
};
void quantize_asym(const float* x, int sub, int nmax, int bits, AsymBlock& b) {
  const int ns = kQKK / sub, smax = (1 << bits) - 1;
  float scale[16], mn[16], w[32], maxs = 0.f, maxm = 0.f;
  for (int j = 0; j < ns; ++j) {
    weights_abs(x + sub * j, sub, w);
    scale[j] = fit_asym(x + sub * j, w, sub, nmax, &mn[j]);
    maxs = std::max(maxs, scale[j]);
    maxm = std::max(maxm, mn[j]);
  }
  b.d = f16_round(maxs / float(smax));
  b.dmin = f16_round(maxm / float(smax));
  for (int j = 0; j < ns; ++j) {
    b.sc[j] = uint8_t(b.d > 0.f ? clampi(scale[j] / b.d, 0, smax) : 0);
    b.m[j] = uint8_t(b.dmin > 0.f ? clampi(mn[j] / b.dmin, 0, smax) : 0);
    const float step = b.d * float(b.sc[j]), off = b.dmin * float(b.m[j]);
    for (int i = 0; i < sub; ++i)
      b.q[sub * j + i] = uint8_t(step > 0.f ? clampi((x[sub * j + i] + off) / step, 0, nmax) : 0);
  }
}

// Sub-blocks of 16 with signed integer scales in [-smax, smax - 1] times f16 d;
// q[256] in [-nmax, nmax - 1].
struct SymBlock {
  float d;
  int8_t sc[16];
  int8_t q[kQKK];
};
void quantize_sym(const float* x, int nmax, int smax, SymBlock& b) {
  float scale[16], w[16], big = 0.f;
  for (int j = 0; j < 16; ++j) {
    weights_sq(x + 16 * j, 16, w);
    scale[j] = fit_sym(x + 16 * j, w, 16, nmax);
    if (std::fabs(scale[j]) > std::fabs(big)) big = scale[j];
  }
  b.d = big != 0.f ? f16_round(big / -float(smax)) : 0.f;
  for (int j = 0; j < 16; ++j) {
    b.sc[j] = int8_t(b.d != 0.f ? clampi(scale[j] / b.d, -smax, smax - 1) : 0);
    const float step = b.d * float(b.sc[j]);
    for (int i = 0; i < 16; ++i)
      b.q[16 * j + i] = int8_t(step != 0.f ? clampi(x[16 * j + i] / step, -nmax, nmax - 1) : 0);
  }
}

void q2_k(const float* x, BlockQ2_K* y, int64_t nb) {
  for (int64_t i = 0; i < nb; ++i, x += kQKK) {
    AsymBlock b;
    quantize_asym(x, 16, 3, 4, b);
    y[i].d = f32_to_f16(b.d);
    y[i].dmin = f32_to_f16(b.dmin);
    for (int g = 0; g < 16; ++g) y[i].scales[g] = uint8_t(b.sc[g] | (b.m[g] << 4));
    std::memset(y[i].qs, 0, sizeof(y[i].qs));
    for (int e = 0; e < kQKK; ++e) {  // e = 128 hh + 32 j + l: bits 2 j of qs[32 hh + l]
      const int hh = e / 128, j = e % 128 / 32, l = e % 32;
      y[i].qs[32 * hh + l] |= uint8_t(b.q[e] << (2 * j));
    }
  }
}

void q3_k(const float* x, BlockQ3_K* y, int64_t nb) {
  for (int64_t i = 0; i < nb; ++i, x += kQKK) {
    SymBlock b;
    quantize_sym(x, 4, 32, b);
    y[i].d = f32_to_f16(b.d);
    std::memset(y[i].scales, 0, sizeof(y[i].scales));
    for (int g = 0; g < 16; ++g) {  // the packing k3_scales reads, biased by 32
      const int s = b.sc[g] + 32;
      y[i].scales[g % 8] |= uint8_t((s & 0xf) << (4 * (g / 8)));
      y[i].scales[8 + g % 4] |= uint8_t((s >> 4) << (2 * (g / 4)));
    }
    std::memset(y[i].qs, 0, sizeof(y[i].qs));
    std::memset(y[i].hmask, 0, sizeof(y[i].hmask));
    for (int e = 0; e < kQKK; ++e) {  // q + 4 in 0..7: low 2 bits in qs, bit 2 in hmask
      const int hh = e / 128, j = e % 128 / 32, l = e % 32, u = b.q[e] + 4;
      y[i].qs[32 * hh + l] |= uint8_t((u & 3) << (2 * j));
      y[i].hmask[l] |= uint8_t((u >> 2) << (4 * hh + j));
    }
  }
}

// Q4_K / Q5_K (qh null for Q4_K): sub-block 2 p + u is nibble u of qs[32 p ..],
// the fifth bit bit 2 p + u of qh; scales and mins 6-bit, packed as k4_scale_min reads them.
void q45_k(const float* x, uint16_t& d, uint16_t& dmin, uint8_t* scales, uint8_t* qs, uint8_t* qh) {
  AsymBlock b;
  quantize_asym(x, 32, qh ? 31 : 15, 6, b);
  d = f32_to_f16(b.d);
  dmin = f32_to_f16(b.dmin);
  for (int j = 0; j < 4; ++j) {
    scales[j] = uint8_t(b.sc[j] | ((b.sc[j + 4] >> 4) << 6));
    scales[j + 4] = uint8_t(b.m[j] | ((b.m[j + 4] >> 4) << 6));
    scales[j + 8] = uint8_t((b.sc[j + 4] & 0xf) | ((b.m[j + 4] & 0xf) << 4));
  }
  if (qh) std::memset(qh, 0, kQKK / 8);
  for (int p = 0; p < 4; ++p)
    for (int l = 0; l < 32; ++l) {
      const uint8_t q0 = b.q[64 * p + l], q1 = b.q[64 * p + 32 + l];
      qs[32 * p + l] = uint8_t((q0 & 0xf) | ((q1 & 0xf) << 4));
      if (qh) qh[l] |= uint8_t(((q0 >> 4) << (2 * p)) | ((q1 >> 4) << (2 * p + 1)));
    }
}

void q6_k(const float* x, BlockQ6_K* y, int64_t nb) {
  for (int64_t i = 0; i < nb; ++i, x += kQKK) {
    SymBlock b;
    quantize_sym(x, 32, 128, b);
    y[i].d = f32_to_f16(b.d);
    std::memcpy(y[i].scales, b.sc, 16);
    uint8_t q[kQKK];
    for (int e = 0; e < kQKK; ++e) q[e] = uint8_t(b.q[e] + 32);
    for (int hh = 0; hh < 2; ++hh)  // the packing ref/dequant_ref.cpp reads
      for (int l = 0; l < 32; ++l) {
        const uint8_t* v = q + 128 * hh;
        y[i].ql[64 * hh + l] = uint8_t((v[l] & 0xf) | ((v[l + 64] & 0xf) << 4));
        y[i].ql[64 * hh + l + 32] = uint8_t((v[l + 32] & 0xf) | ((v[l + 96] & 0xf) << 4));
        y[i].qh[32 * hh + l] =
            uint8_t((v[l] >> 4) | ((v[l + 32] >> 4) << 2) | ((v[l + 64] >> 4) << 4) | ((v[l + 96] >> 4) << 6));
      }
  }
}

}  // namespace

void quantize_blocks(DType t, const float* x, void* out, int64_t n) {
  const int64_t nb = n / dtype_block_elems(t);
  switch (t) {
    case DType::Q2_K: return q2_k(x, static_cast<BlockQ2_K*>(out), nb);
    case DType::Q3_K: return q3_k(x, static_cast<BlockQ3_K*>(out), nb);
    case DType::Q4_K:
      for (int64_t i = 0; i < nb; ++i) {
        auto& b = static_cast<BlockQ4_K*>(out)[i];
        q45_k(x + i * kQKK, b.d, b.dmin, b.scales, b.qs, nullptr);
      }
      return;
    case DType::Q5_K:
      for (int64_t i = 0; i < nb; ++i) {
        auto& b = static_cast<BlockQ5_K*>(out)[i];
        q45_k(x + i * kQKK, b.d, b.dmin, b.scales, b.qs, b.qh);
      }
      return;
    case DType::Q6_K: return q6_k(x, static_cast<BlockQ6_K*>(out), nb);
    case DType::Q4_1:
    case DType::Q5_0:
    case DType::Q5_1:
    case DType::IQ4_NL: return quantize_legacy(t, x, out, n);
    default: fail("quantize_blocks: no quantizer for ", dtype_name(t));
  }
}

}  // namespace tessera::ref
