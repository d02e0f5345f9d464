#pragma once
// Per-thread scratch that grows and is kept, so hot kernels called every step (attention) do not
// allocate on each call. Contents are not preserved across calls; a slot is one buffer.
#include <cstddef>

#include "core/buffer.h"

namespace lmf::ops::cpu {

// Returns at least n elements of thread-local storage for (T, Slot). Valid until the next call
// with the same (T, Slot) on this thread.
template <class T, int Slot>
T* thread_scratch(size_t n) {
  thread_local Buffer<T> buf;
  if (buf.size() < n) buf.resize(n);
  return buf.data();
}

}  // namespace lmf::ops::cpu
