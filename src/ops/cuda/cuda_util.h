#pragma once
// CUDA helpers shared by the backend's .cu files and by host code (tests): the error check and an
// owning device buffer. Host-only; includes the runtime API, not the device headers.
#include <cuda_runtime_api.h>

#include <cstddef>
#include <utility>
#include <vector>

#include "core/error.h"

namespace lmf {
struct VirtualMemory;
}

namespace lmf::cuda {

// Throws lmf::Error naming the CUDA error, the failed call and where it was made.
[[noreturn]] void cuda_failed(cudaError_t err, const char* call, const char* file, int line);

// Device memory of this backend, counted: every allocation of ops/cuda goes through these, so
// peak_allocated_bytes() is the most the process held at once (as PyTorch's
// torch.cuda.max_memory_allocated; cuBLAS's workspace is ours, so counted too).
// device_malloc(0) is nullptr; a failure throws lmf::Error ("out of GPU memory allocating N
// bytes (F of T bytes free)") and leaves no sticky CUDA error.
void* device_malloc(size_t bytes);
void device_free(void* p, size_t bytes) noexcept;
// A per-device float buffer for one purpose, at least `floats` long: grown on demand, never shrunk
// or freed. A grown buffer's old one is kept, not freed: a CUDA graph captured before
// (ops/backend.h) still reads and writes it at each launch; it grows once per larger shape, so
// this keeps little. One buffer per purpose and device, not per stream: a device's ops run in
// order on one stream at a time (stream 0, or the capture stream, ordered with it both ways:
// graph.cu), and a graph's capture finds the buffer its eager first step made.
enum class Scratch {
  column_sums,     // the column sums' partials (reduce.cuh)
  attention_rows,  // the attention backward's D_t = dout_t . out_t per query row (attention.cuh)
};
float* device_scratch(Scratch purpose, size_t floats);
size_t allocated_bytes();
size_t peak_allocated_bytes();
size_t allocation_count();  // device_malloc calls that allocated, so far (a step should add none)
// The physical granules of the virtual memory (below), mapped or pooled, count as allocated from
// their creation to their release, so the peak covers them; they are not counted by
// allocation_count.
void count_allocated(size_t bytes);
void count_freed(size_t bytes) noexcept;
// The device memory space's virtual memory (ops/cuda/virtual_memory.cu): the parameters and
// gradients of ParamStore's device copy live in it, for ZeRO 3 (core/paged_array.h).
const VirtualMemory& device_virtual_memory();
// Physical granules created so far (cuMemCreate): a step that reuses the pool adds none.
size_t virtual_memory_creates();
// The environment's on/off switch `name` (LMF_CUDA_VEC, LMF_CUDA_GELU_EPILOGUE): on when unset,
// empty or "1", off for "0"; anything else is a UserError naming the variable.
bool env_switch(const char* name);
// The environment's count `name` (LMF_CLASSIFIER_CHUNK_ROWS): 0 when unset or empty, else a
// whole number >= 0; anything else is a UserError naming the variable.
int env_count(const char* name);

}  // namespace lmf::cuda

// LMF_CUDA_CHECK(cudaMemcpy(...)): throws lmf::Error if the call returns anything but cudaSuccess.
#define LMF_CUDA_CHECK(call)                                              \
  do {                                                                    \
    const cudaError_t lmf_cuda_err_ = (call);                             \
    if (lmf_cuda_err_ != cudaSuccess)                                     \
      ::lmf::cuda::cuda_failed(lmf_cuda_err_, #call, __FILE__, __LINE__); \
  } while (0)

// After a kernel launch: a bad launch configuration is reported by cudaGetLastError.
#define LMF_CUDA_CHECK_LAUNCH() LMF_CUDA_CHECK(cudaGetLastError())

namespace lmf::cuda {

// n elements of T in device memory (cudaMalloc / cudaFree); movable, not copyable. Copies are
// synchronous (cudaMemcpy) and so also wait for the kernels before them on the default stream.
template <class T>
class DeviceBuffer {
 public:
  DeviceBuffer() = default;
  explicit DeviceBuffer(size_t n) : n_(n) {
    if (n > 0) p_ = static_cast<T*>(device_malloc(n * sizeof(T)));
  }
  explicit DeviceBuffer(const std::vector<T>& host) : DeviceBuffer(host.size()) {
    copy_from_host(host.data(), host.size());
  }
  DeviceBuffer(const DeviceBuffer&) = delete;
  DeviceBuffer& operator=(const DeviceBuffer&) = delete;
  DeviceBuffer(DeviceBuffer&& o) noexcept
      : p_(std::exchange(o.p_, nullptr)), n_(std::exchange(o.n_, 0)) {}
  DeviceBuffer& operator=(DeviceBuffer&& o) noexcept {
    if (this != &o) {
      release();
      p_ = std::exchange(o.p_, nullptr);
      n_ = std::exchange(o.n_, 0);
    }
    return *this;
  }
  ~DeviceBuffer() { release(); }

  T* data() { return p_; }
  const T* data() const { return p_; }
  size_t size() const { return n_; }

  void copy_from_host(const T* host, size_t n) {
    LMF_CHECK(n <= n_, "copy of {} elements into a device buffer of {}", n, n_);
    if (n > 0) LMF_CUDA_CHECK(cudaMemcpy(p_, host, n * sizeof(T), cudaMemcpyHostToDevice));
  }
  void copy_to_host(T* host, size_t n) const {
    LMF_CHECK(n <= n_, "copy of {} elements out of a device buffer of {}", n, n_);
    if (n > 0) LMF_CUDA_CHECK(cudaMemcpy(host, p_, n * sizeof(T), cudaMemcpyDeviceToHost));
  }
  std::vector<T> to_host() const {
    std::vector<T> h(n_);
    copy_to_host(h.data(), n_);
    return h;
  }

 private:
  void release() noexcept {
    if (p_ != nullptr) device_free(p_, n_ * sizeof(T));  // errors (a dead context) are not thrown
    p_ = nullptr;
    n_ = 0;
  }
  T* p_ = nullptr;
  size_t n_ = 0;
};

}  // namespace lmf::cuda
