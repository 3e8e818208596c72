#include "kernels/team.h"

#include <immintrin.h>

namespace tessera {

void Team::barrier(int n) {
  if (n <= 1) return;
  // The generation cannot move before this thread arrives, so reading it first is safe.
  const uint32_t g = gen_.load(std::memory_order_acquire);
  if (arrived_.fetch_add(1, std::memory_order_acq_rel) == uint32_t(n - 1)) {
    arrived_.store(0, std::memory_order_relaxed);
    gen_.store(g + 1, std::memory_order_release);
    gen_.notify_all();  // a futex wake only when a thread went to sleep below
    return;
  }
  // 2500 pauses are ~50 us on this host (20 ns each): longer than a decode
  // step's imbalance at a barrier. Past that the partner is probably not
  // running (more threads than cores, or a busy machine): sleep on the
  // generation (a futex) instead of taking the core it needs.
  for (int spins = 0; spins < 2500; ++spins) {
    if (gen_.load(std::memory_order_acquire) != g) return;
    _mm_pause();
  }
  while (gen_.load(std::memory_order_acquire) == g) gen_.wait(g, std::memory_order_acquire);
}

}  // namespace tessera
