#pragma once
// GELU's tanh form and its derivative, in float, as every CUDA kernel computes them
// (elementwise.cu) and as the CPU emulation's cuBLASLt GELU epilogues do (tests/cuda_emu/emu.cpp):
// one definition, so that the emulated epilogues and the kernels agree bit for bit. Same formulas
// as ops/cpu/gelu.cpp (tanhf, no fast math). Device and host code; include from .cu (or the
// emulation) only.

#include <cmath>

namespace lmf::cuda::detail {

constexpr float kGeluSqrt2OverPi = 0.7978845608028654f;
constexpr float kGeluCubic = 0.044715f;

__host__ __device__ __forceinline__ float gelu(float x) {
  const float u = kGeluSqrt2OverPi * (x + kGeluCubic * x * x * x);
  return 0.5f * x * (1.0f + tanhf(u));
}

// gelu'(x) dout, gelu'(x) = 0.5 (1 + tanh u) + 0.5 x (1 - tanh^2 u) du/dx, du/dx = s (1 + 3 a x^2).
__host__ __device__ __forceinline__ float gelu_grad(float x, float dout) {
  const float th = tanhf(kGeluSqrt2OverPi * (x + kGeluCubic * x * x * x));
  const float dudx = kGeluSqrt2OverPi * (1.0f + 3.0f * kGeluCubic * x * x);
  return (0.5f * (1.0f + th) + 0.5f * x * (1.0f - th * th) * dudx) * dout;
}

}  // namespace lmf::cuda::detail
