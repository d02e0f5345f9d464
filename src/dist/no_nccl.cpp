// Built when CMake finds no NCCL (or no CUDA): the NCCL communicator's entry points say so.
#include "core/error.h"
#include "dist/nccl_communicator.h"

namespace lmf::dist {

bool nccl_built() { return false; }

std::unique_ptr<Communicator> make_nccl_communicator(Communicator&, double) {
  throw UserError(
      "this lmforge was built without NCCL (GPU collectives need CUDA's NCCL: libnccl-dev)");
}

}  // namespace lmf::dist
