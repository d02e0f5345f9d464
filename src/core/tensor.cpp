#include "core/tensor.h"

#include <fmt/format.h>
#include <fmt/ranges.h>

namespace lmf {

size_t dtype_size(DType d) {
  switch (d) {
    case DType::F64: return 8;
    case DType::F32: case DType::I32: case DType::U32: return 4;
    case DType::BF16: case DType::F16: case DType::U16: return 2;
  }
  return 0;
}

const char* dtype_name(DType d) {
  switch (d) {
    case DType::F32: return "F32";
    case DType::F64: return "F64";
    case DType::BF16: return "BF16";
    case DType::F16: return "F16";
    case DType::I32: return "I32";
    case DType::U16: return "U16";
    case DType::U32: return "U32";
  }
  return "?";
}

std::string shape_str(const Shape& s) { return fmt::format("({})", fmt::join(s, ", ")); }

}  // namespace lmf
