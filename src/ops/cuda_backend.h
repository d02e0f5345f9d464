#pragma once
// CUDA backend entry points. ops/cuda/ implements them when the build finds CUDA;
// ops/no_cuda.cpp otherwise.
namespace lmf::cuda {
bool available();
void require();  // throws UserError in a build without CUDA
}  // namespace lmf::cuda
