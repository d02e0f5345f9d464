#pragma once
// The safetensors format (https://github.com/huggingface/safetensors), read and written without
// dependencies beyond nlohmann/json:
//   u64 little-endian N | N bytes of JSON header | data section
// The header maps each tensor name to {"dtype", "shape", "data_offsets": [begin, end]} (offsets
// relative to the data section) plus an optional "__metadata__": {str: str}.
//
// Files we write load in Hugging Face `safetensors`: tensors are packed with no holes (the Rust
// reader rejects holes) and ordered by element size, largest first, so that every tensor starts
// at a multiple of its element size (the data section starts at a multiple of 8).
#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <map>
#include <string>
#include <vector>

#include "core/tensor.h"

namespace lmf {

class SafetensorsWriter {
 public:
  // `data` (numel(shape) * dtype_size(dtype) bytes) is copied at write(); it must stay valid
  // until then. Names must be unique.
  void add(std::string name, DType dtype, Shape shape, const void* data);
  void set_metadata(std::string key, std::string value);
  // Writes path + ".tmp", fsyncs it, renames it over `path`: a crash leaves the old file or the
  // new one, never a torn one. UserError naming the file if it cannot be written.
  void write(const std::filesystem::path& path) const;

 private:
  struct Entry {
    std::string name;
    DType dtype;
    Shape shape;
    const void* data;
  };
  std::vector<Entry> entries_;
  std::map<std::string, std::string> metadata_;
};

struct StTensorInfo {
  std::string name;
  // lmforge's dtype; meaningful only when `dtype_known` (I64, I8, BOOL... are valid safetensors
  // dtypes that lmforge has no DType for; their bytes are still reachable through data()).
  DType dtype = DType::F32;
  bool dtype_known = true;
  std::string st_dtype;  // as written in the file: "F32", "BF16", "I64", ...
  Shape shape;
  size_t offset = 0;  // bytes from the start of the data section
  size_t nbytes = 0;
};

// A read-only memory map of a validated safetensors file. Tensor data may be unaligned when a
// file from elsewhere packs mixed dtypes: read it with memcpy (read_as_float does).
class SafetensorsFile {
 public:
  // Validates the whole header against the file size; any problem is a UserError
  // "<path>: <what was wrong>".
  static SafetensorsFile open(const std::filesystem::path& path);

  SafetensorsFile(SafetensorsFile&& o) noexcept;
  SafetensorsFile& operator=(SafetensorsFile&& o) noexcept;
  SafetensorsFile(const SafetensorsFile&) = delete;
  SafetensorsFile& operator=(const SafetensorsFile&) = delete;
  ~SafetensorsFile();

  const std::filesystem::path& path() const { return path_; }
  const std::vector<StTensorInfo>& tensors() const { return tensors_; }  // by data offset
  const StTensorInfo* find(const std::string& name) const;               // nullptr if absent
  const void* data(const StTensorInfo& t) const { return data_ + t.offset; }
  const std::map<std::string, std::string>& metadata() const { return metadata_; }

  // Copies tensor `name` into dst (numel(expected) floats), converting from F32, F64, BF16 or
  // F16. UserError naming the file and tensor if it is absent, has another shape, or another
  // dtype. The tensor's pages of the mapping then leave resident memory (release_pages).
  void read_as_float(const std::string& name, const Shape& expected, float* dst) const;

 private:
  SafetensorsFile() = default;
  void release() noexcept;
  void release_pages(const uint8_t* p, size_t n) const;

  std::filesystem::path path_;
  void* map_ = nullptr;  // the whole file
  size_t map_size_ = 0;
  const uint8_t* data_ = nullptr;  // start of the data section, inside map_
  std::vector<StTensorInfo> tensors_;
  std::map<std::string, size_t> index_;  // name -> position in tensors_
  std::map<std::string, std::string> metadata_;
};

// Safetensors' spelling of an lmforge dtype ("F32", "BF16", ...).
const char* safetensors_dtype(DType d);

}  // namespace lmf
