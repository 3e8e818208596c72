#include "kernels/repack.h"

#include <cstring>

namespace tessera {

bool q4_0_r4_applies(const TensorView& W, Isa isa) {
  return isa == Isa::AVX512 && W.dtype == DType::Q4_0 && W.ndim == 2 && W.cols() > 0 && W.cols() % 512 == 0 &&
         W.rows() > 0;
}

size_t q4_0_r4_bytes(int64_t N, int64_t K) {
  return size_t((N + kR4Rows - 1) / kR4Rows) * r4_tile_bytes(K);
}

void repack_q4_0_r4(const TensorView& W, uint8_t* out, int threads) {
  const int64_t N = W.rows(), K = W.cols(), G = K / 512, tiles = (N + kR4Rows - 1) / kR4Rows;
  const size_t tb = r4_tile_bytes(K);
#pragma omp parallel for schedule(static) num_threads(threads > 0 ? threads : 1)
  for (int64_t t = 0; t < tiles; ++t) {
    uint8_t* tile = out + size_t(t) * tb;
    for (int64_t r = 0; r < kR4Rows; ++r) {
      const int64_t n = t * kR4Rows + r;
      for (int64_t g = 0; g < G; ++g) {
        uint8_t* qs = tile + r4_qs_offset(r, g);
        uint8_t* d = tile + r4_scales_offset(K, r, g);
        if (n >= N) {  // padding row
          std::memset(qs, 0, kR4GroupQs);
          std::memset(d, 0, kR4Blocks * 2);
          continue;
        }
        const auto* blk = reinterpret_cast<const BlockQ4_0*>(W.row(n)) + g * kR4Blocks;
        for (int64_t b = 0; b < kR4Blocks; ++b) {
          for (int j = 0; j < 4; ++j) std::memcpy(qs + 64 * j + 4 * b, blk[b].qs + 4 * j, 4);
          std::memcpy(d + 2 * b, &blk[b].d, 2);
        }
      }
    }
  }
}

}  // namespace tessera
