// CUDA backend entry points (ops/cuda_backend.h) and the error path of LMF_CUDA_CHECK.
#include <cuda_runtime_api.h>

#include <algorithm>
#include <atomic>
#include <charconv>
#include <cstdlib>
#include <map>
#include <mutex>
#include <string>
#include <string_view>
#include <utility>

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

std::atomic<size_t> g_allocated{0}, g_peak{0}, g_count{0};

}  // namespace

void* device_malloc(size_t bytes) {
  if (bytes == 0) return nullptr;
  void* p = nullptr;
  const cudaError_t err = cudaMalloc(&p, bytes);
  if (err != cudaSuccess) {
    (void)cudaGetLastError();  // else the next launch check would report this failure as its own
    if (err == cudaErrorMemoryAllocation) {
      size_t free = 0, total = 0;
      if (cudaMemGetInfo(&free, &total) != cudaSuccess) (void)cudaGetLastError();
      throw Error(fmt::format("out of GPU memory allocating {} bytes ({} of {} bytes free)", bytes, free, total));
    }
    throw Error(fmt::format("cudaMalloc of {} bytes failed: {} ({})", bytes, cudaGetErrorName(err),
                            cudaGetErrorString(err)));
  }
  g_count.fetch_add(1);
  count_allocated(bytes);
  return p;
}

float* device_scratch(Scratch purpose, size_t floats) {
  struct Buffer {
    float* p = nullptr;
    size_t cap = 0;
  };
  static std::mutex mu;
  static auto* buffers = new std::map<std::pair<int, Scratch>, Buffer>();  // never freed, see cuda_util.h
  int dev = 0;
  LMF_CUDA_CHECK(cudaGetDevice(&dev));
  std::lock_guard lock(mu);
  Buffer& b = (*buffers)[{dev, purpose}];
  if (b.cap < floats) {
    b.p = static_cast<float*>(device_malloc(floats * sizeof(float)));
    b.cap = floats;
  }
  return b.p;
}

void count_allocated(size_t bytes) {
  const size_t now = g_allocated.fetch_add(bytes) + bytes;
  size_t peak = g_peak.load();
  while (now > peak && !g_peak.compare_exchange_weak(peak, now)) {
  }
}

void count_freed(size_t bytes) noexcept { g_allocated.fetch_sub(bytes); }

void device_free(void* p, size_t bytes) noexcept {
  if (p == nullptr) return;
  count_freed(bytes);
  if (cudaFree(p) != cudaSuccess) (void)cudaGetLastError();  // e.g. a dead context at exit
}

void select_device(int index) {
  require();
  LMF_CUDA_CHECK(cudaSetDevice(index % probe().devices));
}

size_t allocated_bytes() { return g_allocated.load(); }
size_t peak_allocated_bytes() { return g_peak.load(); }
size_t allocation_count() { return g_count.load(); }

void cuda_failed(cudaError_t err, const char* call, const char* file, int line) {
  throw Error(fmt::format("CUDA error {} ({}) in {} at {}:{}", cudaGetErrorName(err),
                          cudaGetErrorString(err), call, file, line));
}

bool env_switch(const char* name) {
  const char* e = std::getenv(name);
  if (e == nullptr || std::string_view(e).empty() || std::string_view(e) == "1") return true;
  if (std::string_view(e) == "0") return false;
  throw UserError("{}: expected 0 or 1 (got \"{}\")", name, e);
}

int env_count(const char* name) {
  const char* e = std::getenv(name);
  if (e == nullptr || *e == '\0') return 0;
  int v = 0;
  const std::string_view s(e);
  const auto [end, ec] = std::from_chars(s.data(), s.data() + s.size(), v);
  if (ec != std::errc() || end != s.data() + s.size() || v < 0)
    throw UserError("{}: expected a whole number >= 0 (got \"{}\")", name, e);
  return v;
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
