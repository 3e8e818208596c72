// Built without MPI (libopenmpi-dev absent): one process only.
#include <cstdlib>

#include "core/error.h"
#include "train/communicator.h"

namespace tessera::train {

std::unique_ptr<Communicator> make_mpi_communicator() {
  fail("this tessera was built without MPI (install libopenmpi-dev and rebuild) and cannot run under mpirun");
}

void mpi_abort(int) {}

}  // namespace tessera::train
