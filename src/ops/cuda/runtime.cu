// CUDA backend entry points (ops/cuda_backend.h) and the error path of LMF_CUDA_CHECK.
#include <cuda_runtime_api.h>

#include <string>

#include "core/error.h"
#include "ops/cuda/cuda_util.h"
#include "ops/cuda_backend.h"

namespace lmf::cuda {
namespace {

struct Probe {
  int devices = 0;
  cudaError_t err = cudaSuccess;
};

// Asked once per process: no driver, no device or a broken install all read as "no device".
const Probe& probe() {
  static const Probe p = [] {
    Probe r;
    r.err = cudaGetDeviceCount(&r.devices);
    if (r.err != cudaSuccess) {
      r.devices = 0;
      (void)cudaGetLastError();  // clear the error so later calls do not see it
    }
    return r;
  }();
  return p;
}

}  // namespace

void cuda_failed(cudaError_t err, const char* call, const char* file, int line) {
  throw Error(fmt::format("CUDA error {} ({}) in {} at {}:{}", cudaGetErrorName(err),
                          cudaGetErrorString(err), call, file, line));
}

bool available() { return probe().devices > 0; }

void require() {
  const Probe& p = probe();
  if (p.devices > 0) return;
  if (p.err != cudaSuccess)
    throw UserError(
        "no CUDA device available ({}: {}); device = \"cuda\" needs an NVIDIA GPU and driver",
        cudaGetErrorName(p.err), cudaGetErrorString(p.err));
  throw UserError("no CUDA device available; device = \"cuda\" needs an NVIDIA GPU and driver");
}

}  // namespace lmf::cuda
