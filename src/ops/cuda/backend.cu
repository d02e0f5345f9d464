// The CUDA backend's tables (ops/backend.h), one per MatmulPrecision: the kernels of
// ops/cuda/ops_cuda.h on the default stream, over device memory from cudaMalloc. Host code only; a .cu so that the CUDA build (which
// globs ops/cuda/*.cu) compiles it.
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

// OnDefaultStream<cuda::op>{} converts to the table's pointer type R (*)(A...) for an op taking
// (A..., cudaStream_t): a function that calls the op with the same arguments on stream 0. The
// table's signature drives the deduction, so a mismatch with the kernel's is a compile error.
template <auto Fn>
struct OnDefaultStream {
  template <class R, class... A>
  using Ptr = R (*)(A...);

  template <class R, class... A>
  static R call(A... a) {
    return Fn(a..., cudaStream_t{0});
  }
  template <class R, class... A>
  operator Ptr<R, A...>() const {
    return &call<R, A...>;
  }
};

// The same for a GEMM or attention op, which takes the precision after the stream.
template <auto Fn, ops::MatmulPrecision P>
struct GemmOnDefaultStream {
  template <class R, class... A>
  using Ptr = R (*)(A...);

  template <class R, class... A>
  static R call(A... a) {
    return Fn(a..., cudaStream_t{0}, P);
  }
  template <class R, class... A>
  operator Ptr<R, A...>() const {
    return &call<R, A...>;
  }
};

// Every member of the table but matmul_precision is a pointer (on_host() is a function): a member
// added to ops::Backend fails here until it is filled in below.
static_assert(sizeof(ops::Backend<float>) == 37 * sizeof(void*),
              "ops::Backend changed: fill the new member in make_cuda_backend()");

template <ops::MatmulPrecision P>
ops::Backend<float> make_cuda_backend() {
  // Designated initialisers: the struct's member order, checked by the compiler. A member left
  // out would be null; tests/gpu/test_cuda_ops.cpp checks that none is.
  return ops::Backend<float>{
      .name = "cuda",
      .memory = &kDeviceMemory,
      .matmul_precision = P,
      .matmul_forward = GemmOnDefaultStream<matmul_forward, P>{},
      .matmul_backward = GemmOnDefaultStream<matmul_backward, P>{},
      .encoder_forward = OnDefaultStream<encoder_forward>{},    // tokens on the device
      .encoder_backward = OnDefaultStream<encoder_backward>{},  // tokens_host on the host
      .layernorm_forward = OnDefaultStream<layernorm_forward>{},
      .layernorm_backward = OnDefaultStream<layernorm_backward>{},
      .gelu_forward = OnDefaultStream<gelu_forward>{},
      .gelu_backward = OnDefaultStream<gelu_backward>{},
      .residual_forward = OnDefaultStream<residual_forward>{},
      .residual_layernorm_forward = OnDefaultStream<residual_layernorm_forward>{},
      .residual_rmsnorm_forward = OnDefaultStream<residual_rmsnorm_forward>{},
      .attention_forward = GemmOnDefaultStream<attention_forward, P>{},
      .attention_backward = GemmOnDefaultStream<attention_backward, P>{},
      .classifier_ce_forward = GemmOnDefaultStream<classifier_ce_forward, P>{},  // synchronises
      .classifier_logits = GemmOnDefaultStream<classifier_logits, P>{},
      .rmsnorm_forward = OnDefaultStream<rmsnorm_forward>{},
      .rmsnorm_backward = OnDefaultStream<rmsnorm_backward>{},
      .rope_forward = OnDefaultStream<rope_forward>{},  // inv_freq on the device
      .rope_backward = OnDefaultStream<rope_backward>{},
      .swiglu_forward = OnDefaultStream<swiglu_forward>{},
      .swiglu_backward = OnDefaultStream<swiglu_backward>{},
      .attention_gqa_forward = GemmOnDefaultStream<attention_gqa_forward, P>{},
      .attention_gqa_backward = GemmOnDefaultStream<attention_gqa_backward, P>{},
      .attention_decode = OnDefaultStream<attention_decode>{},
      .fill = OnDefaultStream<fill>{},
      .fill_stat = OnDefaultStream<fill>{},
      .copy = OnDefaultStream<copy>{},
      .to_compute = OnDefaultStream<copy>{},  // float is its own master type
      .adamw_update = OnDefaultStream<adamw_update>{},
      .adamw_chunks = OnDefaultStream<adamw_chunks>{},
      .sum_squares = OnDefaultStream<sum_squares>{},  // synchronises
      .scale = OnDefaultStream<scale>{},
      .synchronize = device_synchronize,
      .peak_memory_bytes = peak_allocated_bytes,
  };
}

}  // namespace

const ops::Backend<float>& backend(ops::MatmulPrecision p) {
  require();
  static const ops::Backend<float> fp32 = make_cuda_backend<ops::MatmulPrecision::fp32>();
  static const ops::Backend<float> tf32 = make_cuda_backend<ops::MatmulPrecision::tf32>();
  static const ops::Backend<float> bf16 = make_cuda_backend<ops::MatmulPrecision::bf16>();
  switch (p) {
    case ops::MatmulPrecision::tf32: return tf32;
    case ops::MatmulPrecision::bf16: return bf16;
    case ops::MatmulPrecision::fp32: break;
  }
  return fp32;
}

}  // namespace lmf::cuda
