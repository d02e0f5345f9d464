#pragma once
// CUDA ops: fp32, every pointer a DEVICE pointer, same semantics (and the same gradient rule) as
// the CPU op of the same name in ops/ops.h, which is the specification. Each call is
// asynchronous on `stream`; launch errors throw lmf::Error (LMF_CUDA_CHECK).
// Most ops also have a bf16-storage overload (the section at the end): activations and weights
// bf16, parameter gradients and statistics float, arithmetic in float.
#include <cuda_runtime_api.h>

#include <cstddef>
#include <cstdint>
#include <string>

#include "ops/backend.h"

namespace lmf::cuda {

// out = a + b, (n).
void residual_forward(float* out, const float* a, const float* b, size_t n,
                      cudaStream_t stream = 0);

// GELU, tanh approximation; dinp = gelu'(inp) * dout (assigned).
void gelu_forward(float* out, const float* inp, size_t n, cudaStream_t stream = 0);
void gelu_backward(float* dinp, const float* inp, const float* dout, size_t n,
                   cudaStream_t stream = 0);

// out = (inp - mean) * rstd * w + b per row, eps 1e-5, two-pass (biased) variance.
// out, inp (N, C); mean, rstd (N) saved for backward; w, b (C).
void layernorm_forward(float* out, float* mean, float* rstd, const float* inp, const float* w,
                       const float* b, int N, int C, cudaStream_t stream = 0);
// res = a + b, then out = layernorm(res): one warp per row reads a and b once, writes res and
// out, and keeps the row's sums in registers (the same numbers as residual_forward then
// layernorm_forward here). res, out, a, b (N, C); res may be a.
void residual_layernorm_forward(float* res, float* out, float* mean, float* rstd, const float* a,
                                const float* b, const float* w, const float* bias, int N, int C,
                                cudaStream_t stream = 0);
// dinp (N, C) += ...; dw (C) += ...; db (C) += ... (all three ACCUMULATE, as on the CPU).
// Deterministic: no atomics, a fixed summation order. dinp must not alias dout (nor on the CPU,
// whose second pass reads dout after the first has written dinp).
void layernorm_backward(float* dinp, float* dw, float* db, const float* dout, const float* inp,
                        const float* w, const float* mean, const float* rstd, int N, int C,
                        cudaStream_t stream = 0);

// RMSNorm: out = inp * rstd * w per row, rstd = 1 / sqrt(mean(inp^2) + eps).
// out, inp (N, C); rstd (N) saved for backward; w (C).
void rmsnorm_forward(float* out, float* rstd, const float* inp, const float* w, int N, int C,
                     float eps, cudaStream_t stream = 0);
// res = a + b, then out = rmsnorm(res), fused as residual_layernorm_forward; res may be a.
void residual_rmsnorm_forward(float* res, float* out, float* rstd, const float* a, const float* b,
                              const float* w, int N, int C, float eps, cudaStream_t stream = 0);
// dinp (N, C) += ...; dw (C) += ... (both ACCUMULATE, as on the CPU). Deterministic: no atomics, a
// fixed summation order. dinp must not alias dout (the dw pass reads dout after dinp is written,
// as on the CPU).
void rmsnorm_backward(float* dinp, float* dw, const float* dout, const float* inp, const float* w,
                      const float* rstd, int N, int C, cudaStream_t stream = 0);

// SwiGLU: out = silu(gate) * up, silu(x) = x * sigmoid(x). All (n).
void swiglu_forward(float* out, const float* gate, const float* up, size_t n,
                    cudaStream_t stream = 0);
// dgate, dup (n) assigned. Elementwise, so an output may alias an input (not the other output).
void swiglu_backward(float* dgate, float* dup, const float* dout, const float* gate,
                     const float* up, size_t n, cudaStream_t stream = 0);

// Rotary position embedding, as ops::rope_forward: out, inp (B, T, NH, hs), hs even; out == inp
// allowed. Unlike the CPU op, inv_freq (hs/2 doubles, ops::rope_inv_freq) is a DEVICE pointer:
// the caller uploads the table once (at model setup), not per call. Angles (pos0 + t) *
// inv_freq[j], their cos and sin in double, rounded once to float, as on the CPU.
void rope_forward(float* out, const float* inp, int B, int T, int NH, int hs,
                  const double* inv_freq, bool interleaved, int pos0 = 0, cudaStream_t stream = 0);
// dinp = R^T dout, the inverse rotation (assigned; dinp == dout allowed). inv_freq on the device.
void rope_backward(float* dinp, const float* dout, int B, int T, int NH, int hs,
                   const double* inv_freq, bool interleaved, int pos0 = 0, cudaStream_t stream = 0);

// AdamW on one flat range, t the 1-based step; bias corrections computed in double on the host,
// as on the CPU.
void adamw_update(float* p, const float* g, float* m, float* v, size_t n, float lr, float beta1,
                  float beta2, float eps, float wd, long t, cudaStream_t stream = 0);
// The multi-tensor form, as ops::adamw_chunks, in ONE launch: block b updates chunk b (chunks
// (nchunks) on the device, each at most ops::kAdamwChunk values).
void adamw_chunks(float* p, const float* g, float* m, float* v, const ops::AdamwChunk* chunks,
                  size_t nchunks, ops::AdamwStep s, float grad_scale, cudaStream_t stream = 0);

// ---- flat vectors (ops/cuda/vector_ops.cu) ------------------------------------------------------

// x (n) = value.
void fill(float* x, float value, size_t n, cudaStream_t stream = 0);
// dst (n) = src (n), device to device (the ranges must not overlap).
void copy(float* dst, const float* src, size_t n, cudaStream_t stream = 0);
// Sum of x (n) squared, accumulated in double, as ops::sum_squares (for gradient clipping).
// Deterministic: a fixed grid for each n, per-block partials in a per-device workspace kept across
// calls, summed in a fixed order; equal to the CPU's to double rounding (another order), not
// bitwise. Returns on the host: this call SYNCHRONISES `stream` (n > 0). Calls on one device are
// serialised (they share the workspace).
double sum_squares(const float* x, size_t n, cudaStream_t stream = 0);
// x (n) *= s; bitwise equal to ops::scale.
void scale(float* x, float s, size_t n, cudaStream_t stream = 0);

// ---- matmul and classifier (ops/cuda/matmul.cu, classifier.cu: cuBLAS) ------------------------
// cuBLAS and cuBLASLt are loaded on first use (ops/cuda/cublas_api.h). This loads them if not yet
// and says from where: the two libraries' paths, ';'-joined ("the CPU emulation" there). UserError
// when they cannot be loaded. Needs no GPU.
std::string cublas_libraries();
// cublasGemmEx on fp32 buffers with fp32 accumulation. `p` (ops/backend.h) picks the products:
// fp32 (CUBLAS_COMPUTE_32F: never TF32, results match the CPU ops to fp32 rounding), tf32 or bf16
// (CUBLAS_COMPUTE_32F_FAST_TF32 / _FAST_16BF: operands rounded, tensor cores; they match the
// CPU's emulation, cpu_backend(p), to fp32 accumulation order). One cuBLAS handle per device,
// created on first use, bound to `stream` per call. Deterministic for a fixed GPU, toolkit and shape when one
// stream is active; with concurrent streams set CUBLAS_WORKSPACE_CONFIG=:4096:8 (see matmul.cu).

// out (N, OC) = inp (N, C) @ w^T + bias; w (OC, C); bias (OC) or nullptr.
void matmul_forward(float* out, const float* inp, const float* w, const float* bias, int N, int C,
                    int OC, cudaStream_t stream = 0,
                    ops::MatmulPrecision p = ops::MatmulPrecision::fp32);
// dinp (N, C) = dout @ w (ASSIGNED; skipped if nullptr); dw (OC, C) += dout^T @ inp (ACCUMULATES);
// dbias (OC) += column sums of dout (ACCUMULATES; skipped if nullptr; fixed order, no atomics).
// dout (N, OC).
void matmul_backward(float* dinp, float* dw, float* dbias, const float* dout, const float* inp,
                     const float* w, int N, int C, int OC, cudaStream_t stream = 0,
                     ops::MatmulPrecision p = ops::MatmulPrecision::fp32);

// GPT-2's MLP (ops::Backend): pre (N, OC) = inp @ w^T + bias, out = gelu(pre); and
// matmul_backward with dinp (required) = gelu'(pre) * (dout @ w), pre (N, C). fp32: the two ops in
// turn. bf16 (below): cuBLASLt's GELU_AUX_BIAS and DGELU epilogues, GELU on the fp32 result.
void matmul_gelu_forward(float* out, float* pre, const float* inp, const float* w, const float* bias, int N, int C,
                         int OC, cudaStream_t stream = 0, ops::MatmulPrecision p = ops::MatmulPrecision::fp32);
void matmul_dgelu_backward(float* dinp, float* dw, float* dbias, const float* dout, const float* inp, const float* w,
                           const float* pre, int N, int C, int OC, cudaStream_t stream = 0,
                           ops::MatmulPrecision p = ops::MatmulPrecision::fp32);
// Whether the bf16 overloads use the GELU epilogues (else the two ops in turn, pre rounded in
// between): on unless the environment's LMF_CUDA_GELU_EPILOGUE is 0. Process-wide.
void set_gelu_epilogues(bool on);
bool gelu_epilogues();

// logits (N, V) = x (N, C) @ w^T (V, C), no bias.
void classifier_logits(float* logits, const float* x, const float* w, int N, int C, int V,
                       cudaStream_t stream = 0,
                       ops::MatmulPrecision p = ops::MatmulPrecision::fp32);
// Classifier fused with softmax cross-entropy, as ops::classifier_ce_forward: logits in chunks of
// classifier_chunk_rows(N, V) rows held in a per-device workspace that is kept across calls
// (grown on demand), so the (N, V) logits never exist whole. losses (N) = lse - logit[target];
// x (N, C); w (V, C); targets (N) int32 on the device, < 0 ignored (loss 0, no gradient).
// If dx != nullptr the backward runs in the same pass with dlogits = (softmax - onehot) * dloss:
// dx (N, C) ASSIGNED, dw (V, C) ACCUMULATES (dw and dloss (N) must be non-null then).
// Returns the sum of the losses in double: this call SYNCHRONISES `stream` (it copies the sum to
// the host), and a target >= V throws lmf::Error after that synchronise. On a capturing stream it
// leaves the sum in the workspace and returns NaN (classifier_ce_last_sum reads it). Calls on one
// device are serialised (they share the workspace).
double classifier_ce_forward(float* losses, float* dx, float* dw, const float* x, const float* w,
                             const int32_t* targets, const float* dloss, int N, int C, int V,
                             cudaStream_t stream = 0,
                             ops::MatmulPrecision p = ops::MatmulPrecision::fp32);
// The sum the last classifier_ce_forward on this device computed, once every op issued before has
// run (a graph's launch included): synchronises, and throws as that call would for a bad target.
double classifier_ce_last_sum();
// Rows per chunk for (N, V): the workspace's capacity (128 MiB of fp32 logits) / V, clamped to
// [1, N]; 0 for N = 0.
int classifier_chunk_rows(int N, int V);
// For tests: force `rows` rows per chunk (clamped to N), so several chunks run on small inputs;
// 0 restores the automatic choice. Process-wide. The environment's LMF_CLASSIFIER_CHUNK_ROWS sets
// it at start-up, for trying other sizes on a GPU without a rebuild (a chunk that fits in L2 is
// read back from there; the logits GEMM is less efficient on few rows).
void set_classifier_chunk_rows(int rows);
// The bf16 backward keeps the dlogits of a group of chunks (1 GiB of bf16 at most) and runs its dx
// and dw GEMMs once per group, so dw passes once per group, not per chunk. For tests: force
// `chunks` chunks per group; 0 restores the automatic choice. Process-wide.
void set_classifier_group_chunks(int chunks);

// Whether the memory-bound kernels (residual, GELU, SwiGLU, the norms' rows, to_bf16) may use
// 16-byte accesses where the pointers are aligned (pack.cuh): the default, unless the environment's
// LMF_CUDA_VEC is 0. Off, they run one element per access, as the kernels did before; elementwise
// results are the same bits either way, the norms' row sums run in another order. Process-wide;
// for tests and the kernel lab (which times both).
void set_vectorised_access(bool on);
bool vectorised_access();

// ---- graphs (ops/cuda/graph.cu) -------------------------------------------------------------------
// The stream the backend's table issues this host thread's ops on: the legacy default stream (0),
// except between capture_begin and capture_end, when it is the device's capture stream, a blocking
// stream (so ordered with the legacy stream's work both ways, as every op must be). The legacy
// stream cannot capture.
cudaStream_t current_stream();
// ops::Backend's capture_begin, capture_end, graph_launch and graph_free: a CUDA graph captured in
// the global mode, so a call that would synchronise or allocate, from any thread, fails the
// capture; capture_end throws lmf::Error then. A graph launches on the capture stream.
void capture_begin();
ops::Graph* capture_end();
void graph_launch(ops::Graph* g);
void graph_free(ops::Graph* g);

// ---- attention and encoder (ops/cuda/attention.cu, attention_tiled.cu, encoder.cu) ----------

// Precision p: as the GEMMs' (ops::MatmulPrecision). bf16 runs the products of q k^T, P v and
// the backward's four on the tensor cores (attention_mma.cu: bf16 operands, fp32 softmax, sums
// and storage) for head sizes that are multiples of 16 up to 128; other head sizes, and fp32 and tf32, run the fp32
// kernels chosen below.
//
// Which kernels the attention ops below run, process-wide: `rowwise` (attention.cu: one warp
// per query or key row, each k and v row read once per row) or `tiled` (attention_tiled.cu:
// FlashAttention-2's tiles in shared memory, for hs <= 128; larger heads stay rowwise). Same
// arithmetic and error bound. The default is the environment's LMF_CUDA_ATTENTION (rowwise or
// tiled), else tiled.
enum class AttentionKernel { rowwise, tiled };
void set_attention_kernel(AttentionKernel k);
AttentionKernel attention_kernel();

// Causal multi-head self-attention, as ops::attention_forward: scale 1/sqrt(hs),
// hs = C / NH <= 256. qkv (B, T, 3C): per (b, t), [q (NH, hs) | k (NH, hs) | v (NH, hs)];
// out (B, T, C); lse (B, NH, T) saved for backward. No (T, T) matrix is stored (online softmax,
// one warp per query row).
void attention_forward(float* out, float* lse, const float* qkv, int B, int T, int C, int NH,
                       cudaStream_t stream = 0, ops::MatmulPrecision p = ops::MatmulPrecision::fp32);
// dqkv (B, T, 3C) ASSIGNED; must not alias the inputs. P is recomputed from q, k and lse;
// D_t = dout_t . out_t is recomputed where needed (no workspace, no allocation). Deterministic:
// dq per query row, dk and dv per key row, fixed summation order, no atomics.
void attention_backward(float* dqkv, const float* dout, const float* qkv, const float* out,
                        const float* lse, int B, int T, int C, int NH, cudaStream_t stream = 0,
                        ops::MatmulPrecision p = ops::MatmulPrecision::fp32);

// Causal grouped-query attention, as ops::attention_gqa_forward: query head h reads kv head
// h / (NH / KVH), hs <= 256. q, out (B, T, NH*hs); k, v (B, T, KVH*hs); lse (B, NH, T) saved.
void attention_gqa_forward(float* out, float* lse, const float* q, const float* k, const float* v,
                           int B, int T, int NH, int KVH, int hs, cudaStream_t stream = 0,
                           ops::MatmulPrecision p = ops::MatmulPrecision::fp32);
// dq (B, T, NH*hs), dk, dv (B, T, KVH*hs), all ASSIGNED (not aliasing the inputs); dk and dv sum
// over the group's query heads in ascending order, then query rows ascending (deterministic).
void attention_gqa_backward(float* dq, float* dk, float* dv, const float* dout, const float* q,
                            const float* k, const float* v, const float* out, const float* lse,
                            int B, int T, int NH, int KVH, int hs, cudaStream_t stream = 0,
                           ops::MatmulPrecision p = ops::MatmulPrecision::fp32);

// One query per sequence against its KV cache, as ops::attention_decode (fp32): one block per
// (query head, sequence), the scores and exps through scratch (B, NH, T) in device memory, y
// summed in t order.
void attention_decode(float* y, float* scratch, const float* q, const float* k, const float* v,
                      ops::DecodeLayout c, int NH, int KVH, int hs, cudaStream_t stream = 0);

// out (B, T, C) = wte (V, C)[tokens] + wpe (T, C)[t]; wpe nullptr: no position table (RoPE
// models). tokens (B, T) int32 ON THE DEVICE, each in [0, V) (not checked).
void encoder_forward(float* out, const int32_t* tokens, const float* wte, const float* wpe, int B,
                     int T, int C, cudaStream_t stream = 0);
// dwte[tokens[b, t]] += dout[b, t]; dwpe[t] += sum_b dout[b, t] (skipped if dwpe is nullptr).
// Both ACCUMULATE, deterministic and bitwise equal to the CPU op: each element adds its terms in
// (b, t) order. tokens_host (B, T) int32 is a HOST pointer (each in [0, V); negatives throw): the
// host groups positions by token and uploads that to a per-device workspace kept across calls
// (grown on demand). The call waits (host side) for the previous call's kernel on this device
// before reusing the workspace, so calls on different streams are safe; not graph-capturable.
void encoder_backward(float* dwte, float* dwpe, const float* dout, const int32_t* tokens_host,
                      int B, int T, int C, cudaStream_t stream = 0);

// ---- bf16 storage (ops::Backend<bf16>, cuda::backend_bf16()) -----------------------------------
// The same ops over bf16 activations and weights: every kernel loads bf16 (exactly, as float),
// computes in float with the fp32 kernel's formulas, and stores bf16 rounded to nearest even
// (core/half.h's float_to_bf16, bit for bit: ops/cuda/bf16.cuh). Parameter gradients (dw, db,
// dbias, dwte, dwpe) are float and accumulate in float; statistics (mean, rstd, lse), losses,
// dloss, logits and decode scratch are float. An accumulating bf16 output (the norms' dinp)
// widens, adds in float and rounds once. The GEMMs (matmul, classifier) read bf16 operands on
// the tensor cores with fp32 accumulation; attention uses the bf16 tensor-core kernels where they
// take the head size, else the fp32 kernels on the widened values. The CPU specification is
// ops::cpu_backend<bf16>(): the float op of the bf16 matmul-precision table on widened inputs,
// outputs rounded to bf16.

void residual_forward(bf16* out, const bf16* a, const bf16* b, size_t n, cudaStream_t stream = 0);
void gelu_forward(bf16* out, const bf16* inp, size_t n, cudaStream_t stream = 0);
void gelu_backward(bf16* dinp, const bf16* inp, const bf16* dout, size_t n,
                   cudaStream_t stream = 0);
void swiglu_forward(bf16* out, const bf16* gate, const bf16* up, size_t n, cudaStream_t stream = 0);
void swiglu_backward(bf16* dgate, bf16* dup, const bf16* dout, const bf16* gate, const bf16* up,
                     size_t n, cudaStream_t stream = 0);
void rope_forward(bf16* out, const bf16* inp, int B, int T, int NH, int hs, const double* inv_freq,
                  bool interleaved, int pos0 = 0, cudaStream_t stream = 0);
void rope_backward(bf16* dinp, const bf16* dout, int B, int T, int NH, int hs,
                   const double* inv_freq, bool interleaved, int pos0 = 0, cudaStream_t stream = 0);

// x (n) = value; dst (n) = src (n) (not overlapping); dst (n) = src (n) rounded to bf16 (the
// compute copy of the fp32 master weights: the table's to_compute).
void fill(bf16* x, bf16 value, size_t n, cudaStream_t stream = 0);
void copy(bf16* dst, const bf16* src, size_t n, cudaStream_t stream = 0);
void to_bf16(bf16* dst, const float* src, size_t n, cudaStream_t stream = 0);

// out, inp (N, C) bf16; mean, rstd (N) float; w, b (C) bf16. Backward: dinp (N, C) bf16 +=
// (widened, summed in float, rounded); dw, db (C) float +=.
void layernorm_forward(bf16* out, float* mean, float* rstd, const bf16* inp, const bf16* w,
                       const bf16* b, int N, int C, cudaStream_t stream = 0);
// res (N, C) = a + b rounded to bf16, out = layernorm(res as stored): the unfused pair's bits.
void residual_layernorm_forward(bf16* res, bf16* out, float* mean, float* rstd, const bf16* a,
                                const bf16* b, const bf16* w, const bf16* bias, int N, int C,
                                cudaStream_t stream = 0);
void layernorm_backward(bf16* dinp, float* dw, float* db, const bf16* dout, const bf16* inp,
                        const bf16* w, const float* mean, const float* rstd, int N, int C,
                        cudaStream_t stream = 0);
void rmsnorm_forward(bf16* out, float* rstd, const bf16* inp, const bf16* w, int N, int C,
                     float eps, cudaStream_t stream = 0);
void residual_rmsnorm_forward(bf16* res, bf16* out, float* rstd, const bf16* a, const bf16* b,
                              const bf16* w, int N, int C, float eps, cudaStream_t stream = 0);
void rmsnorm_backward(bf16* dinp, float* dw, const bf16* dout, const bf16* inp, const bf16* w,
                      const float* rstd, int N, int C, cudaStream_t stream = 0);

// out (B, T, C) bf16 = wte[tokens] + wpe[t] (float sum, rounded); dwte (V, C), dwpe (T, C) float
// +=.
void encoder_forward(bf16* out, const int32_t* tokens, const bf16* wte, const bf16* wpe, int B,
                     int T, int C, cudaStream_t stream = 0);
void encoder_backward(float* dwte, float* dwpe, const bf16* dout, const int32_t* tokens_host, int B,
                      int T, int C, cudaStream_t stream = 0);

// out (N, OC) bf16 = inp @ w^T + bias (bf16, in the epilogue), fp32 accumulation, rounded once.
// dinp (N, C) bf16 assigned; dw (OC, C) float += (bf16 x bf16 products, fp32 C, beta = 1); dbias
// (OC) float += column sums of dout. p is the table's (bf16); the operands are bf16 whatever it is.
void matmul_forward(bf16* out, const bf16* inp, const bf16* w, const bf16* bias, int N, int C,
                    int OC, cudaStream_t stream = 0,
                    ops::MatmulPrecision p = ops::MatmulPrecision::bf16);
void matmul_backward(bf16* dinp, float* dw, float* dbias, const bf16* dout, const bf16* inp,
                     const bf16* w, int N, int C, int OC, cudaStream_t stream = 0,
                     ops::MatmulPrecision p = ops::MatmulPrecision::bf16);
// The fused MLP ops over bf16 (above): GELU acts on the GEMM's fp32 result and each output is
// rounded once, as ops::cpu_backend<bf16>() specifies; pre and out (N, OC) must have OC a multiple of
// 8 (cuBLASLt's aux rule), dinp's C too, else the two ops run in turn.
void matmul_gelu_forward(bf16* out, bf16* pre, const bf16* inp, const bf16* w, const bf16* bias, int N, int C,
                         int OC, cudaStream_t stream = 0, ops::MatmulPrecision p = ops::MatmulPrecision::bf16);
void matmul_dgelu_backward(bf16* dinp, float* dw, float* dbias, const bf16* dout, const bf16* inp, const bf16* w,
                           const bf16* pre, int N, int C, int OC, cudaStream_t stream = 0,
                           ops::MatmulPrecision p = ops::MatmulPrecision::bf16);

// x (N, C), w (V, C) bf16; logits (N, V), losses, dloss (N) float (the logits stay fp32 in the
// workspace); dlogits rounded to bf16 before the dx and dw GEMMs; dx (N, C) bf16 assigned, dw
// (V, C) float +=.
void classifier_logits(float* logits, const bf16* x, const bf16* w, int N, int C, int V,
                       cudaStream_t stream = 0,
                       ops::MatmulPrecision p = ops::MatmulPrecision::bf16);
double classifier_ce_forward(float* losses, bf16* dx, float* dw, const bf16* x, const bf16* w,
                             const int32_t* targets, const float* dloss, int N, int C, int V,
                             cudaStream_t stream = 0,
                             ops::MatmulPrecision p = ops::MatmulPrecision::bf16);

// Attention over bf16 q, k, v, out, dout and their gradients; lse float.
void attention_forward(bf16* out, float* lse, const bf16* qkv, int B, int T, int C, int NH,
                       cudaStream_t stream = 0,
                       ops::MatmulPrecision p = ops::MatmulPrecision::bf16);
void attention_backward(bf16* dqkv, const bf16* dout, const bf16* qkv, const bf16* out,
                        const float* lse, int B, int T, int C, int NH, cudaStream_t stream = 0,
                        ops::MatmulPrecision p = ops::MatmulPrecision::bf16);
void attention_gqa_forward(bf16* out, float* lse, const bf16* q, const bf16* k, const bf16* v,
                           int B, int T, int NH, int KVH, int hs, cudaStream_t stream = 0,
                           ops::MatmulPrecision p = ops::MatmulPrecision::bf16);
void attention_gqa_backward(bf16* dq, bf16* dk, bf16* dv, const bf16* dout, const bf16* q,
                            const bf16* k, const bf16* v, const bf16* out, const float* lse, int B,
                            int T, int NH, int KVH, int hs, cudaStream_t stream = 0,
                            ops::MatmulPrecision p = ops::MatmulPrecision::bf16);
// y (B, NH hs) bf16; scratch (B, NH, T) float; q and the caches bf16.
void attention_decode(bf16* y, float* scratch, const bf16* q, const bf16* k, const bf16* v,
                      ops::DecodeLayout c, int NH, int KVH, int hs, cudaStream_t stream = 0);

}  // namespace lmf::cuda
