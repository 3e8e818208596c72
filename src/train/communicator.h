// How the ranks of a data-parallel training run talk to each other. The
// Trainer calls these at fixed points (gradients after backward, the loss and
// gradient norm for logging and clipping, the initial parameters, the ZeRO
// shards); the single-process LocalCommunicator does nothing, so one process
// runs exactly as before. The MPI implementation is train/mpi/ (`mpirun -np N
// tessera train ...`).
#pragma once
#include <cstddef>
#include <cstdint>
#include <memory>
#include <vector>

namespace tessera::train {

class Communicator {
 public:
  virtual ~Communicator() = default;
  virtual int rank() const = 0;
  virtual int size() const = 0;
  // x <- the sum of x over all ranks, in place, on every rank.
  virtual void all_reduce_sum(float* x, size_t n) = 0;
  virtual void all_reduce_sum(double* x, size_t n) = 0;
  // x <- root's x on every rank.
  virtual void broadcast(float* x, size_t n, int root) = 0;
  // ZeRO: off (size() + 1 offsets) splits a buffer of off.back() elements into the ranks' parts.
  // out (rank r's part, off[r + 1] - off[r] elements) <- the sum over ranks of x's part r.
  // out may be x + off[r] (in place: x's other parts are left undefined).
  virtual void reduce_scatter_sum(const float* x, float* out, const std::vector<size_t>& off) = 0;
  // x's part r <- rank r's x part r, for every r, in place on every rank.
  virtual void all_gather(float* x, const std::vector<size_t>& off) = 0;
  virtual void barrier() = 0;
  // The ranks with the same color as a communicator of their own (ranked by key): every rank
  // calls it. Tensor parallelism splits the world into tensor- and data-parallel groups.
  virtual std::unique_ptr<Communicator> split(int color, int key) = 0;
  // Non-blocking all-reduce (overlap with the backward): started now, x must not be touched
  // until wait_all(); progress() lets started ones advance (MPI progresses them only inside
  // its calls). The defaults run the blocking call at once.
  virtual void start_all_reduce_sum(float* x, size_t n) { all_reduce_sum(x, n); }
  virtual void progress() {}
  virtual void wait_all() {}
  bool is_root() const { return rank() == 0; }

  // Bytes this rank sent per collective since the last take (then zeroed): what the
  // ring algorithms move (all-reduce 2 (N-1)/N of the buffer, reduce-scatter and
  // all-gather (N-1)/N, broadcast the buffer), as the ZeRO paper counts them.
  struct Traffic {
    double all_reduce = 0, reduce_scatter = 0, all_gather = 0, broadcast = 0;
    double seconds = 0;  // wall time inside the collectives (waiting for other ranks included)
  };
  Traffic take_traffic() {
    Traffic t = traffic_;
    traffic_ = {};
    return t;
  }
  void restore_traffic(const Traffic& t) { traffic_ = t; }  // after a pass that is not counted

 protected:
  Traffic traffic_;
};

// One process: rank 0 of 1; every collective is the identity.
class LocalCommunicator final : public Communicator {
 public:
  int rank() const override { return 0; }
  int size() const override { return 1; }
  void all_reduce_sum(float*, size_t) override {}
  void all_reduce_sum(double*, size_t) override {}
  void broadcast(float*, size_t, int) override {}
  void reduce_scatter_sum(const float* x, float* out, const std::vector<size_t>& off) override {
    if (out != x + off[0])
      for (size_t i = off[0]; i < off[1]; ++i) out[i - off[0]] = x[i];
  }
  void all_gather(float*, const std::vector<size_t>&) override {}
  void barrier() override {}
  std::unique_ptr<Communicator> split(int, int) override { return std::make_unique<LocalCommunicator>(); }
};

// Started by mpirun / mpiexec (OpenMPI's or a PMI launcher's environment)?
bool launched_by_mpi();
// MPI_COMM_WORLD as a Communicator (initialises MPI; finalises it when destroyed, or
// aborts the whole job when destroyed during an exception, so no rank waits forever
// for one that failed). Error when Tessera was built without MPI.
std::unique_ptr<Communicator> make_mpi_communicator();
// Ends every rank of the job with this exit code (after a rank's error); no-op without MPI.
void mpi_abort(int code);

}  // namespace tessera::train
