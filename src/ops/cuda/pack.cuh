#pragma once
// Vectorised loads and stores for the memory-bound kernels (device and host code; include from .cu
// only). A thread handles K consecutive elements at a time: K = 1, one element (the plain path), or
// K = kVec = 8, read and written as 16-byte accesses (one for bf16, two for float: LDG.128/STG.128,
// the widest a thread can issue). With 2-byte bf16 elements, one access per element leaves most of
// the memory system's width unused; 16 bytes per access is what the memory-bound kernels need to
// approach the bandwidth. Values are widened to float and rounded on the way out exactly as
// bf16.cuh's load and store do, so the arithmetic, and for elementwise kernels the bits, are those
// of the plain path.
//
// The 16-byte path needs every pointer 16-byte aligned. vec_split launches it over the whole
// groups of kVec elements when they are, and the plain path over the rest (or everything).
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <type_traits>

#include "ops/cuda/bf16.cuh"
#include "ops/cuda/cuda_util.h"
#include "ops/cuda/launch.cuh"
#include "ops/cuda/ops_cuda.h"

namespace lmf::cuda::detail {

constexpr int kVec = 8;  // elements of a vectorised group: 16 bytes of bf16, 32 of float

// One 16-byte access. The address must be 16-byte aligned: a GPU faults on it otherwise
// ("misaligned address"), and so does the CPU emulation, on purpose.
template <class T>
__device__ __forceinline__ void load16(T* dst, const T* src) {
#ifdef __CUDA_ARCH__
  const uint4 u = *reinterpret_cast<const uint4*>(src);
  memcpy(dst, &u, 16);
#else
#ifdef LMF_CUDA_EMU
  ::lmf::emu::check_aligned(src, 16);
#endif
  std::memcpy(dst, src, 16);
#endif
}

template <class T>
__device__ __forceinline__ void store16(T* dst, const T* src) {
#ifdef __CUDA_ARCH__
  uint4 u;
  memcpy(&u, src, 16);
  *reinterpret_cast<uint4*>(dst) = u;
#else
#ifdef LMF_CUDA_EMU
  ::lmf::emu::check_aligned(dst, 16);
#endif
  std::memcpy(dst, src, 16);
#endif
}

// f = p[0, K) widened to float.
template <int K, class T>
__device__ __forceinline__ void load_n(float (&f)[K], const T* p) {
  if constexpr (K == 1) {
    f[0] = load(p);
  } else {
    constexpr int kPer = 16 / int(sizeof(T));
    static_assert(K % kPer == 0, "a group is whole 16-byte accesses");
#pragma unroll
    for (int j = 0; j < K / kPer; ++j) {
      T v[kPer];
      load16(v, p + j * kPer);
#pragma unroll
      for (int i = 0; i < kPer; ++i) f[j * kPer + i] = load(v + i);
    }
  }
}

// p[0, K) = f, each rounded to T as store() rounds.
template <int K, class T>
__device__ __forceinline__ void store_n(T* p, const float (&f)[K]) {
  if constexpr (K == 1) {
    store(p, f[0]);
  } else {
    constexpr int kPer = 16 / int(sizeof(T));
    static_assert(K % kPer == 0, "a group is whole 16-byte accesses");
#pragma unroll
    for (int j = 0; j < K / kPer; ++j) {
      T v[kPer];
#pragma unroll
      for (int i = 0; i < kPer; ++i) store(v + i, f[j * kPer + i]);
      store16(p + j * kPer, v);
    }
  }
}

inline bool aligned16(const void* p) { return reinterpret_cast<uintptr_t>(p) % 16 == 0; }

// True when the vectorised path may run: it is on (vectorised_access, ops_cuda.h) and every
// pointer is 16-byte aligned.
template <class... P>
bool all_aligned16(const P*... p) {
  return vectorised_access() && (aligned16(p) && ...);
}

// Splits n elements between the two paths: launch(K, offset, groups) for K = kVec over
// [0, groups * kVec) when every pointer is 16-byte aligned, then for K = 1 over what is left.
// K arrives as std::integral_constant<int, K>; offset is in elements, groups in groups of K.
template <class Launch, class... P>
void vec_split(size_t n, Launch launch, const P*... ptrs) {
  const size_t groups = all_aligned16(ptrs...) ? n / kVec : 0;
  if (groups > 0) launch(std::integral_constant<int, kVec>{}, size_t(0), groups);
  const size_t done = groups * kVec;
  if (done < n) launch(std::integral_constant<int, 1>{}, done, n - done);
}

// An elementwise kernel over n elements, split as vec_split says: kernel_of(K) is the kernel for
// groups of K, taking (ptrs + offset..., groups); one launch of grid_for(groups) blocks of
// kThreads per path.
template <class KernelOf, class... P>
void launch_groups(size_t n, cudaStream_t stream, KernelOf kernel_of, P*... ptrs) {
  vec_split(
      n,
      [&](auto k, size_t at, size_t groups) {
        const auto kernel = kernel_of(k);
        LMF_LAUNCH(kernel, grid_for(groups), kThreads, 0, stream)((ptrs + at)..., groups);
        LMF_CUDA_CHECK_LAUNCH();
      },
      static_cast<const P*>(ptrs)...);
}

// Rows of C elements, for the kernels that give each row to one warp: f(K) with K =
// std::integral_constant<int, kVec> when every row starts 16-byte aligned (C a multiple of kVec and
// every pointer aligned), else K = 1. Lane l then takes the groups of K columns starting at
// c = K (l + 32 j), j = 0, 1, ...: for K = 1 the columns c = l (mod 32).
template <class F, class... P>
void with_row_vec(int C, F f, const P*... ptrs) {
  if (C % kVec == 0 && all_aligned16(ptrs...)) {
    f(std::integral_constant<int, kVec>{});
  } else {
    f(std::integral_constant<int, 1>{});
  }
}

}  // namespace lmf::cuda::detail
