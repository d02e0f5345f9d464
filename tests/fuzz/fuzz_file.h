#pragma once
// The readers under fuzz take a path: each input is written to one scratch file per process
// ($TMPDIR, else /dev/shm, else /tmp), reused for every input and removed at exit.
#include <unistd.h>

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <string>

namespace lmf::fuzz {

inline const std::filesystem::path& scratch_path(const char* target) {
  static const std::filesystem::path path = [target] {
    const char* env = std::getenv("TMPDIR");
    std::filesystem::path dir = env && *env ? env : "/dev/shm";
    std::error_code ec;
    if (!std::filesystem::is_directory(dir, ec)) dir = "/tmp";
    return dir / ("lmf_fuzz_" + std::string(target) + "_" + std::to_string(::getpid()) + ".bin");
  }();
  static const bool registered = [] {
    std::atexit([] {
      std::error_code ec;
      std::filesystem::remove(path, ec);
    });
    return true;
  }();
  (void)registered;
  return path;
}

// Writes the input to the scratch file; a failure here is the harness's, so it aborts.
inline const std::filesystem::path& write_input(const char* target, const uint8_t* data,
                                                size_t size) {
  const auto& path = scratch_path(target);
  std::FILE* f = std::fopen(path.c_str(), "wb");
  if (!f || (size && std::fwrite(data, 1, size, f) != size) || std::fclose(f) != 0) {
    std::perror(path.c_str());
    std::abort();
  }
  return path;
}

// A broken invariant that the reader promised to check: crash so libFuzzer saves the input.
#define LMF_FUZZ_ASSERT(cond)                                                                  \
  do {                                                                                         \
    if (!(cond)) {                                                                             \
      std::fprintf(stderr, "fuzz invariant failed: %s at %s:%d\n", #cond, __FILE__, __LINE__); \
      std::abort();                                                                            \
    }                                                                                          \
  } while (0)

}  // namespace lmf::fuzz
