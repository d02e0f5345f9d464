#include "core/memory.h"

#include <sys/mman.h>

#include <cstdlib>
#include <cstring>

#include "core/buffer.h"

namespace lmf {
namespace {

// From this size up, a buffer is its own mapping from the kernel: zero already, page-aligned, and a
// page costs memory only once it is written. A buffer sized for the worst case then holds only what
// is used: a KV cache allocated for the whole context, or a batch of caches whose shared prompt is
// written only in the first (infer/decoder.cpp). Smaller buffers come from the heap, zeroed.
constexpr size_t kMappedBytes = size_t(1) << 20;

size_t rounded_bytes(size_t bytes) { return (bytes + kAlign - 1) / kAlign * kAlign; }

void* host_allocate(size_t bytes) {
  const size_t rounded = rounded_bytes(bytes);
  if (rounded >= kMappedBytes) {
    void* p = mmap(nullptr, rounded, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED) throw Error(fmt::format("out of memory allocating {} bytes", rounded));
    return p;
  }
  void* p = std::aligned_alloc(kAlign, rounded);
  if (!p) throw Error(fmt::format("out of memory allocating {} bytes", rounded));
  std::memset(p, 0, rounded);
  return p;
}
void host_deallocate(void* p, size_t bytes) noexcept {
  const size_t rounded = rounded_bytes(bytes);
  if (rounded >= kMappedBytes)
    munmap(p, rounded);
  else
    std::free(p);
}
void host_copy(void* dst, const void* src, size_t bytes) { std::memcpy(dst, src, bytes); }
void host_zero(void* p, size_t bytes) { std::memset(p, 0, bytes); }

}  // namespace

const MemorySpace& host_memory() {
  static const MemorySpace space{"host", true, host_allocate, host_deallocate, host_copy, host_copy, host_zero};
  return space;
}

}  // namespace lmf
