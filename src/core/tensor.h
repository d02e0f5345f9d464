#pragma once
// Shapes and non-owning views. Row-major, contiguous.
#include <cstdint>
#include <numeric>
#include <string>
#include <vector>

namespace lmf {

enum class DType : uint8_t { F32, F64, BF16, F16, I32, U16, U32 };
enum class Device : uint8_t { CPU, CUDA };

size_t dtype_size(DType d);
const char* dtype_name(DType d);

using Shape = std::vector<int64_t>;

inline int64_t numel(const Shape& s) {
  return std::accumulate(s.begin(), s.end(), int64_t{1}, std::multiplies<>());
}
std::string shape_str(const Shape& s);

template <class T>
struct TensorView {
  T* data = nullptr;
  Shape shape;
  Device device = Device::CPU;
  int64_t size() const { return numel(shape); }
};

}  // namespace lmf
