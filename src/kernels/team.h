// A persistent thread team for one decode step: the threads of one OpenMP
// parallel region run the whole step (SPMD) and meet at a spinning barrier
// between phases, instead of opening a region per matrix: a barrier costs about
// one cross-core round trip, several times less than opening an OpenMP region,
// and a small model's decode step has dozens of phases (the measured costs:
// docs/perf-log.md, "Synchronisation cost").
//
// Only for phases that every thread of the region reaches in the same order;
// inside, no nested OpenMP regions (they would run on one thread each).
#pragma once
#include <atomic>
#include <cstddef>
#include <cstdint>
#include <initializer_list>

#include "kernels/kernels.h"

namespace tessera {

class Team {
 public:
  static constexpr int kMaxJobs = 4;  // matrices per team_matmul call
  // Waits until all n threads of the region have arrived (n = omp_get_num_threads()).
  // Spins, then sleeps on a futex, so an oversubscribed machine still makes progress.
  void barrier(int n);
  // Work-sharing counters for team_matmul: (call generation << 32) | next row,
  // so a counter left by an earlier call reads as row 0 without a reset barrier.
  struct alignas(64) Counter {
    std::atomic<uint64_t> v{0};
  };
  Counter next[kMaxJobs];
  uint32_t gen_base = 1;  // first generation of the next region; updated outside regions

 private:
  alignas(64) std::atomic<uint32_t> arrived_{0};
  std::atomic<uint32_t> gen_{0};  // same line as arrived_: one line moves per barrier
};

// One thread's view of the team inside the region.
struct TeamThread {
  Team* team = nullptr;
  int rank = 0, size = 1;
  Isa isa = Isa::Scalar;
  uint8_t* scratch = nullptr;  // private, team_scratch_bytes(max K) bytes, 64-byte aligned
  uint32_t gen = 0;            // generation of the next team_matmul call (same on every thread)
  void barrier() { team->barrier(size); }
};

// Private scratch one thread needs for team_matmul with up to K columns and M rows.
size_t team_scratch_bytes(int64_t K, int64_t M = 1);
// Whether W has a SIMD matrix-vector kernel on isa for M activation rows (what
// matmul() picks for M rows), i.e. whether team_matmul can take it.
bool team_can_matmul(Isa isa, const TensorView& W, int64_t M = 1);
// Whether one activation row against W is large enough that matmul() would
// split it across threads (the threshold of the region-per-matrix path).
bool team_worthwhile(const TensorView& W);
// outs[i].Y = x . outs[i].W^T for one activation row x(K) (or M rows), rows shared by the
// team as matmul_multi() shares them; every thread calls it with its own copy
// of x (or the same one). Ends with a barrier, so Y is complete on return.
// All W must pass team_can_matmul; those with another K or activation
// quantization than the first run as a call of their own (one more barrier).
// M > 1: x holds M rows of K, each Y M rows of its W's output width.
void team_matmul(TeamThread& tt, const float* x, std::initializer_list<MatmulOut> outs, int64_t M = 1);
void team_matmul(TeamThread& tt, const float* x, const MatmulOut* outs, size_t n_outs, int64_t M = 1);

}  // namespace tessera
