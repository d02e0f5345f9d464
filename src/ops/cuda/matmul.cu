// Linear layer on the GPU over cuBLAS: out = inp @ w^T + bias and its backward, the same
// semantics as ops/cpu/matmul.cpp (OpenBLAS), fp32 in, fp32 out, fp32 accumulation.
//
// Precision (ops::MatmulPrecision, a parameter of every call): fp32 is cublasGemmEx with
// CUBLAS_COMPUTE_32F on a handle in CUBLAS_DEFAULT_MATH, so inputs are never rounded to TF32 or
// BF16: results agree with the CPU op to fp32 rounding error, which the GPU tests bound. tf32 and
// bf16 are CUBLAS_COMPUTE_32F_FAST_TF32 / _FAST_16BF on the same fp32 buffers: cuBLAS converts
// the operands and runs the tensor cores, accumulating in fp32; the CPU's emulation of the same
// mode (ops/cpu/matmul_precision.cpp) is the reference, within the bound the tests derive from
// the operand precision and the reduction length. The bias (a broadcast before the GEMM, beta = 1)
// and its gradient stay fp32 in every mode.
//
// Layout: our buffers are row-major, cuBLAS is column-major. A row-major (R, K) matrix is the
// column-major (K, R) matrix, its transpose, with leading dimension K. So each product is written
// for the transposes, (A B)^T = B^T A^T, and every operand is read as stored:
//   out (N, OC) = inp (N, C) @ w^T       <=>  out^T (OC, N) = op(w buffer) inp^T,
//        w buffer is col-major (C, OC) = w^T, so op = T;  inp buffer is inp^T (C, N), op = N.
//   dinp (N, C) = dout (N, OC) @ w       <=>  dinp^T (C, N) = w^T dout^T: both buffers as stored.
//   dw (OC, C) += dout^T @ inp           <=>  dw^T (C, OC) += inp^T dout: inp as stored,
//        dout buffer is dout^T (OC, N), op = T.
//
// Determinism: a cuBLAS GEMM gives the same bits on every run for a fixed toolkit, GPU model (SM
// count) and shape, provided one stream is active (the training loop's case); atomics are
// explicitly disallowed on the handle. With several concurrent streams sharing a handle cuBLAS
// may pick per-stream workspaces and so different kernels: set CUBLAS_WORKSPACE_CONFIG=:4096:8
// (or :16:8) before the first CUDA call to keep bitwise reproducibility there (cuBLAS docs,
// "Results reproducibility"). dbias is a column sum in a fixed order (ops/cuda/reduce.cuh).
#include <cublas_v2.h>
#include <cuda_runtime.h>

#include <array>
#include <mutex>

#include "core/error.h"
#include "ops/cuda/cuda_util.h"
#include "ops/cuda/launch.cuh"
#include "ops/cuda/ops_cuda.h"
#include "ops/cuda/reduce.cuh"

namespace lmf::cuda {
namespace {

// Throws lmf::Error naming the cuBLAS status, the failed call and where it was made.
[[noreturn]] void cublas_failed(cublasStatus_t st, const char* call, const char* file, int line) {
  throw Error(fmt::format("cuBLAS error {} ({}) in {} at {}:{}", cublasGetStatusName(st),
                          cublasGetStatusString(st), call, file, line));
}

}  // namespace
}  // namespace lmf::cuda

#define LMF_CUBLAS_CHECK(call)                                               \
  do {                                                                       \
    const cublasStatus_t lmf_cublas_st_ = (call);                            \
    if (lmf_cublas_st_ != CUBLAS_STATUS_SUCCESS)                             \
      ::lmf::cuda::cublas_failed(lmf_cublas_st_, #call, __FILE__, __LINE__); \
  } while (0)

namespace lmf::cuda {
namespace {

constexpr int kMaxDevices = 64;

// One cuBLAS handle per device for the process, created on first use on that device. The mutex
// makes "set the stream, enqueue the GEMMs" atomic: the handle's stream is shared state, so two
// host threads on different streams must not interleave. Enqueueing is asynchronous, so the
// lock is held for microseconds. Handles are never destroyed: a static destructor could run
// after the CUDA runtime has shut down; the driver reclaims them at exit.
struct HandleSlot {
  std::mutex mu;
  cublasHandle_t handle = nullptr;
};

// The current device's slot, locked, its handle created and bound to `stream`.
class LockedHandle {
 public:
  explicit LockedHandle(cudaStream_t stream) {
    int dev = 0;
    LMF_CUDA_CHECK(cudaGetDevice(&dev));
    LMF_CHECK(dev >= 0 && dev < kMaxDevices, "cuBLAS: device {} beyond the {} supported", dev,
              kMaxDevices);
    static auto* slots = new std::array<HandleSlot, kMaxDevices>();  // never freed, see above
    HandleSlot& s = (*slots)[dev];
    lock_ = std::unique_lock<std::mutex>(s.mu);
    if (s.handle == nullptr) {
      cublasHandle_t h = nullptr;
      LMF_CUBLAS_CHECK(cublasCreate(&h));
      LMF_CUBLAS_CHECK(cublasSetMathMode(h, CUBLAS_DEFAULT_MATH));  // no TF32 (see the top)
      LMF_CUBLAS_CHECK(cublasSetAtomicsMode(h, CUBLAS_ATOMICS_NOT_ALLOWED));
      LMF_CUBLAS_CHECK(cublasSetPointerMode(h, CUBLAS_POINTER_MODE_HOST));  // alpha, beta on host
      s.handle = h;
    }
    LMF_CUBLAS_CHECK(cublasSetStream(s.handle, stream));
    handle_ = s.handle;
  }
  cublasHandle_t get() const { return handle_; }

 private:
  std::unique_lock<std::mutex> lock_;
  cublasHandle_t handle_ = nullptr;
};

cublasComputeType_t compute_type(ops::MatmulPrecision p) {
  switch (p) {
    case ops::MatmulPrecision::tf32: return CUBLAS_COMPUTE_32F_FAST_TF32;
    case ops::MatmulPrecision::bf16: return CUBLAS_COMPUTE_32F_FAST_16BF;
    case ops::MatmulPrecision::fp32: break;
  }
  return CUBLAS_COMPUTE_32F;
}

// Column-major C (m, n) = alpha op(A) op(B) + beta C, fp32 storage, products in precision p,
// fp32 accumulation.
void sgemm(cublasHandle_t h, ops::MatmulPrecision p, cublasOperation_t ta, cublasOperation_t tb,
           int m, int n, int k, const float* A, int lda, const float* B, int ldb, float beta,
           float* Cm, int ldc) {
  const float alpha = 1.0f;
  LMF_CUBLAS_CHECK(cublasGemmEx(h, ta, tb, m, n, k, &alpha, A, CUDA_R_32F, lda, B, CUDA_R_32F, ldb,
                                &beta, Cm, CUDA_R_32F, ldc, compute_type(p), CUBLAS_GEMM_DEFAULT));
}

// Every row of out (N, OC) = bias (OC).
__global__ void broadcast_rows_kernel(float* __restrict__ out, const float* __restrict__ bias,
                                      int N, int OC) {
  const size_t n = (size_t)N * OC, stride = (size_t)gridDim.x * blockDim.x;
  for (size_t k = (size_t)blockIdx.x * blockDim.x + threadIdx.x; k < n; k += stride)
    out[k] = bias[k % OC];
}

// dbias (OC) += sum_i dout[i, o], in the fixed order of column_sums_accumulate (no atomics).
__global__ void bias_grad_kernel(float* __restrict__ dbias, const float* __restrict__ dout, int N,
                                 int OC) {
  float* const dst[1] = {dbias};
  detail::column_sums_accumulate<1>(
      dst, N, OC, [=](float(&acc)[1], int i, int o) { acc[0] += dout[(size_t)i * OC + o]; });
}

}  // namespace

void matmul_forward(float* out, const float* inp, const float* w, const float* bias, int N, int C,
                    int OC, cudaStream_t stream, ops::MatmulPrecision p) {
  LMF_CHECK(N >= 0 && C > 0 && OC >= 0, "matmul_forward: bad shape N={} C={} OC={}", N, C, OC);
  if (N == 0 || OC == 0) return;
  float beta = 0.0f;
  if (bias) {
    // Seed every row with the bias and let the GEMM accumulate onto it (beta = 1), as on the CPU.
    const size_t n = (size_t)N * OC;
    LMF_LAUNCH(broadcast_rows_kernel, detail::grid_for(n), detail::kThreads, 0, stream)(out, bias, N, OC);
    LMF_CUDA_CHECK_LAUNCH();
    beta = 1.0f;
  }
  LockedHandle h(stream);
  // out^T (OC, N) = w (op T on the (C, OC) buffer) @ inp^T (C, N).
  sgemm(h.get(), p, CUBLAS_OP_T, CUBLAS_OP_N, OC, N, C, w, C, inp, C, beta, out, OC);
}

void matmul_backward(float* dinp, float* dw, float* dbias, const float* dout, const float* inp,
                     const float* w, int N, int C, int OC, cudaStream_t stream,
                     ops::MatmulPrecision p) {
  LMF_CHECK(N >= 0 && C > 0 && OC >= 0, "matmul_backward: bad shape N={} C={} OC={}", N, C, OC);
  if (N == 0 || OC == 0) return;  // dinp = 0 @ w would be zeros, but nothing reads an empty dinp
  {
    LockedHandle h(stream);
    // dinp^T (C, N) = w^T (C, OC) @ dout^T (OC, N), assigned (beta = 0).
    if (dinp) sgemm(h.get(), p, CUBLAS_OP_N, CUBLAS_OP_N, C, N, OC, w, C, dout, OC, 0.0f, dinp, C);
    // dw^T (C, OC) += inp^T (C, N) @ dout (op T on the (OC, N) buffer), accumulated (beta = 1).
    sgemm(h.get(), p, CUBLAS_OP_N, CUBLAS_OP_T, C, OC, N, inp, C, dout, OC, 1.0f, dw, C);
  }
  if (dbias) {
    LMF_LAUNCH(bias_grad_kernel, detail::col_sum_blocks(OC), detail::col_sum_block(), 0, stream)(
        dbias, dout, N, OC);
    LMF_CUDA_CHECK_LAUNCH();
  }
}

void classifier_logits(float* logits, const float* x, const float* w, int N, int C, int V,
                       cudaStream_t stream, ops::MatmulPrecision p) {
  matmul_forward(logits, x, w, nullptr, N, C, V, stream, p);
}

}  // namespace lmf::cuda
