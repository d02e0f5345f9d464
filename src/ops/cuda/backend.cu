// The CUDA backend's tables (ops/backend.h), one per MatmulPrecision over fp32 storage and one over
// bf16 storage (backend_bf16): the kernels of ops/cuda/ops_cuda.h on the thread's current stream
// (the legacy default stream, or the capture stream while a graph is captured: graph.cu), over
// device memory from cudaMalloc. Host code only; a .cu so that the CUDA build (which globs
// ops/cuda/*.cu) compiles it.
#include <cuda_runtime_api.h>

#include <cstdlib>
#include <string_view>

#include "core/error.h"
#include "core/memory.h"
#include "ops/backend.h"
#include "ops/cuda/cuda_util.h"
#include "ops/cuda/ops_cuda.h"
#include "ops/cuda_backend.h"

namespace lmf::cuda {
namespace {

// ---- device memory ------------------------------------------------------------------------------
// Copies and zeroing go through the legacy default stream, so they are ordered with the table's
// ops (also on the default stream) and with every blocking stream.

void* device_allocate(size_t bytes) {
  void* p = device_malloc(bytes);
  const cudaError_t zero_err = bytes ? cudaMemset(p, 0, bytes) : cudaSuccess;
  if (zero_err != cudaSuccess) {
    device_free(p, bytes);
    cuda_failed(zero_err, "cudaMemset(p, 0, bytes)", __FILE__, __LINE__);
  }
  return p;
}

void device_deallocate(void* p, size_t bytes) noexcept { device_free(p, bytes); }

void device_copy_from_host(void* dst, const void* src, size_t bytes) {
  LMF_CUDA_CHECK(cudaMemcpy(dst, src, bytes, cudaMemcpyHostToDevice));
}

void device_copy_to_host(void* dst, const void* src, size_t bytes) {
  LMF_CUDA_CHECK(cudaMemcpy(dst, src, bytes, cudaMemcpyDeviceToHost));
}

void device_zero(void* p, size_t bytes) { LMF_CUDA_CHECK(cudaMemset(p, 0, bytes)); }

// LMF_CUDA_VMM=0 keeps the parameters and gradients in cudaMalloc memory instead of the driver's
// virtual memory: the way around a driver whose virtual memory management misbehaves. ZeRO 3
// then still runs, with the same numbers, but hands nothing back (release only zeroes).
bool virtual_memory_enabled() {
  const char* v = std::getenv("LMF_CUDA_VMM");
  return v == nullptr || std::string_view(v) != "0";
}

const MemorySpace kDeviceMemory{
    .name = "cuda",
    .host_accessible = false,
    .allocate = device_allocate,
    .deallocate = device_deallocate,
    .copy_from_host = device_copy_from_host,
    .copy_to_host = device_copy_to_host,
    .zero = device_zero,
    .virtual_memory = virtual_memory_enabled() ? &device_virtual_memory() : nullptr,
};

// ---- ops ----------------------------------------------------------------------------------------

// The whole device, not just the default stream: "every op issued so far" (ops/backend.h).
void device_synchronize() { LMF_CUDA_CHECK(cudaDeviceSynchronize()); }

// The ops as types: LMF_CUDA_OP(fn) defines fn_op, whose run(args...) calls cuda::fn(args...). Most
// ops are overloaded over the storage type (float and bf16, ops_cuda.h), so the table's argument
// types pick the kernel by overload resolution, where a function pointer could not.
#define LMF_CUDA_OP(fn)       \
  struct fn##_op {            \
    template <class... X>     \
    static auto run(X... x) { \
      return fn(x...);        \
    }                         \
  }
LMF_CUDA_OP(matmul_forward);
LMF_CUDA_OP(matmul_backward);
LMF_CUDA_OP(encoder_forward);
LMF_CUDA_OP(encoder_backward);
LMF_CUDA_OP(layernorm_forward);
LMF_CUDA_OP(layernorm_backward);
LMF_CUDA_OP(gelu_forward);
LMF_CUDA_OP(gelu_backward);
LMF_CUDA_OP(matmul_gelu_forward);
LMF_CUDA_OP(matmul_dgelu_backward);
LMF_CUDA_OP(residual_forward);
LMF_CUDA_OP(residual_layernorm_forward);
LMF_CUDA_OP(residual_rmsnorm_forward);
LMF_CUDA_OP(attention_forward);
LMF_CUDA_OP(attention_backward);
LMF_CUDA_OP(classifier_ce_forward);
LMF_CUDA_OP(classifier_logits);
LMF_CUDA_OP(rmsnorm_forward);
LMF_CUDA_OP(rmsnorm_backward);
LMF_CUDA_OP(rope_forward);
LMF_CUDA_OP(rope_backward);
LMF_CUDA_OP(swiglu_forward);
LMF_CUDA_OP(swiglu_backward);
LMF_CUDA_OP(attention_gqa_forward);
LMF_CUDA_OP(attention_gqa_backward);
LMF_CUDA_OP(attention_decode);
LMF_CUDA_OP(fill);
LMF_CUDA_OP(copy);
LMF_CUDA_OP(adamw_update);
LMF_CUDA_OP(adamw_chunks);
LMF_CUDA_OP(sum_squares);
LMF_CUDA_OP(scale);
#undef LMF_CUDA_OP

// The compute copy of the weights from the master weights: a copy for float, rounding for bf16.
struct to_compute_op {
  static void run(float* dst, const float* src, size_t n, cudaStream_t stream) {
    copy(dst, src, n, stream);
  }
  static void run(bf16* dst, const float* src, size_t n, cudaStream_t stream) {
    to_bf16(dst, src, n, stream);
  }
};

// OnStream<fn_op>{} converts to the table's pointer type R (*)(A...) for an op taking
// (A..., cudaStream_t, After...): a function that calls the op with the same arguments on the
// current stream (current_stream(): 0 but while capturing), then After (a GEMM's or attention's
// MatmulPrecision). The table's signature drives the deduction, so a mismatch with every overload
// of the kernel's is a compile error.
template <class Op, auto... After>
struct OnStream {
  template <class R, class... A>
  using Ptr = R (*)(A...);

  template <class R, class... A>
  static R call(A... a) {
    return Op::run(a..., current_stream(), After...);
  }
  template <class R, class... A>
  operator Ptr<R, A...>() const {
    return &call<R, A...>;
  }
};

// Every member of the table but matmul_precision is a pointer (on_host() is a function): a member
// added to ops::Backend fails here until it is filled in below.
static_assert(sizeof(ops::Backend<float>) == 44 * sizeof(void*),
              "ops::Backend changed: fill the new member in make_cuda_backend()");
static_assert(sizeof(ops::Backend<bf16>) == sizeof(ops::Backend<float>));

// F: the storage type (float, or bf16 with float gradients and statistics); each op's overload
// for F's argument types is the one taken.
template <class F, ops::MatmulPrecision P>
ops::Backend<F> make_cuda_backend() {
  // Designated initialisers: the struct's member order, checked by the compiler. A member left
  // out would be null; tests/gpu/test_cuda_ops.cpp and test_cuda_bf16.cpp check that none is.
  return ops::Backend<F>{
      .name = "cuda",
      .memory = &kDeviceMemory,
      .matmul_precision = P,
      .matmul_forward = OnStream<matmul_forward_op, P>{},
      .matmul_backward = OnStream<matmul_backward_op, P>{},
      .encoder_forward = OnStream<encoder_forward_op>{},    // tokens on the device
      .encoder_backward = OnStream<encoder_backward_op>{},  // tokens_host on the host
      .layernorm_forward = OnStream<layernorm_forward_op>{},
      .layernorm_backward = OnStream<layernorm_backward_op>{},
      .gelu_forward = OnStream<gelu_forward_op>{},
      .gelu_backward = OnStream<gelu_backward_op>{},
      .matmul_gelu_forward = OnStream<matmul_gelu_forward_op, P>{},
      .matmul_dgelu_backward = OnStream<matmul_dgelu_backward_op, P>{},
      .residual_forward = OnStream<residual_forward_op>{},
      .residual_layernorm_forward = OnStream<residual_layernorm_forward_op>{},
      .residual_rmsnorm_forward = OnStream<residual_rmsnorm_forward_op>{},
      .attention_forward = OnStream<attention_forward_op, P>{},
      .attention_backward = OnStream<attention_backward_op, P>{},
      .classifier_ce_forward = OnStream<classifier_ce_forward_op, P>{},  // synchronises, but in a capture
      .classifier_logits = OnStream<classifier_logits_op, P>{},
      .rmsnorm_forward = OnStream<rmsnorm_forward_op>{},
      .rmsnorm_backward = OnStream<rmsnorm_backward_op>{},
      .rope_forward = OnStream<rope_forward_op>{},  // inv_freq on the device
      .rope_backward = OnStream<rope_backward_op>{},
      .swiglu_forward = OnStream<swiglu_forward_op>{},
      .swiglu_backward = OnStream<swiglu_backward_op>{},
      .attention_gqa_forward = OnStream<attention_gqa_forward_op, P>{},
      .attention_gqa_backward = OnStream<attention_gqa_backward_op, P>{},
      .attention_decode = OnStream<attention_decode_op>{},
      .fill = OnStream<fill_op>{},
      .fill_stat = OnStream<fill_op>{},  // float statistics
      .copy = OnStream<copy_op>{},
      .to_compute = OnStream<to_compute_op>{},
      .adamw_update = OnStream<adamw_update_op>{},
      .adamw_chunks = OnStream<adamw_chunks_op>{},
      .sum_squares = OnStream<sum_squares_op>{},  // synchronises
      .scale = OnStream<scale_op>{},
      .synchronize = device_synchronize,
      .peak_memory_bytes = peak_allocated_bytes,
      .capture_begin = capture_begin,
      .capture_end = capture_end,
      .graph_launch = graph_launch,
      .graph_free = graph_free,
      .classifier_ce_last_sum = classifier_ce_last_sum,
  };
}

}  // namespace

const ops::Backend<float>& backend(ops::MatmulPrecision p) {
  require();
  static const ops::Backend<float> fp32 = make_cuda_backend<float, ops::MatmulPrecision::fp32>();
  static const ops::Backend<float> tf32 = make_cuda_backend<float, ops::MatmulPrecision::tf32>();
  static const ops::Backend<float> bf16_products =
      make_cuda_backend<float, ops::MatmulPrecision::bf16>();
  switch (p) {
    case ops::MatmulPrecision::tf32: return tf32;
    case ops::MatmulPrecision::bf16: return bf16_products;
    case ops::MatmulPrecision::fp32: break;
  }
  return fp32;
}

const ops::Backend<bf16>& backend_bf16() {
  require();
  static const ops::Backend<bf16> table = make_cuda_backend<bf16, ops::MatmulPrecision::bf16>();
  return table;
}

}  // namespace lmf::cuda
