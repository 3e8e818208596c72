#include "kernels/team.h"

#include <immintrin.h>
#include <sched.h>

namespace tessera {

void Team::barrier(int n) {
  if (n <= 1) return;
  // The generation cannot move before this thread arrives, so reading it first is safe.
  const uint32_t g = gen_.load(std::memory_order_acquire);
  if (arrived_.fetch_add(1, std::memory_order_acq_rel) == uint32_t(n - 1)) {
    arrived_.store(0, std::memory_order_relaxed);
    gen_.store(g + 1, std::memory_order_release);
    return;
  }
  // 2500 pauses are ~50 us on this host (20 ns each): longer than a decode
  // step's imbalance at a barrier, short enough that a descheduled partner on an
  // oversubscribed machine soon gets the core back.
  for (int spins = 0; gen_.load(std::memory_order_acquire) == g; ++spins) {
    if (spins < 2500)
      _mm_pause();
    else
      sched_yield();
  }
}

}  // namespace tessera
