// The CPU backend's table (ops/backend.h): the ops of ops/cpu/, over host memory.
#include "ops/backend.h"

#include <algorithm>
#include <type_traits>

#include "core/error.h"
#include "ops/cpu/matmul_gelu.h"
#include "ops/cpu/rounded.h"

namespace lmf::ops {
namespace {

template <class F>
void fill_host(F* x, F value, size_t n) {
  std::fill(x, x + n, value);
}
template <class F>
void copy_host(F* dst, const F* src, size_t n) {
  std::copy(src, src + n, dst);
}

void synchronize_host() {}
size_t no_peak() { return 0; }

template <class F>
Backend<F> make_cpu_backend() {
  return Backend<F>{
      "cpu",
      &host_memory(),
      MatmulPrecision::fp32,
      &matmul_forward<F>,
      &matmul_backward<F>,
      &encoder_forward<F>,
      &encoder_backward<F>,
      &layernorm_forward<F>,
      &layernorm_backward<F>,
      &gelu_forward<F>,
      &gelu_backward<F>,
      &cpu::matmul_gelu_forward<F, &matmul_forward<F>>,
      &cpu::matmul_dgelu_backward<F, &matmul_backward<F>>,
      &residual_forward<F>,
      &residual_layernorm_forward<F>,
      &residual_rmsnorm_forward<F>,
      &attention_forward<F>,
      &attention_backward<F>,
      &classifier_ce_forward<F>,
      &classifier_logits<F>,
      &rmsnorm_forward<F>,
      &rmsnorm_backward<F>,
      &rope_forward<F>,
      &rope_backward<F>,
      &swiglu_forward<F>,
      &swiglu_backward<F>,
      &attention_gqa_forward<F>,
      &attention_gqa_backward<F>,
      &attention_decode<F>,
      &fill_host<F>,
      &fill_host<stat_t<F>>,
      &copy_host<F>,
      &copy_host<F>,  // to_compute: F is its own master type
      &adamw_update,
      &adamw_chunks,
      &sum_squares,
      &scale,
      &synchronize_host,
      &no_peak,
  };
}

// The fp32 table with the GEMM ops (and, for bf16, attention) replaced by their emulation of P
// (cpu/rounded.h).
template <MatmulPrecision P>
Backend<float> make_rounded_backend() {
  Backend<float> b = make_cpu_backend<float>();
  b.matmul_precision = P;
  b.matmul_forward = &cpu::matmul_forward_rounded<P>;
  b.matmul_backward = &cpu::matmul_backward_rounded<P>;
  b.matmul_gelu_forward = &cpu::matmul_gelu_forward<float, &cpu::matmul_forward_rounded<P>>;
  b.matmul_dgelu_backward = &cpu::matmul_dgelu_backward<float, &cpu::matmul_backward_rounded<P>>;
  b.classifier_ce_forward = &cpu::classifier_ce_forward_rounded<P>;
  b.classifier_logits = &cpu::classifier_logits_rounded<P>;
  if constexpr (P == MatmulPrecision::bf16) {  // the GPU's tensor-core attention (rounded.h)
    b.attention_forward = &cpu::attention_forward_rounded<P>;
    b.attention_backward = &cpu::attention_backward_rounded<P>;
    b.attention_gqa_forward = &cpu::attention_gqa_forward_rounded<P>;
    b.attention_gqa_backward = &cpu::attention_gqa_backward_rounded<P>;
  }
  return b;
}

}  // namespace

template <class F>
const Backend<F>& cpu_backend(MatmulPrecision p) {
  static const Backend<F> b = make_cpu_backend<F>();
  if constexpr (std::is_same_v<F, float>) {
    static const Backend<float> tf32 = make_rounded_backend<MatmulPrecision::tf32>();
    static const Backend<float> bf16 = make_rounded_backend<MatmulPrecision::bf16>();
    if (p == MatmulPrecision::tf32) return tf32;
    if (p == MatmulPrecision::bf16) return bf16;
  } else if (p != MatmulPrecision::fp32) {
    throw UserError("matmul precision {} exists for float models only", to_string(p));
  }
  return b;
}

template const Backend<float>& cpu_backend<float>(MatmulPrecision);
template const Backend<double>& cpu_backend<double>(MatmulPrecision);

}  // namespace lmf::ops
