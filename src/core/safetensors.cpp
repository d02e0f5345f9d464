#include "core/safetensors.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <bit>
#include <cerrno>
#include <cstring>
#include <limits>
#include <nlohmann/json.hpp>
#include <optional>

#include "core/error.h"
#include "core/file_io.h"
#include "core/half.h"

static_assert(std::endian::native == std::endian::little,
              "safetensors I/O assumes a little-endian host");

namespace lmf {

namespace {

using json = nlohmann::json;

// A header this large is a corrupt length, not a real file (the Rust reader's limit is 100 MB).
constexpr uint64_t kMaxHeaderBytes = 100'000'000;
// A real header nests 3 deep. serde_json, which the Rust reader parses with, refuses more than
// 128; so do we, which also keeps the recursive dump() in our error messages off the stack limit
// (a 200 KB header of nested brackets crashed it).
constexpr int kMaxHeaderDepth = 128;

struct StDType {
  const char* name;
  size_t size;
  std::optional<DType> dtype;
};

// Every dtype the safetensors spec defines; the ones lmforge cannot compute in are still listed
// so that such files open and their other tensors can be read.
constexpr StDType kStDTypes[] = {
    {"F64", 8, DType::F64},    {"F32", 4, DType::F32},       {"F16", 2, DType::F16},
    {"BF16", 2, DType::BF16},  {"I64", 8, std::nullopt},     {"I32", 4, DType::I32},
    {"I16", 2, std::nullopt},  {"I8", 1, std::nullopt},      {"U64", 8, std::nullopt},
    {"U32", 4, DType::U32},    {"U16", 2, DType::U16},       {"U8", 1, std::nullopt},
    {"BOOL", 1, std::nullopt}, {"F8_E4M3", 1, std::nullopt}, {"F8_E5M2", 1, std::nullopt},
};

const StDType* find_st_dtype(const std::string& s) {
  for (const auto& d : kStDTypes)
    if (s == d.name) return &d;
  return nullptr;
}

std::string sys_error() { return std::strerror(errno); }

[[noreturn]] void bad(const std::filesystem::path& p, const std::string& what) {
  throw UserError("{}: {}", p.string(), what);
}

// A non-negative JSON integer that fits in int64, or nullopt.
std::optional<int64_t> json_nonneg_int(const json& v) {
  if (v.is_number_unsigned()) {
    const auto u = v.get<uint64_t>();
    if (u > static_cast<uint64_t>(std::numeric_limits<int64_t>::max())) return std::nullopt;
    return static_cast<int64_t>(u);
  }
  if (v.is_number_integer()) {
    const auto i = v.get<int64_t>();
    if (i < 0) return std::nullopt;
    return i;
  }
  return std::nullopt;
}

StTensorInfo parse_entry(const std::filesystem::path& path, const std::string& name, const json& e,
                         size_t data_size) {
  auto fail = [&](const std::string& what) {
    bad(path, fmt::format("tensor '{}': {}", name, what));
  };
  if (!e.is_object()) fail("header entry is not a JSON object");
  for (const char* key : {"dtype", "shape", "data_offsets"})
    if (!e.contains(key)) fail(fmt::format("header entry has no \"{}\"", key));

  StTensorInfo t;
  t.name = name;
  const json& jd = e["dtype"];
  if (!jd.is_string()) fail("\"dtype\" is not a string");
  t.st_dtype = jd.get<std::string>();
  const StDType* st = find_st_dtype(t.st_dtype);
  if (!st) fail(fmt::format("unknown dtype \"{}\"", t.st_dtype));
  t.dtype_known = st->dtype.has_value();
  t.dtype = st->dtype.value_or(DType::F32);

  const json& js = e["shape"];
  if (!js.is_array()) fail("\"shape\" is not an array");
  // Products beyond the file size cannot match nbytes; saturating avoids overflow on garbage.
  uint64_t elems = 1;
  bool overflow = false;
  for (const json& d : js) {
    if (!d.is_number_integer())
      fail(fmt::format("\"shape\" {} has a non-integer dimension", d.dump()));
    const auto v = json_nonneg_int(d);
    if (!v) fail(fmt::format("\"shape\" {} has a negative or too large dimension", js.dump()));
    t.shape.push_back(*v);
    overflow = overflow || __builtin_mul_overflow(elems, static_cast<uint64_t>(*v), &elems);
  }

  const json& jo = e["data_offsets"];
  if (!jo.is_array() || jo.size() != 2) fail("\"data_offsets\" is not an array of two integers");
  const auto begin = json_nonneg_int(jo[0]);
  const auto end = json_nonneg_int(jo[1]);
  if (!begin || !end)
    fail(fmt::format("\"data_offsets\" {} are not non-negative integers", jo.dump()));
  if (*end < *begin) fail(fmt::format("\"data_offsets\" {} end before they begin", jo.dump()));
  t.offset = static_cast<size_t>(*begin);
  t.nbytes = static_cast<size_t>(*end - *begin);

  uint64_t want = 0;
  overflow = overflow || __builtin_mul_overflow(elems, static_cast<uint64_t>(st->size), &want);
  if (overflow || want != t.nbytes)
    fail(fmt::format("shape {} of {} needs {} bytes but \"data_offsets\" {} span {}",
                     shape_str(t.shape), t.st_dtype,
                     overflow ? std::string("too many") : std::to_string(want), jo.dump(),
                     t.nbytes));
  if (static_cast<uint64_t>(*end) > data_size)
    fail(fmt::format(
        "\"data_offsets\" {} run past the end of the data section ({} bytes): file truncated?",
        jo.dump(), data_size));
  return t;
}

}  // namespace

const char* safetensors_dtype(DType d) {
  switch (d) {
    case DType::F32:
      return "F32";
    case DType::F64:
      return "F64";
    case DType::BF16:
      return "BF16";
    case DType::F16:
      return "F16";
    case DType::I32:
      return "I32";
    case DType::U16:
      return "U16";
    case DType::U32:
      return "U32";
  }
  return "?";
}

// ----------------------------------------------------------------------------------------------
// Writer

void SafetensorsWriter::add(std::string name, DType dtype, Shape shape, const void* data) {
  LMF_CHECK(name != "__metadata__" && !name.empty(), "safetensors: invalid tensor name '{}'", name);
  for (const auto& e : entries_)
    LMF_CHECK(e.name != name, "safetensors: tensor '{}' added twice", name);
  for (int64_t d : shape)
    LMF_CHECK(d >= 0, "safetensors: tensor '{}' has shape {}", name, shape_str(shape));
  LMF_CHECK(data != nullptr || numel(shape) == 0, "safetensors: tensor '{}' has no data", name);
  entries_.push_back({std::move(name), dtype, std::move(shape), data});
}

void SafetensorsWriter::set_metadata(std::string key, std::string value) {
  metadata_[std::move(key)] = std::move(value);
}

void SafetensorsWriter::write(const std::filesystem::path& path) const {
  // Largest elements first keeps every tensor aligned to its element size with no padding.
  std::vector<const Entry*> order;
  for (const auto& e : entries_) order.push_back(&e);
  std::stable_sort(order.begin(), order.end(), [](const Entry* a, const Entry* b) {
    return dtype_size(a->dtype) > dtype_size(b->dtype);
  });

  json header = json::object();
  size_t offset = 0;
  for (const Entry* e : order) {
    const size_t n = static_cast<size_t>(numel(e->shape)) * dtype_size(e->dtype);
    header[e->name] = {{"dtype", safetensors_dtype(e->dtype)},
                       {"shape", e->shape},
                       {"data_offsets", {offset, offset + n}}};
    offset += n;
  }
  if (!metadata_.empty()) header["__metadata__"] = metadata_;
  std::string text = header.dump();
  // Pad with spaces (valid JSON whitespace) so the data section starts 8-byte aligned.
  text.append((8 - text.size() % 8) % 8, ' ');
  const uint64_t header_len = text.size();

  AtomicFile f(path);
  f.write(&header_len, sizeof header_len);
  f.write(text.data(), text.size());
  for (const Entry* e : order) f.write(e->data, static_cast<size_t>(numel(e->shape)) * dtype_size(e->dtype));
  f.commit();
}

// ----------------------------------------------------------------------------------------------
// Reader

SafetensorsFile::SafetensorsFile(SafetensorsFile&& o) noexcept { *this = std::move(o); }

SafetensorsFile& SafetensorsFile::operator=(SafetensorsFile&& o) noexcept {
  if (this != &o) {
    release();
    path_ = std::move(o.path_);
    map_ = std::exchange(o.map_, nullptr);
    map_size_ = std::exchange(o.map_size_, 0);
    data_ = std::exchange(o.data_, nullptr);
    tensors_ = std::move(o.tensors_);
    index_ = std::move(o.index_);
    metadata_ = std::move(o.metadata_);
  }
  return *this;
}

SafetensorsFile::~SafetensorsFile() { release(); }

void SafetensorsFile::release() noexcept {
  if (map_) ::munmap(map_, map_size_);
  map_ = nullptr;
  map_size_ = 0;
  data_ = nullptr;
}

SafetensorsFile SafetensorsFile::open(const std::filesystem::path& path) {
  SafetensorsFile f;
  f.path_ = path;
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) bad(path, fmt::format("cannot open ({})", sys_error()));
  struct stat st {};
  if (::fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
    ::close(fd);
    bad(path, "not a regular file");
  }
  const auto file_size = static_cast<uint64_t>(st.st_size);
  if (file_size < 8) {
    ::close(fd);
    bad(path, fmt::format("file is {} bytes, too short for a safetensors header length (8 bytes)",
                          file_size));
  }
  void* m = ::mmap(nullptr, file_size, PROT_READ, MAP_PRIVATE, fd, 0);
  const std::string map_err = m == MAP_FAILED ? sys_error() : "";
  ::close(fd);  // the mapping keeps the file alive
  if (m == MAP_FAILED) bad(path, fmt::format("cannot map ({})", map_err));
  f.map_ = m;
  f.map_size_ = file_size;
  const auto* bytes = static_cast<const uint8_t*>(m);

  uint64_t header_len = 0;
  std::memcpy(&header_len, bytes, 8);
  if (header_len > kMaxHeaderBytes)
    bad(path, fmt::format("header length {} is over the 100 MB limit: not a safetensors file?",
                          header_len));
  if (header_len > file_size - 8)
    bad(path,
        fmt::format("header length {} is larger than the rest of the file ({} bytes): truncated or "
                    "not a safetensors file",
                    header_len, file_size - 8));
  const char* hp = reinterpret_cast<const char*>(bytes + 8);
  json header;
  try {
    header = json::parse(hp, hp + header_len, [&](int depth, json::parse_event_t, json&) {
      if (depth > kMaxHeaderDepth)
        bad(path, fmt::format("header nests deeper than {} levels", kMaxHeaderDepth));
      return true;
    });
  } catch (const json::parse_error& e) {
    bad(path, fmt::format("header is not valid JSON (at header byte {})", e.byte));
  } catch (const json::out_of_range&) {  // a number beyond double's range, e.g. 1e999
    bad(path, "header is not valid JSON (a number out of range)");
  }
  if (!header.is_object()) bad(path, "header is not a JSON object");

  f.data_ = bytes + 8 + header_len;
  const size_t data_size = file_size - 8 - header_len;
  for (const auto& [key, value] : header.items()) {
    if (key == "__metadata__") {
      if (!value.is_object()) bad(path, "\"__metadata__\" is not a JSON object");
      for (const auto& [mk, mv] : value.items()) {
        if (!mv.is_string())
          bad(path, fmt::format("\"__metadata__\" value for \"{}\" is not a string", mk));
        f.metadata_[mk] = mv.get<std::string>();
      }
      continue;
    }
    f.tensors_.push_back(parse_entry(path, key, value, data_size));
  }

  std::sort(f.tensors_.begin(), f.tensors_.end(), [](const StTensorInfo& a, const StTensorInfo& b) {
    return a.offset != b.offset ? a.offset < b.offset : a.nbytes < b.nbytes;
  });
  // Empty tensors occupy no bytes and so overlap nothing. Holes between tensors are allowed here
  // (the Rust reader rejects them; nothing we do depends on their absence).
  const StTensorInfo* prev = nullptr;
  for (const auto& t : f.tensors_) {
    if (t.nbytes == 0) continue;
    if (prev && t.offset < prev->offset + prev->nbytes)
      bad(path,
          fmt::format("tensors '{}' [{}, {}) and '{}' [{}, {}) overlap", prev->name, prev->offset,
                      prev->offset + prev->nbytes, t.name, t.offset, t.offset + t.nbytes));
    prev = &t;
  }
  for (size_t i = 0; i < f.tensors_.size(); ++i) f.index_[f.tensors_[i].name] = i;
  return f;
}

const StTensorInfo* SafetensorsFile::find(const std::string& name) const {
  auto it = index_.find(name);
  return it == index_.end() ? nullptr : &tensors_[it->second];
}

// The mapped file's pages wholly inside [p, p + n) leave this process's resident memory (they stay
// in the page cache, and come back from the file if read again): a tensor copied out once is not
// kept twice, so loading a checkpoint peaks at its parameters, not at them plus the file.
void SafetensorsFile::release_pages(const uint8_t* p, size_t n) const {
  const auto page = static_cast<uintptr_t>(sysconf(_SC_PAGESIZE));
  const uintptr_t begin = (reinterpret_cast<uintptr_t>(p) + page - 1) / page * page,
                  end = (reinterpret_cast<uintptr_t>(p) + n) / page * page;
  if (map_ && end > begin) ::madvise(reinterpret_cast<void*>(begin), end - begin, MADV_DONTNEED);
}

void SafetensorsFile::read_as_float(const std::string& name, const Shape& expected,
                                    float* dst) const {
  const StTensorInfo* t = find(name);
  if (!t) bad(path_, fmt::format("no tensor '{}'", name));
  if (t->shape != expected)
    bad(path_, fmt::format("tensor '{}' has shape {}, expected {}", name, shape_str(t->shape),
                           shape_str(expected)));
  const bool is_float = t->dtype_known && (t->dtype == DType::F32 || t->dtype == DType::F64 ||
                                           t->dtype == DType::BF16 || t->dtype == DType::F16);
  if (!is_float)
    bad(path_, fmt::format(
                   "tensor '{}' has dtype {}, expected a floating-point type (F32, F64, BF16, F16)",
                   name, t->st_dtype));
  const int64_t n = numel(t->shape);
  const uint8_t* src = data_ + t->offset;
  if (t->dtype == DType::F32) {
    if (t->nbytes) std::memcpy(dst, src, t->nbytes);
    release_pages(src, t->nbytes);
    return;
  }
  // Element-wise memcpy: a foreign file's tensors need not be aligned to their element size.
#pragma omp parallel for schedule(static) if (n > (int64_t{1} << 20))
  for (int64_t i = 0; i < n; ++i) {
    switch (t->dtype) {
      case DType::F64: {
        double v;
        std::memcpy(&v, src + 8 * i, 8);
        dst[i] = static_cast<float>(v);
        break;
      }
      case DType::BF16: {
        uint16_t h;
        std::memcpy(&h, src + 2 * i, 2);
        dst[i] = bf16_to_float(h);
        break;
      }
      case DType::F16: {
        uint16_t h;
        std::memcpy(&h, src + 2 * i, 2);
        dst[i] = f16_to_float(h);
        break;
      }
      default:
        break;  // excluded above
    }
  }
  release_pages(src, t->nbytes);
}

}  // namespace lmf
