// Scalar reference kernels: the specification for every fast path.
#include <algorithm>
#include <cmath>
#include <cstring>
#include <vector>

#include "core/fp16.h"
#include "kernels/kernels.h"
#include "kernels/repack.h"

namespace tessera::ref {

void dequantize_row(const TensorView& W, int64_t r, float* out) {
  const int64_t K = W.cols();
  const uint8_t* p = W.row(r);
  switch (W.dtype) {
    case DType::F32: {
      const float* s = reinterpret_cast<const float*>(p);
      for (int64_t k = 0; k < K; ++k) out[k] = s[k];
      break;
    }
    case DType::F16: {
      const uint16_t* s = reinterpret_cast<const uint16_t*>(p);
      for (int64_t k = 0; k < K; ++k) out[k] = f16_to_f32(s[k]);
      break;
    }
    case DType::BF16: {
      const uint16_t* s = reinterpret_cast<const uint16_t*>(p);
      for (int64_t k = 0; k < K; ++k) out[k] = bf16_to_f32(s[k]);
      break;
    }
    case DType::Q8_0: {
      const BlockQ8_0* b = reinterpret_cast<const BlockQ8_0*>(p);
      for (int64_t i = 0; i < K / kQK; ++i) {
        const float d = f16_to_f32(b[i].d);
        for (int j = 0; j < kQK; ++j) out[i * kQK + j] = d * float(b[i].qs[j]);
      }
      break;
    }
    case DType::Q4_0: {
      const BlockQ4_0* b = reinterpret_cast<const BlockQ4_0*>(p);
      for (int64_t i = 0; i < K / kQK; ++i) {
        const float d = f16_to_f32(b[i].d);
        for (int j = 0; j < kQK / 2; ++j) {
          out[i * kQK + j] = d * float(int(b[i].qs[j] & 0x0f) - 8);
          out[i * kQK + j + kQK / 2] = d * float(int(b[i].qs[j] >> 4) - 8);
        }
      }
      break;
    }
    case DType::Q8_G: {
      const int8_t* q = reinterpret_cast<const int8_t*>(p);
      const int64_t base = r * K;
      for (int64_t k = 0; k < K; ++k) out[k] = float(q[k]) * W.scales[(base + k) / W.group];
      break;
    }
    case DType::Q4_0_R4:
    case DType::Q8_0_R4: {  // row r is row r % 4 of tile r / 4 (kernels/repack.h)
      const DType t = W.dtype;
      const uint8_t* tile = static_cast<const uint8_t*>(W.data) + size_t(r / kR4Rows) * r4_tile_bytes(t, K);
      const int64_t tr = r % kR4Rows;
      for (int64_t i = 0; i < K / kQK; ++i) {
        const int64_t g = i / kR4Blocks, b = i % kR4Blocks;
        uint16_t dh;
        std::memcpy(&dh, tile + r4_scales_offset(t, K, tr, g) + 2 * b, 2);
        const float d = f16_to_f32(dh);
        // byte k of the block's qs: chunk k / 4, position 4 b + k % 4
        auto qs = [&](int k) { return tile[r4_qs_offset(t, tr, g) + 64 * (k / 4) + 4 * b + k % 4]; };
        for (int j = 0; j < kQK / 2; ++j) {
          if (t == DType::Q4_0_R4) {
            out[i * kQK + j] = d * float(int(qs(j) & 0x0f) - 8);
            out[i * kQK + j + kQK / 2] = d * float(int(qs(j) >> 4) - 8);
          } else {  // stored as qs + 128
            out[i * kQK + j] = d * float(int(qs(j)) - 128);
            out[i * kQK + j + kQK / 2] = d * float(int(qs(j + kQK / 2)) - 128);
          }
        }
      }
      break;
    }
    case DType::Q4_K_R4:
    case DType::Q5_K_R4:
    case DType::Q6_K_R4: r4k_dequantize_row(W, r, out); break;
    case DType::IQ4_NL_R4:
    case DType::Q4_1_R4:
    case DType::Q5_0_R4:
    case DType::Q5_1_R4: r4l_dequantize_row(W, r, out); break;
    default:  // Q4_1 .. Q8_K (ref/dequant_ref.cpp)
      dequantize_blocks(W.dtype, p, K, out);
      break;
  }
}

// llama2.c's runq semantics for its int8 export: activations are quantized to
// int8 in groups of W.group (scale = max|x| / 127; ties round to even like the SIMD
// paths, where runq rounds them away from zero: real activations almost never tie),
// each group's integer dot product is scaled by both groups' scales.
void quantize_groups_q8(const float* x, int64_t n, int group, int8_t* q, float* s) {
  for (int64_t g = 0; g < n / group; ++g) {
    float amax = 0.f;
    for (int i = 0; i < group; ++i) amax = std::fmax(amax, std::fabs(x[g * group + i]));
    const float scale = amax / 127.f;
    s[g] = scale;
    for (int i = 0; i < group; ++i)
      q[g * group + i] = scale == 0.f ? int8_t(0) : int8_t(std::nearbyint(x[g * group + i] / scale));
  }
}

static void matmul_q8_g(const TensorView& W, const float* X, int64_t M, float* Y) {
  const int64_t N = W.rows(), K = W.cols();
  const int G = W.group;
  std::vector<int8_t> qx(static_cast<size_t>(K));
  std::vector<float> sx(static_cast<size_t>(K / G));
  for (int64_t m = 0; m < M; ++m) {
    quantize_groups_q8(X + m * K, K, G, qx.data(), sx.data());
    for (int64_t n = 0; n < N; ++n) {
      const int8_t* qw = reinterpret_cast<const int8_t*>(W.row(n));
      const float* sw = W.scales + n * K / G;
      float acc = 0.f;
      for (int64_t g = 0; g < K / G; ++g) {
        int32_t iv = 0;
        for (int i = 0; i < G; ++i) iv += int32_t(qx[size_t(g * G + i)]) * int32_t(qw[g * G + i]);
        acc += float(iv) * sw[g] * sx[size_t(g)];
      }
      Y[m * N + n] = acc;
    }
  }
}

void matmul(const TensorView& W, const float* X, int64_t M, float* Y) {
  if (W.dtype == DType::Q8_G) return matmul_q8_g(W, X, M, Y);
  const int64_t N = W.rows(), K = W.cols();
  std::vector<float> w(static_cast<size_t>(K));
  for (int64_t n = 0; n < N; ++n) {
    ref::dequantize_row(W, n, w.data());
    for (int64_t m = 0; m < M; ++m) {
      const float* x = X + m * K;
      float acc = 0.f;
      for (int64_t k = 0; k < K; ++k) acc += w[k] * x[k];
      Y[m * N + n] = acc;
    }
  }
}

void quantize_row_q8_0(const float* x, BlockQ8_0* y, int64_t n) {
  for (int64_t i = 0; i < n / kQK; ++i) {
    float amax = 0.f;
    for (int j = 0; j < kQK; ++j) amax = std::fmax(amax, std::fabs(x[i * kQK + j]));
    const float d = amax / 127.f;
    const float id = d != 0.f ? 1.f / d : 0.f;
    y[i].d = f32_to_f16(d);
    for (int j = 0; j < kQK; ++j) y[i].qs[j] = int8_t(std::lround(x[i * kQK + j] * id));
  }
}

void quantize_row_q4_0(const float* x, BlockQ4_0* y, int64_t n) {
  for (int64_t i = 0; i < n / kQK; ++i) {
    // llama.cpp: the scale maps the value of largest magnitude (with its sign) to -8.
    float amax = 0.f, maxv = 0.f;
    for (int j = 0; j < kQK; ++j) {
      const float v = x[i * kQK + j];
      if (std::fabs(v) > amax) {
        amax = std::fabs(v);
        maxv = v;
      }
    }
    const float d = maxv / -8.f;
    const float id = d != 0.f ? 1.f / d : 0.f;
    y[i].d = f32_to_f16(d);
    for (int j = 0; j < kQK / 2; ++j) {
      const float x0 = x[i * kQK + j] * id;
      const float x1 = x[i * kQK + kQK / 2 + j] * id;
      const int q0 = std::min(15, int(x0 + 8.5f));
      const int q1 = std::min(15, int(x1 + 8.5f));
      y[i].qs[j] = uint8_t(q0 | (q1 << 4));
    }
  }
}

}  // namespace tessera::ref
