#include "kernels/repack.h"

#include <cstring>

namespace tessera {

DType r4_type_of(DType t) {
  return t == DType::Q4_0 ? DType::Q4_0_R4 : t == DType::Q8_0 ? DType::Q8_0_R4 : t;
}

bool r4_applies(const TensorView& W, Isa isa) {
  return isa == Isa::AVX512 && (W.dtype == DType::Q4_0 || W.dtype == DType::Q8_0) && W.ndim == 2 && W.cols() > 0 &&
         W.cols() % 512 == 0 && W.rows() > 0;
}

size_t r4_bytes(DType t, int64_t N, int64_t K) { return size_t((N + kR4Rows - 1) / kR4Rows) * r4_tile_bytes(t, K); }

namespace {
// Row n's group g (16 blocks) into its places in the tile.
template <class Block, bool Flip>
void put_group(const Block* blk, uint8_t* qs, uint8_t* d) {
  constexpr int kChunks = int(sizeof(blk->qs)) / 4;  // 4-byte chunks per block: 4 (Q4_0) or 8 (Q8_0)
  for (int64_t b = 0; b < kR4Blocks; ++b) {
    for (int j = 0; j < kChunks; ++j) {
      uint8_t c[4];
      std::memcpy(c, reinterpret_cast<const uint8_t*>(blk[b].qs) + 4 * j, 4);
      if (Flip)
        for (uint8_t& v : c) v ^= 0x80;
      std::memcpy(qs + 64 * j + 4 * b, c, 4);
    }
    std::memcpy(d + 2 * b, &blk[b].d, 2);
  }
}
}  // namespace

void repack_r4(const TensorView& W, uint8_t* out, int threads) {
  const DType t = W.dtype;
  const int64_t N = W.rows(), K = W.cols(), G = K / 512, tiles = (N + kR4Rows - 1) / kR4Rows;
  const size_t tb = r4_tile_bytes(t, K), gq = size_t(r4_group_qs(t));
#pragma omp parallel for schedule(static) num_threads(threads > 0 ? threads : 1)
  for (int64_t ti = 0; ti < tiles; ++ti) {
    uint8_t* tile = out + size_t(ti) * tb;
    for (int64_t r = 0; r < kR4Rows; ++r) {
      const int64_t n = ti * kR4Rows + r;
      for (int64_t g = 0; g < G; ++g) {
        uint8_t* qs = tile + r4_qs_offset(t, r, g);
        uint8_t* d = tile + r4_scales_offset(t, K, r, g);
        if (n >= N) {  // padding row: zero scales, so it computes to zero
          std::memset(qs, 0, gq);
          std::memset(d, 0, kR4Blocks * 2);
        } else if (t == DType::Q4_0) {
          put_group<BlockQ4_0, false>(reinterpret_cast<const BlockQ4_0*>(W.row(n)) + g * kR4Blocks, qs, d);
        } else {
          put_group<BlockQ8_0, true>(reinterpret_cast<const BlockQ8_0*>(W.row(n)) + g * kR4Blocks, qs, d);
        }
      }
    }
  }
}

}  // namespace tessera
