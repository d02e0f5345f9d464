#include "core/memory.h"

#include <cstdlib>
#include <cstring>

#include "core/buffer.h"

namespace lmf {
namespace {

void* host_allocate(size_t bytes) {
  const size_t rounded = (bytes + kAlign - 1) / kAlign * kAlign;
  void* p = std::aligned_alloc(kAlign, rounded);
  if (!p) throw Error(fmt::format("out of memory allocating {} bytes", rounded));
  std::memset(p, 0, rounded);
  return p;
}
void host_deallocate(void* p, size_t) noexcept { std::free(p); }
void host_copy(void* dst, const void* src, size_t bytes) { std::memcpy(dst, src, bytes); }
void host_zero(void* p, size_t bytes) { std::memset(p, 0, bytes); }

}  // namespace

const MemorySpace& host_memory() {
  static const MemorySpace space{"host", true, host_allocate, host_deallocate, host_copy, host_copy, host_zero};
  return space;
}

}  // namespace lmf
