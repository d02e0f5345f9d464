// CUDA graphs for the backend's table (ops/backend.h capture_begin ... graph_free): one capture
// stream per device, and the thread's current stream, which the table's ops are issued on.
// Host code only; a .cu so that the CUDA build (which globs ops/cuda/*.cu) compiles it.
#include <cuda_runtime_api.h>

#include <map>
#include <mutex>

#include "core/error.h"
#include "ops/cuda/cuda_util.h"
#include "ops/cuda/ops_cuda.h"

namespace lmf::cuda {
namespace {

thread_local cudaStream_t t_stream = nullptr;  // 0: the legacy default stream

// The current device's capture stream, created on first use. cudaStreamCreate makes a blocking
// stream: work on it and on the legacy stream wait for each other, so a graph launched there is
// ordered with the table's other ops and with the synchronous copies, as if it ran on stream 0.
// Never destroyed (a static destructor could run after the runtime has shut down).
cudaStream_t capture_stream() {
  static std::mutex mu;
  static auto* by_device = new std::map<int, cudaStream_t>();
  int dev = 0;
  LMF_CUDA_CHECK(cudaGetDevice(&dev));
  std::lock_guard lock(mu);
  cudaStream_t& s = (*by_device)[dev];
  if (s == nullptr) LMF_CUDA_CHECK(cudaStreamCreate(&s));
  return s;
}

}  // namespace

cudaStream_t current_stream() { return t_stream; }

void capture_begin() {
  LMF_CHECK(t_stream == nullptr, "capture_begin: this thread is already capturing");
  const cudaStream_t s = capture_stream();
  LMF_CUDA_CHECK(cudaStreamBeginCapture(s, cudaStreamCaptureModeGlobal));
  t_stream = s;
}

ops::Graph* capture_end() {
  LMF_CHECK(t_stream != nullptr, "capture_end without capture_begin");
  const cudaStream_t s = t_stream;
  t_stream = nullptr;
  cudaGraph_t graph = nullptr;
  const cudaError_t err = cudaStreamEndCapture(s, &graph);
  if (err != cudaSuccess) {
    (void)cudaGetLastError();  // not sticky: the next launch check must not report it again
    throw Error(
        fmt::format("CUDA graph capture failed ({}: {}): an op in the captured step synchronised "
                    "with the host, "
                    "copied from or to it, or allocated; run without [train] cuda_graphs",
                    cudaGetErrorName(err), cudaGetErrorString(err)));
  }
  cudaGraphExec_t exec = nullptr;
  const cudaError_t inst = cudaGraphInstantiate(&exec, graph, 0);
  LMF_CUDA_CHECK(cudaGraphDestroy(graph));
  if (inst != cudaSuccess)
    cuda_failed(inst, "cudaGraphInstantiate(&exec, graph, 0)", __FILE__, __LINE__);
  return reinterpret_cast<ops::Graph*>(exec);
}

void graph_launch(ops::Graph* g) {
  LMF_CHECK(g != nullptr, "graph_launch: no graph");
  LMF_CUDA_CHECK(cudaGraphLaunch(reinterpret_cast<cudaGraphExec_t>(g), capture_stream()));
}

void graph_free(ops::Graph* g) {
  if (g == nullptr) return;
  if (cudaGraphExecDestroy(reinterpret_cast<cudaGraphExec_t>(g)) != cudaSuccess)
    (void)cudaGetLastError();
}

}  // namespace lmf::cuda
