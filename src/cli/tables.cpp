#include "cli/tables.h"

#include "core/error.h"
#include "ops/cuda_backend.h"

namespace lmf::cli {

const ops::Backend<float>& float_table(const std::string& device, ops::MatmulPrecision matmul) {
  return device == "cuda" ? cuda::backend(matmul) : ops::cpu_backend<float>(matmul);
}

const ops::Backend<bf16>* bf16_table(const std::string& device, ops::MatmulPrecision matmul,
                                     const std::string& storage) {
  if (storage != "fp32" && storage != "bf16")
    throw UserError("--precision: expected fp32 or bf16 (got \"{}\")", storage);
  if (storage == "fp32") return nullptr;
  if (matmul == ops::MatmulPrecision::tf32)
    throw UserError("--matmul-precision tf32 does not go with --precision bf16, whose products are bf16");
  return device == "cuda" ? &cuda::backend_bf16() : &ops::cpu_backend<bf16>();
}

}  // namespace lmf::cli
