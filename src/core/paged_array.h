#pragma once
// n values of T in a MemorySpace whose physical memory can be handed back (release) and taken
// again (commit) in whole granules while the addresses stay. The device copy of the parameter
// registry's flat buffers (core/param_store.h) is one, so that ZeRO 3 keeps a rank's shard and the
// blocks in use backed, and nothing else (train/data_parallel.h): the device's counterpart of the
// host's PageBuffer, except that a device cannot fault a page in on first touch, so whoever is
// about to write or read a released range commits it first.
//
// Released values read as zero once committed again. In a space without virtual memory it is a
// plain allocation: release zeroes, commit does nothing, everything stays resident.
#include <cstddef>
#include <cstring>
#include <utility>
#include <vector>

#include "core/error.h"
#include "core/memory.h"

namespace lmf {

template <class T>
class PagedArray {
 public:
  explicit PagedArray(const MemorySpace& space = host_memory()) : space_(&space) {}
  PagedArray(const PagedArray&) = delete;
  PagedArray& operator=(const PagedArray&) = delete;
  PagedArray(PagedArray&& o) noexcept { take(o); }
  PagedArray& operator=(PagedArray&& o) noexcept {
    if (this != &o) {
      reset();
      take(o);
    }
    return *this;
  }
  ~PagedArray() { reset(); }

  // Reallocates n zero values, all backed (contents are not kept).
  void resize(size_t n) {
    reset();
    if (n == 0) return;
    const VirtualMemory* vm = space_->virtual_memory;
    if (!vm) {
      data_ = static_cast<T*>(space_->allocate(n * sizeof(T)));
      size_ = n;
      return;
    }
    granule_ = vm->granularity();
    LMF_CHECK(granule_ > 0 && (granule_ & (granule_ - 1)) == 0, "granule of {} bytes", granule_);
    bytes_ = (n * sizeof(T) + granule_ - 1) / granule_ * granule_;
    data_ = static_cast<T*>(vm->reserve(bytes_));
    size_ = n;
    backed_.assign(bytes_ / granule_, 0);
    try {
      commit(0, n);
    } catch (...) {
      reset();
      throw;
    }
  }

  T* data() { return data_; }
  const T* data() const { return data_; }
  size_t size() const { return size_; }
  size_t bytes() const { return size_ * sizeof(T); }
  const MemorySpace& space() const { return *space_; }
  bool paged() const { return granule_ > 0; }

  // Values [lo, hi) become zero, and the granules wholly inside go back to the space.
  void release(size_t lo, size_t hi) {
    if (lo >= hi) return;
    LMF_CHECK(hi <= size_, "release of [{}, {}) in an array of {}", lo, hi, size_);
    if (!paged()) return space_->zero(data_ + lo, (hi - lo) * sizeof(T));
    const size_t a = lo * sizeof(T), b = hi * sizeof(T);
    // The edges of the range inside granules that stay (partly outside it) are zeroed in place.
    for (size_t g = a / granule_, last = (b - 1) / granule_; g <= last; ++g) {
      const size_t g0 = g * granule_, g1 = std::min(g0 + granule_, bytes());
      const size_t x = std::max(a, g0), y = std::min(b, g1);
      if (backed_[g] && !(x == g0 && y == g1)) space_->zero(byte_ptr() + x, y - x);
    }
    const size_t first = (a + granule_ - 1) / granule_;
    const size_t end =
        b == bytes() ? backed_.size() : b / granule_;  // the last granule's tail is unused
    for_runs(first, end, true, [&](size_t g, size_t n) {
      space_->virtual_memory->unmap(byte_ptr() + g * granule_, n * granule_);
      std::fill(backed_.begin() + long(g), backed_.begin() + long(g + n), 0);
    });
  }

  // Every granule that holds a value of [lo, hi) is backed again; values that were released read
  // zero.
  void commit(size_t lo, size_t hi) {
    if (lo >= hi || !paged()) return;
    LMF_CHECK(hi <= size_, "commit of [{}, {}) in an array of {}", lo, hi, size_);
    const size_t first = lo * sizeof(T) / granule_, end = (hi * sizeof(T) - 1) / granule_ + 1;
    for_runs(first, end, false, [&](size_t g, size_t n) {
      space_->virtual_memory->map(byte_ptr() + g * granule_, n * granule_);
      std::fill(backed_.begin() + long(g), backed_.begin() + long(g + n), 1);
      space_->zero(byte_ptr() + g * granule_, n * granule_);
    });
  }
  // True when every value of [lo, hi) is backed.
  bool committed(size_t lo, size_t hi) const {
    if (lo >= hi || !paged()) return true;
    for (size_t g = lo * sizeof(T) / granule_, end = (hi * sizeof(T) - 1) / granule_ + 1; g < end;
         ++g)
      if (!backed_[g]) return false;
    return true;
  }

  // Every value zero (released granules stay released).
  void zero() {
    if (!paged()) {
      if (size_) space_->zero(data_, bytes());
      return;
    }
    for_runs(0, backed_.size(), true, [&](size_t g, size_t n) {
      space_->zero(byte_ptr() + g * granule_, std::min(n * granule_, bytes() - g * granule_));
    });
  }
  // Copies n values from host memory to [at, at + n), which must be committed.
  void upload(const T* host, size_t n, size_t at = 0) {
    LMF_CHECK(at + n <= size_, "upload of {} values at {} into an array of {}", n, at, size_);
    LMF_CHECK(committed(at, at + n), "upload into released values [{}, {})", at, at + n);
    if (n) space_->copy_from_host(data_ + at, host, n * sizeof(T));
  }
  // Copies [at, at + n) to host memory; released values arrive as zeros.
  void download(T* host, size_t n, size_t at = 0) const {
    LMF_CHECK(at + n <= size_, "download of {} values at {} from an array of {}", n, at, size_);
    if (n == 0) return;
    if (!paged()) return space_->copy_to_host(host, data_ + at, n * sizeof(T));
    const size_t a = at * sizeof(T), b = (at + n) * sizeof(T);
    auto* out = reinterpret_cast<char*>(host) - a;  // out + x is where byte x of the array goes
    for (bool backed : {true, false})
      for_runs(a / granule_, (b - 1) / granule_ + 1, backed, [&](size_t g, size_t k) {
        const size_t x = std::max(a, g * granule_), y = std::min(b, (g + k) * granule_);
        if (backed)
          space_->copy_to_host(out + x, byte_ptr() + x, y - x);
        else
          std::memset(out + x, 0, y - x);
      });
  }
  // Bytes of physical memory behind the array now.
  size_t resident_bytes() const {
    if (!paged()) return bytes();
    size_t n = 0;
    for (char c : backed_) n += size_t(c);
    return n * granule_;
  }

 private:
  char* byte_ptr() const { return reinterpret_cast<char*>(data_); }
  // fn(first, count) for each maximal run of granules in [g0, g1) whose backed state is `backed`.
  template <class Fn>
  void for_runs(size_t g0, size_t g1, bool backed, Fn&& fn) const {
    for (size_t g = g0; g < g1;) {
      if (bool(backed_[g]) != backed) {
        ++g;
        continue;
      }
      size_t e = g + 1;
      while (e < g1 && bool(backed_[e]) == backed) ++e;
      fn(g, e - g);
      g = e;
    }
  }
  void take(PagedArray& o) noexcept {
    space_ = o.space_;
    data_ = std::exchange(o.data_, nullptr);
    size_ = std::exchange(o.size_, 0);
    bytes_ = std::exchange(o.bytes_, 0);
    granule_ = std::exchange(o.granule_, 0);
    backed_ = std::move(o.backed_);
    o.backed_.clear();
  }
  void reset() noexcept {
    if (data_ && paged()) {
      const VirtualMemory* vm = space_->virtual_memory;
      try {
        for_runs(0, backed_.size(), true,
                 [&](size_t g, size_t n) { vm->unmap(byte_ptr() + g * granule_, n * granule_); });
      } catch (...) {
        // A device that is already gone (at exit): its memory goes with it.
      }
      vm->free(data_, bytes_);
    } else if (data_) {
      space_->deallocate(data_, bytes());
    }
    data_ = nullptr;
    size_ = bytes_ = granule_ = 0;
    backed_.clear();
  }

  const MemorySpace* space_;
  T* data_ = nullptr;
  size_t size_ = 0;
  size_t bytes_ = 0;          // reserved: whole granules (paged only)
  size_t granule_ = 0;        // 0: not paged (the space has no virtual memory)
  std::vector<char> backed_;  // per granule: physical memory behind it now
};

}  // namespace lmf
