// libFuzzer target: SafetensorsFile::open on arbitrary bytes, then every accessor. A bad file
// must be a UserError; an opened file must keep the promises the reader's validation makes
// (every tensor inside the data section, no two overlapping, nbytes = numel * element size),
// and read_as_float must write exactly numel floats (ASan watches the destination).
#include <cstdint>
#include <cstring>
#include <vector>

#include "core/error.h"
#include "core/safetensors.h"
#include "fuzz_file.h"

namespace {

size_t st_dtype_size(const std::string& s) {
  if (s == "F64" || s == "I64" || s == "U64") return 8;
  if (s == "F32" || s == "I32" || s == "U32") return 4;
  if (s == "F16" || s == "BF16" || s == "I16" || s == "U16") return 2;
  return 1;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace lmf;
  const auto& path = fuzz::write_input("safetensors", data, size);
  try {
    const SafetensorsFile f = SafetensorsFile::open(path);
    // The data section as the format defines it (open() accepted the header length).
    uint64_t header_len = 0;
    LMF_FUZZ_ASSERT(size >= 8);
    std::memcpy(&header_len, data, 8);
    LMF_FUZZ_ASSERT(header_len <= size - 8);
    const size_t data_size = size - 8 - header_len;
    const uint8_t* section = data + 8 + header_len;

    size_t prev_end = 0;
    for (const StTensorInfo& t : f.tensors()) {
      LMF_FUZZ_ASSERT(t.offset <= data_size && t.nbytes <= data_size - t.offset);
      uint64_t n = 1;
      for (int64_t d : t.shape) {
        LMF_FUZZ_ASSERT(d >= 0);
        LMF_FUZZ_ASSERT(!__builtin_mul_overflow(n, static_cast<uint64_t>(d), &n));
      }
      LMF_FUZZ_ASSERT(n * st_dtype_size(t.st_dtype) == t.nbytes);
      if (t.nbytes) {  // sorted by offset; empty tensors overlap nothing
        LMF_FUZZ_ASSERT(t.offset >= prev_end);
        prev_end = t.offset + t.nbytes;
      }
      LMF_FUZZ_ASSERT(f.find(t.name) == &t);
      const auto* bytes = static_cast<const uint8_t*>(f.data(t));
      LMF_FUZZ_ASSERT(t.nbytes == 0 || std::memcmp(bytes, section + t.offset, t.nbytes) == 0);

      // Exactly numel floats; ASan flags a write past them.
      std::vector<float> dst(n);
      try {
        f.read_as_float(t.name, t.shape, dst.data());
      } catch (const UserError&) {
        LMF_FUZZ_ASSERT(!t.dtype_known || (t.dtype != DType::F32 && t.dtype != DType::F64 &&
                                           t.dtype != DType::BF16 && t.dtype != DType::F16));
      }
      // A wrong shape is refused before anything is written.
      Shape other = t.shape;
      other.push_back(1);
      float sentinel = 0;
      try {
        f.read_as_float(t.name, other, &sentinel);
        LMF_FUZZ_ASSERT(false);
      } catch (const UserError&) {
      }
    }
    LMF_FUZZ_ASSERT(f.find("__metadata__") == nullptr);
    size_t meta_bytes = 0;
    for (const auto& [k, v] : f.metadata()) meta_bytes += k.size() + v.size();
    LMF_FUZZ_ASSERT(meta_bytes <= size);
    if (!f.find("\x01"
                "absent")) {
      try {
        f.read_as_float(
            "\x01"
            "absent",
            {1}, nullptr);
        LMF_FUZZ_ASSERT(false);
      } catch (const UserError&) {
      }
    }
  } catch (const UserError&) {
    // A malformed file, reported as one: the expected outcome for most inputs.
  }
  return 0;
}
