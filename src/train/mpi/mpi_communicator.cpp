// MPI_COMM_WORLD as the training Communicator (Debian's OpenMPI).
#include <mpi.h>

#include <cstring>

#include <chrono>
#include <climits>
#include <cstdlib>
#include <exception>
#include <vector>

#include "core/error.h"
#include "train/communicator.h"

namespace tessera::train {

namespace {

int count(size_t n, const char* what) {
  if (n > size_t(INT_MAX)) fail("MPI ", what, ": ", n, " elements exceed one message (2^31 - 1); use more ranks");
  return int(n);
}

class MpiCommunicator final : public Communicator {
  // Adds the scope's wall time to traffic_.seconds.
  struct Timed {
    Traffic& t;
    std::chrono::steady_clock::time_point t0 = std::chrono::steady_clock::now();
    ~Timed() { t.seconds += std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count(); }
  };

 public:
  MpiCommunicator() {
    int inited = 0;
    MPI_Initialized(&inited);
    if (!inited) {
      int provided = 0;
      MPI_Init_thread(nullptr, nullptr, MPI_THREAD_FUNNELED, &provided);
    }
    MPI_Comm_rank(MPI_COMM_WORLD, &rank_);
    MPI_Comm_size(MPI_COMM_WORLD, &size_);
    // Errors come back as codes (named in our message) instead of MPI's default abort.
    MPI_Comm_set_errhandler(MPI_COMM_WORLD, MPI_ERRORS_RETURN);
  }
  // A sub-communicator of parent's ranks with the same color (MPI_Comm_split), ordered by key.
  MpiCommunicator(MPI_Comm parent, int color, int key) : world_(false) {
    check(MPI_Comm_split(parent, color, key, &comm_), "communicator split");
    MPI_Comm_rank(comm_, &rank_);
    MPI_Comm_size(comm_, &size_);
    MPI_Comm_set_errhandler(comm_, MPI_ERRORS_RETURN);
  }
  std::unique_ptr<Communicator> split(int color, int key) override {
    return std::make_unique<MpiCommunicator>(comm_, color, key);
  }
  ~MpiCommunicator() override {
    if (!world_) {  // a split: freed (an exception in flight ends the job through the world's destructor)
      if (std::uncaught_exceptions() == 0) MPI_Comm_free(&comm_);
      return;
    }
    if (std::uncaught_exceptions() > 0) {
      MPI_Abort(MPI_COMM_WORLD, 1);  // a failing rank must not leave the others waiting
    } else {
      MPI_Finalize();
    }
  }
  int rank() const override { return rank_; }
  int size() const override { return size_; }

  void all_reduce_sum(float* x, size_t n) override {
    Timed timed{traffic_};
    check(MPI_Allreduce(MPI_IN_PLACE, x, count(n, "all-reduce"), MPI_FLOAT, MPI_SUM, comm_), "all-reduce");
    traffic_.all_reduce += ring(n * sizeof(float)) * 2;
  }
  void start_all_reduce_sum(float* x, size_t n) override {
    Timed timed{traffic_};
    MPI_Request& r = pending_.emplace_back();
    check(MPI_Iallreduce(MPI_IN_PLACE, x, count(n, "all-reduce"), MPI_FLOAT, MPI_SUM, comm_, &r), "all-reduce");
    traffic_.all_reduce += ring(n * sizeof(float)) * 2;
  }
  void progress() override {
    if (pending_.empty()) return;
    Timed timed{traffic_};
    int done = 0;
    check(MPI_Testall(int(pending_.size()), pending_.data(), &done, MPI_STATUSES_IGNORE), "all-reduce");
  }
  void wait_all() override {
    if (pending_.empty()) return;
    Timed timed{traffic_};
    check(MPI_Waitall(int(pending_.size()), pending_.data(), MPI_STATUSES_IGNORE), "all-reduce");
    pending_.clear();
  }
  void all_reduce_sum(double* x, size_t n) override {
    Timed timed{traffic_};
    check(MPI_Allreduce(MPI_IN_PLACE, x, count(n, "all-reduce"), MPI_DOUBLE, MPI_SUM, comm_), "all-reduce");
    traffic_.all_reduce += ring(n * sizeof(double)) * 2;
  }
  void broadcast(float* x, size_t n, int root) override {
    Timed timed{traffic_};
    check(MPI_Bcast(x, count(n, "broadcast"), MPI_FLOAT, root, comm_), "broadcast");
    traffic_.broadcast += rank_ == root ? double(n * sizeof(float)) : 0.0;
  }
  void reduce_scatter_sum(const float* x, float* out, const std::vector<size_t>& off) override {
    Timed timed{traffic_};
    std::vector<int> counts(static_cast<size_t>(size_));
    for (int r = 0; r < size_; ++r) counts[size_t(r)] = count(off[size_t(r) + 1] - off[size_t(r)], "reduce-scatter");
    if (out == x + off[size_t(rank_)]) {  // in place: MPI leaves the result at the buffer's start
      float* buf = const_cast<float*>(x) + off[0];
      check(MPI_Reduce_scatter(MPI_IN_PLACE, buf, counts.data(), MPI_FLOAT, MPI_SUM, comm_), "reduce-scatter");
      if (out != buf) std::memmove(out, buf, size_t(counts[size_t(rank_)]) * sizeof(float));
    } else {
      check(MPI_Reduce_scatter(x + off[0], out, counts.data(), MPI_FLOAT, MPI_SUM, comm_), "reduce-scatter");
    }
    traffic_.reduce_scatter += ring((off.back() - off[0]) * sizeof(float));
  }
  void all_gather(float* x, const std::vector<size_t>& off) override {
    Timed timed{traffic_};
    std::vector<int> counts(static_cast<size_t>(size_)), displs(static_cast<size_t>(size_));
    for (int r = 0; r < size_; ++r)
      counts[size_t(r)] = count(off[size_t(r) + 1] - off[size_t(r)], "all-gather"),
      displs[size_t(r)] = count(off[size_t(r)] - off[0], "all-gather");
    check(MPI_Allgatherv(MPI_IN_PLACE, 0, MPI_DATATYPE_NULL, x + off[0], counts.data(), displs.data(), MPI_FLOAT,
                         comm_),
          "all-gather");
    traffic_.all_gather += ring((off.back() - off[0]) * sizeof(float));
  }
  void barrier() override { check(MPI_Barrier(comm_), "barrier"); }

 private:
  int rank_ = 0, size_ = 1;
  bool world_ = true;             // MPI_COMM_WORLD: finalises MPI when destroyed
  MPI_Comm comm_ = MPI_COMM_WORLD;
  std::vector<MPI_Request> pending_;  // started non-blocking collectives (completed ones are MPI_REQUEST_NULL)
  double ring(size_t bytes) const { return double(bytes) * double(size_ - 1) / double(size_); }
  void check(int rc, const char* what) const {
    if (rc == MPI_SUCCESS) return;
    char msg[MPI_MAX_ERROR_STRING];
    int len = 0;
    MPI_Error_string(rc, msg, &len);
    fail("rank ", rank_, ": MPI ", what, " failed: ", std::string(msg, size_t(len)));
  }
};

}  // namespace

std::unique_ptr<Communicator> make_mpi_communicator() { return std::make_unique<MpiCommunicator>(); }

void mpi_abort(int code) {
  int inited = 0, finalized = 0;
  MPI_Initialized(&inited);
  MPI_Finalized(&finalized);
  if (inited && !finalized) MPI_Abort(MPI_COMM_WORLD, code);
}

}  // namespace tessera::train
