// The CUDA space's virtual memory (core/memory.h VirtualMemory): the driver's virtual memory
// management. Addresses are reserved once (cuMemAddressReserve); each granule is backed by its
// own physical allocation (cuMemCreate + cuMemMap), so any run of granules can be handed back
// alone, as PyTorch's expandable segments do; a granule handed back waits in a pool for the next
// map (Granules below). The driver is reached through the runtime's entry-point query, so lmforge
// links no libcuda (cudart loads it) and still starts on machines without one.
// Host code only; a .cu so that the CUDA build (which globs ops/cuda/*.cu) compiles it.
#include <cuda.h>
#include <cuda_runtime_api.h>

#include <mutex>
#include <optional>
#include <type_traits>
#include <unordered_map>
#include <vector>

#include "core/error.h"
#include "core/memory.h"
#include "ops/cuda/cuda_util.h"
#include "ops/cuda_backend.h"

namespace lmf::cuda {
namespace {

struct Driver {
  CUresult (*address_reserve)(CUdeviceptr*, size_t, size_t, CUdeviceptr, unsigned long long);
  CUresult (*address_free)(CUdeviceptr, size_t);
  CUresult (*create)(CUmemGenericAllocationHandle*, size_t, const CUmemAllocationProp*,
                     unsigned long long);
  CUresult (*release)(CUmemGenericAllocationHandle);
  CUresult (*map)(CUdeviceptr, size_t, size_t, CUmemGenericAllocationHandle, unsigned long long);
  CUresult (*unmap)(CUdeviceptr, size_t);
  CUresult (*set_access)(CUdeviceptr, size_t, const CUmemAccessDesc*, size_t);
  CUresult (*granularity)(size_t*, const CUmemAllocationProp*, CUmemAllocationGranularity_flags);
  CUresult (*error_name)(CUresult, const char**);
};

// The ABI of each entry point as of CUDA 12.0 (all of these are older and unchanged since).
constexpr unsigned kDriverAbi = 12000;

const Driver& driver() {
  static const Driver d = [] {
    require();
    Driver r{};
    auto get = [](const char* name, auto& fn) {
      void* p = nullptr;
      cudaDriverEntryPointQueryResult found{};
      LMF_CUDA_CHECK(
          cudaGetDriverEntryPointByVersion(name, &p, kDriverAbi, cudaEnableDefault, &found));
      if (found != cudaDriverEntryPointSuccess || p == nullptr)
        throw Error(fmt::format("the CUDA driver has no {} (virtual memory management)", name));
      fn = reinterpret_cast<std::remove_reference_t<decltype(fn)>>(p);
    };
    get("cuMemAddressReserve", r.address_reserve);
    get("cuMemAddressFree", r.address_free);
    get("cuMemCreate", r.create);
    get("cuMemRelease", r.release);
    get("cuMemMap", r.map);
    get("cuMemUnmap", r.unmap);
    get("cuMemSetAccess", r.set_access);
    get("cuMemGetAllocationGranularity", r.granularity);
    get("cuGetErrorName", r.error_name);
    return r;
  }();
  return d;
}

void check(CUresult res, const char* call) {
  if (res == CUDA_SUCCESS) return;
  const char* name = nullptr;
  if (driver().error_name(res, &name) != CUDA_SUCCESS || name == nullptr) name = "unknown";
  throw Error(fmt::format("CUDA driver error {} ({}) in {}", name, int(res), call));
}

// Physical memory on the current device.
CUmemAllocationProp device_prop() {
  int device = 0;
  LMF_CUDA_CHECK(cudaGetDevice(&device));
  CUmemAllocationProp prop{};
  prop.type = CU_MEM_ALLOCATION_TYPE_PINNED;
  prop.location.type = CU_MEM_LOCATION_TYPE_DEVICE;
  prop.location.id = device;
  return prop;
}

size_t vm_granularity() {
  // Asked once: the device is chosen (select_device) before any device memory is allocated.
  static const size_t g = [] {
    const CUmemAllocationProp prop = device_prop();
    size_t r = 0;
    check(driver().granularity(&r, &prop, CU_MEM_ALLOC_GRANULARITY_RECOMMENDED),
          "cuMemGetAllocationGranularity");
    LMF_CHECK(r > 0 && (r & (r - 1)) == 0, "CUDA allocation granularity {}", r);
    return r;
  }();
  return g;
}

void* vm_reserve(size_t bytes) {
  CUdeviceptr p = 0;
  check(driver().address_reserve(&p, bytes, vm_granularity(), 0, 0), "cuMemAddressReserve");
  return reinterpret_cast<void*>(p);
}

// The physical granules: those mapped now (by address, each its own cuMemCreate) and a pool of
// those handed back, kept for the next map instead of released. After the first step of ZeRO 3
// the pool holds what one step's peak needs, so later steps map and unmap but allocate nothing
// (the memory plan stays fixed, as with every other buffer), and the driver's allocation calls
// leave the step loop. The pool goes back to the device when nothing is mapped any more (the
// last reservation freed), or when an allocation finds the device full.
struct Granules {
  std::mutex mu;
  std::unordered_map<CUdeviceptr, CUmemGenericAllocationHandle> mapped;
  std::vector<CUmemGenericAllocationHandle> pool;
  size_t created = 0;  // cuMemCreate calls so far
};
Granules& granules() {
  static auto* g = new Granules();  // never destroyed: reservations may outlive static objects
  return *g;
}

// Releases the pool's granules (call with the lock held).
void drain_pool(Granules& gr) noexcept {
  for (CUmemGenericAllocationHandle h : gr.pool) (void)driver().release(h);
  count_freed(gr.pool.size() * vm_granularity());
  gr.pool.clear();
}

void vm_free(void* p, size_t bytes) noexcept {
  (void)driver().address_free(reinterpret_cast<CUdeviceptr>(p), bytes);  // e.g. a dead context at exit
  Granules& gr = granules();
  std::lock_guard lock(gr.mu);
  if (gr.mapped.empty()) drain_pool(gr);
}

// A physical granule: from the pool, else a new one (created only when the pool is empty).
// nullopt when the device has no room; vm_map then returns what it mapped to the device.
std::optional<CUmemGenericAllocationHandle> take_granule(Granules& gr, const CUmemAllocationProp& prop) {
  if (!gr.pool.empty()) {
    const CUmemGenericAllocationHandle h = gr.pool.back();
    gr.pool.pop_back();
    return h;
  }
  CUmemGenericAllocationHandle h{};
  const CUresult res = driver().create(&h, vm_granularity(), &prop, 0);
  if (res == CUDA_ERROR_OUT_OF_MEMORY) return std::nullopt;
  check(res, "cuMemCreate");
  ++gr.created;
  count_allocated(vm_granularity());
  return h;
}

// Unmaps the granules of [p, p + bytes) into the pool (call with the lock held).
void unmap_granules(Granules& gr, CUdeviceptr p, size_t bytes) {
  const size_t g = vm_granularity();
  for (size_t at = 0; at < bytes; at += g) {
    auto it = gr.mapped.find(p + at);
    LMF_CHECK(it != gr.mapped.end(), "unmap of a granule that is not mapped");
    check(driver().unmap(p + at, g), "cuMemUnmap");
    gr.pool.push_back(it->second);
    gr.mapped.erase(it);
  }
}

void vm_map(void* p, size_t bytes) {
  const size_t g = vm_granularity();
  const CUmemAllocationProp prop = device_prop();
  const auto base = reinterpret_cast<CUdeviceptr>(p);
  Granules& gr = granules();
  std::lock_guard lock(gr.mu);
  for (size_t at = 0; at < bytes; at += g) {
    auto h = take_granule(gr, prop);
    if (!h) {
      unmap_granules(gr, base, at);  // what this call mapped, back to the pool
      drain_pool(gr);
      size_t free = 0, total = 0;
      if (cudaMemGetInfo(&free, &total) != cudaSuccess) (void)cudaGetLastError();
      throw Error(fmt::format("out of GPU memory mapping {} bytes ({} of {} bytes free)", bytes - at, free, total));
    }
    const CUresult mapped = driver().map(base + at, g, 0, *h, 0);
    if (mapped != CUDA_SUCCESS) gr.pool.push_back(*h);
    check(mapped, "cuMemMap");
    gr.mapped[base + at] = *h;
  }
  CUmemAccessDesc access{};
  access.location = prop.location;
  access.flags = CU_MEM_ACCESS_FLAGS_PROT_READWRITE;
  check(driver().set_access(base, bytes, &access, 1), "cuMemSetAccess");
}

void vm_unmap(void* p, size_t bytes) {
  // Kernels queued before may still read or write the range: unmapping under them would fault.
  LMF_CUDA_CHECK(cudaDeviceSynchronize());
  Granules& gr = granules();
  std::lock_guard lock(gr.mu);
  unmap_granules(gr, reinterpret_cast<CUdeviceptr>(p), bytes);
}

}  // namespace

size_t virtual_memory_creates() {
  Granules& gr = granules();
  std::lock_guard lock(gr.mu);
  return gr.created;
}

const VirtualMemory& device_virtual_memory() {
  static const VirtualMemory vm{vm_granularity, vm_reserve, vm_free, vm_map, vm_unmap};
  return vm;
}

}  // namespace lmf::cuda
