// The CPU backend's table (ops/backend.h): the ops of ops/cpu/, over host memory.
#include "ops/backend.h"

#include <algorithm>

namespace lmf::ops {
namespace {

template <class F>
void fill_host(F* x, F value, size_t n) {
  std::fill(x, x + n, value);
}

void synchronize_host() {}
size_t no_peak() { return 0; }

template <class F>
Backend<F> make_cpu_backend() {
  return Backend<F>{
      "cpu",
      &host_memory(),
      &matmul_forward<F>,
      &matmul_backward<F>,
      &encoder_forward<F>,
      &encoder_backward<F>,
      &layernorm_forward<F>,
      &layernorm_backward<F>,
      &gelu_forward<F>,
      &gelu_backward<F>,
      &residual_forward<F>,
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
      &fill_host<F>,
      &adamw_update,
      &sum_squares,
      &scale,
      &synchronize_host,
      &no_peak,
  };
}

}  // namespace

template <class F>
const Backend<F>& cpu_backend() {
  static const Backend<F> b = make_cpu_backend<F>();
  return b;
}

template const Backend<float>& cpu_backend<float>();
template const Backend<double>& cpu_backend<double>();

}  // namespace lmf::ops
