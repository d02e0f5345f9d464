// Built when CUDA is off: the CUDA backend's entry points report that this build has none.
#include "ops/cuda_backend.h"

#include "core/error.h"

namespace lmf::cuda {

bool available() { return false; }
void require() { throw UserError("this lmforge was built without CUDA (device = \"cuda\" needs a CUDA build)"); }
void select_device(int) { require(); }
const ops::Backend<float>& backend(ops::MatmulPrecision) {
  require();
  throw UserError("unreachable");  // require() always throws here
}
const ops::Backend<bf16>& backend_bf16() {
  require();
  throw UserError("unreachable");  // require() always throws here
}

}  // namespace lmf::cuda
