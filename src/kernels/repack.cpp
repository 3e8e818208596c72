#include "kernels/repack.h"

#include <cstring>

#include "core/fp16.h"

namespace tessera {

DType r4_type_of(DType t) {
  switch (t) {
    case DType::Q4_0: return DType::Q4_0_R4;
    case DType::Q8_0: return DType::Q8_0_R4;
    case DType::Q4_K: return DType::Q4_K_R4;
    case DType::Q5_K: return DType::Q5_K_R4;
    case DType::Q6_K: return DType::Q6_K_R4;
    case DType::IQ4_NL: return DType::IQ4_NL_R4;
    case DType::Q4_1: return DType::Q4_1_R4;
    case DType::Q5_0: return DType::Q5_0_R4;
    case DType::Q5_1: return DType::Q5_1_R4;
    default: return t;
  }
}

DType r4_file_type(DType t) {
  for (DType f : {DType::Q4_0, DType::Q8_0, DType::Q4_K, DType::Q5_K, DType::Q6_K, DType::IQ4_NL, DType::Q4_1,
                  DType::Q5_0, DType::Q5_1})
    if (r4_type_of(f) == t) return f;
  return t;
}

bool r4_is_k(DType t) { return t == DType::Q4_K_R4 || t == DType::Q5_K_R4 || t == DType::Q6_K_R4; }
bool r4_is_legacy(DType t) {
  return t == DType::IQ4_NL_R4 || t == DType::Q4_1_R4 || t == DType::Q5_0_R4 || t == DType::Q5_1_R4;
}

bool r4_applies(const TensorView& W, Isa isa) {
  const DType r = r4_type_of(W.dtype);
  if (isa != Isa::AVX512 || r == W.dtype || W.ndim != 2 || W.cols() <= 0 || W.rows() <= 0) return false;
  const int64_t K = W.cols();
  if (r4_is_k(r)) return K % kQKK == 0;
  return K % kQK == 0 && 512 * r4_groups(K) - K <= K / 8;
}

size_t r4_bytes(DType t, int64_t N, int64_t K) { return size_t((N + kR4Rows - 1) / kR4Rows) * r4_tile_bytes(t, K); }

namespace {
// Row n (blocks at row) group g of a Q4_0 / Q8_0 matrix of file type t into
// tile slot r: its blocks (those of a last partial group only) into their places.
void put_qgroup(DType t, int64_t K, const uint8_t* row, int64_t r, int64_t g, uint8_t* tile) {
  const bool q8 = t == DType::Q8_0;
  const int chunks = q8 ? 8 : 4;  // 4-byte chunks per block
  const size_t bb = dtype_block_bytes(t);
  uint8_t* qs = tile + r4_qs_offset(t, r, g);
  uint8_t* d = tile + r4_scales_offset(t, K, r, g);
  for (int64_t b = 0; b < kR4Blocks && (g * kR4Blocks + b) * kQK < K; ++b) {
    const uint8_t* blk = row + size_t(g * kR4Blocks + b) * bb;  // { f16 d; qs }
    for (int j = 0; j < chunks; ++j) {
      uint8_t c[4];
      std::memcpy(c, blk + 2 + 4 * j, 4);
      if (q8)
        for (uint8_t& v : c) v ^= 0x80;
      std::memcpy(qs + 64 * j + 4 * b, c, 4);
    }
    std::memcpy(d + 2 * b, blk, 2);
  }
}
// One K-quant super-block as unsigned quants and its scales: per sub-block of
// 32 (Q4_K / Q5_K: sc, m) or of 16 (Q6_K: sc as the bytes of int8 scales).
struct KElems {
  uint8_t q[kQKK];
  uint8_t sc[16], m[16];
  uint16_t d, dmin;
};

void k_elems(DType t, const uint8_t* blk, KElems& e) {
  if (t == DType::Q6_K) {
    const auto& b = *reinterpret_cast<const BlockQ6_K*>(blk);
    for (int x = 0; x < kQKK; ++x) {  // ref/dequant_ref.cpp's mapping
      const int hh = x / 128, u = x % 128 / 32, l = x % 32;
      const int lo = (b.ql[64 * hh + l + 32 * (u & 1)] >> (4 * (u >> 1))) & 0xf;
      e.q[x] = uint8_t(lo | ((b.qh[32 * hh + l] >> (2 * u)) & 3) << 4);
    }
    std::memcpy(e.sc, b.scales, 16);
    e.d = b.d;
    e.dmin = 0;
    return;
  }
  const bool q5 = t == DType::Q5_K;
  const auto& b4 = *reinterpret_cast<const BlockQ4_K*>(blk);
  const auto& b5 = *reinterpret_cast<const BlockQ5_K*>(blk);
  const uint8_t* scales = q5 ? b5.scales : b4.scales;
  const uint8_t* qs = q5 ? b5.qs : b4.qs;
  for (int sb = 0; sb < 8; ++sb) {
    k4_scale_min(sb, scales, e.sc[sb], e.m[sb]);
    for (int k = 0; k < 32; ++k) {
      int q = (qs[32 * (sb / 2) + k] >> (4 * (sb % 2))) & 0xf;
      if (q5) q |= ((b5.qh[k] >> sb) & 1) << 4;
      e.q[32 * sb + k] = uint8_t(q);
    }
  }
  e.d = q5 ? b5.d : b4.d;
  e.dmin = q5 ? b5.dmin : b4.dmin;
}

// Row n (blocks at row) group g of a K-quant matrix of file type t into tile slot r.
void put_kgroup(DType t, int64_t K, const uint8_t* row, int64_t r, int64_t g, uint8_t* tile) {
  KElems e[2] = {};  // a padding super-block past the row's end stays zero (scales 0)
  for (int bb = 0; bb < 2 && (2 * g + bb) * kQKK < K; ++bb) k_elems(t, row + size_t(2 * g + bb) * dtype_block_bytes(t), e[bb]);
  auto q = [&](int b, int k) { return e[b / 8].q[32 * (b % 8) + k]; };
  uint8_t* qs = tile + r4k_qs_offset(r, g);
  uint8_t* hi = tile + r4k_high_offset(t, K, r, g);
  uint8_t* sc = tile + r4k_scales_offset(t, K, r, g);
  for (int b = 0; b < 16; ++b)
    for (int i = 0; i < 4; ++i) {
      for (int j = 0; j < 4; ++j) qs[64 * j + 4 * b + i] = uint8_t((q(b, 4 * j + i) & 15) | (q(b, 16 + 4 * j + i) & 15) << 4);
      if (t == DType::Q5_K) {
        uint8_t v = 0;
        for (int j = 0; j < 4; ++j) v |= uint8_t(((q(b, 4 * j + i) >> 4) & 1) << j | ((q(b, 16 + 4 * j + i) >> 4) & 1) << (4 + j));
        hi[4 * b + i] = v;
      } else if (t == DType::Q6_K) {
        for (int h = 0; h < 2; ++h) {
          uint8_t v = 0;
          for (int u = 0; u < 4; ++u) v |= uint8_t(((q(b, 16 * h + 4 * u + i) >> 4) & 3) << (2 * u));
          hi[64 * h + 4 * b + i] = v;
        }
      }
    }
  for (int b = 0; b < 16; ++b) {
    const KElems& k = e[b / 8];
    const int sb = b % 8;
    if (t == DType::Q6_K) {
      sc[b] = k.sc[2 * sb];
      sc[16 + b] = k.sc[2 * sb + 1];
    } else {
      sc[b] = k.sc[sb];
      sc[16 + b] = k.m[sb];
    }
  }
  const uint16_t d[4] = {e[0].d, e[0].dmin, e[1].d, e[1].dmin}, d6[2] = {e[0].d, e[1].d};
  if (t == DType::Q6_K)
    std::memcpy(sc + 32, d6, sizeof(d6));
  else
    std::memcpy(sc + 32, d, sizeof(d));
}

// Row n (blocks at row) group g of a legacy block matrix of file type t into tile slot r.
void put_lgroup(DType t, int64_t K, const uint8_t* row, int64_t r, int64_t g, uint8_t* tile) {
  uint8_t* qs = tile + r4l_qs_offset(r, g);
  uint8_t* hi = tile + r4l_high_offset(t, K, r, g);
  uint8_t* sc = tile + r4l_scales_offset(t, K, r, g);
  const size_t bb = dtype_block_bytes(t);
  for (int64_t b = 0; b < kR4Blocks && (g * kR4Blocks + b) * kQK < K; ++b) {
    const uint8_t* blk = row + size_t(g * kR4Blocks + b) * bb;
    const uint8_t *q = nullptr, *qh = nullptr;
    uint16_t d = 0, m = 0;
    std::memcpy(&d, blk, 2);
    switch (t) {
      case DType::IQ4_NL: q = reinterpret_cast<const BlockIQ4_NL*>(blk)->qs; break;
      case DType::Q4_1: q = reinterpret_cast<const BlockQ4_1*>(blk)->qs, m = reinterpret_cast<const BlockQ4_1*>(blk)->m; break;
      case DType::Q5_0: q = reinterpret_cast<const BlockQ5_0*>(blk)->qs, qh = reinterpret_cast<const BlockQ5_0*>(blk)->qh; break;
      default:
        q = reinterpret_cast<const BlockQ5_1*>(blk)->qs, qh = reinterpret_cast<const BlockQ5_1*>(blk)->qh;
        m = reinterpret_cast<const BlockQ5_1*>(blk)->m;
    }
    for (int j = 0; j < 4; ++j) std::memcpy(qs + 64 * j + 4 * b, q + 4 * j, 4);
    if (qh) std::memcpy(hi + 4 * b, qh, 4);
    std::memcpy(sc + 2 * b, &d, 2);
    if (r4l_scale_bytes(t) == 64) std::memcpy(sc + 32 + 2 * b, &m, 2);
  }
}

}  // namespace

void r4l_dequantize_row(const TensorView& W, int64_t r, float* out) {
  const DType t = W.dtype;
  const int64_t K = W.cols(), tr = r % kR4Rows;
  const uint8_t* tile = static_cast<const uint8_t*>(W.data) + size_t(r / kR4Rows) * r4_tile_bytes(t, K);
  for (int64_t g = 0; g < r4_groups(K); ++g) {
    const uint8_t* qs = tile + r4l_qs_offset(tr, g);
    const uint8_t* hi = tile + r4l_high_offset(t, K, tr, g);
    const uint8_t* sc = tile + r4l_scales_offset(t, K, tr, g);
    for (int b = 0; b < 16 && g * 512 + 32 * b < K; ++b) {
      uint16_t dh, mh = 0;
      std::memcpy(&dh, sc + 2 * b, 2);
      if (r4l_scale_bytes(t) == 64) std::memcpy(&mh, sc + 32 + 2 * b, 2);
      const float d = f16_to_f32(dh), m = f16_to_f32(mh);
      uint32_t qh = 0;
      if (r4l_high_bytes(t)) std::memcpy(&qh, hi + 4 * b, 4);
      for (int k = 0; k < 32; ++k) {
        const int j = k % 16 / 4, i = k % 4, upper = k / 16;
        int q = (qs[64 * j + 4 * b + i] >> (4 * upper)) & 15;
        float x;
        if (t == DType::IQ4_NL_R4) {
          x = d * float(kIQ4NLValues[q]);
        } else {
          q |= int((qh >> k) & 1) << 4;
          x = t == DType::Q5_0_R4 ? d * float(q - 16) : d * float(q) + m;
        }
        out[g * 512 + 32 * b + k] = x;
      }
    }
  }
}

void r4k_dequantize_row(const TensorView& W, int64_t r, float* out) {
  const DType t = W.dtype;
  const int64_t K = W.cols(), tr = r % kR4Rows;
  const uint8_t* tile = static_cast<const uint8_t*>(W.data) + size_t(r / kR4Rows) * r4_tile_bytes(t, K);
  for (int64_t g = 0; g < r4_groups(K); ++g) {
    const uint8_t* qs = tile + r4k_qs_offset(tr, g);
    const uint8_t* hi = tile + r4k_high_offset(t, K, tr, g);
    const uint8_t* sc = tile + r4k_scales_offset(t, K, tr, g);
    uint16_t dh[4];
    std::memcpy(dh, sc + 32, t == DType::Q6_K_R4 ? 4 : 8);
    for (int b = 0; b < 16; ++b)
      for (int k = 0; k < 32; ++k) {
        const int j = k % 16 / 4, i = k % 4, upper = k / 16;
        int q = (qs[64 * j + 4 * b + i] >> (4 * upper)) & 15;
        float x;
        if (t == DType::Q6_K_R4) {
          q |= ((hi[64 * upper + 4 * b + i] >> (2 * j)) & 3) << 4;
          const float d = f16_to_f32(dh[b / 8]);
          x = d * float(int8_t(sc[16 * upper + b])) * float(q - 32);
        } else {
          if (t == DType::Q5_K_R4) q |= ((hi[4 * b + i] >> (4 * upper + j)) & 1) << 4;
          const float d = f16_to_f32(dh[2 * (b / 8)]), dmin = f16_to_f32(dh[2 * (b / 8) + 1]);
          x = d * float(sc[b]) * float(q) - dmin * float(sc[16 + b]);
        }
        if (g * 512 + 32 * b + k < K) out[g * 512 + 32 * b + k] = x;
      }
  }
}

void repack_r4(const TensorView& W, uint8_t* out, int threads) {
  const DType t = W.dtype;
  const DType rt = r4_type_of(t);
  const auto put = r4_is_k(rt) ? put_kgroup : r4_is_legacy(rt) ? put_lgroup : put_qgroup;
  const int64_t N = W.rows(), K = W.cols(), tiles = (N + kR4Rows - 1) / kR4Rows;
  const size_t tb = r4_tile_bytes(t, K);
#pragma omp parallel for schedule(static) num_threads(threads > 0 ? threads : 1)
  for (int64_t ti = 0; ti < tiles; ++ti) {
    uint8_t* tile = out + size_t(ti) * tb;
    std::memset(tile, 0, tb);  // padding rows and blocks: zero scales, so they compute to zero
    for (int64_t r = 0; r < kR4Rows && ti * kR4Rows + r < N; ++r)
      for (int64_t g = 0; g < r4_groups(K); ++g) put(t, K, static_cast<const uint8_t*>(W.row(ti * kR4Rows + r)), r, g, tile);
  }
}

}  // namespace tessera
