// MatmulPrecision (ops/backend.h) and the CPU's emulation of its tf32 / bf16 modes (rounded.h):
// the GEMMs read copies of their operands rounded to the mode's precision, then run in fp32.
// A product of two rounded operands is exact in fp32 (8 + 8 or 11 + 11 significant bits), so
// the result differs from the GPU's tensor-core GEMM only by fp32 accumulation order.
#include <bit>
#include <cstdint>

#include "core/error.h"
#include "ops/cpu/rounded.h"
#include "ops/cpu/scratch.h"
#include "ops/ops.h"

namespace lmf::ops {

const char* to_string(MatmulPrecision p) {
  switch (p) {
    case MatmulPrecision::fp32: return "fp32";
    case MatmulPrecision::tf32: return "tf32";
    case MatmulPrecision::bf16: return "bf16";
  }
  return "?";
}

std::optional<MatmulPrecision> parse_matmul_precision(std::string_view s) {
  for (auto p : {MatmulPrecision::fp32, MatmulPrecision::tf32, MatmulPrecision::bf16})
    if (s == to_string(p)) return p;
  return std::nullopt;
}

namespace {

// x with its lowest `drop` mantissa bits rounded away, to nearest, ties to even.
template <int drop>
inline float round_mantissa(float x) {
  uint32_t u = std::bit_cast<uint32_t>(x);
  if ((u & 0x7f800000u) == 0x7f800000u) return x;  // Inf and NaN as they are
  constexpr uint32_t half = (1u << (drop - 1)) - 1u, keep = ~((1u << drop) - 1u);
  // Adding half (plus the lowest kept bit, for ties to even) carries into the kept bits exactly
  // when the dropped ones are above half; a carry out of the mantissa bumps the exponent, and out
  // of the largest finite exponent gives Inf.
  u += half + ((u >> drop) & 1u);
  return std::bit_cast<float>(u & keep);
}

}  // namespace

float round_operand(float x, MatmulPrecision p) {
  switch (p) {
    case MatmulPrecision::fp32: return x;
    case MatmulPrecision::tf32: return round_mantissa<13>(x);  // 10 of fp32's 23 kept
    case MatmulPrecision::bf16: return round_mantissa<16>(x);  // 7 kept
  }
  return x;
}

double operand_unit_roundoff(MatmulPrecision p) {
  switch (p) {
    case MatmulPrecision::fp32: return 0x1p-24;
    case MatmulPrecision::tf32: return 0x1p-11;
    case MatmulPrecision::bf16: return 0x1p-8;
  }
  return 0x1p-24;
}

namespace cpu {

template <MatmulPrecision P>
void round_operands(float* dst, const float* src, size_t n) {
#pragma omp parallel for schedule(static) if (n > (1u << 16))
  for (size_t i = 0; i < n; ++i) dst[i] = round_operand(src[i], P);
}

template <MatmulPrecision P>
void round_operands_serial(float* dst, const float* src, size_t n) {
  for (size_t i = 0; i < n; ++i) dst[i] = round_operand(src[i], P);
}

// Scratch slots 5..7 (float): attention holds 0 and 1, the classifier 2..4.
template <MatmulPrecision P>
void matmul_forward_rounded(float* out, const float* inp, const float* w, const float* bias, int N,
                            int C, int OC) {
  float* ri = thread_scratch<float, 5>((size_t)N * C);
  float* rw = thread_scratch<float, 6>((size_t)OC * C);
  round_operands<P>(ri, inp, (size_t)N * C);
  round_operands<P>(rw, w, (size_t)OC * C);
  matmul_forward<float>(out, ri, rw, bias, N, C, OC);
}

template <MatmulPrecision P>
void matmul_backward_rounded(float* dinp, float* dw, float* dbias, const float* dout,
                             const float* inp, const float* w, int N, int C, int OC) {
  float* rd = thread_scratch<float, 7>((size_t)N * OC);
  round_operands<P>(rd, dout, (size_t)N * OC);
  float* ri = thread_scratch<float, 5>((size_t)N * C);
  round_operands<P>(ri, inp, (size_t)N * C);
  // dinp reads w, dw reads inp: with dinp == nullptr w is not read, as in matmul_backward.
  const float* rw = nullptr;
  if (dinp) {
    float* r = thread_scratch<float, 6>((size_t)OC * C);
    round_operands<P>(r, w, (size_t)OC * C);
    rw = r;
  }
  matmul_backward<float>(dinp, dw, nullptr, rd, ri, rw, N, C, OC);
  if (dbias) bias_grad_accumulate(dbias, dout, N, OC);  // the unrounded dout, as cuBLAS's bias
}

template <MatmulPrecision P>
void classifier_logits_rounded(float* logits, const float* x, const float* w, int N, int C, int V) {
  matmul_forward_rounded<P>(logits, x, w, nullptr, N, C, V);
}

template <MatmulPrecision P>
double classifier_ce_forward_rounded(float* losses, float* dx, float* dw, const float* x,
                                     const float* w, const int32_t* targets, const float* dloss,
                                     int N, int C, int V) {
  return classifier_ce_forward_with(losses, dx, dw, x, w, targets, dloss, N, C, V,
                                    &round_operands<P>);
}

#define LMF_ROUNDED(P)                                                                              \
  template void round_operands<P>(float*, const float*, size_t);                                   \
  template void round_operands_serial<P>(float*, const float*, size_t);                            \
  template void matmul_forward_rounded<P>(float*, const float*, const float*, const float*, int,   \
                                          int, int);                                               \
  template void matmul_backward_rounded<P>(float*, float*, float*, const float*, const float*,     \
                                           const float*, int, int, int);                           \
  template void classifier_logits_rounded<P>(float*, const float*, const float*, int, int, int);   \
  template double classifier_ce_forward_rounded<P>(float*, float*, float*, const float*,           \
                                                   const float*, const int32_t*, const float*, int, \
                                                   int, int);
LMF_ROUNDED(MatmulPrecision::fp32)
LMF_ROUNDED(MatmulPrecision::tf32)
LMF_ROUNDED(MatmulPrecision::bf16)
#undef LMF_ROUNDED

}  // namespace cpu
}  // namespace lmf::ops
