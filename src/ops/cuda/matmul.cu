// Linear layer on the GPU over cuBLAS: out = inp @ w^T + bias and its backward, the same
// semantics as ops/cpu/matmul.cpp (OpenBLAS), fp32 in, fp32 out, fp32 accumulation.
//
// Precision (ops::MatmulPrecision, a parameter of every call): fp32 is cublasGemmEx with
// CUBLAS_COMPUTE_32F on a handle in CUBLAS_DEFAULT_MATH, so inputs are never rounded to TF32 or
// BF16: results agree with the CPU op to fp32 rounding error, which the GPU tests bound. tf32 and
// bf16 are CUBLAS_COMPUTE_32F_FAST_TF32 / _FAST_16BF on the same fp32 buffers: cuBLAS converts
// the operands and runs the tensor cores, accumulating in fp32; the CPU's emulation of the same
// mode (ops/cpu/matmul_precision.cpp) is the reference, within the bound the tests derive from
// the operand precision and the reduction length. The bias and its gradient stay fp32 in every
// mode.
//
// The forward with a bias runs through cuBLASLt, the bias added in the GEMM's epilogue
// (CUBLASLT_EPILOGUE_BIAS): out = inp w^T, then + bias, in registers, so the output is written
// once. (A plain GEMM would need the bias broadcast into out first and read back with beta = 1:
// two extra passes over an (N, OC) matrix, about 11 GB per step of GPT-2 124M at B 16, T 1024.)
// The CPU op seeds the sum with the bias instead; the two differ by fp32 rounding only. A plan
// (descriptors and the heuristic's algorithm) is made once per shape, precision and operand
// alignment and kept; split-K reductions in place (which add partial sums into the output in no
// fixed order) are excluded, so a shape's result is the same on every run.
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
//
// bf16 storage (the overloads on bf16 buffers): the operands are bf16 in memory, so every GEMM is
// cublasGemmEx / cublasLtMatmul with CUDA_R_16BF A and B and CUBLAS_COMPUTE_32F (products of two
// bf16 are exact, fp32 accumulation; the tensor cores run them). out and dinp are CUDA_R_16BF (D
// rounded once, to nearest even, from the fp32 result); the forward's bias is bf16 too, added in
// the epilogue before that rounding (cuBLASLt's bias type defaults to D's; it is set explicitly).
// dw is an fp32 C with beta = 1 (bf16 A, B with fp32 C is a supported combination), dbias an fp32
// column sum of the widened dout.
#include <cublasLt.h>
#include <cublas_v2.h>
#include <cuda_runtime.h>

#include <array>
#include <atomic>
#include <cstdint>
#include <map>
#include <mutex>
#include <tuple>

#include "core/error.h"
#include "ops/cuda/bf16.cuh"
#include "ops/cuda/cublas_api.h"
#include "ops/cuda/cuda_util.h"
#include "ops/cuda/gemm.cuh"
#include "ops/cuda/launch.cuh"
#include "ops/cuda/mma.cuh"
#include "ops/cuda/ops_cuda.h"
#include "ops/cuda/pack.cuh"
#include "ops/cuda/reduce.cuh"

namespace lmf::cuda {
namespace {

// Throws lmf::Error naming the cuBLAS status, the failed call and where it was made.
[[noreturn]] void cublas_failed(cublasStatus_t st, const char* call, const char* file, int line) {
  throw Error(fmt::format("cuBLAS error {} ({}) in {} at {}:{}", cublas().GetStatusName(st),
                          cublas().GetStatusString(st), call, file, line));
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
  void* workspace = nullptr;  // kCublasWorkspaceBytes, the handle's on every stream
};

// cuBLAS's workspace, ours rather than the library's pool: cublasSetStream puts a handle back on
// the pool, which allocates per stream, and an allocation inside a CUDA graph's capture fails it
// (ops/backend.h). 32 MiB is what cuBLAS advises for Hopper. One buffer serves both streams (the
// legacy one and the capture stream), whose work never overlaps: the capture stream is blocking.
constexpr size_t kCublasWorkspaceBytes = size_t(32) << 20;

// The current device's slot, locked, its handle created and bound to `stream`.
class LockedHandle {
 public:
  explicit LockedHandle(cudaStream_t stream) {
    const CublasApi& api = cublas();
    int dev = 0;
    LMF_CUDA_CHECK(cudaGetDevice(&dev));
    LMF_CHECK(dev >= 0 && dev < kMaxDevices, "cuBLAS: device {} beyond the {} supported", dev,
              kMaxDevices);
    static auto* slots = new std::array<HandleSlot, kMaxDevices>();  // never freed, see above
    HandleSlot& s = (*slots)[dev];
    lock_ = std::unique_lock<std::mutex>(s.mu);
    if (s.handle == nullptr) {
      cublasHandle_t h = nullptr;
      LMF_CUBLAS_CHECK(api.Create(&h));
      LMF_CUBLAS_CHECK(api.SetMathMode(h, CUBLAS_DEFAULT_MATH));  // no TF32 (see the top)
      LMF_CUBLAS_CHECK(api.SetAtomicsMode(h, CUBLAS_ATOMICS_NOT_ALLOWED));
      LMF_CUBLAS_CHECK(api.SetPointerMode(h, CUBLAS_POINTER_MODE_HOST));  // alpha, beta on host
      s.workspace = device_malloc(kCublasWorkspaceBytes);
      s.handle = h;
    }
    LMF_CUBLAS_CHECK(api.SetStream(s.handle, stream));
    LMF_CUBLAS_CHECK(api.SetWorkspace(s.handle, s.workspace, kCublasWorkspaceBytes));
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
  LMF_CUBLAS_CHECK(cublas().GemmEx(h, ta, tb, m, n, k, &alpha, A, CUDA_R_32F, lda, B, CUDA_R_32F, ldb,
                                   &beta, Cm, CUDA_R_32F, ldc, compute_type(p), CUBLAS_GEMM_DEFAULT));
}

// ---- cuBLASLt: the GEMM with the bias in its epilogue -------------------------------------------

constexpr size_t kLtWorkspaceBytes = size_t(32) << 20;

// The largest power of two (at most 256) that divides the address: cuBLASLt's algorithms are
// chosen for the operands' alignment.
uint32_t alignment_of(const void* p) {
  const auto a = reinterpret_cast<uintptr_t>(p);
  uint32_t al = 256;
  while (al > 1 && a % al != 0) al /= 2;
  return al;
}

// One column-major GEMM shape: D (m, n) = op(A) op(B) + bias (m), A stored (m, k) or (k, m).
// bf16: A, B, D and the bias are bf16 (bf16 storage), fp32 otherwise.
// epilogue: CUBLASLT_EPILOGUE_BIAS, or GELU_AUX(_BIAS) / DGELU with an aux matrix (GELU's input,
// D's type and layout, leading dimension ldaux).
struct LtKey {
  int m, n, k, lda, ldb, ldc;
  cublasOperation_t ta, tb;
  ops::MatmulPrecision p;
  uint32_t align_a, align_b, align_c;
  bool bf16;
  uint32_t epilogue = CUBLASLT_EPILOGUE_BIAS;
  int ldaux = 0;
  uint32_t align_aux = 0;
  auto tie() const {
    return std::tie(m, n, k, lda, ldb, ldc, ta, tb, p, align_a, align_b, align_c, bf16, epilogue, ldaux,
                    align_aux);
  }
  bool operator<(const LtKey& o) const { return tie() < o.tie(); }
};

struct LtPlan {
  cublasLtMatmulDesc_t desc = nullptr;
  cublasLtMatrixLayout_t a = nullptr, b = nullptr, c = nullptr;
  cublasLtMatmulAlgo_t algo{};
  bool usable = false;  // the heuristic found an algorithm (else the plain GEMM path runs)
};

// Per device: the cuBLASLt handle, its workspace (allocated on first use, so inside the first
// step: the memory plan counts it) and the plans; the mutex also guards the descriptor's bias
// pointer, which each call sets. Never destroyed, as the cuBLAS handles.
struct LtSlot {
  std::mutex mu;
  cublasLtHandle_t handle = nullptr;
  void* workspace = nullptr;
  std::map<LtKey, LtPlan> plans;
};

LtSlot& lt_slot() {
  int dev = 0;
  LMF_CUDA_CHECK(cudaGetDevice(&dev));
  LMF_CHECK(dev >= 0 && dev < kMaxDevices, "cuBLASLt: device {} beyond the {} supported", dev, kMaxDevices);
  static auto* slots = new std::array<LtSlot, kMaxDevices>();  // never freed, see HandleSlot
  return (*slots)[dev];
}

LtPlan make_plan(cublasLtHandle_t h, const LtKey& key, const void* aux) {
  const CublasApi& api = cublas();
  LtPlan plan;
  // bf16 storage: the operands are bf16 already, so the plain fp32 compute type (no conversion).
  const cublasComputeType_t compute = key.bf16 ? CUBLAS_COMPUTE_32F : compute_type(key.p);
  const cudaDataType type = key.bf16 ? CUDA_R_16BF : CUDA_R_32F;
  LMF_CUBLAS_CHECK(api.LtMatmulDescCreate(&plan.desc, compute, CUDA_R_32F));
  const int32_t ta = key.ta, tb = key.tb;
  const uint32_t epilogue = key.epilogue;
  LMF_CUBLAS_CHECK(api.LtMatmulDescSetAttribute(plan.desc, CUBLASLT_MATMUL_DESC_TRANSA, &ta, sizeof ta));
  LMF_CUBLAS_CHECK(api.LtMatmulDescSetAttribute(plan.desc, CUBLASLT_MATMUL_DESC_TRANSB, &tb, sizeof tb));
  LMF_CUBLAS_CHECK(api.LtMatmulDescSetAttribute(plan.desc, CUBLASLT_MATMUL_DESC_EPILOGUE, &epilogue, sizeof epilogue));
  if (aux != nullptr) {  // the heuristic reads the aux pointer's alignment (cublasLt.h); each call sets it again
    const int64_t ld = key.ldaux;
    LMF_CUBLAS_CHECK(api.LtMatmulDescSetAttribute(plan.desc, CUBLASLT_MATMUL_DESC_EPILOGUE_AUX_LD, &ld, sizeof ld));
    LMF_CUBLAS_CHECK(
        api.LtMatmulDescSetAttribute(plan.desc, CUBLASLT_MATMUL_DESC_EPILOGUE_AUX_POINTER, &aux, sizeof aux));
  }
  if (key.bf16) {  // the default (D's type) already; said here so that it does not depend on it
    const int32_t bias_type = CUDA_R_16BF;
    LMF_CUBLAS_CHECK(api.LtMatmulDescSetAttribute(plan.desc, CUBLASLT_MATMUL_DESC_BIAS_DATA_TYPE,
                                                  &bias_type, sizeof bias_type));
  }
  const bool at = key.ta == CUBLAS_OP_T, bt = key.tb == CUBLAS_OP_T;
  LMF_CUBLAS_CHECK(
      api.LtMatrixLayoutCreate(&plan.a, type, at ? key.k : key.m, at ? key.m : key.k, key.lda));
  LMF_CUBLAS_CHECK(
      api.LtMatrixLayoutCreate(&plan.b, type, bt ? key.n : key.k, bt ? key.k : key.n, key.ldb));
  LMF_CUBLAS_CHECK(api.LtMatrixLayoutCreate(&plan.c, type, key.m, key.n, key.ldc));
  cublasLtMatmulPreference_t pref = nullptr;
  LMF_CUBLAS_CHECK(api.LtMatmulPreferenceCreate(&pref));
  const uint64_t ws = kLtWorkspaceBytes;
  const uint32_t schemes = CUBLASLT_REDUCTION_SCHEME_COMPUTE_TYPE | CUBLASLT_REDUCTION_SCHEME_OUTPUT_TYPE;
  LMF_CUBLAS_CHECK(api.LtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &ws, sizeof ws));
  LMF_CUBLAS_CHECK(
      api.LtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_REDUCTION_SCHEME_MASK, &schemes, sizeof schemes));
  const std::pair<cublasLtMatmulPreferenceAttributes_t, uint32_t> aligns[] = {
      {CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES, key.align_a},
      {CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES, key.align_b},
      {CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES, key.align_c},
      {CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES, key.align_c}};
  for (const auto& [attr, value] : aligns)
    LMF_CUBLAS_CHECK(api.LtMatmulPreferenceSetAttribute(pref, attr, &value, sizeof value));
  cublasLtMatmulHeuristicResult_t result{};
  int found = 0;
  const cublasStatus_t st =
      api.LtMatmulAlgoGetHeuristic(h, plan.desc, plan.a, plan.b, plan.c, plan.c, pref, 1, &result, &found);
  LMF_CUBLAS_CHECK(api.LtMatmulPreferenceDestroy(pref));
  if (st == CUBLAS_STATUS_SUCCESS && found > 0 && result.state == CUBLAS_STATUS_SUCCESS &&
      result.workspaceSize <= kLtWorkspaceBytes) {
    plan.algo = result.algo;
    plan.usable = true;
  } else if (st != CUBLAS_STATUS_SUCCESS && st != CUBLAS_STATUS_NOT_SUPPORTED) {
    cublas_failed(st, "cublasLtMatmulAlgoGetHeuristic", __FILE__, __LINE__);
  }
  return plan;
}

// Column-major D (m, n) = epilogue(op(A) op(B)), products in precision p, every buffer fp32
// (bf16 = false) or bf16 (true): + bias (m, broadcast over columns) for the BIAS epilogues, GELU's
// input stored to aux (ldaux) by GELU_AUX(_BIAS), read from it by DGELU. False (nothing done) when
// cuBLASLt has no algorithm for the shape, or the aux matrix breaks its rules (ldaux a multiple of
// 8, at least m).
bool gemm_lt(ops::MatmulPrecision p, bool bf16, uint32_t epilogue, cublasOperation_t ta, cublasOperation_t tb,
             int m, int n, int k, const void* A, int lda, const void* B, int ldb, const void* bias, const void* aux,
             int ldaux, void* D, int ldc, cudaStream_t stream) {
  if (aux != nullptr && (ldaux % 8 != 0 || ldaux < m)) return false;
  LtSlot& slot = lt_slot();
  std::lock_guard lock(slot.mu);
  if (slot.handle == nullptr) {
    LMF_CUBLAS_CHECK(cublas().LtCreate(&slot.handle));
    slot.workspace = device_malloc(kLtWorkspaceBytes);
  }
  const LtKey key{m,        n,  k, lda, ldb, ldc, ta, tb, p, alignment_of(A), alignment_of(B), alignment_of(D), bf16,
                  epilogue, aux ? ldaux : 0, aux ? alignment_of(aux) : 0};
  auto it = slot.plans.find(key);
  if (it == slot.plans.end()) it = slot.plans.emplace(key, make_plan(slot.handle, key, aux)).first;
  const LtPlan& plan = it->second;
  if (!plan.usable) return false;
  if (bias != nullptr)
    LMF_CUBLAS_CHECK(
        cublas().LtMatmulDescSetAttribute(plan.desc, CUBLASLT_MATMUL_DESC_BIAS_POINTER, &bias, sizeof bias));
  if (aux != nullptr)
    LMF_CUBLAS_CHECK(
        cublas().LtMatmulDescSetAttribute(plan.desc, CUBLASLT_MATMUL_DESC_EPILOGUE_AUX_POINTER, &aux, sizeof aux));
  const float alpha = 1.0f, beta = 0.0f;
  LMF_CUBLAS_CHECK(cublas().LtMatmul(slot.handle, plan.desc, &alpha, A, plan.a, B, plan.b, &beta, D, plan.c, D,
                                     plan.c, &plan.algo, slot.workspace, kLtWorkspaceBytes, stream));
  return true;
}

bool gemm_bias_lt(ops::MatmulPrecision p, bool bf16, cublasOperation_t ta, cublasOperation_t tb, int m, int n, int k,
                  const void* A, int lda, const void* B, int ldb, const void* bias, void* D, int ldc,
                  cudaStream_t stream) {
  return gemm_lt(p, bf16, CUBLASLT_EPILOGUE_BIAS, ta, tb, m, n, k, A, lda, B, ldb, bias, nullptr, 0, D, ldc,
                 stream);
}

// Whether the bf16 MLP GEMMs use cuBLASLt's GELU epilogues (set_gelu_epilogues, ops_cuda.h).
std::atomic<bool>& gelu_epilogue_choice() {
  static std::atomic<bool> on{env_switch("LMF_CUDA_GELU_EPILOGUE")};
  return on;
}

// Every row of out (N, OC) = bias (OC): the fallback's seed when cuBLASLt has no algorithm.
template <class T>
__global__ void broadcast_rows_kernel(T* __restrict__ out, const T* __restrict__ bias, int N,
                                      int OC) {
  const size_t n = (size_t)N * OC, stride = (size_t)gridDim.x * blockDim.x;
  for (size_t k = (size_t)blockIdx.x * blockDim.x + threadIdx.x; k < n; k += stride)
    out[k] = bias[k % OC];
}

// dbias (OC) += sum_i dout[i, o], in the fixed order of column_sums_accumulate (no atomics).
template <class T>
__global__ void __launch_bounds__(detail::kColSumThreads)
    bias_grad_kernel(float* dbias, float* part, const T* __restrict__ dout, int N, int OC) {
  float* const dst[1] = {dbias};
  detail::column_sums_accumulate<1>(dst, part, N, OC, [=](float(&t)[1], int i, int o) {
    t[0] = detail::load(dout + (size_t)i * OC + o);
  });
}

template <class T>
void bias_grad(float* dbias, const T* dout, int N, int OC, cudaStream_t stream) {
  detail::column_sums<1>({{dbias}}, N, OC, stream, [&](dim3 grid, float* part) {
    LMF_LAUNCH(bias_grad_kernel<T>, grid, detail::col_sum_block(), 0, stream)(dbias, part, dout, N, OC);
  });
}

// bf16 buffers as the raw bits cuBLAS and gemm.cuh read.
const uint16_t* bits(const bf16* p) { return reinterpret_cast<const uint16_t*>(p); }
uint16_t* bits(bf16* p) { return reinterpret_cast<uint16_t*>(p); }

}  // namespace

namespace detail {

namespace {
// dst = src rounded to bf16 (mma.cuh's cvt.rn), n groups of K elements (pack.cuh): for K = kVec
// two 16-byte loads and one 16-byte store a group, each pair rounded by one cvt as to_bf16 rounds
// an element (the same bits, NaNs included); for K = 1 an element at a time (misaligned pointers,
// the tail, LMF_CUDA_VEC=0).
template <int K>
__global__ void to_bf16_kernel(uint16_t* __restrict__ dst, const float* __restrict__ src, size_t n) {
  const size_t stride = (size_t)gridDim.x * blockDim.x;
  for (size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += stride) {
    if constexpr (K == 1) {
      dst[i] = to_bf16(src[i]);
    } else {
      static_assert(K == 8, "a group is 8 floats: two 16-byte loads, one 16-byte store");
      float v[8];
      load_n<8>(v, src + i * 8);
      uint32_t w[4];
      pack_bf16x8(w, v);
      store16(dst + i * 8, reinterpret_cast<const uint16_t*>(w));
    }
  }
}
}  // namespace

void round_to_bf16(uint16_t* dst, const float* src, size_t n, cudaStream_t stream) {
  if (n == 0) return;
  launch_groups(n, stream, [](auto k) { return &to_bf16_kernel<decltype(k)::value>; }, dst, src);
}

void gemm_bf16(cudaStream_t stream, bool trans_a, bool trans_b, int m, int n, int k, const uint16_t* A, int lda,
               const uint16_t* B, int ldb, float beta, float* C, int ldc) {
  LockedHandle h(stream);
  const float alpha = 1.0f;
  LMF_CUBLAS_CHECK(cublas().GemmEx(h.get(), trans_a ? CUBLAS_OP_T : CUBLAS_OP_N, trans_b ? CUBLAS_OP_T : CUBLAS_OP_N, m,
                                   n, k, &alpha, A, CUDA_R_16BF, lda, B, CUDA_R_16BF, ldb, &beta, C, CUDA_R_32F, ldc,
                                   CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT));
}

void gemm_bf16(cudaStream_t stream, bool trans_a, bool trans_b, int m, int n, int k,
               const uint16_t* A, int lda, const uint16_t* B, int ldb, float beta, uint16_t* C,
               int ldc) {
  LockedHandle h(stream);
  const float alpha = 1.0f;
  LMF_CUBLAS_CHECK(cublas().GemmEx(h.get(), trans_a ? CUBLAS_OP_T : CUBLAS_OP_N,
                                   trans_b ? CUBLAS_OP_T : CUBLAS_OP_N, m, n, k, &alpha, A,
                                   CUDA_R_16BF, lda, B, CUDA_R_16BF, ldb, &beta, C, CUDA_R_16BF, ldc,
                                   CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT));
}

}  // namespace detail

void matmul_forward(float* out, const float* inp, const float* w, const float* bias, int N, int C,
                    int OC, cudaStream_t stream, ops::MatmulPrecision p) {
  LMF_CHECK(N >= 0 && C > 0 && OC >= 0, "matmul_forward: bad shape N={} C={} OC={}", N, C, OC);
  if (N == 0 || OC == 0) return;
  float beta = 0.0f;
  // out^T (OC, N) = w (op T on the (C, OC) buffer) @ inp^T (C, N) + bias (OC) down every column.
  if (bias && gemm_bias_lt(p, false, CUBLAS_OP_T, CUBLAS_OP_N, OC, N, C, w, C, inp, C, bias, out,
                           OC, stream))
    return;
  if (bias) {
    // Seed every row with the bias and let the GEMM accumulate onto it (beta = 1), as on the CPU.
    const size_t n = (size_t)N * OC;
    LMF_LAUNCH(broadcast_rows_kernel<float>, detail::grid_for(n), detail::kThreads, 0, stream)
    (out, bias, N, OC);
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
  if (dbias) bias_grad(dbias, dout, N, OC, stream);
}

void matmul_forward(bf16* out, const bf16* inp, const bf16* w, const bf16* bias, int N, int C,
                    int OC, cudaStream_t stream, ops::MatmulPrecision p) {
  LMF_CHECK(N >= 0 && C > 0 && OC >= 0, "matmul_forward: bad shape N={} C={} OC={}", N, C, OC);
  if (N == 0 || OC == 0) return;
  // out^T (OC, N) = w (op T on the (C, OC) buffer) @ inp^T (C, N) + bias (OC) down every column.
  if (bias && gemm_bias_lt(p, true, CUBLAS_OP_T, CUBLAS_OP_N, OC, N, C, w, C, inp, C, bias, out, OC,
                           stream))
    return;
  float beta = 0.0f;
  if (bias) {
    // The seed is the bias exactly (bf16 into bf16), so out is still rounded once, after the sum.
    const size_t n = (size_t)N * OC;
    LMF_LAUNCH(broadcast_rows_kernel<bf16>, detail::grid_for(n), detail::kThreads, 0, stream)
    (out, bias, N, OC);
    LMF_CUDA_CHECK_LAUNCH();
    beta = 1.0f;
  }
  detail::gemm_bf16(stream, true, false, OC, N, C, bits(w), C, bits(inp), C, beta, bits(out), OC);
}

void matmul_backward(bf16* dinp, float* dw, float* dbias, const bf16* dout, const bf16* inp,
                     const bf16* w, int N, int C, int OC, cudaStream_t stream,
                     ops::MatmulPrecision) {
  LMF_CHECK(N >= 0 && C > 0 && OC >= 0, "matmul_backward: bad shape N={} C={} OC={}", N, C, OC);
  if (N == 0 || OC == 0) return;
  // dinp^T (C, N) = w^T (C, OC) @ dout^T (OC, N), assigned, rounded to bf16 once.
  if (dinp)
    detail::gemm_bf16(stream, false, false, C, N, OC, bits(w), C, bits(dout), OC, 0.0f, bits(dinp),
                      C);
  // dw^T (C, OC) += inp^T (C, N) @ dout (op T on the (OC, N) buffer), into fp32 (beta = 1).
  detail::gemm_bf16(stream, false, true, C, OC, N, bits(inp), C, bits(dout), OC, 1.0f, dw, C);
  if (dbias) bias_grad(dbias, dout, N, OC, stream);
}

// ---- GPT-2's MLP GEMMs fused with GELU (ops::Backend matmul_gelu_forward, matmul_dgelu_backward)

void set_gelu_epilogues(bool on) { gelu_epilogue_choice().store(on); }
bool gelu_epilogues() { return gelu_epilogue_choice().load(); }

// fp32 storage: the two ops in turn (our GELU kernels, whose bounds the fp32 tests hold).
void matmul_gelu_forward(float* out, float* pre, const float* inp, const float* w, const float* bias, int N, int C,
                         int OC, cudaStream_t stream, ops::MatmulPrecision p) {
  matmul_forward(pre, inp, w, bias, N, C, OC, stream, p);
  gelu_forward(out, pre, (size_t)N * OC, stream);
}
void matmul_dgelu_backward(float* dinp, float* dw, float* dbias, const float* dout, const float* inp, const float* w,
                           const float* pre, int N, int C, int OC, cudaStream_t stream, ops::MatmulPrecision p) {
  matmul_backward(dinp, dw, dbias, dout, inp, w, N, C, OC, stream, p);
  gelu_backward(dinp, pre, dinp, (size_t)N * C, stream);
}

// bf16 storage: GELU in the GEMM's epilogue, on the fp32 result before D's one rounding:
// pre^T (OC, N) = w (op T) @ inp^T + bias is the aux output, out^T = gelu of it the D output
// (GELU_AUX_BIAS). Without cuBLASLt's algorithm for the shape, or with the epilogues off, the two
// ops in turn (pre rounded before GELU reads it).
void matmul_gelu_forward(bf16* out, bf16* pre, const bf16* inp, const bf16* w, const bf16* bias, int N, int C,
                         int OC, cudaStream_t stream, ops::MatmulPrecision p) {
  LMF_CHECK(N >= 0 && C > 0 && OC >= 0, "matmul_gelu_forward: bad shape N={} C={} OC={}", N, C, OC);
  if (N == 0 || OC == 0) return;
  const uint32_t epi = bias ? CUBLASLT_EPILOGUE_GELU_AUX_BIAS : CUBLASLT_EPILOGUE_GELU_AUX;
  if (gelu_epilogues() &&
      gemm_lt(p, true, epi, CUBLAS_OP_T, CUBLAS_OP_N, OC, N, C, w, C, inp, C, bias, pre, OC, out, OC, stream))
    return;
  matmul_forward(pre, inp, w, bias, N, C, OC, stream, p);
  gelu_forward(out, pre, (size_t)N * OC, stream);
}

// dinp^T (C, N) = gelu'(pre^T) * (w^T @ dout^T): the DGELU epilogue, pre the aux input; then dw and
// dbias as matmul_backward. The fallback: matmul_backward (dinp rounded), then GELU's backward in
// place.
void matmul_dgelu_backward(bf16* dinp, float* dw, float* dbias, const bf16* dout, const bf16* inp, const bf16* w,
                           const bf16* pre, int N, int C, int OC, cudaStream_t stream, ops::MatmulPrecision p) {
  LMF_CHECK(N >= 0 && C > 0 && OC >= 0, "matmul_dgelu_backward: bad shape N={} C={} OC={}", N, C, OC);
  LMF_CHECK(dinp != nullptr, "matmul_dgelu_backward: dinp is required");
  if (N == 0 || OC == 0) return;
  if (gelu_epilogues() && gemm_lt(p, true, CUBLASLT_EPILOGUE_DGELU, CUBLAS_OP_N, CUBLAS_OP_N, C, N, OC, w, C, dout,
                                  OC, nullptr, pre, C, dinp, C, stream)) {
    matmul_backward(static_cast<bf16*>(nullptr), dw, dbias, dout, inp, w, N, C, OC, stream, p);  // dw, dbias
    return;
  }
  matmul_backward(dinp, dw, dbias, dout, inp, w, N, C, OC, stream, p);
  gelu_backward(dinp, pre, dinp, (size_t)N * C, stream);
}

void classifier_logits(float* logits, const float* x, const float* w, int N, int C, int V,
                       cudaStream_t stream, ops::MatmulPrecision p) {
  matmul_forward(logits, x, w, nullptr, N, C, V, stream, p);
}

// logits^T (V, N) = w (op T on its (C, V) buffer) x^T, fp32 out of bf16 operands.
void classifier_logits(float* logits, const bf16* x, const bf16* w, int N, int C, int V,
                       cudaStream_t stream, ops::MatmulPrecision) {
  LMF_CHECK(N >= 0 && C > 0 && V >= 0, "classifier_logits: bad shape N={} C={} V={}", N, C, V);
  if (N == 0 || V == 0) return;
  detail::gemm_bf16(stream, true, false, V, N, C, bits(w), C, bits(x), C, 0.0f, logits, V);
}

}  // namespace lmf::cuda
