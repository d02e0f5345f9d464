#pragma once
// bf16 GEMM pieces shared by the CUDA ops (ops/cuda/matmul.cu defines them). Include from .cu
// only. bf16 values are raw bits (uint16_t), as the tensor cores read them.
#include <cuda_runtime.h>

#include <cstddef>
#include <cstdint>

namespace lmf::cuda::detail {

// Column-major C (m, n) = op(A) op(B) + beta C with A, B bf16, C fp32, fp32 accumulation
// (cuBLAS, CUBLAS_COMPUTE_32F: the products of two bf16 are exact, as FAST_16BF's are).
void gemm_bf16(cudaStream_t stream, bool trans_a, bool trans_b, int m, int n, int k, const uint16_t* A, int lda,
               const uint16_t* B, int ldb, float beta, float* C, int ldc);
// The same with a bf16 C (bf16 storage's outputs): C = round(op(A) op(B) + beta C), one rounding
// to nearest even of the fp32 result.
void gemm_bf16(cudaStream_t stream, bool trans_a, bool trans_b, int m, int n, int k,
               const uint16_t* A, int lda, const uint16_t* B, int ldb, float beta, uint16_t* C,
               int ldc);

// dst (n) = src (n) rounded to bf16 (to nearest, ties to even: ops::round_operand's bf16).
void round_to_bf16(uint16_t* dst, const float* src, size_t n, cudaStream_t stream);

}  // namespace lmf::cuda::detail
