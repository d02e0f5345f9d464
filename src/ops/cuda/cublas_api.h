#pragma once
// cuBLAS and cuBLASLt, loaded (dlopen) when the first GEMM needs them, not linked. Linking them
// costs every lmforge process, CPU runs and `--help` included, cuBLASLt's start-up: about 0.1 s
// and 220 MB of host memory, before main. Loaded on demand, the binary built with CUDA also
// starts on machines without the CUDA libraries. Only these entry points are used (matmul.cu).
#include <cublasLt.h>
#include <cublas_v2.h>

namespace lmf::cuda {

// The entry points: X(member, function). Each member of CublasApi is the function of that name
// with "cublas" in front; as macro arguments, cublas_v2.h's macros turn cublasCreate and the like
// into their _v2 symbols, as they do for a direct call.
#define LMF_CUBLAS_ENTRIES(X)                                        \
  X(Create, cublasCreate)                                            \
  X(SetMathMode, cublasSetMathMode)                                  \
  X(SetAtomicsMode, cublasSetAtomicsMode)                            \
  X(SetPointerMode, cublasSetPointerMode)                            \
  X(SetStream, cublasSetStream)                                      \
  X(SetWorkspace, cublasSetWorkspace)                                \
  X(GetStatusName, cublasGetStatusName)                              \
  X(GetStatusString, cublasGetStatusString)                          \
  X(LtCreate, cublasLtCreate)                                        \
  X(LtMatmulDescCreate, cublasLtMatmulDescCreate)                    \
  X(LtMatmulDescSetAttribute, cublasLtMatmulDescSetAttribute)        \
  X(LtMatrixLayoutCreate, cublasLtMatrixLayoutCreate)                \
  X(LtMatmulPreferenceCreate, cublasLtMatmulPreferenceCreate)        \
  X(LtMatmulPreferenceSetAttribute, cublasLtMatmulPreferenceSetAttribute) \
  X(LtMatmulPreferenceDestroy, cublasLtMatmulPreferenceDestroy)      \
  X(LtMatmulAlgoGetHeuristic, cublasLtMatmulAlgoGetHeuristic)        \
  X(LtMatmul, cublasLtMatmul)

// cublasGemmEx, the C function: C++ also sees an inline overload taking a cudaDataType compute type.
using CublasGemmEx = cublasStatus_t (*)(cublasHandle_t, cublasOperation_t, cublasOperation_t, int, int, int,
                                        const void*, const void*, cudaDataType, int, const void*, cudaDataType, int,
                                        const void*, void*, cudaDataType, int, cublasComputeType_t, cublasGemmAlgo_t);

#define LMF_CUBLAS_MEMBER(member, fn) decltype(&::fn) member = nullptr;
struct CublasApi {
  LMF_CUBLAS_ENTRIES(LMF_CUBLAS_MEMBER)
  CublasGemmEx GemmEx = nullptr;  // cublasGemmEx
};
#undef LMF_CUBLAS_MEMBER

// The entry points, the libraries loaded on the first call (thread-safe). UserError naming the
// library when it cannot be found (searched as dlopen does: LD_LIBRARY_PATH, the system's paths,
// then the CUDA toolkit's library directory of the build) or lacks an entry point. Under the CPU
// emulation (tests/cuda_emu), the emulation's functions.
const CublasApi& cublas();

}  // namespace lmf::cuda
