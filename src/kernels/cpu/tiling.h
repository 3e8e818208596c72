// The loop over register tiles shared by the matrix-vector kernels. Included
// only by the per-ISA files; the lambdas passed in are local to each file, so
// every instantiation is too.
#pragma once
#include <cstdint>

namespace tessera::cpu {

// Weight rows per cache block: about 256 KiB of weights, so a block stays in
// L2 while every group of activation rows passes over it. A multiple of 4.
inline int64_t rows_per_cache_block(size_t row_bytes) {
  const int64_t r = int64_t((size_t(256) << 10) / (row_bytes ? row_bytes : 1));
  return r < 4 ? 4 : r & ~int64_t(3);
}

// Calls fn.template operator()<R>(n, m, c) for tiles of R (RMax or 1) weight
// rows starting at n and c <= CMax activation rows starting at m, covering
// weight rows [n0, n1) and activation rows [0, M), weight-row blocks outermost.
template <int RMax, int CMax, class Fn>
inline void for_each_tile(int64_t n0, int64_t n1, int64_t M, int64_t row_block, Fn&& fn) {
  for (int64_t b0 = n0; b0 < n1; b0 += row_block) {
    const int64_t b1 = n1 - b0 < row_block ? n1 : b0 + row_block;
    for (int64_t m = 0; m < M; m += CMax) {
      const int c = M - m < CMax ? int(M - m) : CMax;
      int64_t n = b0;
      for (; n + RMax <= b1; n += RMax) fn.template operator()<RMax>(n, m, c);
      for (; n < b1; ++n) fn.template operator()<1>(n, m, c);
    }
  }
}

}  // namespace tessera::cpu
