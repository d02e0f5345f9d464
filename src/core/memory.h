#pragma once
// Where a buffer lives. A MemorySpace is a small table of functions (allocate, free, copy in and
// out, zero); the host's is host_memory(), a device backend brings its own (ops/backend.h), so
// core/ never depends on CUDA. Array<T> is an owning buffer in one space: the models keep their
// activations in the backend's space, ParamStore its compute copy of the parameters.
#include <cstddef>
#include <utility>

#include "core/error.h"

namespace lmf {

// Virtual memory of a space (optional): addresses reserved once, backed by physical memory in
// whole granules that can be handed back and taken again while the addresses stay, as ZeRO 3
// does with the parameters and gradients outside a rank's shard (train/data_parallel.h). CUDA's
// is the driver's virtual memory management (cuMemAddressReserve / cuMemCreate / cuMemMap);
// PagedArray (core/paged_array.h) keeps the books of which granules are backed.
struct VirtualMemory {
  size_t (*granularity)();                   // bytes of a granule (a power of two)
  void* (*reserve)(size_t bytes);            // addresses only, granule-aligned; bytes: whole granules
  void (*free)(void* p, size_t bytes) noexcept;  // addresses of reserve(), none of them mapped
  // Backs [p, p + bytes) (whole granules, not backed) with new memory, contents undefined; throws
  // lmf::Error when out of memory.
  void (*map)(void* p, size_t bytes);
  void (*unmap)(void* p, size_t bytes);  // hands [p, p + bytes) (whole backed granules) back
};

struct MemorySpace {
  const char* name;      // "host", "cuda", ...
  bool host_accessible;  // the CPU may read and write it directly
  void* (*allocate)(size_t bytes);  // zero-filled; throws lmf::Error when out of memory
  void (*deallocate)(void* p, size_t bytes) noexcept;
  void (*copy_from_host)(void* dst, const void* src, size_t bytes);  // synchronous
  void (*copy_to_host)(void* dst, const void* src, size_t bytes);    // synchronous
  void (*zero)(void* p, size_t bytes);
  const VirtualMemory* virtual_memory = nullptr;  // nullptr: the space has none
};

// Aligned host memory (64 bytes, core/buffer.h's kAlign): from the heap, or for 1 MiB and more a
// mapping of its own, whose pages take memory only once written (memory.cpp).
const MemorySpace& host_memory();

// n values of T in a MemorySpace; movable, not copyable. Contents are not kept by resize().
template <class T>
class Array {
 public:
  explicit Array(const MemorySpace& space = host_memory()) : space_(&space) {}
  Array(const Array&) = delete;
  Array& operator=(const Array&) = delete;
  Array(Array&& o) noexcept
      : space_(o.space_), data_(std::exchange(o.data_, nullptr)), size_(std::exchange(o.size_, 0)) {}
  Array& operator=(Array&& o) noexcept {
    if (this != &o) {
      release();
      space_ = o.space_;
      data_ = std::exchange(o.data_, nullptr);
      size_ = std::exchange(o.size_, 0);
    }
    return *this;
  }
  ~Array() { release(); }

  // Reallocates n zero values in the same space.
  void resize(size_t n) {
    release();
    if (n > 0) data_ = static_cast<T*>(space_->allocate(n * sizeof(T)));
    size_ = n;
  }
  void zero() {
    if (size_) space_->zero(data_, size_ * sizeof(T));
  }
  // Copies n values from / to host memory, at element offset `at` of this array.
  void upload(const T* host, size_t n, size_t at = 0) {
    LMF_CHECK(at + n <= size_, "upload of {} values at {} into an array of {}", n, at, size_);
    if (n) space_->copy_from_host(data_ + at, host, n * sizeof(T));
  }
  void download(T* host, size_t n, size_t at = 0) const {
    LMF_CHECK(at + n <= size_, "download of {} values at {} from an array of {}", n, at, size_);
    if (n) space_->copy_to_host(host, data_ + at, n * sizeof(T));
  }

  T* data() { return data_; }
  const T* data() const { return data_; }
  size_t size() const { return size_; }
  size_t bytes() const { return size_ * sizeof(T); }
  const MemorySpace& space() const { return *space_; }

 private:
  void release() noexcept {
    if (data_) space_->deallocate(data_, size_ * sizeof(T));
    data_ = nullptr;
    size_ = 0;
  }
  const MemorySpace* space_;
  T* data_ = nullptr;
  size_t size_ = 0;
};

}  // namespace lmf
