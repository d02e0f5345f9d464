#pragma once
// The device side of the CPU emulation of CUDA (tests/cuda_emu/README.md): what a .cu file of
// src/ops/cuda needs to compile as C++ and run its kernels on the host.
//
// A launch (LMF_LAUNCH, ops/cuda/launch.cuh) runs the grid's blocks one after another. A block's
// threads are fibers (ucontext) on the calling thread: each runs until it reaches a
// synchronisation point (__syncthreads, __syncwarp, a shuffle) or returns, and a barrier opens
// when every thread still running has reached it, as on a GPU, where exited threads no longer
// count. A block whose threads wait at barriers that can never open (a __syncthreads some
// threads skip, a shuffle inside a branch that splits a warp) aborts the process with a message:
// on a GPU that is a hang or undefined behaviour. __shared__ variables are statics: shared by
// the threads of a block, and, since blocks run in turn, by the blocks one at a time.
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <functional>
#include <string>
#include <tuple>
#include <type_traits>
#include <utility>

#include "include/cuda_runtime_api.h"

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __launch_bounds__(...)
#define __shared__ static

namespace lmf::emu {

struct Index {
  unsigned x = 0, y = 0, z = 0;
};
extern thread_local Index t_thread, t_block;
extern thread_local dim3 t_block_dim, t_grid_dim;

// Runs body() as every thread of every block of the grid, after checking the launch against the
// limits of an sm_90 GPU (a failing check aborts with a message, as the launch would fail there).
void run_grid(const void* kernel, dim3 grid, dim3 block, size_t shared_bytes, const std::function<void()>& body);
// The order of blocks and threads from now on, as LMF_EMU_SCHEDULE gives it at start-up (emu.cpp):
// "forward", "reverse", "shuffle", "shuffle:SEED" or "warps"; restarts this host thread's shuffles. Aborts
// on anything else. For tests, before any other host thread launches.
void set_schedule(const std::string& spec);
// Aborts unless p is a multiple of `bytes`: a vector access (pack.cuh) at a misaligned address
// faults on a GPU.
void check_aligned(const void* p, size_t bytes);
// cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, bytes).
void set_max_dynamic_shared(const void* kernel, int bytes);
void sync_threads();
void sync_warp();
// The calling thread posts v; returns what lane src of its warp posted at the same point.
uint64_t exchange(uint64_t v, int src);
int lane();
void* dynamic_shared_ptr();
// The bf16 bits of x rounded to nearest even (NaN stays NaN), as cvt.rn.bf16.f32.
uint32_t bf16_bits(float x);
// mma.sync.m16n8k16.row.col.f32.bf16.bf16.f32 for the calling warp, in PTX's fragment layouts
// (src/ops/cuda/mma.cuh): every lane posts its a and b, and computes its own d += A B from all
// of them, each output a sum in k order of exact products. All 32 lanes must take part.
void mma_bf16_16816(float (&d)[4], const uint32_t (&a)[4], const uint32_t (&b)[2]);

template <class T>
T* dynamic_shared() {
  return static_cast<T*>(dynamic_shared_ptr());
}

// Runs `work` now, or, on a stream that is capturing (cudaStreamBeginCapture), records it for the
// graph's launches. Work on the legacy stream while a capture is under way is refused, as the
// runtime refuses it: the capture is invalidated, and the error is returned and left for
// cudaGetLastError.
cudaError_t enqueue(cudaStream_t s, std::function<void()> work);

template <class... P>
struct Launcher {
  void (*kernel)(P...);
  dim3 grid, block;
  size_t shared_bytes;
  cudaStream_t stream;
  template <class... A>
  void operator()(A&&... args) const {
    // The arguments converted once to the kernel's parameter types, at the launch (a graph keeps
    // them as they were then); every thread gets copies, as CUDA copies them to each thread.
    const std::tuple<std::decay_t<P>...> params(std::forward<A>(args)...);
    auto k = kernel;
    const dim3 g = grid, b = block;
    const size_t sh = shared_bytes;
    enqueue(stream, [k, g, b, sh, params] {
      run_grid(reinterpret_cast<const void*>(k), g, b, sh, [&] { std::apply(k, params); });
    });
  }
};

template <class... P>
Launcher<P...> launcher(void (*kernel)(P...), dim3 grid, dim3 block, size_t shared_bytes, cudaStream_t stream) {
  return {kernel, grid, block, shared_bytes, stream};
}

template <class T>
T shuffle(T v, int src) {
  static_assert(sizeof(T) <= sizeof(uint64_t) && std::is_trivially_copyable_v<T>);
  uint64_t in = 0, out = 0;
  std::memcpy(&in, &v, sizeof(T));
  out = exchange(in, src);
  T r;
  std::memcpy(&r, &out, sizeof(T));
  return r;
}

}  // namespace lmf::emu

#define threadIdx (::lmf::emu::t_thread)
#define blockIdx (::lmf::emu::t_block)
#define blockDim (::lmf::emu::t_block_dim)
#define gridDim (::lmf::emu::t_grid_dim)

// CUDA's global min and max for the integer types.
#define LMF_EMU_MINMAX(T)                            \
  inline T min(T a, T b) { return b < a ? b : a; } \
  inline T max(T a, T b) { return a < b ? b : a; }
LMF_EMU_MINMAX(int)
LMF_EMU_MINMAX(unsigned)
LMF_EMU_MINMAX(long)
LMF_EMU_MINMAX(unsigned long)
LMF_EMU_MINMAX(long long)
LMF_EMU_MINMAX(unsigned long long)
#undef LMF_EMU_MINMAX

inline void __syncthreads() { ::lmf::emu::sync_threads(); }
inline void __syncwarp(unsigned = 0xffffffffu) { ::lmf::emu::sync_warp(); }

template <class T>
T __shfl_sync(unsigned, T v, int src, int width = 32) {
  const int lane = ::lmf::emu::lane();
  return ::lmf::emu::shuffle(v, lane - lane % width + src % width);
}
template <class T>
T __shfl_xor_sync(unsigned, T v, int mask, int width = 32) {
  const int lane = ::lmf::emu::lane(), partner = lane ^ mask;
  // A partner outside the lane's group of `width` gives the lane its own value, as CUDA does.
  return ::lmf::emu::shuffle(v, partner / width == lane / width ? partner : lane);
}

// One host thread runs a block's fibers, switching only at synchronisation points: atomics are
// plain read-modify-writes.
inline unsigned atomicMin(unsigned* p, unsigned v) {
  const unsigned old = *p;
  if (v < old) *p = v;
  return old;
}
