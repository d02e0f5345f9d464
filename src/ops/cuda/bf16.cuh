#pragma once
// Storage types of the CUDA kernels (device and host code; include from .cu only): a kernel
// templated over T in {float, lmf::bf16} loads T as float, computes in float, and stores float
// rounded to T. For T = float load and store are plain accesses, so a float kernel's code and bits
// are those it had before the template. For bf16 the rounding is core/half.h's float_to_bf16 bit
// for bit (to nearest even, a NaN stays a NaN with its payload's top bits), by integer arithmetic
// on the float's bits, so nvcc and the CPU emulation (tests/cuda_emu) round alike; cvt.rn
// (mma.cuh's pack_bf16) differs from it only in the NaN it returns.
#include <cstdint>
#include <cstring>

#include "core/half.h"

namespace lmf::cuda::detail {

__host__ __device__ __forceinline__ uint32_t float_bits(float f) {
#ifdef __CUDA_ARCH__
  return __float_as_uint(f);
#else
  uint32_t u;
  std::memcpy(&u, &f, sizeof u);
  return u;
#endif
}

__host__ __device__ __forceinline__ float bits_float(uint32_t u) {
#ifdef __CUDA_ARCH__
  return __uint_as_float(u);
#else
  float f;
  std::memcpy(&f, &u, sizeof f);
  return f;
#endif
}

// float_to_bf16 (core/half.h), for device code.
__host__ __device__ __forceinline__ uint16_t round_to_bf16_bits(float f) {
  uint32_t u = float_bits(f);
  if ((u & 0x7fffffffu) > 0x7f800000u) return (uint16_t)((u >> 16) | 0x0040u);  // NaN stays NaN
  u += 0x7fffu + ((u >> 16) & 1u);  // round to nearest even, then truncate
  return (uint16_t)(u >> 16);
}

__host__ __device__ __forceinline__ float bf16_bits_to_float(uint16_t h) {
  return bits_float(uint32_t{h} << 16);
}

// One element of storage type T, as float, and back.
__device__ __forceinline__ float load(const float* p) { return *p; }
__device__ __forceinline__ float load(const bf16* p) { return bf16_bits_to_float(p->bits); }
__device__ __forceinline__ void store(float* p, float v) { *p = v; }
__device__ __forceinline__ void store(bf16* p, float v) { p->bits = round_to_bf16_bits(v); }

// v as T stores it, back in float: v itself for float, v rounded to bf16 for bf16. A kernel that
// reads back what it stored (the fused residual + norm) uses this to see the stored value.
template <class T>
__device__ __forceinline__ float as_stored(float v) {
  if constexpr (sizeof(T) == sizeof(float)) {
    return v;
  } else {
    return bf16_bits_to_float(round_to_bf16_bits(v));
  }
}

}  // namespace lmf::cuda::detail
