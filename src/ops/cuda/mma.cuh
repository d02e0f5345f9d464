#pragma once
// Warp-level tensor-core products (device code; include from .cu only): the bf16 mma.sync of
// sm_80+, m16n8k16, fp32 accumulate, and the bf16x2 packing its operands need. The fragment
// layouts are PTX's ("Matrix Fragments for mma.m16n8k16 with floating point type"); with
// g = lane / 4 and c = lane % 4, a lane holds
//   A (16 x 16, row major), four 32-bit registers of two bf16 (low half = lower column):
//     a[0] = A[g][2c, 2c+1]   a[1] = A[g+8][2c, 2c+1]   a[2] = A[g][2c+8, 2c+9]   a[3] = A[g+8][2c+8, 2c+9]
//   B (16 x 8, "col": element (k, n)), two registers:
//     b[0] = B[2c, 2c+1][g]   b[1] = B[2c+8, 2c+9][g]
//   C, D (16 x 8, fp32), four floats:
//     d[0] = D[g][2c]   d[1] = D[g][2c+1]   d[2] = D[g+8][2c]   d[3] = D[g+8][2c+1]
// so the D fragments of two adjacent n-tiles (columns 8j.. and 8j+8..), packed to bf16, are
// exactly the A fragment of the 16 x 16 block they form (FlashAttention-2 keeps P in registers
// this way).
//
// Under the CPU emulation of CUDA (tests/cuda_emu) the same layouts are implemented by a
// warp-collective function (emu::mma_bf16_16816): every lane posts its fragments, and each lane
// computes its four outputs from all of them, each a sum in k order of exact products (a product
// of two bf16 is exact in fp32) onto c. The tensor cores' accumulation order and internal rounding
// are their own; tests bound the difference (tests/gpu/test_cuda_attention.cpp).
#include <cstdint>
#include <cstring>

namespace lmf::cuda::detail {

// (lo, hi) rounded to bf16 (to nearest, ties to even) and packed: lo in the low 16 bits.
__device__ __forceinline__ uint32_t pack_bf16(float lo, float hi) {
#ifdef LMF_CUDA_EMU
  return ::lmf::emu::bf16_bits(lo) | (::lmf::emu::bf16_bits(hi) << 16);
#else
  uint32_t r;
  // cvt packs its first source into the upper half.
  asm("cvt.rn.bf16x2.f32 %0, %1, %2;" : "=r"(r) : "f"(hi), "f"(lo));
  return r;
#endif
}

// 8 floats rounded to bf16 and packed in pairs, element 2e in the low half of w[e] (pack_bf16).
__device__ __forceinline__ void pack_bf16x8(uint32_t (&w)[4], const float (&x)[8]) {
#pragma unroll
  for (int e = 0; e < 4; ++e) w[e] = pack_bf16(x[2 * e], x[2 * e + 1]);
}

// d = A b + d for one warp (all 32 lanes must call it together), layouts above.
__device__ __forceinline__ void mma_bf16_16816(float (&d)[4], const uint32_t (&a)[4],
                                               const uint32_t (&b)[2]) {
#ifdef LMF_CUDA_EMU
  ::lmf::emu::mma_bf16_16816(d, a, b);
#else
  asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, "
      "{%8, %9}, {%0, %1, %2, %3};"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
#endif
}

// Two consecutive bf16 of a shared row (index i even, the row 4-byte aligned), as one register:
// one 32-bit access on the GPU; a memcpy on the host, where the cast would break strict aliasing.
__device__ __forceinline__ uint32_t load_pair(const uint16_t* row, int i) {
#ifdef LMF_CUDA_EMU
  uint32_t w;
  std::memcpy(&w, row + i, sizeof w);
  return w;
#else
  return *reinterpret_cast<const uint32_t*>(row + i);
#endif
}
__device__ __forceinline__ void store_pair(uint16_t* row, int i, uint32_t w) {
#ifdef LMF_CUDA_EMU
  std::memcpy(row + i, &w, sizeof w);
#else
  *reinterpret_cast<uint32_t*>(row + i) = w;
#endif
}

// The bf16 of x (round to nearest even), for a shared tile.
__device__ __forceinline__ uint16_t to_bf16(float x) {
  return (uint16_t)(pack_bf16(x, 0.0f) & 0xffffu);
}

}  // namespace lmf::cuda::detail
