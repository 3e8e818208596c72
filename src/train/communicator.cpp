#include "train/communicator.h"

#include <cstdlib>

namespace tessera::train {

bool launched_by_mpi() {
  return std::getenv("OMPI_COMM_WORLD_SIZE") || std::getenv("PMI_SIZE") || std::getenv("PMIX_RANK");
}

}  // namespace tessera::train
