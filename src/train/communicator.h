// How the ranks of a data-parallel training run talk to each other. The
// Trainer calls these at fixed points (gradients after backward, the loss and
// gradient norm for logging and clipping, the initial parameters); the
// single-process LocalCommunicator does nothing, so one process runs exactly
// as before. An MPI implementation plugs in here (the distributed-training issue).
#pragma once
#include <cstddef>

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
  virtual void barrier() = 0;
  bool is_root() const { return rank() == 0; }
};

// One process: rank 0 of 1; every collective is the identity.
class LocalCommunicator final : public Communicator {
 public:
  int rank() const override { return 0; }
  int size() const override { return 1; }
  void all_reduce_sum(float*, size_t) override {}
  void all_reduce_sum(double*, size_t) override {}
  void broadcast(float*, size_t, int) override {}
  void barrier() override {}
};

}  // namespace tessera::train
