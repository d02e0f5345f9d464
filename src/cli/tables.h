#pragma once
// The backend tables a command runs on (bench, eval, sample): its --device, --matmul-precision
// and --precision, with one clear line naming the flag for a value that does not exist.
#include <string>

#include "ops/backend.h"

namespace lmf::cli {

// The float table of `device` (cpu | cuda, checked by the caller) with GEMM products `matmul`.
const ops::Backend<float>& float_table(const std::string& device, ops::MatmulPrecision matmul);
// With storage "bf16", the bf16 table of `device` (its products bf16, so `matmul` must not be
// tf32); nullptr with "fp32". UserError naming --precision for any other storage.
const ops::Backend<bf16>* bf16_table(const std::string& device, ops::MatmulPrecision matmul,
                                     const std::string& storage);

}  // namespace lmf::cli
