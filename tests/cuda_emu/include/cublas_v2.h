#pragma once
// cuBLAS as src/ops/cuda/matmul.cu uses it, for the CPU emulation of CUDA: cublasGemmEx on fp32
// column-major buffers through OpenBLAS's sgemm; the FAST_TF32 / FAST_16BF compute types round
// the operands first (ops::round_operand), as the CPU backend's emulation of those modes does.
// bf16 operands (CUDA_R_16BF) are widened to fp32 exactly first; with them C may be fp32 or bf16
// (computed on C widened, each result rounded once to nearest even).
#include "cuda_runtime_api.h"

enum cublasStatus_t {
  CUBLAS_STATUS_SUCCESS = 0,
  CUBLAS_STATUS_INVALID_VALUE = 7,
  CUBLAS_STATUS_EXECUTION_FAILED = 13,
  CUBLAS_STATUS_NOT_SUPPORTED = 15,
};
enum cublasOperation_t { CUBLAS_OP_N = 0, CUBLAS_OP_T = 1 };
enum cublasMath_t { CUBLAS_DEFAULT_MATH = 0 };
enum cublasAtomicsMode_t { CUBLAS_ATOMICS_NOT_ALLOWED = 0 };
enum cublasPointerMode_t { CUBLAS_POINTER_MODE_HOST = 0 };
enum cublasComputeType_t {
  CUBLAS_COMPUTE_32F = 68,
  CUBLAS_COMPUTE_32F_FAST_16BF = 75,
  CUBLAS_COMPUTE_32F_FAST_TF32 = 77,
};
enum cublasGemmAlgo_t { CUBLAS_GEMM_DEFAULT = -1 };
enum cudaDataType_t { CUDA_R_32F = 0, CUDA_R_16BF = 14 };
struct cublasContext;
using cublasHandle_t = cublasContext*;

cublasStatus_t cublasCreate(cublasHandle_t* h);
cublasStatus_t cublasSetMathMode(cublasHandle_t h, cublasMath_t m);
cublasStatus_t cublasSetAtomicsMode(cublasHandle_t h, cublasAtomicsMode_t m);
cublasStatus_t cublasSetPointerMode(cublasHandle_t h, cublasPointerMode_t m);
// The stream the handle's GEMMs are enqueued on (recorded there while it captures).
cublasStatus_t cublasSetStream(cublasHandle_t h, cudaStream_t s);
// The handle's workspace (a GEMM here needs none; checked for a non-null handle).
cublasStatus_t cublasSetWorkspace(cublasHandle_t h, void* workspace, size_t bytes);
const char* cublasGetStatusName(cublasStatus_t s);
const char* cublasGetStatusString(cublasStatus_t s);
cublasStatus_t cublasGemmEx(cublasHandle_t h, cublasOperation_t ta, cublasOperation_t tb, int m, int n, int k,
                            const void* alpha, const void* A, cudaDataType_t at, int lda, const void* B,
                            cudaDataType_t bt, int ldb, const void* beta, void* C, cudaDataType_t ct, int ldc,
                            cublasComputeType_t compute, cublasGemmAlgo_t algo);
