#pragma once
// An owning host allocation of whole pages straight from the kernel (anonymous mmap), for the
// parameter registry's flat buffers. Pages are zero and take no memory until first touched, and
// release() hands ranges back: ZeRO stage 3 keeps only its shard of the parameters resident and
// gathers each block's into place just before it runs (train/data_parallel.h). Page-aligned, so
// also 64-byte aligned (core/buffer.h).
#include <sys/mman.h>
#include <unistd.h>

#include <cstddef>
#include <cstring>
#include <utility>
#include <vector>

#include "core/error.h"

namespace lmf {

template <class T>
class PageBuffer {
 public:
  PageBuffer() = default;
  PageBuffer(const PageBuffer&) = delete;
  PageBuffer& operator=(const PageBuffer&) = delete;
  PageBuffer(PageBuffer&& o) noexcept
      : data_(std::exchange(o.data_, nullptr)), size_(std::exchange(o.size_, 0)), bytes_(std::exchange(o.bytes_, 0)) {}
  PageBuffer& operator=(PageBuffer&& o) noexcept {
    if (this != &o) {
      unmap();
      data_ = std::exchange(o.data_, nullptr);
      size_ = std::exchange(o.size_, 0);
      bytes_ = std::exchange(o.bytes_, 0);
    }
    return *this;
  }
  ~PageBuffer() { unmap(); }

  // Reallocates: n zero values (contents are not kept).
  void resize(size_t n) {
    unmap();
    size_ = n;
    if (n == 0) return;
    bytes_ = (n * sizeof(T) + page() - 1) / page() * page();
    void* p = mmap(nullptr, bytes_, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    if (p == MAP_FAILED) throw Error(fmt::format("out of memory mapping {} bytes", bytes_));
    data_ = static_cast<T*>(p);
  }
  void zero() {
    if (size_) std::memset(static_cast<void*>(data_), 0, size_ * sizeof(T));
  }
  // Values [lo, hi) become zero, and the pages wholly inside the range go back to the kernel
  // (they take memory again when next written).
  void release(size_t lo, size_t hi) {
    if (lo >= hi) return;
    char* a = reinterpret_cast<char*>(data_ + lo);
    char* b = reinterpret_cast<char*>(data_ + hi);
    char* pa = reinterpret_cast<char*>(data_) + (size_t(a - reinterpret_cast<char*>(data_)) + page() - 1) / page() * page();
    char* pb = reinterpret_cast<char*>(data_) + size_t(b - reinterpret_cast<char*>(data_)) / page() * page();
    if (pa >= pb) {
      std::memset(a, 0, size_t(b - a));
      return;
    }
    std::memset(a, 0, size_t(pa - a));
    std::memset(pb, 0, size_t(b - pb));
    if (madvise(pa, size_t(pb - pa), MADV_DONTNEED) != 0) std::memset(pa, 0, size_t(pb - pa));  // still zero
  }
  // Pages of the buffer now resident in memory (mincore), and the total.
  size_t resident_pages() const {
    if (!size_) return 0;
    std::vector<unsigned char> v(bytes_ / page());
    if (mincore(data_, bytes_, v.data()) != 0) return v.size();
    size_t n = 0;
    for (unsigned char c : v) n += c & 1;
    return n;
  }
  size_t pages() const { return bytes_ / page(); }
  static size_t page() {
    static const size_t p = size_t(sysconf(_SC_PAGESIZE));
    return p;
  }

  T* data() { return data_; }
  const T* data() const { return data_; }
  size_t size() const { return size_; }
  size_t bytes() const { return size_ * sizeof(T); }
  T& operator[](size_t i) { return data_[i]; }
  const T& operator[](size_t i) const { return data_[i]; }

 private:
  void unmap() noexcept {
    if (data_) munmap(data_, bytes_);
    data_ = nullptr;
    size_ = bytes_ = 0;
  }
  T* data_ = nullptr;
  size_t size_ = 0, bytes_ = 0;
};

}  // namespace lmf
