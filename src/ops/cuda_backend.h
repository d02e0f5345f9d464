#pragma once
// CUDA backend entry points. ops/cuda/ implements them when the build finds CUDA;
// ops/no_cuda.cpp otherwise.
#include "ops/backend.h"

namespace lmf::cuda {
bool available();
void require();  // throws UserError in a build without CUDA, or without a device
// Makes device (index modulo the number of devices) this process's current one: a process of
// a multi-GPU node passes its local rank (dist::local_rank). Before any device memory is
// allocated. Calls require() first.
void select_device(int index);
// The CUDA backend's table (fp32 kernels of ops/cuda/ops_cuda.h, device memory from cudaMalloc,
// every op on the default stream), its GEMMs' products in precision p. Calls require() first.
const ops::Backend<float>& backend(ops::MatmulPrecision p = ops::MatmulPrecision::fp32);
// The CUDA backend over bf16 storage: activations and weights bf16, parameter gradients and
// statistics float (ops::Backend<bf16>), every kernel computing in float and rounding what it
// stores to nearest even; its GEMMs and attention on bf16 operands (matmul_precision bf16). The
// CPU specification is ops::cpu_backend<bf16>(). Calls require() first.
const ops::Backend<bf16>& backend_bf16();
}  // namespace lmf::cuda
